"""The ``ddmq`` argument parser, and ``ddmq json``'s translation of a JSON
object into the arguments it stands for.

:func:`build_parser` makes one sub-parser per command, in the order of
:data:`COMMANDS`; each command module declares its own (see
:class:`ddmq.cli.options.Command`), this module only puts them together and
adds ``json``. :func:`json_to_argv` turns a ``json`` payload into the
command line it describes, which is then parsed as if typed.
"""

from __future__ import annotations

import argparse
import json

import ddmq

from . import dead, messages, queues, runs, slurm, status, workers
from .options import JSON_TYPES, Command, CommandParser, UsageError

#: The commands in the order ``ddmq -h`` lists them (``json`` last).
_COMMANDS: tuple[Command, ...] = (
    queues.VIEW, queues.CREATE, queues.DELETE,
    messages.PUBLISH, messages.CONSUME, messages.ACK, messages.NACK, messages.DEL_MSG,
    queues.PURGE, queues.CLEAN, dead.DEAD, workers.WORKERS, runs.RUNS, slurm.SLURM, status.STATUS,
)

_JSON_HELP = "Run a command packaged as a JSON object"

#: Every command's one-line help, in order.
COMMANDS = {**{command.name: command.help for command in _COMMANDS}, "json": _JSON_HELP}

EPILOG = """\
examples:
  # create a new queue and publish a message to it
  ddmq create -f /tmp/ddmq queue_name
  ddmq publish /tmp/ddmq queue_name "Hello World!"

  # consume a message from a queue, then acknowledge it by its work file name
  ddmq consume /tmp/ddmq queue_name
  ddmq ack /tmp/ddmq queue_name 1700000600.999.1700000000000000000.ddmq1ed1...

  # view all queues present in the specified root directory
  ddmq view /tmp/ddmq

  # remove all messages from a queue, then delete it
  ddmq purge /tmp/ddmq queue_name
  ddmq delete /tmp/ddmq queue_name

  # the same as a JSON object
  ddmq json '{"command": "publish", "root": "/tmp/ddmq", "queue": "q", "message": "hi", "f": true}'

For more info about the commands, run: ddmq <command> -h
"""


def build_parser() -> CommandParser:
    """The ``ddmq`` parser: one sub-parser per command, each with its handler
    in ``args.handler``."""
    parser = CommandParser(
        prog="ddmq",
        usage="ddmq <command> [<args>]",
        description="Command-line interface to Dead Drop Messaging Queue (ddmq).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--version", action="version", version=f"ddmq version {ddmq.__version__}",
                        help="print version")
    commands = parser.add_subparsers(dest="command", metavar="<command>", title="commands",
                                     parser_class=CommandParser)
    for command in _COMMANDS:
        command.add_to(commands)
    sub = commands.add_parser("json", prog="ddmq json", help=_JSON_HELP,
                              usage="ddmq json '<json object>'",
                              description="Run a command packaged as a JSON object: the key "
                              "\"command\" (or \"cmd\") names it, the other keys are its arguments "
                              "named like its long options, e.g. "
                              '\'{"command": "publish", "root": "/tmp/ddmq", "queue": "q", '
                              '"message": "hi", "priority": 1}\'.')
    sub.add_argument("payload", help="the JSON object, within single quotes")
    return parser


# --- json: a command as a JSON object ------------------------------------------------------

#: Arguments that take a comma-separated list, which ``ddmq json`` also takes as a JSON list.
_LIST_KEYS = ("queue", "msg_files", "names")


def json_to_argv(parser: argparse.ArgumentParser, payload: str) -> list[str]:
    """The arguments that type the command ``payload`` describes.

    Keys are the command's argument names (``root``, ``queue``, ``message``,
    ``msg_files``) and option names (``priority``, ``skip_cleaning``, ``f``,
    ``n``...); null, and false for a flag, mean "not given". Raises
    UsageError for malformed JSON, an unknown command or key, or a value of
    the wrong type.
    """
    try:
        data = json.loads(payload)
    except ValueError as err:
        raise UsageError(f"json: not a valid JSON object ({err})") from None
    except RecursionError:
        raise UsageError("json: not a valid JSON object (nested too deeply)") from None
    if not isinstance(data, dict):
        raise UsageError(f"json: expected a JSON object, not {type(data).__name__}")
    data = dict(data)
    if "command" in data and "cmd" in data:
        raise UsageError("json: give either 'command' or 'cmd', not both")
    command = data.pop("command", data.pop("cmd", None))
    subparsers = _subparsers(parser)
    if not isinstance(command, str) or command not in subparsers or command == "json":
        known = ", ".join(c for c in COMMANDS if c != "json")
        raise UsageError(f"json: 'command' must be one of {known}, not {command!r}")
    actions = {a.dest: a for a in subparsers[command]._actions if a.dest != "help"}
    options: list[str] = []
    given: dict[str, str] = {}
    for key, value in data.items():
        action = actions.get(key)
        if action is None:
            raise UsageError(f"json: unknown key {key!r} for command {command} "
                             f"(known: {', '.join(sorted(actions))})")
        flag = action.option_strings[-1] if action.option_strings else ""
        if value is None:  # as if not typed
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise UsageError(f"json: {key!r} must be true or false, not {json.dumps(value)}")
            if value:
                options.append(flag)
            continue
        if isinstance(value, list) and key in _LIST_KEYS and all(isinstance(v, str) for v in value):
            value = ",".join(value)  # a comma-separated list, as typed
        wanted = JSON_TYPES.get(action.type, (str,))
        if isinstance(value, bool) or not isinstance(value, wanted):
            kind = "a number" if float in wanted else "an integer" if int in wanted else "a string"
            raise UsageError(f"json: {key!r} must be {kind}, not {json.dumps(value)}")
        if flag:
            options.append(f"{flag}={value}" if flag.startswith("--") else f"{flag}{value}")
        else:
            given[key] = str(value)
    # Positionals in the command's order, after "--" so that no value is read as an option.
    order = [a.dest for a in subparsers[command]._actions if not a.option_strings]
    return [command, *options, "--", *(given[dest] for dest in order if dest in given)]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
