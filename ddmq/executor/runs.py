"""Named runs: the outcomes of an executor's calls, kept in the root so that a restarted driver picks up where it stopped.

``DDMQExecutor(root, run="nightly")`` keeps every call's outcome (its value,
or the exception it raised) in ``ROOT/.runs/nightly/``. A driver started
again with the same run returns what is there without running it again
(:mod:`ddmq.executor.attach` decides; this module stores)::

    ROOT/.runs/NAME/driver.json        who drives the run now: host, pid, last beat
    ROOT/.runs/NAME/seg.TOKEN.ddmqrun  outcomes, many per file, signed
    ROOT/.runs/NAME/run.json           what the run is: its reply queue, its task queue, when it started

**Few files.** Each driver appends the outcomes it records to a segment
of its own, ``seg.TOKEN.ddmqrun`` (created once, then opened for append
only): the collector writes one *frame* per batch of replies with one
``write`` (:meth:`Run.flush`), then acks those replies. So no outcome is
acked before it is on disk, and a driver killed at any moment loses none:
what was not written is still in the reply queue, which the next driver of
the run consumes (a run's reply queue is ``run-NAME``, not the driver's
own). A run is one segment per driver that wrote outcomes; a driver that
finds more than :data:`COMPACT_AFTER` merges them into one (their frames
concatenated, nothing unpickled). A run of 100,000 quick calls is two
files (``run.json`` and one segment), which spares a Lustre or NFS metadata
server: an append is no metadata operation.

Frames and segments are :mod:`ddmq.executor.segments`' (signed, counted
without unpickling); call keys are :mod:`ddmq.executor.callkeys`'.

**One driver at a time.** ``driver.json`` is created exclusively (a hard
link: of two drivers started at once, one wins); a second driver of a live
run is refused with :class:`RunInUseError` naming the first (host, pid). A
driver that died leaves its record behind: on its host its pid is gone (or
is another process, by start time); elsewhere its beat, refreshed every
:data:`BEAT_SECONDS`, stops. Its record is then taken over by one rename,
which only one successor can win. Nothing removes a run but
:func:`remove_run` (``ddmq runs rm``): no housekeeping touches ``.runs/``.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import pickle
import re
import shutil
import stat
import threading
import time
from typing import Any, NamedTuple, Sequence

from .. import protocol, reading
from ..errors import DdmqError
from ..layout import HOST, unique_token
from . import segments
from .callkeys import Key
from .envelope import rebuild
from .drivers import process_start
from .errors import RunError, RunInUseError

log = logging.getLogger(__name__)

RUNS_DIR = ".runs"
DRIVER_FILE = "driver.json"
RUN_FILE = "run.json"
SEGMENT_SUFFIX = segments.SEGMENT_SUFFIX
#: Seconds between two refreshes of the driver's record.
BEAT_SECONDS = 10.0
#: A driver on another host whose record is older than this is dead.
LOST_AFTER = 3 * BEAT_SECONDS
#: Past this many segments (one per driver that wrote outcomes), a driver
#: starting merges them into one.
COMPACT_AFTER = 32
#: Longest run name (it becomes part of a queue name).
MAX_RUN_NAME = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    files: int
    last_activity: float
    driver: dict[str, Any] | None
    reply_queue: str
    queue: str | None


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


# --- the run -------------------------------------------------------------------------



class Run:
    """One named run in a root, driven by this process.

    :meth:`open` takes the run (creating it) for this driver and loads its
    outcomes; :meth:`record` adds a task's outcomes, :meth:`flush` appends
    them to this driver's segment; :meth:`beat` refreshes the driver's
    record; :meth:`close` flushes and lets the run go (it stays on disk,
    with its outcomes, until removed).
    :meth:`record` and :meth:`flush` may be called from different threads;
    the dictionaries of :meth:`outcomes` change under :meth:`record`.
    """

    def __init__(self, root: str | os.PathLike, name: str, secret: bytes):
        self.name = check_run_name(name)
        self.root = os.fspath(root)
        self.folder = os.path.join(runs_folder(self.root), name)
        self.reply_queue = reply_queue_of(name)
        self._secret = secret
        self._lock = threading.Lock()
        self._buffer: list[segments.Chunk] = []
        # The outcomes, by function key: successes by call key, or as spans of
        # consecutive int keys (a chunk of map(f, range(...)): no entry per
        # call); failures by call key.
        self._done: dict[str, dict[Key, Any]] = {}
        self._spans: dict[str, _Spans] = {}
        self._failed: dict[str, dict[Key, BaseException]] = {}
        self._token = unique_token()
        self._segment: int | None = None  # this driver's segment, open to append
        self._next_beat = 0.0
        self._owned = False

    # --- the driver ------------------------------------------------------------------

    @property
    def owned(self) -> bool:
        """Whether this process drives the run (opened, not closed yet)."""
        return self._owned

    def open(self, queue: str | None = None) -> None:
        """Take the run for this driver (whose task queue is ``queue``) and
        load its outcomes. Raises RunInUseError if another live driver has it."""
        _private_folder(os.path.dirname(self.folder))
        _private_folder(self.folder)
        run_file = os.path.join(self.folder, RUN_FILE)
        info = {"name": self.name, "reply_queue": self.reply_queue, "queue": queue,
                "created": time.time()}
        protocol.atomic_write(run_file, json.dumps(info).encode(), mode=0o600, exclusive=True)
        self._take_driver()
        self._owned = True
        known = read_json(run_file) or {}
        if queue is not None and known.get("queue") != queue:
            known.update(name=self.name, reply_queue=self.reply_queue, queue=queue)
            protocol.atomic_write(run_file, json.dumps(known).encode(), mode=0o600)
        self._load()

    def _record(self) -> bytes:
        return json.dumps({"host": HOST, "pid": os.getpid(), "started": process_start(os.getpid()),
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

    def close(self) -> bool:
        """Flush what is buffered and let the run go (its files stay); False
        if the outcomes could not all be written."""
        if not self._owned:
            return True
        try:
            written = self.flush()
        except OSError as err:
            log.error("run %s: cannot write its last outcomes: %s", self.name, err)
            written = False
        self._close_segment()
        current = read_driver(self.folder)
        if current is not None and current.get("token") == self._token:
            protocol.remove_quietly(os.path.join(self.folder, DRIVER_FILE))
        self._owned = False
        return written

    # --- outcomes --------------------------------------------------------------------

    def known(self, function: str, key: Key) -> Outcome | None:
        """The outcome of call ``key`` of ``function``, if the run holds one
        (a success, if it holds both)."""
        done = self._done.get(function)
        if done and key in done:
            return Outcome(True, done[key])
        spans = self._spans.get(function)
        if spans and type(key) is int:
            found, value = spans.get(key)
            if found:
                return Outcome(True, value)
        failed = self._failed.get(function)
        if failed and key in failed:
            return Outcome(False, failed[key])
        return None

    def touches(self, function: str, keys: Sequence[Key], failures: bool = True) -> bool:
        """Whether the run may hold an outcome (with ``failures``: a success
        or a failure; else a success) of one of the calls ``keys`` of
        ``function``; False costs nothing per call when ``keys`` is a range
        and the run's outcomes of ``function`` are spans."""
        done, spans = self._done.get(function), self._spans.get(function)
        failed = self._failed.get(function) if failures else None
        if (done and _meets(done, keys)) or (failed and _meets(failed, keys)):
            return True
        if not spans:
            return False
        if type(keys) is range:
            return spans.overlaps(keys.start, keys.stop)
        return any(spans.get(key)[0] for key in keys if type(key) is int)

    def counts(self) -> tuple[int, int]:
        """(calls that succeeded, calls that failed) in the run."""
        done = failed = 0
        for function in set(self._done) | set(self._failed) | set(self._spans):
            spans = self._spans.get(function)
            done += spans.successes() if spans else 0
            done += sum(1 for key in self._done.get(function, ())
                        if not (spans and type(key) is int and spans.get(key)[0]))
            failed += sum(1 for key in self._failed.get(function, ())
                          if not self._succeeded(function, key))
        return done, failed

    def record(self, function: str, keys: Sequence[Key], values: Sequence[Any],
               errors: Sequence[tuple[int, BaseException]] = ()) -> None:
        """Add the outcomes of one task's calls (``values[i]`` of call
        ``keys[i]``, except the calls of ``errors``, (index, exception)),
        written by a later :meth:`flush`. A success replaces a failure, never
        the reverse."""
        with self._lock:
            self._buffer.append((function, keys, values, errors))
            self._merge(function, keys, values, errors)

    def _succeeded(self, function: str, key: Key) -> bool:
        done, spans = self._done.get(function), self._spans.get(function)
        return bool(done and key in done) or bool(spans and type(key) is int and spans.get(key)[0])

    def _merge(self, function: str, keys: Sequence[Key], values: Sequence[Any],
               errors: Sequence[tuple[int, BaseException]]) -> None:
        failed = self._failed.get(function)
        if type(keys) is range and keys.step == 1 and keys:  # a chunk of map(f, range(...))
            spans = self._spans.get(function)
            if spans is None:
                spans = self._spans[function] = _Spans()
            # A tuple: once it holds only ints, strings..., the GC stops visiting it.
            if spans.add(keys.start, keys.stop, tuple(values), frozenset(at for at, _ in errors)):
                if failed:
                    raised = dict(errors)
                    for index, key in enumerate(keys):
                        if index not in raised:
                            failed.pop(key, None)
                for index, exc in errors:
                    if not self._succeeded(function, keys[index]):
                        self._failed.setdefault(function, {})[keys[index]] = exc
                return
        self._merge_each(function, keys, values, errors, failed)

    def _merge_each(self, function: str, keys: Sequence[Key], values: Sequence[Any],
                    errors: Sequence[tuple[int, BaseException]],
                    failed: dict[Key, BaseException] | None) -> None:
        done = self._done.setdefault(function, {})  # ... else one entry per call
        if not errors:
            done.update(zip(keys, values))
            if failed:
                for key in keys:
                    failed.pop(key, None)
            return
        raised = dict(errors)
        for index, key in enumerate(keys):
            if index not in raised:
                done[key] = values[index]
                if failed:
                    failed.pop(key, None)
            elif not self._succeeded(function, key):
                failed = self._failed.setdefault(function, {})
                failed[key] = raised[index]

    def flush(self) -> bool:
        """Append the outcomes recorded since the last flush to this driver's
        segment, as one frame (one ``write``); True when none are left to
        write. Raises OSError if they cannot be written (they stay buffered,
        and the next flush starts a new segment: the reader of this one stops
        at its torn end)."""
        with self._lock:
            if not self._buffer:
                return True
            frame = segments.frame(self.name, self._secret, self._buffer)
            try:
                if self._segment is None:
                    self._segment = self._new_segment()
                protocol.write_all(self._segment, frame)
            except OSError:
                self._close_segment()
                raise
            self._buffer = []
            return True

    def _new_segment(self) -> int:
        path = os.path.join(self.folder, f"seg.{unique_token()}{SEGMENT_SUFFIX}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            protocol.write_all(fd, segments.MAGIC)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _close_segment(self) -> None:
        protocol.close_quietly(self._segment)
        self._segment = None

    def _load(self) -> None:
        """Read the outcomes of every segment; past COMPACT_AFTER segments,
        write their frames as one and remove them (a crash in between leaves
        duplicates, which agree)."""
        self._done, self._spans, self._failed = {}, {}, {}
        found = list(segments.segments(self.folder, self.name, self._secret))
        for file, frames in found:
            for index, body in frames:
                try:
                    bodies = pickle.loads(body)
                except Exception as err:  # noqa: BLE001 (a module gone, a class renamed...)
                    log.warning("run %s: outcomes in %s cannot be unpickled here (%s: %s): their "
                                "calls will run again", self.name, file, type(err).__name__, err)
                    continue
                for (function, keys, _), (values, failures) in zip(index, bodies):
                    self._merge(function, keys, values,
                                [(at, rebuild(exc, tb)) for at, exc, tb in failures])
        if len(found) > COMPACT_AFTER:
            merged = b"".join(frame for _, frames in found for frame in frames.raw)
            try:
                protocol.atomic_write(os.path.join(self.folder, f"seg.{unique_token()}{SEGMENT_SUFFIX}"),
                                      segments.MAGIC + merged, mode=0o600)
            except OSError as err:
                log.warning("run %s: cannot merge its segments: %s", self.name, err)
                return
            for file, _ in found:
                protocol.remove_quietly(os.path.join(self.folder, file))


def _meets(table: dict[Key, Any], keys: Sequence[Key]) -> bool:
    """Whether one of ``keys`` is in ``table``, looking up the fewer: a
    range larger than the table is asked of each int key of the table."""
    if type(keys) is range and len(table) < len(keys):
        return any(type(key) is int and key in keys for key in table)
    return not table.keys().isdisjoint(keys)


class _Spans:
    """The successes of chunks whose call keys are consecutive ints, as
    spans ``[start, stop)`` that do not overlap, sorted, each with its values
    and the offsets of its calls that failed (holes). A chunk that overlaps
    a span is not added (its caller keeps it per call)."""

    __slots__ = ("starts", "spans")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.spans: list[tuple[int, int, Sequence[Any], frozenset[int]]] = []

    def add(self, start: int, stop: int, values: Sequence[Any], holes: frozenset[int]) -> bool:
        """Add a span; False (nothing added) if it overlaps one."""
        at = bisect.bisect_right(self.starts, start)
        if (at and self.spans[at - 1][1] > start) or (at < len(self.starts) and self.starts[at] < stop):
            return False
        self.starts.insert(at, start)
        self.spans.insert(at, (start, stop, values, holes))
        return True

    def overlaps(self, start: int, stop: int) -> bool:
        at = bisect.bisect_right(self.starts, start)
        return bool((at and self.spans[at - 1][1] > start) or (at < len(self.starts) and self.starts[at] < stop))

    def get(self, key: int) -> tuple[bool, Any]:
        """(True, the value of call ``key``) if it succeeded, else (False, None)."""
        at = bisect.bisect_right(self.starts, key) - 1
        if at >= 0:
            start, stop, values, holes = self.spans[at]
            if key < stop and key - start not in holes:
                return True, values[key - start]
        return False, None

    def successes(self) -> int:
        return sum(stop - start - len(holes) for start, stop, _, holes in self.spans)


def _private_folder(path: str) -> None:
    """Make folder ``path`` (mode 0700) if missing; RunError if it is not a
    folder of this user (a link planted in a shared root is never followed)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise RunError(f"{path} is not a folder of this user (a link?): not used")


# --- reading runs (the CLI) ------------------------------------------------------------

def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in file ``path``, or None."""
    try:
        data = reading.read(path, 30.0, 1 << 16)
        value = None if data is None else json.loads(data)
    except (ValueError, DdmqError):
        return None
    return value if isinstance(value, dict) else None


def read_driver(folder: str) -> dict[str, Any] | None:
    """The driver record of the run in ``folder``, or None."""
    return read_json(os.path.join(folder, DRIVER_FILE))


def driver_alive(record: dict[str, Any]) -> bool:
    """Whether the driver of ``record`` may still be running."""
    if record.get("host") == HOST:
        pid = int(record.get("pid") or 0)
        return pid > 0 and process_start(pid) == record.get("started")
    return time.time() - float(record.get("beat") or 0) < LOST_AFTER


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
    """What a run holds (RunError if there is no such run). With ``secret``,
    its outcomes are counted (from the segments' indexes: no result is unpickled)."""
    check_run_name(name)
    folder = os.path.join(runs_folder(root), name)
    if not protocol.is_folder(folder, 30.0, follow=False):
        raise RunError(f"no run {name!r} in {os.fspath(root)}")
    size, last, files = 0, 0.0, 0
    for file in protocol.list_if_there(folder, 30.0, follow=False):
        st = protocol.lstat(os.path.join(folder, file), 30.0)
        if st is not None:
            size += st.st_size
            last = max(last, st.st_mtime)
            files += 1
    done: set[tuple[str, Key]] = set()
    failed: set[tuple[str, Key]] = set()
    if secret is not None:
        for _, frames in segments.segments(folder, name, secret):
            for index, _body in frames:
                for function, keys, raised in index:
                    bad = set(raised)
                    for at, key in enumerate(keys):
                        (failed if at in bad else done).add((function, key))
    info = read_json(os.path.join(folder, RUN_FILE)) or {}
    queue = info.get("queue")
    return RunInfo(name, len(done), len(failed - done), size, files, last, read_driver(folder),
                   reply_queue_of(name), queue if isinstance(queue, str) else None)


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
