"""The ``ddmq`` command line: a thin layer over :class:`ddmq.Broker`.

Usage: ``ddmq <command> [<args>]``; ``ddmq <command> -h`` for each command.
The commands and options are those of the original ddmq 0.9.14, plus ``dead``::

    view      List queues and number of messages
    create    Create a queue
    delete    Delete a queue
    publish   Publish message to queue
    consume   Consume message from queue
    ack       Positively acknowledge a message
    nack      Negatively acknowledge a message (possibly requeue)
    del_msg   Delete the specified message
    purge     Purge all messages from queue
    clean     Clean out expired messages from queue
    dead      List (or requeue) the dead letters of a queue
    json      Run a command packaged as a JSON object

How a command runs: :func:`main` parses the arguments (``json`` turns its
object into the same arguments, as if typed), opens the root with
:func:`ddmq.broker`, checks every name it was given, and only then calls the
library, so bad input changes nothing on disk. The CLI does no filesystem
work of its own.

Output: the command's result goes to stdout (human lines like the
original's, or only the data for ``--format json|yaml``); diagnostics go to
stderr through :mod:`logging` (``-v`` info, ``-d`` debug, ``-s`` errors only).
Any error is one line ``ddmq: error: ...`` on stderr and a non-zero exit
status: 2 for wrong arguments, 1 when the command could not be done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import yaml

import ddmq
from ddmq.broker import check_queue_name
from ddmq.message import parse_waiting_name, parse_work_name

log = logging.getLogger("ddmq.cli")

#: Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

COMMANDS = {
    "view": "List queues and number of messages",
    "create": "Create a queue",
    "delete": "Delete a queue",
    "publish": "Publish message to queue",
    "consume": "Consume message from queue",
    "ack": "Positively acknowledge a message",
    "nack": "Negatively acknowledge a message (possibly requeue)",
    "del_msg": "Delete the specified message",
    "purge": "Purge all messages from queue",
    "clean": "Clean out expired messages from queue",
    "dead": "List (or requeue) the dead letters of a queue",
    "workers": "List live and lost executor workers (heartbeats)",
    "json": "Run a command packaged as a JSON object",
}

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
  ddmq json '{"command": "publish", "root": "/tmp/ddmq", "queue": "q", "message": "hi"}'

For more info about the commands, run: ddmq <command> -h
"""


class UsageError(Exception):
    """The command line is wrong: exit status 2, nothing done."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, reported by :func:`main`
    as one line (argparse would print the whole usage and exit)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split()[-1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see '{self.prog} -h')")


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
    convert.__name__ = f"integer >= {minimum}"
    return convert


_priority = _int_at_least(0)
_positive = _int_at_least(1)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or inf), not {text}")
    return value


#: Arguments that take a comma-separated list, which ``ddmq json`` also takes as a JSON list.
_LIST_KEYS = ("queue", "msg_files", "names")

#: The JSON type each argument type takes in ``ddmq json`` (default: a string).
_JSON_TYPES: dict[Any, tuple[type, ...]] = {_priority: (int,), _positive: (int,), _seconds: (int, float)}


# --- the parser ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``ddmq`` parser: one sub-parser per command, each with its handler
    in ``args.handler``."""
    parser = _Parser(
        prog="ddmq",
        usage="ddmq <command> [<args>]",
        description="Command-line interface to Dead Drop Messaging Queue (ddmq).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--version", action="version", version=f"ddmq version {ddmq.__version__}",
                        help="print version")
    commands = parser.add_subparsers(dest="command", metavar="<command>", title="commands",
                                     parser_class=_Parser)

    def command(name: str, usage: str, handler: Callable[[argparse.Namespace], int],
                f_help: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, prog=f"ddmq {name}", help=COMMANDS[name],
                                  description=COMMANDS[name] + ".",
                                  usage=f"ddmq {name} {usage}")
        sub.set_defaults(handler=handler)
        if f_help:
            sub.add_argument("-f", action="store_true", help=f_help)
        return sub

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-v", action="store_true", help="verbose mode (progress on stderr)")
        sub.add_argument("-d", action="store_true", help="debug mode")
        sub.add_argument("-s", action="store_true", help="silent mode (only data and errors)")

    def skip_cleaning(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("-C", "--skip_cleaning", "--skip-cleaning", dest="skip_cleaning",
                         action="store_true", help=f"{what} without cleaning the queue first")

    root_help = "the message queue's root folder"
    queues_help = "comma-separated names of queues"
    files_help = "comma-separated names of the messages' files"

    sub = command("view", "[-hfnvds] [--format <plain|json|yaml>] <root> [queue1,queue2,...,queueN]",
                  cmd_view, "create the root folder if needed")
    sub.add_argument("root", help=root_help)
    sub.add_argument("queue", nargs="?", help=f"{queues_help} to view (default: all)")
    sub.add_argument("-n", action="store_true", help="only print the names of queues (faster)")
    sub.add_argument("--format", nargs="?", const="plain", default="plain",
                     choices=("plain", "json", "yaml", "default"),
                     help="output format: plain table (default), json or yaml")
    common(sub)

    def queue_list_command(name: str, handler: Callable[[argparse.Namespace], int]) -> None:
        sub = command(name, "[-hfvds] <root> <queue1>[,<queue2>,...,<queueN>]", handler,
                      "create the root folder if needed")
        sub.add_argument("root", help=root_help)
        sub.add_argument("queue", help=f"{queues_help} to {name}")
        common(sub)

    queue_list_command("create", cmd_create)
    queue_list_command("delete", cmd_delete)

    sub = command("publish", '[options] <root> <queue> "<message>"', cmd_publish,
                  "create the root folder and queue if needed")
    sub.add_argument("root", help=root_help)
    sub.add_argument("queue", help="name of queue to publish to")
    sub.add_argument("message", help="message text within quotes")
    sub.add_argument("-p", "--priority", type=_priority,
                     help="priority of the message (lower number = higher priority; 0 is highest)")
    sub.add_argument("-t", "--timeout", type=_positive,
                     help="seconds a consumer may hold the message before it expires")
    sub.add_argument("-r", "--requeue", action="store_true",
                     help="requeue the message on nack or expiry (the default unless settings say otherwise)")
    sub.add_argument("-l", "--requeue_limit", type=_priority,
                     help="times the message may be requeued before it becomes a dead letter")
    sub.add_argument("--requeue_prio", type=_priority,
                     help="priority the message gets when requeued; implies -r")
    skip_cleaning(sub, "publish")
    common(sub)

    sub = command("consume", "[-hfnCvds] [-w SECONDS] [--format <plain|json|yaml>] <root> <queue>",
                  cmd_consume, "create the root folder and queue if needed")
    sub.add_argument("root", help=root_help)
    sub.add_argument("queue", help="name of queue to consume from")
    sub.add_argument("-n", nargs="?", const=1, default=1, type=_positive,
                     help="the number of messages that will be consumed (default 1)")
    sub.add_argument("-w", "--wait", type=_seconds, default=0.0, metavar="SECONDS",
                     help="wait up to SECONDS for a message to arrive (inf: for ever)")
    sub.add_argument("--format", nargs="?", const="json", default="json", choices=("plain", "json", "yaml"),
                     help="output format: json (default, one object per line), plain or yaml")
    skip_cleaning(sub, "consume")
    common(sub)

    for name, handler, what in (("ack", cmd_ack, "acknowledge"),
                                ("nack", cmd_nack, "negatively acknowledge")):
        sub = command(name, "[-hCrvds] <root> <queue> <message file1>[,<message file2>,..,<message fileN>]",
                      handler)
        sub.add_argument("root", help=root_help)
        sub.add_argument("queue", help="name of the queue the messages are in")
        sub.add_argument("msg_files", help=f"{files_help} to {what} (as consume printed them)")
        sub.add_argument("-r", "--requeue", action="store_true", help="force requeue of the messages")
        skip_cleaning(sub, name)
        common(sub)

    sub = command("del_msg", "[-hCvds] <root> <queue> <message file1>[,<message file2>,..,<message fileN>]",
                  cmd_del_msg)
    sub.add_argument("root", help=root_help)
    sub.add_argument("queue", help="name of the queue the messages are in")
    sub.add_argument("msg_files", help=f"{files_help} to delete, waiting or at work")
    skip_cleaning(sub, "delete (accepted for compatibility: deleting never cleans)")
    common(sub)

    queue_list_command("purge", cmd_purge)
    queue_list_command("clean", cmd_clean)

    sub = command("dead", "[-hrvds] [--format <plain|json|yaml>] <root> <queue> [name1,...,nameN]",
                  cmd_dead)
    sub.add_argument("root", help=root_help)
    sub.add_argument("queue", help="name of the queue")
    sub.add_argument("names", nargs="?", help="with -r: comma-separated names of the dead letters to requeue")
    sub.add_argument("-r", "--requeue", action="store_true",
                     help="put the dead letters back in the queue: all of them, or the named ones")
    sub.add_argument("--format", nargs="?", const="plain", default="plain", choices=("plain", "json", "yaml"),
                     help="output format: plain (default, one name per line), json or yaml")
    common(sub)

    sub = command("workers", "[-hvds] [--queue <name>] [--format <plain|json|yaml>] <root>", cmd_workers)
    sub.add_argument("root", help=root_help)
    sub.add_argument("--queue", help="only the workers of this task queue")
    sub.add_argument("--format", nargs="?", const="plain", default="plain", choices=("plain", "json", "yaml"),
                     help="output format: plain (default, a table), json or yaml")
    common(sub)

    sub = commands.add_parser("json", prog="ddmq json", help=COMMANDS["json"],
                              usage="ddmq json '<json object>'",
                              description="Run a command packaged as a JSON object: the key "
                              "\"command\" (or \"cmd\") names it, the other keys are its arguments "
                              "named like its long options, e.g. "
                              '\'{"command": "publish", "root": "/tmp/ddmq", "queue": "q", '
                              '"message": "hi", "priority": 1}\'.')
    sub.add_argument("payload", help="the JSON object, within single quotes")
    return parser


# --- json: a command as a JSON object ------------------------------------------------------

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
        wanted = _JSON_TYPES.get(action.type, (str,))
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


# --- helpers shared by the commands ------------------------------------------------------------

def _open(args: argparse.Namespace, queues: Sequence[str] = ()) -> ddmq.Broker:
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


_opened: list[ddmq.Broker] = []  # closed when the command ends (see Broker.close)


def _split(text: str) -> list[str]:
    """The items of a comma-separated list (each is checked by its user: an
    empty one is an invalid name)."""
    return text.split(",")


def _require_queues(b: ddmq.Broker, queues: Sequence[str], hint: str = "") -> None:
    """QueueNotFoundError naming every queue of ``queues`` that does not exist."""
    missing = [q for q in queues if not b.queue_exists(q)]
    if missing:
        names = ", ".join(repr(q) for q in missing)
        plural = "queues" if len(missing) > 1 else "queue"
        verb = "do" if len(missing) > 1 else "does"
        raise ddmq.QueueNotFoundError(f"{plural} {names} {verb} not exist in {b.root}{hint}")


def _say(args: argparse.Namespace, text: str, machine: bool = False) -> None:
    """Print a human line: to stdout, or to stderr when stdout carries data
    in a machine format; nothing with ``-s``."""
    if not args.s:
        print(text, file=sys.stderr if machine else sys.stdout)


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data)
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True).rstrip()


def _work_path(b: ddmq.Broker, queue: str, name: str) -> str:
    return os.path.join(b.root, queue, "work", name)


def _work_names(args: argparse.Namespace) -> list[str]:
    """The work file names given to ack/nack (a path is reduced to its name)."""
    names = [os.path.basename(item) for item in _split(args.msg_files)]
    for name in names:
        if parse_work_name(name) is None:
            raise ddmq.InvalidNameError(f"{name!r} is not the name of a consumed message "
                                        "(EXPIRY.PRIORITY.NUMBER.ddmqID, as consume printed it)")
    return names


def _check_leases(b: ddmq.Broker, queue: str, names: Sequence[str], action: str) -> None:
    """LeaseLostError before anything is done if a named work file is gone."""
    at_work = set(b.get_message_list(queue)[1])
    missing = [n for n in names if n not in at_work]
    if missing:
        raise ddmq.LeaseLostError(f"lease lost for {', '.join(missing)} in {queue}: it expired and was "
                                  f"requeued, or was acked already; nothing {action}", missing)


# --- the commands: one function each, returning the exit status ------------------------------------

def cmd_view(args: argparse.Namespace) -> int:
    """List queues with their numbers of waiting and at-work messages."""
    wanted = _split(args.queue) if args.queue is not None else []
    b = _open(args, wanted)
    if wanted:
        _require_queues(b, wanted)
        queues = sorted(set(wanted))
    else:
        queues = b.list_queues()
    log.info("viewing queue(s): %s", ", ".join(queues))
    fmt = "plain" if args.format in (None, "default") else args.format
    if args.n:
        if fmt == "plain":
            if queues:
                print("\n".join(queues))
        else:
            print(_dump(queues, fmt))
        return EXIT_OK
    counts = {}
    for queue in queues:
        waiting, at_work = b.get_message_list(queue)
        counts[queue] = [len(waiting), len(at_work)]
    if fmt != "plain":
        print(_dump(counts, fmt))
        return EXIT_OK
    # The original's plain table: a header row, then one row per queue.
    rows = [("*queue*", "*msg in queue*", "*msg at work*")]
    rows += [(queue, str(n_wait), str(n_work)) for queue, (n_wait, n_work) in counts.items()]
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    for row in rows:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")
    return EXIT_OK


def cmd_create(args: argparse.Namespace) -> int:
    """Create queues; existing ones are left as they are."""
    queues = _split(args.queue)
    b = _open(args, queues)
    log.info("creating queue(s): %s", ", ".join(queues))
    created = 0
    for queue in queues:
        if b.queue_exists(queue):
            _say(args, f"Already existing: {queue}")
            continue
        b.create_queue(queue)
        _say(args, f"Created new queue: {queue}")
        created += 1
    if created > 1:
        _say(args, f"Created {created} new queues")
    return EXIT_OK


def _each_queue(args: argparse.Namespace, verb: str, act: Callable[[ddmq.Broker, str], str]) -> int:
    """Run ``act(broker, queue)`` on every queue of a comma-separated list,
    all checked first; print what each did, and a total for several."""
    queues = _split(args.queue)
    b = _open(args, queues)
    _require_queues(b, queues)
    log.info("%s queue(s): %s", verb.lower(), ", ".join(queues))
    for queue in queues:
        _say(args, act(b, queue))
    if len(queues) > 1:
        _say(args, f"{verb} {len(queues)} queues")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete queues with everything in them."""
    def delete(b: ddmq.Broker, queue: str) -> str:
        b.delete_queue(queue)
        return f"Deleted queue: {queue}"
    return _each_queue(args, "Deleted", delete)


def cmd_purge(args: argparse.Namespace) -> int:
    """Remove every waiting and at-work message of queues (dead letters stay)."""
    def purge(b: ddmq.Broker, queue: str) -> str:
        n_wait, n_work = b.purge_queue(queue)
        return f"Purged queue: {queue}\t({n_wait} messages in queue, {n_work} messages in work)"
    return _each_queue(args, "Purged", purge)


def cmd_clean(args: argparse.Namespace) -> int:
    """Housekeeping now: requeue or dead-letter expired messages."""
    def clean(b: ddmq.Broker, queue: str) -> str:
        b.clean(queue, force=True)
        return f"Cleaned queue: {queue}"
    return _each_queue(args, "Cleaned", clean)


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish one message; with -f, create the root and queue first."""
    b = _open(args, [args.queue])
    if not b.queue_exists(args.queue):
        if not args.f:
            _require_queues(b, [args.queue], " (use -f to create it)")
        b.create_queue(args.queue)
        _say(args, f"Created new queue: {args.queue}")
    if args.skip_cleaning:
        _say(args, "Skipping queue cleaning.")
    requeue = True if args.requeue else None  # None: the queue's settings decide
    msg = b.publish(args.queue, msg_text=args.message, priority=args.priority, timeout=args.timeout,
                    requeue=requeue, requeue_prio=args.requeue_prio, requeue_limit=args.requeue_limit,
                    clean=not args.skip_cleaning)
    _say(args, f"Successfully published message:{os.linesep}{os.linesep}{msg!r}")
    return EXIT_OK


def cmd_consume(args: argparse.Namespace) -> int:
    """Claim messages and print them; ack or nack them by their ``filename``."""
    machine = args.format != "plain"
    b = _open(args, [args.queue])
    if not b.queue_exists(args.queue):
        if not args.f:
            _require_queues(b, [args.queue], " (use -f to create it)")
        b.create_queue(args.queue)
        _say(args, f"Created new queue: {args.queue}", machine)
    wait = None if math.isinf(args.wait) else args.wait
    got = b.consume(args.queue, n=args.n, wait=wait, clean=not args.skip_cleaning)
    messages = got if isinstance(got, list) else [got] if got is not None else []
    if not messages:
        _say(args, f"No more messages in {args.queue}", machine)
        return EXIT_OK
    if args.format == "yaml":
        print(yaml.safe_dump_all([m.to_dict() for m in messages], default_flow_style=False).rstrip())
        return EXIT_OK
    for msg in messages:
        print(json.dumps(msg.to_dict()) if args.format == "json" else repr(msg))
    return EXIT_OK


def cmd_ack(args: argparse.Namespace) -> int:
    """Acknowledge consumed messages (delete them; with -r, requeue them)."""
    names = _work_names(args)
    b = _open(args, [args.queue])
    _require_queues(b, [args.queue])
    _check_leases(b, args.queue, names, "acked")
    if args.requeue:  # the original's "force requeue": done, but put back in the queue
        done = b.nack(args.queue, names, requeue=True, clean=not args.skip_cleaning)
    else:
        done = b.ack(args.queue, names, clean=not args.skip_cleaning)
    for name in done:
        _say(args, f"acked {_work_path(b, args.queue, name)}" + (" (requeued)" if args.requeue else ""))
    return EXIT_OK


def cmd_nack(args: argparse.Namespace) -> int:
    """Negatively acknowledge consumed messages: requeue them (or delete them
    if the message or queue says not to requeue; -r forces the requeue)."""
    names = _work_names(args)
    b = _open(args, [args.queue])
    _require_queues(b, [args.queue])
    _check_leases(b, args.queue, names, "nacked")
    done = b.nack(args.queue, names, requeue=True if args.requeue else None, clean=not args.skip_cleaning)
    for name in done:
        _say(args, f"nacked {_work_path(b, args.queue, name)}")
    return EXIT_OK


def cmd_del_msg(args: argparse.Namespace) -> int:
    """Delete messages, waiting or at work, by their file names."""
    names = [os.path.basename(item) for item in _split(args.msg_files)]
    paths = []
    for name in names:
        if parse_work_name(name) is not None:
            paths.append(os.path.join(args.queue, "work", name))
        elif parse_waiting_name(name) is not None:
            paths.append(os.path.join(args.queue, name))
        else:
            raise ddmq.InvalidNameError(f"{name!r} is not the name of a message file "
                                        "(PRIORITY.NUMBER.ddmqID or EXPIRY.PRIORITY.NUMBER.ddmqID)")
    b = _open(args, [args.queue])
    _require_queues(b, [args.queue])
    waiting, at_work = b.get_message_list(args.queue)
    present = set(waiting) | set(at_work)
    missing = [n for n in names if n not in present]
    if missing:
        raise ddmq.MessageNotFoundError(f"no message {', '.join(map(repr, missing))} "
                                        f"in queue {args.queue}; nothing deleted")
    for path in paths:
        b.delete_message(path)
        _say(args, f"Deleted {os.path.join(b.root, path)}")
    if len(paths) > 1:
        _say(args, f"Deleted {len(paths)} messages")
    return EXIT_OK


def cmd_dead(args: argparse.Namespace) -> int:
    """List the dead letters of a queue, or put them back in the queue."""
    if args.names is not None and not args.requeue:
        raise UsageError("dead: names of dead letters are only taken with -r/--requeue (see 'ddmq dead -h')")
    b = _open(args, [args.queue])
    _require_queues(b, [args.queue])
    dead = b.list_dead(args.queue)
    machine = args.format != "plain"
    if not args.requeue:
        if machine:
            print(_dump(dead, args.format))
        elif dead:
            print("\n".join(dead))
        else:
            _say(args, f"No dead letters in {args.queue}")
        return EXIT_OK
    names = None
    if args.names is not None:
        names = [os.path.basename(item) for item in _split(args.names)]
        missing = [n for n in names if n not in dead]
        if missing:
            raise ddmq.MessageNotFoundError(f"no dead letter {', '.join(map(repr, missing))} "
                                            f"in queue {args.queue}; nothing requeued")
    done = b.requeue_dead(args.queue, names)
    if machine:
        print(_dump(done, args.format))
        return EXIT_OK
    for name in done:
        _say(args, f"Requeued dead letter: {name}")
    if not done:
        _say(args, f"No dead letters in {args.queue}")
    return EXIT_OK


def cmd_workers(args: argparse.Namespace) -> int:
    """List the workers of the root from their heartbeat records: live, then lost."""
    from ddmq.executor.heartbeat import list_workers

    if args.queue is not None:
        check_queue_name(args.queue)
    b = _open(args)
    live, lost = list_workers(b.root, args.queue)
    if args.format != "plain":
        print(_dump({"live": [r.to_dict() for r in live], "lost": [r.to_dict() for r in lost]},
                    args.format))
        return EXIT_OK
    rows = [("worker", "queue", "state", "task", "done", "last seen")]
    for record in live + lost:
        state = "LOST" if record.lost else record.state
        rows.append((f"{record.host}:{record.pid}", record.queue, state, record.task or "-",
                     str(record.tasks_done), f"{record.age:.0f} s ago"))
    if len(rows) == 1:
        _say(args, f"No workers have run on {b.root}")
        return EXIT_OK
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    _say(args, f"{len(live)} live, {len(lost)} lost")
    return EXIT_OK


# --- main ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Send ddmq's log to stderr for one command, at the level -v/-d/-s ask for."""
    logger = logging.getLogger("ddmq")
    level = (logging.DEBUG if args.d else logging.INFO if args.v
             else logging.ERROR if args.s else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ddmq: %(levelname)s: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _fail(message: str, status: int) -> int:
    # One line, whatever the arguments echoed in the message hold.
    message = " ".join(message.splitlines()) if message else "failed"
    print(f"ddmq: error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ddmq`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
            if args.command == "json":
                args = parser.parse_args(json_to_argv(parser, args.payload))
        except SystemExit as done:  # -h and -v print and exit
            return done.code if isinstance(done.code, int) else EXIT_OK
        if args.command is None:
            raise UsageError(f"a command is required: {', '.join(COMMANDS)} (see 'ddmq -h')")
        with _logging_to_stderr(args):
            return args.handler(args)
    except UsageError as err:
        return _fail(str(err), EXIT_USAGE)
    except (ddmq.InvalidNameError, ddmq.InvalidMessageError) as err:
        return _fail(str(err), EXIT_USAGE)
    except ValueError as err:  # e.g. a NUL character in a path given through 'json'
        return _fail(f"invalid argument: {err}", EXIT_USAGE)
    except ddmq.DdmqError as err:
        return _fail(str(err), EXIT_FAILED)
    except OSError as err:
        return _fail(str(err), EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    finally:
        while _opened:
            _opened.pop().close()


if __name__ == "__main__":
    raise SystemExit(main())
