"""Ctrl-C in the driver: the executor's work stops in a few seconds, and nothing is left behind.

A ``KeyboardInterrupt`` that leaves a ``with DDMQExecutor(...)`` block (from
``map``'s iterator, from ``result()``, from anywhere in the block), or that
ends the program while an executor has unresolved tasks, does not wait for
the running tasks as a plain ``shutdown(wait=True)`` would. Instead
(:func:`stop_on_interrupt`)::

    1. one line on stderr says so (visible without any logging set up)
    2. waiting tasks      -> their messages are deleted, their futures cancelled
    3. local workers      -> SIGINT + SIGTERM (the worker's "second signal"): each gives its
                             tasks back at once and exits; killed after LOCAL_STOP_SECONDS
       tasks given back   -> deleted from the task queue (one listing)
    4. tasks running elsewhere -> futures cancelled; the executor shuts down, deleting its
                             reply queue, spill folder and record; the workers that run them
                             see the reply queue gone within seconds, ack them and stop
                             their calls (ddmq.executor.reaper.OrphanTasks)

and the ``KeyboardInterrupt`` then goes on as usual. A second Ctrl-C while
this runs is not caught: the local workers (in their own session, so the
terminal's Ctrl-C never reaches them) notice that their parent is gone and
stop, dropping its tasks; the reply queue and spill folder it leaves are
those of a dead executor, removed by the next housekeeping (see
:mod:`ddmq.executor.reaper`).
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from concurrent.futures import Future
from typing import TYPE_CHECKING

from .withdraw import withdraw_all

if TYPE_CHECKING:
    from .executor import DDMQExecutor
    from .tasks import TaskRecord

__all__ = ["LOCAL_STOP_SECONDS", "stop_on_interrupt", "exit_after_interrupt"]

log = logging.getLogger(__name__)

#: Seconds the local workers get to give their tasks back and exit, before SIGKILL.
LOCAL_STOP_SECONDS = 5.0

#: The executors whose work was stopped (or is being stopped) after a Ctrl-C.
_interrupted: weakref.WeakSet[DDMQExecutor] = weakref.WeakSet()


def exit_after_interrupt(executor: DDMQExecutor) -> bool:
    """At interpreter exit, with ``executor`` not shut down: after an
    uncaught Ctrl-C, stop its work (:func:`stop_on_interrupt`) and return
    False, for the caller to shut it down; if Ctrl-C came again while that
    ran, True: the caller leaves at once, as the user asked (what is left is
    a dead executor's, see :mod:`ddmq.executor.reaper`)."""
    if executor in _interrupted:
        return True
    interrupted = (getattr(sys, "last_type", None) is KeyboardInterrupt
                   and not sys.flags.interactive and not hasattr(sys, "ps1"))  # not an old error
    if interrupted and len(executor._tasks):
        stop_on_interrupt(executor)
    return False


def stop_on_interrupt(executor: DDMQExecutor) -> None:
    """Stop the work of ``executor`` at once (see the module docstring); the
    caller then shuts it down. Errors are logged, never raised: the
    KeyboardInterrupt is what the user must see."""
    if executor in _interrupted:
        return
    _interrupted.add(executor)
    started = time.monotonic()
    with executor._submit_lock:
        executor._shutdown = True
    unresolved = len(executor._tasks)
    _say(f"ddmq: interrupted: stopping the {unresolved} unfinished task(s) of the executor on "
         f"{executor.root} and shutting it down (Ctrl-C again to leave at once)")
    withdrawn = _withdraw(executor, listing=False)
    try:
        executor._pool.stop_now(LOCAL_STOP_SECONDS)
    except OSError as err:
        log.warning("cannot stop the local workers: %s", err)
    withdrawn += _withdraw(executor, listing=True)
    elsewhere = executor._tasks.tasks()
    for task in elsewhere:  # their workers drop them once the reply queue is gone
        _cancel(executor, task)
    executor._abandon = True
    log.info("interrupted: %d task(s) withdrawn from queue %s, %d running elsewhere dropped "
             "(%.2f s)", withdrawn, executor.queue, len(elsewhere), time.monotonic() - started)


def _withdraw(executor: DDMQExecutor, listing: bool) -> int:
    """Withdraw the waiting tasks of the executor and cancel their futures
    (see :mod:`.withdraw`); the number withdrawn."""
    withdrawn = executor._publisher.take_pending() if not listing else []
    withdrawn += withdraw_all(executor._broker, executor.queue, executor._tasks, listing)
    for task in withdrawn:
        _cancel(executor, task)
    return len(withdrawn)


def _cancel(executor: DDMQExecutor, task: TaskRecord) -> None:
    if executor._tasks.forget(task):
        Future.cancel(task.future)  # not TaskFuture.cancel: its message is dealt with here


def _say(line: str) -> None:
    """One line on stderr, for the user at the terminal (and in the debug log)."""
    log.debug("%s", line)
    stream = sys.stderr
    if stream is not None:
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass
