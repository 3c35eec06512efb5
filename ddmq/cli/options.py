"""The pieces every command's sub-parser is built from.

A command module declares each of its commands as a :class:`Command`: its
name, one-line help, usage line, handler, and a function that adds the
command's own arguments. :mod:`ddmq.cli.parser` adds the commands to the
``ddmq`` parser; :meth:`Command.add_to` gives each the options all commands
share. Also here: the parser class whose errors are one line, the argument
types (which ``ddmq json`` checks its values against, see :data:`JSON_TYPES`)
and the arguments several commands take alike.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, NoReturn


class UsageError(Exception):
    """The command line is wrong: exit status 2, nothing done."""


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, reported by
    :func:`ddmq.cli.main` as one line (argparse would print the whole usage
    and exit)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split()[-1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see '{self.prog} -h')")


@dataclass(frozen=True)
class Command:
    """One ``ddmq`` command, as its module declares it next to its handler.

    ``handler(args)`` runs the command: it prints its result and returns, or
    raises (:func:`ddmq.cli.main` turns the exception into the exit status).
    ``arguments(sub)`` adds the command's own arguments to its sub-parser;
    ``f_help``, if given, is the help of its ``-f`` option.
    """

    name: str
    help: str
    usage: str
    handler: Callable[[argparse.Namespace], None]
    arguments: Callable[[argparse.ArgumentParser], None]
    f_help: str | None = None

    def add_to(self, commands: argparse._SubParsersAction[CommandParser]) -> None:
        """Add the command's sub-parser: ``-f``, its own arguments, then
        ``-v``, ``-d`` and ``-s``."""
        sub = commands.add_parser(self.name, prog=f"ddmq {self.name}", help=self.help,
                                  description=self.help + ".", usage=f"ddmq {self.name} {self.usage}")
        sub.set_defaults(handler=self.handler)
        if self.f_help:
            sub.add_argument("-f", action="store_true", help=self.f_help)
        self.arguments(sub)
        sub.add_argument("-v", action="store_true", help="verbose mode (progress on stderr)")
        sub.add_argument("-d", action="store_true", help="debug mode")
        sub.add_argument("-s", action="store_true", help="silent mode (only data and errors)")


# --- argument types ------------------------------------------------------------------

def _int_at_least(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value
    convert.__name__ = f"integer >= {minimum}"  # argparse names the type by it in errors
    return convert


#: A priority, a requeue limit: a whole number >= 0.
non_negative_int = _int_at_least(0)
#: A count, a timeout: a whole number >= 1.
positive_int = _int_at_least(1)


def seconds(text: str) -> float:
    """A duration: a number of seconds >= 0, or ``inf``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or inf), not {text}")
    return value


#: The JSON type each argument type takes in ``ddmq json`` (default: a string).
JSON_TYPES: dict[Any, tuple[type, ...]] = {non_negative_int: (int,), positive_int: (int,),
                                           seconds: (int, float)}


# --- arguments several commands take ---------------------------------------------------

#: The output formats of ``--format``.
FORMATS = ("plain", "json", "yaml")
QUEUES_HELP = "comma-separated names of queues"


def add_root(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("root", help="the message queue's root folder")


def add_format(sub: argparse.ArgumentParser, help: str, default: str = "plain",
               choices: tuple[str, ...] = FORMATS) -> None:
    """``--format [FORMAT]``: ``--format`` alone means the default."""
    sub.add_argument("--format", nargs="?", const=default, default=default, choices=choices, help=help)


def add_skip_cleaning(sub: argparse.ArgumentParser, what: str) -> None:
    sub.add_argument("-C", "--skip_cleaning", "--skip-cleaning", dest="skip_cleaning",
                     action="store_true", help=f"{what} without cleaning the queue first")
