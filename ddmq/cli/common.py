"""What every command does around its calls to the library.

Before: check the names it was given, open the root (creating it with
``-f``) and require the queues it names, so that bad input changes nothing
on disk. After: print the result, as human lines or as data
(``--format json|yaml``), and close the root when the command ends
(:func:`close_opened`, called by :func:`ddmq.cli.main`). The CLI does no
filesystem work of its own: it goes through :mod:`ddmq`'s public API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import yaml

import ddmq
from ddmq.layout import check_queue_name

from .options import UsageError

_opened: list[ddmq.Broker] = []  # closed when the command ends (see Broker.close)


def open_root(args: argparse.Namespace, queues: Sequence[str] = ()) -> ddmq.Broker:
    """Check the queue names, then open the root (creating it with ``-f``)."""
    for queue in queues:
        check_queue_name(queue)
    if not args.root:
        raise UsageError(f"{args.command}: the root folder must not be empty")
    create = bool(getattr(args, "f", False))
    try:
        broker = ddmq.broker(args.root, create=create)
    except ddmq.RootError as err:
        verb = "initiate" if isinstance(err, ddmq.RootUninitiatedError) else "create"
        hint = f" (use -f to {verb} it)" if hasattr(args, "f") else ""
        raise type(err)(f"{err}{hint}") from None
    _opened.append(broker)
    return broker


def open_queues(args: argparse.Namespace, queues: Sequence[str]) -> ddmq.Broker:
    """:func:`open_root`, then require every queue of ``queues`` to exist."""
    broker = open_root(args, queues)
    require_queues(broker, queues)
    return broker


def close_opened() -> None:
    """Close every root the command opened."""
    while _opened:
        _opened.pop().close()


def require_queues(b: ddmq.Broker, queues: Sequence[str], hint: str = "") -> None:
    """QueueNotFoundError naming every queue of ``queues`` that does not exist."""
    missing = [q for q in queues if not b.queue_exists(q)]
    if missing:
        names = ", ".join(repr(q) for q in missing)
        plural = "queues" if len(missing) > 1 else "queue"
        verb = "do" if len(missing) > 1 else "does"
        raise ddmq.QueueNotFoundError(f"{plural} {names} {verb} not exist in {b.root}{hint}")


def split(text: str) -> list[str]:
    """The items of a comma-separated list (each is checked by its user: an
    empty one is an invalid name)."""
    return text.split(",")


def split_file_names(text: str) -> list[str]:
    """The file names of a comma-separated list (a path is reduced to its name)."""
    return [os.path.basename(item) for item in split(text)]


# --- output --------------------------------------------------------------------------

def say(args: argparse.Namespace, text: str, machine: bool = False) -> None:
    """Print a human line: to stdout, or to stderr when stdout carries data
    in a machine format; nothing with ``-s``."""
    if not args.s:
        print(text, file=sys.stderr if machine else sys.stdout)


def dump(data: Any, fmt: str) -> str:
    """``data`` as ``fmt`` (json or yaml)."""
    if fmt == "json":
        return json.dumps(data)
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True).rstrip()


def aligned(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """The cells of a table, each padded to the width of its column."""
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return [[cell.ljust(width) for cell, width in zip(row, widths)] for row in rows]
