"""Named runs: the outcomes of an executor's calls, kept in the root so that a restarted driver picks up where it stopped.

``DDMQExecutor(root, run="nightly")`` keeps every call's outcome (its value,
or the exception it raised) in ``ROOT/.runs/nightly/``. A driver started
again with the same run returns what is there without running it again
(:mod:`ddmq.executor.executor` decides; this module stores)::

    ROOT/.runs/NAME/driver.json        who drives the run now: host, pid, last beat
    ROOT/.runs/NAME/seg.TOKEN.ddmqrun  outcomes, many per file, signed
    ROOT/.runs/NAME/run.json           what the run is: its reply queue, when it started

**Few files.** Outcomes are buffered in memory and written as one segment
file per :meth:`Run.flush` (the collector flushes after a batch of replies,
at most every :data:`FLUSH_SECONDS`), each atomically (a temporary file
renamed in: a reader sees a whole segment or none); past
:data:`COMPACT_AFTER` segments the driver merges them into one. A run of
100,000 quick calls is a few dozen files, which spares a Lustre or NFS
metadata server. The collector flushes *before* it acks the replies whose
outcomes it holds, so a driver killed at any moment loses no outcome: what
was not flushed is still in the reply queue, which the next driver of the
run consumes (a run's reply queue is ``run-NAME``, not the driver's own).

**Signed.** A segment is unpickled when a run is loaded, so, like a task,
it carries an HMAC-SHA256 of the root's secret over the run's name and its
bytes, checked before anything is unpickled.

**One driver at a time.** ``driver.json`` is created exclusively (a hard
link: of two drivers started at once, one wins); a second driver of a live
run is refused with :class:`RunInUseError` naming the first (host, pid). A
driver that died leaves its record behind: on its host its pid is gone (or
is another process, by start time); elsewhere its beat, refreshed every
:data:`BEAT_SECONDS`, stops. Its record is then taken over by one rename,
which only one successor can win.

**The key of a call** (:func:`call_key`): the function's module and
qualified name plus a hash of its code (bytecode, constants and names,
recursively; not its line numbers), and a hash of the pickled arguments.
Editing the body of the function changes the key, so a fixed bug runs
again; moving the function down a file does not. Where pickling is not
stable (sets of strings across interpreters, objects with unordered
state), the caller passes its own key: it replaces the arguments' hash.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import pickle
import re
import shutil
import threading
import time
import types
from typing import Any, Callable, Iterator, NamedTuple

from .. import protocol
from ..errors import DdmqError
from ..layout import HOST, unique_token
from . import pickling

log = logging.getLogger(__name__)

RUNS_DIR = ".runs"
DRIVER_FILE = "driver.json"
RUN_FILE = "run.json"
SEGMENT_SUFFIX = ".ddmqrun"
_MAGIC = b"DDMQRUN1\n"
#: Seconds between two refreshes of the driver's record.
BEAT_SECONDS = 10.0
#: A driver on another host whose record is older than this is dead.
LOST_AFTER = 3 * BEAT_SECONDS
#: The collector writes buffered outcomes at most this often...
FLUSH_SECONDS = 1.0
#: ... or when this many are buffered.
FLUSH_COUNT = 20_000
#: Past this many segments, the driver merges them into one.
COMPACT_AFTER = 32
#: Longest run name (it becomes part of a queue name).
MAX_RUN_NAME = 100

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RunError(DdmqError):
    """A run cannot be used: a bad name, or a segment that is not what it says."""


class RunInUseError(RunError):
    """Another live driver drives this run (``host``, ``pid``)."""

    def __init__(self, message: str, host: str, pid: int):
        super().__init__(message)
        self.host, self.pid = host, pid


class Outcome(NamedTuple):
    """What one call of a run came to: ``ok`` and its value, or not and its exception."""

    ok: bool
    value: Any


class RunInfo(NamedTuple):
    """What ``ddmq runs`` shows of a run (waiting and running come from the task queue)."""

    name: str
    done: int
    failed: int
    size: int
    last_activity: float
    driver: dict[str, Any] | None
    reply_queue: str


def check_run_name(name: Any) -> str:
    """``name`` if it is a valid run name (letters, digits, ``_ . -``), else RunError."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_RUN_NAME:
        raise RunError(f"invalid run name {name!r}: use up to {MAX_RUN_NAME} letters, digits, "
                       "'_', '.' and '-', starting with a letter or digit")
    return name


def reply_queue_of(name: str) -> str:
    """The reply queue of run ``name`` (a valid queue name: dots become '_')."""
    return "run-" + check_run_name(name).replace(".", "_")


def runs_folder(root: str | os.PathLike) -> str:
    return os.path.join(os.fspath(root), RUNS_DIR)


# --- keys ----------------------------------------------------------------------------

def _code_digest(code: types.CodeType, into: Any) -> None:
    into.update(code.co_code)
    into.update(repr(code.co_names).encode())
    into.update(repr(code.co_varnames).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, into)
        else:
            into.update(repr(const).encode())


def function_key(fn: Callable[..., Any]) -> str:
    """Module, qualified name and a hash of the code of ``fn`` (see the module docstring)."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    digest = hashlib.sha256()
    code = getattr(target, "__code__", None)
    if isinstance(code, types.CodeType):
        _code_digest(code, digest)
    partial_args = b""
    if target is not fn:  # a partial: its bound arguments are part of the function
        partial_args = pickling.dumps((fn.args, fn.keywords))  # type: ignore[attr-defined]
    digest.update(partial_args)
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or pickling.callable_name(target)
    return f"{module}:{name}:{digest.hexdigest()[:16]}"


def call_key(fn_key: str, args: tuple, kwargs: dict[str, Any] | None,
             explicit: str | None = None) -> str:
    """The key of one call: ``fn_key`` (see :func:`function_key`) with the
    hash of its pickled arguments, or with the caller's ``explicit`` key."""
    digest = hashlib.sha256(fn_key.encode())
    if explicit is not None:
        digest.update(b"\0key\0" + str(explicit).encode())
    else:
        digest.update(b"\0args\0" + _stable_pickle((args, kwargs or None)))
    return digest.hexdigest()[:32]


def _stable_pickle(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=4)
    except Exception:
        return pickling.dumps(value)


# --- the run -------------------------------------------------------------------------

class Run:
    """One named run in a root, driven by this process. Thread-safe.

    :meth:`open` takes the run (creating it) for this driver and loads its
    outcomes; :meth:`record` buffers outcomes and :meth:`flush` writes them;
    :meth:`beat` refreshes the driver's record; :meth:`close` flushes and
    lets the run go (it stays on disk, with its outcomes, until removed).
    """

    def __init__(self, root: str | os.PathLike, name: str, secret: bytes):
        self.name = check_run_name(name)
        self.root = os.fspath(root)
        self.folder = os.path.join(runs_folder(self.root), name)
        self.reply_queue = reply_queue_of(name)
        self._secret = secret
        self._lock = threading.Lock()
        self._buffer: list[tuple[str, bool, Any]] = []
        self._outcomes: dict[str, Outcome] = {}
        self._segments: list[str] = []
        self._token = unique_token()
        self._next_flush = 0.0
        self._next_beat = 0.0
        self._owned = False

    # --- the driver ------------------------------------------------------------------

    def open(self) -> dict[str, Outcome]:
        """Take the run for this driver and return the outcomes it holds.
        Raises RunInUseError if another live driver has it."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        run_file = os.path.join(self.folder, RUN_FILE)
        info = {"name": self.name, "reply_queue": self.reply_queue, "created": time.time()}
        protocol.atomic_write(run_file, json.dumps(info).encode(), mode=0o600, exclusive=True)
        self._take_driver()
        self._owned = True
        self._outcomes = self._load()
        return dict(self._outcomes)

    def _record(self) -> bytes:
        return json.dumps({"host": HOST, "pid": os.getpid(), "started": _start_ticks(os.getpid()),
                           "token": self._token, "beat": time.time()}).encode()

    def _take_driver(self) -> None:
        path = os.path.join(self.folder, DRIVER_FILE)
        for _ in range(5):
            protocol.atomic_write(path, self._record(), mode=0o600, exclusive=True)
            current = read_driver(self.folder)
            if current is not None and current.get("token") == self._token:
                return
            if current is not None and driver_alive(current):
                raise RunInUseError(
                    f"run {self.name!r} is driven by pid {current.get('pid')} on "
                    f"{current.get('host')} (last beat {time.time() - float(current.get('beat', 0)):.0f} s "
                    "ago): wait for it to end, or use another run name",
                    str(current.get("host")), int(current.get("pid", 0)))
            # Its driver is dead: take its record away (one rename: one successor wins).
            stale = f"{path}.stale-{self._token}"
            if protocol.move(path, stale, 30.0):
                protocol.remove_quietly(stale)
                log.warning("run %s: its driver (pid %s on %s) is gone; taking the run over",
                            self.name, current and current.get("pid"), current and current.get("host"))
        raise RunInUseError(f"run {self.name!r}: could not take it over from its driver", "?", 0)

    def beat(self) -> None:
        """Refresh this driver's record (at most every BEAT_SECONDS)."""
        now = time.monotonic()
        if not self._owned or now < self._next_beat:
            return
        self._next_beat = now + BEAT_SECONDS
        current = read_driver(self.folder)
        if current is None or current.get("token") != self._token:
            log.error("run %s: this driver's record was taken over by another", self.name)
            return
        try:
            protocol.atomic_write(os.path.join(self.folder, DRIVER_FILE), self._record(), mode=0o600)
        except OSError as err:
            log.warning("run %s: cannot refresh the driver's record: %s", self.name, err)

    def close(self) -> None:
        """Flush what is buffered and let the run go (its files stay)."""
        if not self._owned:
            return
        self.flush(force=True)
        current = read_driver(self.folder)
        if current is not None and current.get("token") == self._token:
            protocol.remove_quietly(os.path.join(self.folder, DRIVER_FILE))
        self._owned = False

    # --- outcomes --------------------------------------------------------------------

    def known(self, key: str) -> Outcome | None:
        """The outcome of the call ``key``, if the run holds one."""
        return self._outcomes.get(key)

    def record(self, key: str, ok: bool, value: Any) -> None:
        """Buffer the outcome of one call (written by the next :meth:`flush`)."""
        with self._lock:
            self._buffer.append((key, ok, value))
            self._outcomes[key] = Outcome(ok, value)

    def forget(self, key: str) -> None:
        """Drop a failure this driver will run again (``retry_failed``)."""
        with self._lock:
            self._outcomes.pop(key, None)

    def flush(self, force: bool = False) -> None:
        """Write the buffered outcomes as one segment (unless none, or the
        last flush was under FLUSH_SECONDS ago and fewer than FLUSH_COUNT
        wait: ``force`` writes anyway). Compacts when there are many."""
        with self._lock:
            now = time.monotonic()
            if not self._buffer or (not force and now < self._next_flush
                                    and len(self._buffer) < FLUSH_COUNT):
                return
            batch, self._buffer = self._buffer, []
            self._next_flush = now + FLUSH_SECONDS
            name = self._write_segment(batch)
            self._segments.append(name)
            if len(self._segments) > COMPACT_AFTER:
                self._compact()

    def _write_segment(self, entries: list[tuple[str, bool, Any]]) -> str:
        data = _dumps_outcomes(entries)
        name = f"seg.{unique_token()}{SEGMENT_SUFFIX}"
        sig = _sign(self._secret, self.name, data).encode()
        protocol.atomic_write(os.path.join(self.folder, name), _MAGIC + sig + b"\n" + data, mode=0o600)
        return name

    def _compact(self) -> None:
        """Merge every segment into one (a crash between writing the merged
        segment and removing the others leaves duplicates, which agree)."""
        old = list(self._segments)
        merged = [(key, o.ok, o.value) for key, o in self._outcomes.items()]
        self._segments = [self._write_segment(merged)]
        for name in old:
            protocol.remove_quietly(os.path.join(self.folder, name))

    def _load(self) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        self._segments = []
        for name, entries in _read_segments(self.folder, self.name, self._secret):
            self._segments.append(name)
            for key, ok, value in entries:
                outcomes[key] = Outcome(ok, value)
        return outcomes


# --- reading runs (the CLI, housekeeping) ----------------------------------------------

def read_driver(folder: str) -> dict[str, Any] | None:
    """The driver record of the run in ``folder``, or None."""
    try:
        data = protocol.read(os.path.join(folder, DRIVER_FILE), 30.0, 1 << 16)
        return None if data is None else json.loads(data)
    except (ValueError, DdmqError):
        return None


def driver_alive(record: dict[str, Any]) -> bool:
    """Whether the driver of ``record`` may still be running."""
    if record.get("host") == HOST:
        pid = int(record.get("pid") or 0)
        return pid > 0 and _start_ticks(pid) == record.get("started")
    return time.time() - float(record.get("beat") or 0) < LOST_AFTER


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        try:
            os.kill(pid, 0)
            return -1  # exists; start time unknown (not Linux)
        except ProcessLookupError:
            return None
        except PermissionError:
            return -1


def _sign(secret: bytes, name: str, data: bytes) -> str:
    mac = hmac.new(secret, b"run-segment\0" + name.encode() + b"\0", hashlib.sha256)
    mac.update(data)
    return mac.hexdigest()


def _dumps_outcomes(entries: list[tuple[str, bool, Any]]) -> bytes:
    try:
        return pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickling.dumps(entries)


def _read_segments(folder: str, name: str, secret: bytes) -> Iterator[tuple[str, list]]:
    for file in sorted(protocol.list_if_there(folder, 30.0, follow=False)):
        if not file.endswith(SEGMENT_SUFFIX):
            continue
        try:
            raw = protocol.read(os.path.join(folder, file), 30.0)
        except DdmqError as err:
            log.warning("run %s: segment %s skipped: %s", name, file, err)
            continue
        if raw is None:
            continue
        head, _, data = raw[len(_MAGIC):].partition(b"\n")
        if (not raw.startswith(_MAGIC)
                or not hmac.compare_digest(head, _sign(secret, name, data).encode())):
            log.warning("run %s: segment %s is not signed with this root's secret: ignored",
                        name, file)
            continue
        yield file, pickle.loads(data)


def list_runs(root: str | os.PathLike, secret: bytes | None = None) -> list[RunInfo]:
    """The runs of ``root``. With ``secret``, their outcomes are counted."""
    out = []
    base = runs_folder(root)
    for name in sorted(protocol.list_if_there(base, 30.0, follow=False)):
        try:
            out.append(run_info(root, name, secret))
        except RunError:
            continue
    return out


def run_info(root: str | os.PathLike, name: str, secret: bytes | None = None) -> RunInfo:
    """What a run holds (RunError if there is no such run)."""
    check_run_name(name)
    folder = os.path.join(runs_folder(root), name)
    if not protocol.is_folder(folder, 30.0, follow=False):
        raise RunError(f"no run {name!r} in {os.fspath(root)}")
    size, last = 0, 0.0
    for file in protocol.list_if_there(folder, 30.0, follow=False):
        st = protocol.lstat(os.path.join(folder, file), 30.0)
        if st is not None:
            size += st.st_size
            last = max(last, st.st_mtime)
    done = failed = 0
    if secret is not None:
        outcomes: dict[str, bool] = {}
        for _, entries in _read_segments(folder, name, secret):
            for key, ok, _value in entries:
                outcomes[key] = ok
        done = sum(outcomes.values())
        failed = len(outcomes) - done
    return RunInfo(name, done, failed, size, last, read_driver(folder), reply_queue_of(name))


def remove_run(root: str | os.PathLike, name: str) -> None:
    """Remove a run and its outcomes; RunInUseError while a live driver has it."""
    folder = os.path.join(runs_folder(root), check_run_name(name))
    if not protocol.is_folder(folder, 30.0, follow=False):
        raise RunError(f"no run {name!r} in {os.fspath(root)}")
    driver = read_driver(folder)
    if driver is not None and driver_alive(driver):
        raise RunInUseError(f"run {name!r} is driven by pid {driver.get('pid')} on "
                            f"{driver.get('host')}: stop it first",
                            str(driver.get("host")), int(driver.get("pid", 0)))
    shutil.rmtree(folder)
