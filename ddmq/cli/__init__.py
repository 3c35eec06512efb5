"""The ``ddmq`` command line: a thin layer over :class:`ddmq.Broker`.

Usage: ``ddmq <command> [<args>]``; ``ddmq <command> -h`` for each command.
The commands and options are those of the original ddmq 0.9.14, plus
``dead``, ``workers``, ``runs``, ``slurm`` and ``status``::

    view      List queues and number of messages                  (ddmq.cli.queues)
    create    Create a queue                                      (ddmq.cli.queues)
    delete    Delete a queue                                      (ddmq.cli.queues)
    publish   Publish message to queue                            (ddmq.cli.messages)
    consume   Consume message from queue                          (ddmq.cli.messages)
    ack       Positively acknowledge a message                    (ddmq.cli.messages)
    nack      Negatively acknowledge a message (possibly requeue) (ddmq.cli.messages)
    del_msg   Delete the specified message                        (ddmq.cli.messages)
    purge     Purge all messages from queue                       (ddmq.cli.queues)
    clean     Clean out expired messages from queue               (ddmq.cli.queues)
    dead      List (or requeue) the dead letters of a queue       (ddmq.cli.dead)
    workers   List live and lost executor workers (heartbeats)    (ddmq.cli.workers)
    runs      List (show, remove) the named runs of the executor  (ddmq.cli.runs)
    slurm     Submit, list or cancel worker jobs on Slurm         (ddmq.cli.slurm)
    status    Queues, workers and latest failures, from the files (ddmq.cli.status)
    json      Run a command packaged as a JSON object             (ddmq.cli.parser)

How a command runs: :func:`main` parses the arguments with the parser of
:mod:`ddmq.cli.parser` (``json`` turns its object into the same arguments,
as if typed), sends the library's log to stderr at the level the command
asks for, and calls the command's handler. The handler checks every name it
was given, opens the root and only then calls the library
(:mod:`ddmq.cli.common`), so bad input changes nothing on disk. The CLI
does no filesystem work of its own, and uses only the library's public API
(:mod:`ddmq`, :mod:`ddmq.layout`, :mod:`ddmq.executor`)::

    main ──> parser ──> options                    the parser, from each command's declaration
      └────> queues, messages, dead, workers,     the handlers
             runs, slurm, status
                 └──> common ──> ddmq.Broker       check, open, require; print

Output: the command's result goes to stdout (human lines like the
original's, or only the data for ``--format json|yaml``); diagnostics go to
stderr through :mod:`logging` (``-v`` info, ``-d`` debug, ``-s`` errors only).
Any error is one line ``ddmq: error: ...`` on stderr and a non-zero exit
status: 2 for wrong arguments, 1 when the command could not be done.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Iterator, Sequence

import ddmq

from .common import close_opened
from .options import UsageError
from .parser import COMMANDS, build_parser, json_to_argv

__all__ = ["main", "build_parser", "json_to_argv", "COMMANDS", "UsageError",
           "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

#: Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@contextlib.contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Send ddmq's log to stderr for one command, at the level -v/-d/-s ask
    for; the library never sets a level, the application does."""
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
            args.handler(args)
        return EXIT_OK
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
        close_opened()
