"""The command line of the executor's worker: ``python -m ddmq.worker ROOT [options]``.

:func:`build_parser` states the options, :func:`main` checks them, sets up
logging for the process (a command may; the library never does) and runs a
:class:`~ddmq.executor.worker.Worker` until it stops.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Callable, Sequence

from .. import __version__
from ..errors import DdmqError
from ..layout import HOST
from . import heartbeat as heartbeat_records
from .worker import Worker

__all__ = ["build_parser", "main"]

log = logging.getLogger("ddmq.executor.worker")


def _above_zero(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse ``type``: the option's text as ``kind`` (int or float), which must be more than 0."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddmq.worker",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the tasks of DDMQExecutor that are published to a ddmq root.\n\n"
                    "Start one worker per core on every machine that shares the root's\n"
                    "filesystem, in the same Python environment as the code that submits\n"
                    "the tasks (workers must be able to import what the tasks import).",
        epilog="signals:\n"
               "  SIGTERM/SIGINT  stop taking tasks; the running task may finish within\n"
               "                  --grace seconds, else it goes back to the queue for another\n"
               "                  worker (a second signal: at once). The exit status is 0.\n"
               "  SIGUSR1         drain (a Slurm job's time limit is near): take no new task;\n"
               "                  the running one finishes if it fits before the job's end\n"
               "                  minus --idle-margin, else it goes back to the queue.\n\n"
               "examples:\n"
               "  python -m ddmq.worker ~/ddmq-root                  # serve queue 'tasks' until stopped\n"
               "  python -m ddmq.worker ~/ddmq-root --idle-timeout 600 -v\n"
               "  srun python -m ddmq.worker $ROOT --grace 60        # one per Slurm task\n\n"
               "The worker creates the root (mode 0700), the queue and the root's secret\n"
               "if they are missing, and keeps a heartbeat record in ROOT/.workers/.")
    parser.add_argument("root", metavar="ROOT", help="the ddmq root folder (shared by executor and workers)")
    parser.add_argument("--queue", "-q", default="tasks",
                        help="task queue to serve (default: %(default)s; must match the executor's queue=)")
    parser.add_argument("--max-tasks", type=_above_zero(int), metavar="N",
                        help="exit (status 0) after N task messages; a chunk of map() counts as one")
    parser.add_argument("--idle-timeout", type=_above_zero(float), metavar="S",
                        help="exit (status 0) after S seconds without a task (default: never)")
    parser.add_argument("--heartbeat", type=_above_zero(float),
                        default=heartbeat_records.DEFAULT_INTERVAL, metavar="S",
                        help="seconds between heartbeats; a worker silent for 3 of them is lost, "
                             "and the tasks it held are run again (default: %(default)s)")
    parser.add_argument("--grace", type=float, default=30.0, metavar="S",
                        help="seconds a running task may go on after SIGTERM/SIGINT before it is "
                             "given back to the queue (default: %(default)s)")
    parser.add_argument("--drain-margin", type=float, metavar="S",
                        help="in a Slurm job: stop taking tasks S seconds before the job's time "
                             "limit (default: 120, at most a quarter of the time left at start, "
                             "at least 10); tasks are taken before that only if they fit")
    parser.add_argument("--idle-margin", type=float, metavar="S",
                        help="in a Slurm job: give back the running task and exit S seconds "
                             "before the job's time limit (default: 10, at most half the drain "
                             "margin)")
    parser.add_argument("--parent", type=int, metavar="PID",
                        help="stop as on SIGTERM when process PID, which started this worker, is "
                             "gone (DDMQExecutor passes this for the workers it starts)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more: -v for each start and stop, -vv for every task")
    parser.add_argument("--version", action="version", version=f"ddmq {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ddmq.worker``; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format=f"%(asctime)s ddmq.worker[{HOST}:{os.getpid()}] %(levelname)s: %(message)s")
    if args.grace < 0:
        log.error("--grace must be 0 or more")
        return 2
    for option, value in (("--drain-margin", args.drain_margin), ("--idle-margin", args.idle_margin)):
        if value is not None and not 0 <= value < math.inf:
            log.error("%s must be 0 or more seconds", option)
            return 2
    try:
        worker = Worker(args.root, args.queue, max_tasks=args.max_tasks,
                        idle_timeout=args.idle_timeout, heartbeat=args.heartbeat,
                        grace=args.grace, parent=args.parent, drain_margin=args.drain_margin,
                        idle_margin=args.idle_margin)
    except (DdmqError, OSError) as err:
        log.error("cannot start a worker on %s: %s", args.root, err)
        return 1
    return worker.run()
