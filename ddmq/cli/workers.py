"""The ``workers`` command: the executor's workers on a root, from their heartbeats.

Each worker of :mod:`ddmq.executor` keeps a heartbeat record in the root;
:func:`ddmq.executor.list_workers` reads them into live and lost workers
(a lost one stopped beating: killed, crashed, or its node is gone). This
command prints them as a table, or as data with ``--format``.
"""

from __future__ import annotations

import argparse

from .common import aligned, dump, open_root, say
from .options import Command, add_format, add_root


def _workers_arguments(sub: argparse.ArgumentParser) -> None:
    add_root(sub)
    sub.add_argument("--queue", help="only the workers of this task queue")
    add_format(sub, "output format: plain (default, a table), json or yaml")


def cmd_workers(args: argparse.Namespace) -> None:
    """List the workers of the root from their heartbeat records: live, then lost."""
    from ddmq.executor import list_workers  # the executor only when asked for

    b = open_root(args, [args.queue] if args.queue is not None else [])
    live, lost = list_workers(b.root, args.queue)
    if args.format != "plain":
        print(dump({"live": [r.to_dict() for r in live], "lost": [r.to_dict() for r in lost]},
                   args.format))
        return
    rows = [("worker", "queue", "state", "task", "done", "last seen")]
    for record in live + lost:
        state = "LOST" if record.lost else record.state
        rows.append((f"{record.host}:{record.pid}", record.queue, state, record.task or "-",
                     str(record.tasks_done), f"{record.age:.0f} s ago"))
    if len(rows) == 1:
        say(args, f"No workers have run on {b.root}")
        return
    for cells in aligned(rows):
        print("  ".join(cells).rstrip())
    say(args, f"{len(live)} live, {len(lost)} lost")


WORKERS = Command("workers", "List live and lost executor workers (heartbeats)",
                  "[-hvds] [--queue <name>] [--format <plain|json|yaml>] <root>",
                  cmd_workers, _workers_arguments)
