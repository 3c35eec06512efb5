"""The queue commands: view, create, delete, purge and clean.

Each takes a root and a comma-separated list of queues. ``view`` counts the
messages waiting and at work (a table, or data with ``--format``), leaving
out the executors' own reply queues unless asked (``--all``); the others act on each queue in turn, after checking all of them, and print a
line per queue and a total for several. ``clean`` then also removes, in
the whole root, the reply queues and spill folders of dead executors
(:func:`ddmq.executor.reaper.reap_dead`), a line for each.
"""

from __future__ import annotations

import argparse
import logging
from typing import Callable

import ddmq

from .common import aligned, dump, open_queues, open_root, say, split
from .options import FORMATS, QUEUES_HELP, Command, add_format, add_root

log = logging.getLogger(__name__)

_F_HELP = "create the root folder if needed"


# --- view ----------------------------------------------------------------------------

def _view_arguments(sub: argparse.ArgumentParser) -> None:
    add_root(sub)
    sub.add_argument("queue", nargs="?", help=f"{QUEUES_HELP} to view (default: all)")
    sub.add_argument("-n", action="store_true", help="only print the names of queues (faster)")
    sub.add_argument("-a", "--all", action="store_true",
                     help="also list the executors' own reply queues (reply-HOST-PID-TOKEN), "
                          "which are hidden unless named")
    add_format(sub, "output format: plain table (default), json or yaml", choices=FORMATS + ("default",))


def cmd_view(args: argparse.Namespace) -> None:
    """List queues with their numbers of waiting and at-work messages; the
    executors' reply queues only with ``--all`` (or when named)."""
    wanted = split(args.queue) if args.queue is not None else []
    b = open_queues(args, wanted)
    queues = sorted(set(wanted)) if wanted else b.list_queues()
    if not wanted and not args.all:
        from ddmq.executor.drivers import is_executor_reply  # the executor only when needed

        queues = [queue for queue in queues if not is_executor_reply(queue)]
    log.info("viewing queue(s): %s", ", ".join(queues))
    fmt = "plain" if args.format in (None, "default") else args.format
    if args.n:
        if fmt != "plain":
            print(dump(queues, fmt))
        elif queues:
            print("\n".join(queues))
        return
    counts = {}
    for queue in queues:
        waiting, at_work = b.get_message_list(queue)
        counts[queue] = [len(waiting), len(at_work)]
    if fmt != "plain":
        print(dump(counts, fmt))
        return
    # The original's plain table: a header row, then one row per queue.
    rows = [("*queue*", "*msg in queue*", "*msg at work*")]
    rows += [(queue, str(n_wait), str(n_work)) for queue, (n_wait, n_work) in counts.items()]
    for cells in aligned(rows):
        print("| " + " | ".join(cells) + " |")


VIEW = Command("view", "List queues and number of messages",
               "[-hfnavds] [--format <plain|json|yaml>] <root> [queue1,queue2,...,queueN]",
               cmd_view, _view_arguments, _F_HELP)


# --- create, delete, purge, clean ------------------------------------------------------

def _queue_list_command(name: str, help: str, handler: Callable[[argparse.Namespace], None]) -> Command:
    """A command that takes a root and a list of queues."""
    def arguments(sub: argparse.ArgumentParser) -> None:
        add_root(sub)
        sub.add_argument("queue", help=f"{QUEUES_HELP} to {name}")
    return Command(name, help, "[-hfvds] <root> <queue1>[,<queue2>,...,<queueN>]", handler, arguments,
                   _F_HELP)


def cmd_create(args: argparse.Namespace) -> None:
    """Create queues; existing ones are left as they are."""
    queues = split(args.queue)
    b = open_root(args, queues)
    log.info("creating queue(s): %s", ", ".join(queues))
    created = 0
    for queue in queues:
        if b.queue_exists(queue):
            say(args, f"Already existing: {queue}")
            continue
        b.create_queue(queue)
        say(args, f"Created new queue: {queue}")
        created += 1
    if created > 1:
        say(args, f"Created {created} new queues")


def _each_queue(args: argparse.Namespace, verb: str, act: Callable[[ddmq.Broker, str], str]) -> None:
    """Run ``act(broker, queue)`` on every queue of a comma-separated list,
    all checked first; print what each did, and a total for several."""
    queues = split(args.queue)
    b = open_queues(args, queues)
    log.info("%s queue(s): %s", verb.lower(), ", ".join(queues))
    for queue in queues:
        say(args, act(b, queue))
    if len(queues) > 1:
        say(args, f"{verb} {len(queues)} queues")


def cmd_delete(args: argparse.Namespace) -> None:
    """Delete queues with everything in them."""
    def delete(b: ddmq.Broker, queue: str) -> str:
        b.delete_queue(queue)
        return f"Deleted queue: {queue}"
    _each_queue(args, "Deleted", delete)


def cmd_purge(args: argparse.Namespace) -> None:
    """Remove every waiting and at-work message of queues (dead letters stay)."""
    def purge(b: ddmq.Broker, queue: str) -> str:
        n_wait, n_work = b.purge_queue(queue)
        return f"Purged queue: {queue}\t({n_wait} messages in queue, {n_work} messages in work)"
    _each_queue(args, "Purged", purge)


def cmd_clean(args: argparse.Namespace) -> None:
    """Housekeeping now: requeue or dead-letter expired messages; then, in
    the whole root, remove the reply queues and spill folders of executors
    known to be dead (never a named run's ``run-*`` queue)."""
    def clean(b: ddmq.Broker, queue: str) -> str:
        b.clean(queue, force=True)
        return f"Cleaned queue: {queue}"
    _each_queue(args, "Cleaned", clean)
    _reap_dead_executors(args)


def _reap_dead_executors(args: argparse.Namespace) -> None:
    from ddmq.executor.reaper import reap_dead  # the executor only when asked for

    for reply, reason in reap_dead(open_root(args)):
        say(args, f"Removed reply queue of a dead executor: {reply}\t({reason})")


CREATE = _queue_list_command("create", "Create a queue", cmd_create)
DELETE = _queue_list_command("delete", "Delete a queue", cmd_delete)
PURGE = _queue_list_command("purge", "Purge all messages from queue", cmd_purge)
CLEAN = _queue_list_command("clean", "Clean out expired messages from queue", cmd_clean)
