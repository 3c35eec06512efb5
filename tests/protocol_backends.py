"""Backends and real child processes for the protocol contract suite (tests/test_protocol.py).

A :class:`Backend` is a fresh folder on one kind of filesystem, and the *views* other nodes
have of that same folder: on local disk and tmpfs there is one view; on the GlusterFS testbed
there is one per node mount (see tests/cluster/test_protocol_cluster.py), so that racing
processes can use different client mounts of one volume.

A :class:`Child` is a real Python process (this file run as a script) that executes calls of
:mod:`ddmq.protocol` sent to it as JSON lines on its stdin, and answers one JSON line each on
its stdout. What makes crash windows testable without mocks:

- ``pause_before=K``: the child runs the calls under a ``sys.setprofile`` hook that counts the
  filesystem system calls it makes (``os.rename``, ``os.open``, ``os.write`` ... see
  :data:`STEPS`); just before the K-th it says ``{"paused": K, "at": NAME}`` and blocks. The
  parent then kills it with a real SIGKILL: the process dies exactly between two steps of
  the protocol, as a crash would leave it. The code under test runs unchanged.
- ``gate=FIFO``: the child says ``{"ready": true}`` and waits until the parent writes into the
  FIFO (see :class:`Gate`), so that several children start one call at the same moment
  (the exactly-one-winner races).

Child commands (one JSON object per line)::

    {"calls": [[FUNCTION, ARGS, KWARGS], ...], "pause_before": K, "gate": FIFO}

FUNCTION is the name of a function of ddmq.protocol, or one of :data:`EXTRA_CALLS`. In ARGS and
KWARGS, ``{"bytes": HEX}`` and ``{"fill": [TAG, SIZE]}`` (see :func:`fill`) stand for bytes,
and the string ``"$N"`` for the result of the N-th call of the same command. The answer is
``{"results": [...], "steps": COUNT}``, or ``{"error": {"type", "errno", "message"}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))

#: The system calls a child counts as the steps of a transition (see ``pause_before``).
STEPS = ("open", "write", "pwrite", "ftruncate", "fsync", "close", "rename", "replace", "link",
         "unlink", "mkdir", "rmdir")

#: Seconds to wait for any child's answer: generous, the machines are shared and slow.
ANSWER_TIMEOUT = 120.0


def fill(tag: str, size: int) -> bytes:
    """``size`` bytes that say which writer made them (``tag``) throughout: any mix of two
    writers' data, or a cut-off copy, differs from every writer's whole data."""
    head = f"<{tag}:{size}>".encode()
    body = (tag.encode() + b"|") * (size // (len(tag) + 1) + 1)
    return (head + body)[:size - 1] + b"$"


class Backend:
    """A fresh folder on one kind of filesystem (``views[0]``) and how other nodes see it."""

    def __init__(self, name: str, views: list[str]):
        self.name = name
        self.views = list(views)

    @property
    def base(self) -> str:
        return self.views[0]

    def view(self, index: int, path: str) -> str:
        """``path`` (under :attr:`base`) as seen through view number ``index`` (modulo)."""
        rel = os.path.relpath(path, self.base)
        return os.path.normpath(os.path.join(self.views[index % len(self.views)], rel))

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.views!r})"


def filesystem_type(path: str) -> str | None:
    from ddmq.reuse import filesystem_type as fs_type
    return fs_type(path)


@contextlib.contextmanager
def disk_backend(tmp_path: str) -> Iterator[Backend]:
    """A folder on local disk: in pytest's ``tmp_path`` if that is not in memory, else in
    /var/tmp."""
    base = os.path.join(str(tmp_path), "disk")
    cleanup = None
    if filesystem_type(str(tmp_path)) in ("tmpfs", "ramfs", None):
        cleanup = base = tempfile.mkdtemp(prefix="ddmq-protocol-", dir="/var/tmp")
    else:
        os.mkdir(base)
    try:
        yield Backend("disk", [base])
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)


@contextlib.contextmanager
def tmpfs_backend() -> Iterator[Backend]:
    """A folder under /dev/shm (a tmpfs), removed afterwards; skips where there is none."""
    import pytest
    if not os.path.isdir("/dev/shm") or filesystem_type("/dev/shm") != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm on this machine")
    base = tempfile.mkdtemp(prefix="ddmq-protocol-", dir="/dev/shm")
    try:
        yield Backend("tmpfs", [base])
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the parent's side ------------------------------------------------------------------------

class ChildError(AssertionError):
    """A child died or did not answer in time."""


class Child:
    """One real child process running :func:`child_main`."""

    def __init__(self, env: dict[str, str] | None = None):
        import ddmq  # the children run the ddmq this process tests
        repo = os.path.dirname(os.path.dirname(os.path.abspath(ddmq.__file__)))
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, calls: list[list[Any]], pause_before: int | dict[str, Any] | None = None,
             gate: str | None = None) -> None:
        command = {"calls": calls, "pause_before": pause_before, "gate": gate}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")

    def answer(self, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        """The child's next answer line; ChildError if it dies or says nothing in time."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"child {self.pid} gave no answer within {timeout} s")
            readable, _, _ = select.select([fd], [], [], min(left, 1.0))
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise ChildError(f"child {self.pid} died (exit {self.proc.wait(30)}) "
                                     f"before answering")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def run(self, calls: list[list[Any]],
            pause_before: int | dict[str, Any] | None = None) -> dict[str, Any]:
        self.send(calls, pause_before)
        return self.answer()

    def kill(self) -> int:
        """SIGKILL the child and reap it: its exit status (-9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(60)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def children(count: int) -> Iterator[list[Child]]:
    """``count`` child processes, killed at the end whatever happened."""
    started: list[Child] = []
    try:
        for _ in range(count):
            started.append(Child())
        yield started
    finally:
        for child in started:
            child.kill()
            child.close()


def crash_at(calls: list[list[Any]], step: int | dict[str, Any] | None) -> dict[str, Any]:
    """Run ``calls`` in a new child that stops before its ``step``-th filesystem call (or
    before the ``nth`` call of ``{"call": NAME, "nth": N}``; or where the calls include
    ``stop_here``), then SIGKILL it there. Returns its answer: ``{"paused": STEP, "at": NAME}``,
    or the normal answer if the calls finished before that (the child is killed anyway)."""
    child = Child()
    try:
        answer = child.run(calls, pause_before=step)
        status = child.kill()
        if "paused" in answer:
            assert status == -signal.SIGKILL, f"child exit status {status}, not killed"
        return answer
    finally:
        child.kill()
        child.close()


class Gate:
    """Releases several waiting children at one moment: each holds the read end of a FIFO
    (opened without blocking) and waits until it is readable; one write makes it readable for
    all of them at once."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, f"gate-{uuid.uuid4().hex[:8]}")
        os.mkfifo(self.path)

    def open(self, kids: list[Child]) -> None:
        for kid in kids:
            ready = kid.answer()
            assert ready == {"ready": True}, ready
        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"go")
        finally:
            os.close(fd)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def race(kids: list[Child], calls_of: list[list[list[Any]]], gate_folder: str) -> list[dict]:
    """Let each child run its calls (``calls_of[i]`` for ``kids[i]``) at one moment; their
    answers, in the same order."""
    gate = Gate(gate_folder)
    try:
        for kid, calls in zip(kids, calls_of):
            kid.send(calls, gate=gate.path)
        gate.open(kids)
        return [kid.answer() for kid in kids]
    finally:
        gate.remove()


# --- the child's side -------------------------------------------------------------------------

def _atomic_exclusive_report(path: str, data: bytes) -> dict[str, Any]:
    """atomic_file(exclusive=True) writing ``data``; whether this writer's file is the one
    now at ``path`` (its temporary file's inode became ``path``'s by the hard link)."""
    from ddmq import protocol
    with protocol.atomic_file(path, exclusive=True) as fd:
        inode = os.fstat(fd).st_ino
        protocol.write_all(fd, data)
    return {"won": os.stat(path).st_ino == inode}


def _decode(value: Any, results: list[Any]) -> Any:
    if isinstance(value, str) and value.startswith("$") and value[1:].isdigit():
        return results[int(value[1:])]
    if isinstance(value, dict):
        if set(value) == {"bytes"}:
            return bytes.fromhex(value["bytes"])
        if set(value) == {"fill"}:
            return fill(*value["fill"])
        return {k: _decode(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, results) for v in value]
    return value


def _say(message: dict[str, Any]) -> None:
    data = json.dumps(message).encode() + b"\n"
    while data:
        data = data[os.write(1, data):]


def _stop_here() -> None:
    """Say so and block until killed: the point where a test's child "crashes"."""
    _stop({"paused": "stop_here", "at": "stop_here"})


def _stop(message: dict[str, Any]) -> None:
    sys.setprofile(None)
    _say(message)
    while True:  # until the parent's SIGKILL
        signal.pause()


def _pause_hook(pause_before: int | dict[str, Any], counter: list[int]):
    """A profile hook that counts the calls of :data:`STEPS` and stops the process before the
    ``pause_before``-th of them, or before the ``nth`` call of ``{"call": NAME, "nth": N}``."""
    watched = {getattr(os, name): name for name in STEPS}
    by_name: dict[str, int] = {}

    def hook(frame, event, arg):  # noqa: ARG001 - sys.setprofile's signature
        if event != "c_call":
            return
        name = watched.get(arg) if isinstance(arg, type(os.rename)) else None
        if name is None:
            return
        counter[0] += 1
        by_name[name] = by_name.get(name, 0) + 1
        if isinstance(pause_before, dict):
            if name == pause_before["call"] and by_name[name] == pause_before.get("nth", 1):
                _stop({"paused": counter[0], "at": name})
        elif counter[0] == pause_before:
            _stop({"paused": counter[0], "at": name})
    return hook


EXTRA_CALLS = {"atomic_exclusive_report": _atomic_exclusive_report, "stop_here": _stop_here}


def child_main() -> None:
    from ddmq import protocol
    for line in sys.stdin:
        command = json.loads(line)
        gate = command.get("gate")
        if gate:
            fd = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)
            _say({"ready": True})
            select.select([fd], [], [])
            os.close(fd)
        pause_before = command.get("pause_before")
        counter = [0]
        results: list[Any] = []
        try:
            if pause_before is not None:
                sys.setprofile(_pause_hook(pause_before, counter))
            try:
                for name, args, kwargs in command["calls"]:
                    function = EXTRA_CALLS.get(name) or getattr(protocol, name)
                    results.append(function(*_decode(args, results), **_decode(kwargs, results)))
            finally:
                sys.setprofile(None)
        except Exception as err:  # noqa: BLE001 - reported to the parent
            _say({"error": {"type": type(err).__name__, "errno": getattr(err, "errno", None),
                            "message": str(err)}})
            continue
        _say({"results": [{"bytes": r.hex()} if isinstance(r, bytes) else r for r in results],
              "steps": counter[0]})


if __name__ == "__main__":
    child_main()
