"""The message commands: publish, consume, ack, nack and del_msg.

``consume`` prints each message it claims with its ``filename``, the name of
its work file (``EXPIRY.PRIORITY.NUMBER.ddmqID``); ``ack`` and ``nack`` take
those names back, ``del_msg`` takes work or waiting names. Every name is
checked before anything is done: one that names no message file, or a lease
that is gone, is an error and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Callable

import yaml

import ddmq
from ddmq.layout import WORK, WaitingName, WorkName

from .common import open_queues, open_root, require_queues, say, split_file_names
from .options import Command, add_format, add_root, add_skip_cleaning, non_negative_int, positive_int, seconds

_F_HELP = "create the root folder and queue if needed"


def _open_or_create_queue(args: argparse.Namespace, machine: bool = False) -> ddmq.Broker:
    """Open the root and the queue; with -f, create them if they do not exist."""
    b = open_root(args, [args.queue])
    if not b.queue_exists(args.queue):
        if not args.f:
            require_queues(b, [args.queue], " (use -f to create it)")
        b.create_queue(args.queue)
        say(args, f"Created new queue: {args.queue}", machine)
    return b


# --- publish, consume ------------------------------------------------------------------

def _publish_arguments(sub: argparse.ArgumentParser) -> None:
    add_root(sub)
    sub.add_argument("queue", help="name of queue to publish to")
    sub.add_argument("message", help="message text within quotes")
    sub.add_argument("-p", "--priority", type=non_negative_int,
                     help="priority of the message (lower number = higher priority; 0 is highest)")
    sub.add_argument("-t", "--timeout", type=positive_int,
                     help="seconds a consumer may hold the message before it expires")
    sub.add_argument("-r", "--requeue", action="store_true",
                     help="requeue the message on nack or expiry (the default unless settings say otherwise)")
    sub.add_argument("-l", "--requeue_limit", type=non_negative_int,
                     help="times the message may be requeued before it becomes a dead letter")
    sub.add_argument("--requeue_prio", type=non_negative_int,
                     help="priority the message gets when requeued; implies -r")
    add_skip_cleaning(sub, "publish")


def cmd_publish(args: argparse.Namespace) -> None:
    """Publish one message; with -f, create the root and queue first."""
    b = _open_or_create_queue(args)
    if args.skip_cleaning:
        say(args, "Skipping queue cleaning.")
    requeue = True if args.requeue else None  # None: the queue's settings decide
    msg = b.publish(args.queue, msg_text=args.message, priority=args.priority, timeout=args.timeout,
                    requeue=requeue, requeue_prio=args.requeue_prio, requeue_limit=args.requeue_limit,
                    clean=not args.skip_cleaning)
    say(args, f"Successfully published message:{os.linesep}{os.linesep}{msg!r}")


PUBLISH = Command("publish", "Publish message to queue", '[options] <root> <queue> "<message>"',
                  cmd_publish, _publish_arguments, _F_HELP)


def _consume_arguments(sub: argparse.ArgumentParser) -> None:
    add_root(sub)
    sub.add_argument("queue", help="name of queue to consume from")
    sub.add_argument("-n", nargs="?", const=1, default=1, type=positive_int,
                     help="the number of messages that will be consumed (default 1)")
    sub.add_argument("-w", "--wait", type=seconds, default=0.0, metavar="SECONDS",
                     help="wait up to SECONDS for a message to arrive (inf: for ever)")
    add_format(sub, "output format: json (default, one object per line), plain or yaml", default="json")
    add_skip_cleaning(sub, "consume")


def cmd_consume(args: argparse.Namespace) -> None:
    """Claim messages and print them; ack or nack them by their ``filename``."""
    machine = args.format != "plain"
    b = _open_or_create_queue(args, machine)
    wait = None if math.isinf(args.wait) else args.wait
    got = b.consume(args.queue, n=args.n, wait=wait, clean=not args.skip_cleaning)
    messages = got if isinstance(got, list) else [got] if got is not None else []
    if not messages:
        say(args, f"No more messages in {args.queue}", machine)
    elif args.format == "yaml":
        print(yaml.safe_dump_all([m.to_dict() for m in messages], default_flow_style=False).rstrip())
    else:
        for msg in messages:
            print(json.dumps(msg.to_dict()) if args.format == "json" else repr(msg))


CONSUME = Command("consume", "Consume message from queue",
                  "[-hfnCvds] [-w SECONDS] [--format <plain|json|yaml>] <root> <queue>",
                  cmd_consume, _consume_arguments, _F_HELP)


# --- ack, nack, del_msg: messages by their file names ------------------------------------------

_FILES_USAGE = "<root> <queue> <message file1>[,<message file2>,..,<message fileN>]"


def _files_arguments(files_help: str, what: str, requeue: bool) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments of a command on messages named by their files: root, queue, files."""
    def arguments(sub: argparse.ArgumentParser) -> None:
        add_root(sub)
        sub.add_argument("queue", help="name of the queue the messages are in")
        sub.add_argument("msg_files", help=f"comma-separated names of the messages' files {files_help}")
        if requeue:
            sub.add_argument("-r", "--requeue", action="store_true", help="force requeue of the messages")
        add_skip_cleaning(sub, what)
    return arguments


def _claimed(args: argparse.Namespace, action: str) -> tuple[ddmq.Broker, list[str]]:
    """The root and the work names given to ack or nack, all checked:
    InvalidNameError for a name that is no work name, LeaseLostError if a
    named work file is gone; either before anything is done."""
    names = split_file_names(args.msg_files)
    for name in names:
        if WorkName.parse(name) is None:
            raise ddmq.InvalidNameError(f"{name!r} is not the name of a consumed message "
                                        "(EXPIRY.PRIORITY.NUMBER.ddmqID, as consume printed it)")
    b = open_queues(args, [args.queue])
    at_work = set(b.get_message_list(args.queue)[1])
    missing = [n for n in names if n not in at_work]
    if missing:
        raise ddmq.LeaseLostError(f"lease lost for {', '.join(missing)} in {args.queue}: it expired and "
                                  f"was requeued, or was acked already; nothing {action}", missing)
    return b, names


def _work_path(b: ddmq.Broker, queue: str, name: str) -> str:
    return os.path.join(b.root, queue, WORK, name)


def cmd_ack(args: argparse.Namespace) -> None:
    """Acknowledge consumed messages (delete them; with -r, requeue them)."""
    b, names = _claimed(args, "acked")
    if args.requeue:  # the original's "force requeue": done, but put back in the queue
        done = b.nack(args.queue, names, requeue=True, clean=not args.skip_cleaning)
    else:
        done = b.ack(args.queue, names, clean=not args.skip_cleaning)
    for name in done:
        say(args, f"acked {_work_path(b, args.queue, name)}" + (" (requeued)" if args.requeue else ""))


def cmd_nack(args: argparse.Namespace) -> None:
    """Negatively acknowledge consumed messages: requeue them (or delete them
    if the message or queue says not to requeue; -r forces the requeue)."""
    b, names = _claimed(args, "nacked")
    done = b.nack(args.queue, names, requeue=True if args.requeue else None, clean=not args.skip_cleaning)
    for name in done:
        say(args, f"nacked {_work_path(b, args.queue, name)}")


def cmd_del_msg(args: argparse.Namespace) -> None:
    """Delete messages, waiting or at work, by their file names."""
    names = split_file_names(args.msg_files)
    paths = []  # relative to the root
    for name in names:
        if WorkName.parse(name) is not None:
            paths.append(os.path.join(args.queue, WORK, name))
        elif WaitingName.parse(name) is not None:
            paths.append(os.path.join(args.queue, name))
        else:
            raise ddmq.InvalidNameError(f"{name!r} is not the name of a message file "
                                        "(PRIORITY.NUMBER.ddmqID or EXPIRY.PRIORITY.NUMBER.ddmqID)")
    b = open_queues(args, [args.queue])
    waiting, at_work = b.get_message_list(args.queue)
    present = set(waiting) | set(at_work)
    missing = [n for n in names if n not in present]
    if missing:
        raise ddmq.MessageNotFoundError(f"no message {', '.join(map(repr, missing))} "
                                        f"in queue {args.queue}; nothing deleted")
    for path in paths:
        b.delete_message(path)
        say(args, f"Deleted {os.path.join(b.root, path)}")
    if len(paths) > 1:
        say(args, f"Deleted {len(paths)} messages")


ACK = Command("ack", "Positively acknowledge a message", f"[-hCrvds] {_FILES_USAGE}", cmd_ack,
              _files_arguments("to acknowledge (as consume printed them)", "ack", requeue=True))
NACK = Command("nack", "Negatively acknowledge a message (possibly requeue)", f"[-hCrvds] {_FILES_USAGE}",
               cmd_nack, _files_arguments("to negatively acknowledge (as consume printed them)", "nack",
                                          requeue=True))
DEL_MSG = Command("del_msg", "Delete the specified message", f"[-hCvds] {_FILES_USAGE}", cmd_del_msg,
                  _files_arguments("to delete, waiting or at work",
                                   "delete (accepted for compatibility: deleting never cleans)",
                                   requeue=False))
