"""The ``workers`` command: the executor's workers on a root, from their heartbeats.

Each worker of :mod:`ddmq.executor` keeps a heartbeat record in the root;
:func:`ddmq.executor.list_workers` reads them into live and lost workers
(a lost one stopped beating: killed, crashed, or its node is gone). This
command prints them as a table, then a line per lost worker saying how it
ended as far as it is known (:func:`ddmq.executor.deaths.record_cause`: the
signal or exit status its executor saw, or when and where its heartbeats
stopped); or as data with ``--format`` (``cause`` in each lost record).
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
    from ddmq.executor.deaths import record_cause

    b = open_root(args, [args.queue] if args.queue is not None else [])
    live, lost = list_workers(b.root, args.queue)
    for record in lost:
        record.cause = record_cause(record)
    from ddmq.executor.slurm_pool import explain_lost
    explain_lost(lost)  # in Slurm jobs: how each job ended (OUT_OF_MEMORY, TIMEOUT...)
    if args.format != "plain":
        print(dump({"live": [r.to_dict() for r in live], "lost": [r.to_dict() for r in lost]},
                   args.format))
        return
    slurm = any(r.slurm_job for r in live + lost)  # then: the node and job of each worker
    rows = [("worker", "queue", "state", "task", "done", "last seen")
            + (("node", "slurm job") if slurm else ())]
    for record in live + lost:
        state = "LOST" if record.lost else record.state
        rows.append((f"{record.host}:{record.pid}", record.queue, state, record.task or "-",
                     str(record.tasks_done), f"{record.age:.0f} s ago")
                    + ((record.node or "-", record.slurm_job or "-") if slurm else ()))
    if len(rows) == 1:
        where = f"queue {args.queue} of {b.root}" if args.queue is not None else b.root
        say(args, f"No live or lost workers on {where} (a worker that stops cleanly "
                  "removes its record)")
        return
    for cells in aligned(rows):
        print("  ".join(cells).rstrip())
    for record in lost:
        print(f"{record.host}:{record.pid} {record.cause}")
    say(args, f"{len(live)} live, {len(lost)} lost")


WORKERS = Command("workers", "List live and lost executor workers (heartbeats)",
                  "[-hvds] [--queue <name>] [--format <plain|json|yaml>] <root>",
                  cmd_workers, _workers_arguments)
