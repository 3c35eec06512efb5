"""The executor's local workers: the ``python -m ddmq.worker`` processes it starts, watches, replaces and stops.

Each local worker is ``python -m ddmq.worker ROOT --queue QUEUE --parent PID``
in its own session (a Ctrl-C in the terminal reaches only the caller); it
stops by itself if the caller dies. Its environment is the caller's, with
the caller's ``sys.path`` in ``PYTHONPATH`` (see :func:`worker_env`), so that
it can import what the tasks import.

A worker is *ready* once it has written its heartbeat record
(:mod:`ddmq.executor.heartbeat`). The collector's housekeeping calls
:meth:`LocalPool.mind`, which reaps the workers that died (``waitpid``),
tells :mod:`ddmq.executor.deaths` how each ended, so that the tasks it held
are requeued at once, and replaces it; workers that die before they were
ever ready :data:`MAX_START_FAILURES` times in a row break the executor
(:class:`~ddmq.executor.errors.BrokenDDMQExecutor`).
"""

from __future__ import annotations

import logging
import os
import signal
import site
import subprocess
import sys
import sysconfig
import time
from typing import Callable

from ..backoff import wait_until
from ..layout import HOST
from . import heartbeat
from .errors import BrokenDDMQExecutor

log = logging.getLogger(__name__)

#: Local workers that die before they ever started, in a row, that break the executor.
MAX_START_FAILURES = 3
#: Seconds local workers get to exit after SIGTERM at shutdown, before SIGKILL.
WORKER_STOP_TIMEOUT = 35.0

#: The folder that holds the ddmq package: local workers must import it from there.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LocalWorker:
    """A worker process of the pool."""

    __slots__ = ("proc", "ready", "reported")

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.ready = False      # it wrote its heartbeat record
        self.reported = False   # its exit was logged


class LocalPool:
    """The local workers of one executor (none for ``max_workers=0``).

    Used by the executor's thread (:meth:`start`, :meth:`wait_ready`) and
    then by its collector thread (:meth:`mind`, :meth:`stop`)."""

    def __init__(self, root: str, queue: str, worker_args: list[str]):
        self.root = root
        self.queue = queue
        self.worker_args = worker_args
        self.workers: list[LocalWorker] = []
        self._start_failures = 0
        self._stopping = False
        #: Called by :meth:`mind` with (pid, exit status) of each worker that
        #: exited with a status other than 0 (the executor's DeathWatch.local_exit).
        self.on_exit: Callable[[int, int], None] | None = None

    def start(self, count: int) -> None:
        """Start ``count`` workers. Raises OSError if one cannot be started."""
        for _ in range(count):
            self.workers.append(LocalWorker(self._spawn()))

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "ddmq.worker", self.root, "--queue", self.queue,
                   "--parent", str(os.getpid()), *self.worker_args]
        return subprocess.Popen(command, env=worker_env(), stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def _seen_ready(self, worker: LocalWorker) -> bool:
        """True if ``worker`` is ready (looks for its heartbeat record until it is)."""
        if not worker.ready and os.path.exists(heartbeat.record_path(self.root, HOST, worker.proc.pid)):
            worker.ready = True
        return worker.ready

    def wait_ready(self, timeout: float, broken: Callable[[], str | None]) -> None:
        """Wait until every worker is ready. Raises BrokenDDMQExecutor if one
        exits first, if ``broken()`` gives a reason, or when ``timeout`` passes."""
        def attempt() -> bool:
            reason = broken()
            if reason:
                raise BrokenDDMQExecutor(reason)
            ready = True
            for worker in self.workers:
                if self._seen_ready(worker):
                    continue
                if worker.proc.poll() is not None:
                    raise BrokenDDMQExecutor(f"a local worker (pid {worker.proc.pid}) "
                                             f"{exit_text(worker.proc.returncode)} while starting; "
                                             "see its messages above")
                ready = False
            return ready

        if not wait_until(attempt, timeout, first=0.005, most=0.1):
            raise BrokenDDMQExecutor(f"local workers were not ready after {timeout} s")

    def mind(self, busy: bool) -> None:
        """Replace workers that died (one that chose to exit, status 0, only
        when ``busy``: there are tasks). Raises BrokenDDMQExecutor after
        repeated start failures."""
        if self._stopping:
            return
        for slot, worker in enumerate(self.workers):
            code = worker.proc.poll()
            if code is None:
                if not worker.ready and self._seen_ready(worker):
                    self._start_failures = 0
                continue
            if not worker.reported:
                worker.reported = True
                level = logging.INFO if code == 0 else logging.WARNING
                log.log(level, "local worker pid %d %s", worker.proc.pid, exit_text(code))
                if not self._seen_ready(worker):  # a killed worker's record is still there
                    self._start_failures += 1
                if code != 0 and self.on_exit is not None:
                    self.on_exit(worker.proc.pid, code)
            if self._start_failures >= MAX_START_FAILURES:
                raise BrokenDDMQExecutor(f"local workers keep dying before they start (last one "
                                         f"{exit_text(code)}); see their messages above")
            if code != 0 or busy:
                try:
                    self.workers[slot] = LocalWorker(self._spawn())
                except OSError as err:  # e.g. no more processes: try again next round
                    log.warning("cannot start a local worker: %s", err)
                    return
                log.info("started local worker pid %d in place of pid %d",
                         self.workers[slot].proc.pid, worker.proc.pid)

    def stop(self, timeout: float = WORKER_STOP_TIMEOUT) -> None:
        """SIGTERM the workers, then SIGKILL those still there after ``timeout`` s."""
        self._stopping = True
        procs = [w.proc for w in self.workers if w.proc.poll() is None]
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("local worker pid %d did not stop: killing it", proc.pid)
                _signal(proc, signal.SIGKILL)
                proc.wait()

    def stop_now(self, timeout: float) -> None:
        """Stop the workers at once (the caller was interrupted): SIGINT and
        then :meth:`stop`'s SIGTERM are the two signals after which a worker
        gives its tasks back to the queue without a grace period, and exits."""
        self._stopping = True
        procs = [w.proc for w in self.workers if w.proc.poll() is None]
        for proc in procs:
            _signal(proc, signal.SIGINT)
        deadline = time.monotonic() + timeout
        # The second signal, again until it is heard: CPython can miss one that
        # comes just after the first, until the sleep of the running task ends.
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
            for proc in procs:
                if proc.poll() is None:
                    _signal(proc, signal.SIGTERM)
        self.stop(max(0.0, deadline - time.monotonic()))


def worker_env() -> dict[str, str]:
    """The environment of local workers: the caller's, with its ``sys.path``
    (minus the interpreter's own folders, which a worker has anyway) and
    ddmq's location in PYTHONPATH."""
    layout = sysconfig.get_paths()
    own = {os.path.realpath(p) for p in layout.values()}
    own.update(os.path.realpath(p) for p in site.getsitepackages())
    own.add(os.path.realpath(site.getusersitepackages()))
    libs = tuple({os.path.realpath(os.path.dirname(layout[key])) + os.sep
                  for key in ("stdlib", "platstdlib")})
    paths = [_PACKAGE_PARENT]
    for entry in sys.path:
        entry = os.path.abspath(entry or os.getcwd())
        real = os.path.realpath(entry)
        if real not in own and not real.startswith(libs):
            paths.append(entry)
    paths.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass


def exit_text(code: int | None) -> str:
    """How a process ended, for messages: "exited with status 2", "was killed by SIGKILL"."""
    if code is None:
        return "is running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
