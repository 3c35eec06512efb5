"""The ``dead`` command: list the dead letters of a queue, or requeue them.

Dead letters are messages ddmq gave up on (requeue limit reached, expired
without requeue, rejected): :meth:`ddmq.Broker.list_dead` names them, and
``-r`` puts them back in their queue with :meth:`ddmq.Broker.requeue_dead`,
all of them or the named ones (all checked first).
"""

from __future__ import annotations

import argparse

import ddmq

from .common import dump, open_queues, say, split_file_names
from .options import Command, UsageError, add_format, add_root


def _dead_arguments(sub: argparse.ArgumentParser) -> None:
    add_root(sub)
    sub.add_argument("queue", help="name of the queue")
    sub.add_argument("names", nargs="?", help="with -r: comma-separated names of the dead letters to requeue")
    sub.add_argument("-r", "--requeue", action="store_true",
                     help="put the dead letters back in the queue: all of them, or the named ones")
    add_format(sub, "output format: plain (default, one name per line), json or yaml")


def cmd_dead(args: argparse.Namespace) -> None:
    """List the dead letters of a queue, or put them back in the queue."""
    if args.names is not None and not args.requeue:
        raise UsageError("dead: names of dead letters are only taken with -r/--requeue (see 'ddmq dead -h')")
    b = open_queues(args, [args.queue])
    dead = b.list_dead(args.queue)
    machine = args.format != "plain"
    if not args.requeue:
        if machine:
            print(dump(dead, args.format))
        elif dead:
            print("\n".join(dead))
        else:
            say(args, f"No dead letters in {args.queue}")
        return
    names = None
    if args.names is not None:
        names = split_file_names(args.names)
        missing = [n for n in names if n not in dead]
        if missing:
            raise ddmq.MessageNotFoundError(f"no dead letter {', '.join(map(repr, missing))} "
                                            f"in queue {args.queue}; nothing requeued")
    done = b.requeue_dead(args.queue, names)
    if machine:
        print(dump(done, args.format))
        return
    for name in done:
        say(args, f"Requeued dead letter: {name}")
    if not done:
        say(args, f"No dead letters in {args.queue}")


DEAD = Command("dead", "List (or requeue) the dead letters of a queue",
               "[-hrvds] [--format <plain|json|yaml>] <root> <queue> [name1,...,nameN]",
               cmd_dead, _dead_arguments)
