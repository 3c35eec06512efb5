"""Entry points of the child processes of ``test_concurrency.py``, one per role.

Each runs in a process of its own (multiprocessing, 'spawn' context), opens
its own broker, and writes what it did to its own log file, one line per
event, each line written with a single ``os.write`` (so a process killed with
SIGKILL leaves at most one partial last line, which :func:`read_log`
ignores). Line formats::

    P ID            publisher: publish() of ID returned
    D ID COUNTER    consumer: got ID (its requeue_counter), logged BEFORE ack/nack
    A ID COUNTER    consumer: ack succeeded
    N ID COUNTER    consumer: nack succeeded
    L ID COUNTER    consumer: ack/nack/extend raised LeaseLostError
    E ID            extender: extend_lease succeeded
    C N             cleaner: finished its Nth clean()
    R ID INODE      relay: got ID, in the file with that inode (logged before ack)
    F ID            relay: published the follow-up ID

An exception in a child is written to ``LOG.err`` and re-raised (exit code 1).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
import traceback
from typing import Callable, Sequence

import ddmq
from ddmq import reuse

if os.environ.get("DDMQ_TEST_NO_REUSE"):  # as a network filesystem: no spares, no trusted watch
    reuse.REUSE_FILESYSTEMS = frozenset()


# --- logging ---------------------------------------------------------------------

def _open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _log(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())


def read_log(path: str) -> list[list[str]]:
    """The complete lines of a log, split into fields (a torn last line is dropped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # whatever follows the last newline is torn
    return [line.split() for line in lines if line]


def _guarded(log_path: str, body: Callable[[], None]) -> None:
    try:
        body()
    except BaseException:
        with open(log_path + ".err", "w", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
        raise


def _touch(path: str) -> None:
    with open(path, "w", encoding="utf-8"):
        pass


def _all_exist(paths: Sequence[str]) -> bool:
    return all(os.path.exists(p) for p in paths)


# --- roles -----------------------------------------------------------------------

def publisher(root: str, queue: str, name: str, count: int, log_path: str,
              start=None, stop_path: str | None = None, done_path: str | None = None,
              publish_kwargs: dict | None = None, pace_s: float = 0.0) -> None:
    """Publish ``NAME-0`` .. ``NAME-{count-1}`` (or until ``stop_path`` exists),
    logging each id after publish() returned, pausing up to ``pace_s`` seconds
    between two; then create ``done_path``."""
    def body() -> None:
        rng = random.Random()
        b = ddmq.broker(root)
        b.clock.now()  # probe the clock before the start line, not during the race
        fd = _open_log(log_path)
        if start is not None:
            start.wait()
        for seq in range(count):
            if stop_path is not None and os.path.exists(stop_path):
                break
            msg_id = f"{name}-{seq}"
            b.publish(queue, msg_id, **(publish_kwargs or {}))
            _log(fd, f"P {msg_id}")
            if pace_s:
                time.sleep(rng.uniform(0, pace_s))
        os.close(fd)
        if done_path is not None:
            _touch(done_path)
    _guarded(log_path, body)


def consumer(root: str, queue: str, log_path: str, until: Sequence[str] = (), start=None,
             action: str = "ack", wait: float = 0.5, work_s: float = 0.0) -> None:
    """Consume with ``consume(queue, wait=wait)``; log each message, "work" on
    it for up to ``work_s`` seconds, then ack (or nack) it. With action
    "receive", consume with ``auto_ack=True`` and log each message as
    delivered and acked at once. Stops at the first empty consume() that
    began after every path in ``until`` existed (so nothing published before
    then is missed)."""
    def body() -> None:
        rng = random.Random()
        b = ddmq.broker(root)
        b.clock.now()
        fd = _open_log(log_path)
        for msg in _consume_until_done(b, queue, until, start, wait, action == "receive"):
            tag = f"{msg.message} {msg.requeue_counter}"
            _log(fd, f"D {tag}")
            if work_s:
                time.sleep(rng.uniform(0, work_s))
            try:
                if action == "receive":
                    assert msg.filename is None, msg.filename
                    _log(fd, f"A {tag}")
                elif action == "ack":
                    b.ack(msg)
                    _log(fd, f"A {tag}")
                else:
                    b.nack(msg)
                    _log(fd, f"N {tag}")
            except ddmq.LeaseLostError:
                _log(fd, f"L {tag}")
        os.close(fd)
    _guarded(log_path, body)


def batch_consumer(root: str, queue: str, log_path: str, start, n: int) -> None:
    """Once ``start`` is set, ``consume(queue, n=n)`` until a call comes back
    empty; log each batch as ``B ID,ID,...`` in the order consume returned
    it, then ack it."""
    def body() -> None:
        b = ddmq.broker(root)
        fd = _open_log(log_path)
        start.wait()
        while True:
            got = b.consume(queue, n=n)
            if not got:
                break
            _log(fd, "B " + ",".join(msg.message for msg in got))
            b.ack(queue, [msg.filename for msg in got])
        os.close(fd)
    _guarded(log_path, body)


def _consume_until_done(b: ddmq.Broker, queue: str, until: Sequence[str], start, wait: float,
                        auto_ack: bool = False):
    """Yield the messages of ``queue`` (after ``start`` is set) up to the first
    empty consume() that began after every path in ``until`` existed (so
    nothing published before then is missed)."""
    if start is not None:
        start.wait()
    done_seen = False
    while True:
        msg = b.consume(queue, wait=wait, auto_ack=auto_ack)
        if msg is None:
            if done_seen:
                return
            done_seen = _all_exist(until)
            continue
        yield msg


def relay(root: str, queue: str, log_path: str, until: Sequence[str] = (), start=None) -> None:
    """Consume, ack, and for a message ``CHAIN.HOPS`` with HOPS > 0 publish its
    follow-up ``CHAIN.HOPS-1`` to the same queue: where files are reused, that
    publish rewrites a file some process acked. Stops like :func:`consumer`."""
    def body() -> None:
        b = ddmq.broker(root)
        b.clock.now()
        fd = _open_log(log_path)
        for msg in _consume_until_done(b, queue, until, start, 0.5):
            inode = os.stat(os.path.join(root, queue, "work", msg.filename)).st_ino
            _log(fd, f"R {msg.message} {inode}")
            b.ack(msg)
            chain, hops = msg.message.rsplit(".", 1)
            if int(hops) > 0:
                follow_up = f"{chain}.{int(hops) - 1}"
                b.publish(queue, follow_up)
                _log(fd, f"F {follow_up}")
        b.close()
        os.close(fd)
    _guarded(log_path, body)


class _CountRequeues(logging.Handler):
    """Counts the expired leases this process requeued (from ddmq's own log)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("lease of") and record.args and record.args[-1] == "requeued":
            self.count += 1


def housekeeper(root: str, queue: str, log_path: str, barrier, rounds: int) -> None:
    """``rounds`` times: wait at the barrier with the others, all call
    ``clean(queue, force=True)`` at once, wait at the barrier again. Logs
    ``C ROUND N``: N = how many expired messages this process requeued."""
    def body() -> None:
        counter = _CountRequeues()
        logger = logging.getLogger("ddmq")  # housekeeping logs below it
        logger.addHandler(counter)
        logger.setLevel(logging.INFO)
        b = ddmq.broker(root)
        b.clock.now()
        fd = _open_log(log_path)
        for round_ in range(rounds):
            barrier.wait(timeout=120)
            before = counter.count
            assert b.clean(queue, force=True) is True
            _log(fd, f"C {round_} {counter.count - before}")
            barrier.wait(timeout=120)
        os.close(fd)
    _guarded(log_path, body)


def dead_letterer(root: str, queue: str, log_path: str, barrier, rounds: int) -> None:
    """``rounds`` times: wait at the barrier, consume one message, wait at
    the barrier again (everyone holds one), nack it (its ``requeue_limit``
    of 0 dead-letters it) at once with the others, wait at the barrier a
    last time. Logs ``N ID ROUND`` after each nack returned."""
    def body() -> None:
        b = ddmq.broker(root)
        fd = _open_log(log_path)
        for round_ in range(rounds):
            barrier.wait(timeout=120)
            msg = b.consume(queue, wait=10)
            assert msg is not None
            barrier.wait(timeout=120)
            b.nack(msg)
            _log(fd, f"N {msg.message} {round_}")
            barrier.wait(timeout=120)
        os.close(fd)
    _guarded(log_path, body)


def cleaner(root: str, queue: str, log_path: str, stop_path: str) -> None:
    """Run ``clean(queue, force=True)`` back to back until ``stop_path`` exists."""
    def body() -> None:
        b = ddmq.broker(root)
        fd = _open_log(log_path)
        runs = 0
        while not os.path.exists(stop_path):
            b.clean(queue, force=True)
            runs += 1
        _log(fd, f"C {runs}")
        os.close(fd)
    _guarded(log_path, body)


def extender(root: str, queue: str, log_path: str, count: int, seconds: float, seed: int,
             lease: int = 1) -> None:
    """Hold ``count`` messages on ``lease``-second leases and keep extending
    them for ``seconds``, then ack what is still held. Half the messages are
    extended well before their lease ends; the other half right at the moment
    it ends (within +-10 ms), racing the housekeepers that requeue it then.
    Logs E per successful extension, and per message A (every extension and
    the ack succeeded) or L (lease lost, at an extension or at the ack)."""
    def body() -> None:
        rng = random.Random(seed)
        b = ddmq.broker(root)
        fd = _open_log(log_path)
        held = {}
        while len(held) < count:
            got = b.consume(queue, n=count - len(held), wait=10)
            assert got, "the queue ran dry before the extender had its messages"
            for msg in got:
                held[msg.message] = msg
        sloppy = set(rng.sample(sorted(held), count // 2))

        def next_due(msg) -> float:
            if msg.message in sloppy:
                return msg.expiry + rng.uniform(-0.01, 0.01)
            return msg.expiry - rng.uniform(0.3, 0.7)

        due = {}
        for msg_id, msg in held.items():
            b.extend_lease(msg, lease)  # from the default lease down to a short one
            due[msg_id] = next_due(msg)
        end = time.monotonic() + seconds
        while held and time.monotonic() < end:
            now = b.clock.now()
            for msg_id in [m for m, t in due.items() if t <= now]:
                msg = held[msg_id]
                try:
                    b.extend_lease(msg, lease)
                    _log(fd, f"E {msg_id}")
                    due[msg_id] = next_due(msg)
                except ddmq.LeaseLostError:
                    _log(fd, f"L {msg_id} {msg.requeue_counter}")
                    del held[msg_id], due[msg_id]
            time.sleep(0.001)
        for msg_id, msg in held.items():
            try:
                b.ack(msg)
                _log(fd, f"A {msg_id} {msg.requeue_counter}")
            except ddmq.LeaseLostError:
                _log(fd, f"L {msg_id} {msg.requeue_counter}")
        os.close(fd)
    _guarded(log_path, body)


def die_at(root: str, queue: str, action: str, op: str, target: str, when: str,
           log_path: str) -> None:
    """Do one ``action`` on message ``k0`` (publish, publish-spare: publish
    by rewriting a spare, consume, nack, ack or clean) and SIGKILL this very
    process just ``before`` or ``after`` its first ``os.rename`` (``op``
    "rename", by destination) or ``os.unlink`` ("unlink") of a file in
    ``target``: "queue" (a waiting message), "work" (a lease), "requeue" (the
    private name of a requeue in ``tmp/``) or "spare" (an acked file kept for
    reuse in ``tmp/``). An ack that unlinks is one on a filesystem where
    files are not reused (as on NFS). Exits with an error if that step is
    never reached."""
    def body() -> None:
        if action == "ack" and op == "unlink":
            ddmq.reuse.REUSE_FILESYSTEMS = frozenset()
        b = ddmq.broker(root)
        b.clock.now()
        folder = os.path.join(b.root, queue)

        def matches(path: str) -> bool:
            parent, name = os.path.split(os.fspath(path))
            if target == "queue":
                return parent == folder and name.count(".") == 2
            if target == "work":
                return parent == os.path.join(folder, "work")
            if target == "spare":
                return name.startswith("spare.")
            return name.startswith("requeue.")

        real = getattr(os, op)

        def hooked(*args, **kwargs):
            if matches(args[1] if op == "rename" else args[0]):
                if when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                real(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        msg = b.consume(queue, clean=False) if action in ("nack", "ack") else None
        if action == "publish-spare":
            b.publish(queue, "warm-up", clean=False)
            b.ack(b.consume(queue, clean=False), clean=False)  # leaves a spare in tmp/
            assert [n for n in os.listdir(os.path.join(folder, "tmp")) if n.startswith("spare.")]
        setattr(os, op, hooked)
        if action in ("publish", "publish-spare"):
            b.publish(queue, "k0", clean=False)
        elif action == "consume":
            b.consume(queue, clean=False)
        elif action == "nack":
            b.nack(msg, clean=False)
        elif action == "ack":
            b.ack(msg, clean=False)
        else:
            b.clean(queue, force=True)
        raise AssertionError(f"{action} never did the {op} of a {target} file")
    _guarded(log_path, body)
