"""Worker heartbeat records: which workers serve a root, which were lost, and how.

Every worker keeps one small JSON file, ``ROOT/.workers/HOST.PID.json``,
written whole (by :func:`ddmq.protocol.atomic_write`: a temporary file in
the same folder, renamed over the old record, so a reader sees a whole
record) when it starts and when its state or task changes::

    {"host": "node12", "pid": 4242, "queue": "tasks", "state": "running",
     "task": "3f9a1c2e.17", "tasks_done": 118, "started": 1764050000.1,
     "last_seen": 1764050123.4, "interval": 5.0, "version": "1.0.0",
     "claimer": "9c41d07e"}

Rewrites for state changes are coalesced (at most one per
:data:`STATE_SPACING` seconds), so the record says what the worker does
within about a second. In between, every ``interval`` seconds the worker
only refreshes the record's modification time (one ``futimens`` on the
record, which it holds open: one server operation instead of the dozen of a
rewrite). ``claimer`` is the
worker's claimer tag (:func:`ddmq.layout.claimer_tag`): the work names of
the messages it claimed end with it, so whoever finds the worker dead can
requeue them at once (:meth:`ddmq.Broker.requeue_claims`).

A worker that exits cleanly removes its record. A record not refreshed for
:data:`LOST_AFTER` intervals belongs to a lost worker (killed, crashed, or its
node is gone); so does one of this host whose process no longer exists, and
one into which the executor that started the worker wrote how it ended
(``"cause"``, :func:`mark_ended`). Ages are measured with the file server's
clock (the modification time it stamped on the record), so nodes whose
clocks differ still agree.

``list_workers(root)`` is what ``ddmq workers ROOT`` prints; the executor
uses it to count the workers serving its queue, and
:mod:`ddmq.executor.deaths` to find the lost ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

from .. import __version__, protocol, reading
from ..broker import Broker
from ..errors import UnsafeFileError
from ..layout import HOST, claimer_tag
from .activity import Activity, activity_fields
from .environment import heartbeat_fields, record_fields

__all__ = ["HEARTBEAT_DIR", "LOST_AFTER", "DEFAULT_INTERVAL", "HOST", "WorkerRecord", "Heartbeat",
           "heartbeat_dir", "record_path", "list_workers", "read_record", "judge", "mark_ended",
           "prune_lost"]

log = logging.getLogger(__name__)

#: The folder of the records, in the root (hidden: it is not a queue).
HEARTBEAT_DIR = ".workers"
#: A record older than this many of its intervals belongs to a lost worker.
LOST_AFTER = 3
#: Seconds between two beats of a worker (``--heartbeat``): a SIGKILLed or
#: cut-off worker is found lost LOST_AFTER * 5 = 15 s after its last beat,
#: and the tasks it held are requeued then, not when their leases end. A beat
#: of an unchanged record is one ``futimens``: one server operation (a SETATTR
#: on GlusterFS), 0.2 per idle second.
DEFAULT_INTERVAL = 5.0
#: Least seconds between two rewrites of a record for changes of its state
#: or task (the changes in between are coalesced into the next rewrite).
STATE_SPACING = 1.0
#: Largest record read (a record is a few hundred bytes).
_RECORD_MAX = 1 << 16


@dataclasses.dataclass
class WorkerRecord:
    """One worker, as its heartbeat record describes it.

    ``age`` is seconds since the record was last written or refreshed, and
    ``last_seen`` when that was (file server clock); ``lost`` is True when
    the worker stopped beating (see the module docstring). ``claimer`` is the
    worker's claimer tag ("" if it did not say); ``cause`` how it ended, if
    known (:func:`ddmq.executor.deaths.record_cause` also says it for the
    lost workers whose record does not). ``python``, ``cloudpickle``,
    ``version`` (ddmq's): what the worker runs; ``slurm_job`` (``123_4``) and
    ``node``: where, in a Slurm job ("" elsewhere; see
    :mod:`ddmq.executor.environment`). ``since``: when the worker took up
    its state and task; ``done``, ``done_slot``: the task messages it finished lately
    (see :mod:`ddmq.executor.activity`).
    """

    host: str
    pid: int
    queue: str
    state: str
    task: str | None
    tasks_done: int
    started: float
    last_seen: float
    interval: float
    age: float
    lost: bool
    path: str
    claimer: str = ""
    cause: str | None = None
    version: str = ""
    python: str = ""
    cloudpickle: str = ""
    slurm_job: str = ""
    node: str = ""
    since: float | None = None
    done_slot: int = 0
    done: list[int] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def heartbeat_dir(root: str | os.PathLike) -> str:
    """The folder of the heartbeat records of ``root``."""
    return os.path.join(os.fspath(root), HEARTBEAT_DIR)


def record_path(root: str | os.PathLike, host: str, pid: int) -> str:
    """Where the worker ``pid`` of ``host`` keeps its record."""
    return os.path.join(heartbeat_dir(root), f"{host}.{pid}.json")


class Heartbeat:
    """The record of this process: :meth:`beat` writes it, :meth:`keep`
    keeps it current, :meth:`remove` deletes it. Not thread-safe: one thread
    beats."""

    def __init__(self, root: str | os.PathLike, queue: str, interval: float):
        self.root = os.fspath(root)
        self.interval = float(interval)
        self.path = record_path(self.root, HOST, os.getpid())
        self._static = {"host": HOST, "pid": os.getpid(), "queue": queue,
                        "started": time.time(), "interval": self.interval,
                        "version": __version__, "claimer": claimer_tag(), **heartbeat_fields()}
        self._written: tuple[str, str | None, int] | None = None  # (state, task, tasks_done)
        self._last_write = -math.inf  # time.monotonic() of the last rewrite
        self._last_beat = -math.inf   # ... of the last rewrite or refresh
        self._activity = Activity()   # since when, and tasks done lately (see activity)
        # The record as written last, held open: a refresh is one futimens on
        # it (no path lookup: one server operation). Closed before a rewrite
        # replaces it (an NFS client would otherwise keep the old one as .nfsXXX).
        self._fd: int | None = None
        self._refreshes = 0

    def beat(self, state: str, task: str | None, tasks_done: int) -> None:
        """Write the record now. Errors are logged, never raised: a missed
        beat makes the worker look lost for a while, nothing worse."""
        record = dict(self._static, state=state, task=task, tasks_done=tasks_done,
                      last_seen=time.time(), **self._activity.fields(state, task, tasks_done))
        data = json.dumps(record).encode("utf-8")
        self._last_write = self._last_beat = time.monotonic()
        self._close()
        try:
            try:
                protocol.atomic_write(self.path, data, mode=0o600)
            except FileNotFoundError:
                os.makedirs(heartbeat_dir(self.root), mode=0o700, exist_ok=True)
                protocol.atomic_write(self.path, data, mode=0o600)
            self._written = (state, task, tasks_done)
        except OSError as err:
            self._written = None
            log.warning("cannot write the heartbeat record %s: %s", self.path, err)
            return
        try:
            self._fd = reading.open_regular(self.path, _RECORD_MAX)[0]
        except (OSError, UnsafeFileError) as err:  # refreshed by path instead
            log.debug("cannot hold the heartbeat record %s open: %s", self.path, err)

    def keep(self, state: str, task: str | None, tasks_done: int) -> float:
        """Keep the record current; call it often (the keeper does, every
        tick). Rewrites it when ``state`` or ``task`` changed, at most every
        :data:`STATE_SPACING` s; else, every ``interval`` s, refreshes its
        time (rewrites it if ``tasks_done`` changed). Returns the seconds
        until the next beat is due."""
        now = time.monotonic()
        written = self._written
        if written is None:  # never written, or the last write failed: try again each interval
            if now >= self._last_beat + self.interval:
                self.beat(state, task, tasks_done)
        elif (state, task) != written[:2] and now >= self._last_write + STATE_SPACING:
            self.beat(state, task, tasks_done)
        elif now >= self._last_beat + self.interval:
            if (state, task, tasks_done) != written:
                self.beat(state, task, tasks_done)
            else:
                self._refresh(state, task, tasks_done)
        return max(0.0, self._last_beat + self.interval - time.monotonic())

    def _refresh(self, state: str, task: str | None, tasks_done: int) -> None:
        """Set the record's modification time to now (the file server's
        stamp), through the descriptor held open (else by path; a link
        planted in its place is not followed)."""
        self._last_beat = time.monotonic()
        self._refreshes += 1
        try:
            if self._fd is None:
                os.utime(self.path, follow_symlinks=False)
                return
            os.utime(self._fd)
            # Now and then (a minute at the default interval), make sure the
            # file held open is still the record: someone may have removed it.
            if self._refreshes % 12 == 0 and os.fstat(self._fd).st_nlink == 0:
                raise FileNotFoundError(self.path)
        except OSError as err:
            # Removed (by mistake, or its folder was), or stale (ESTALE): write it again.
            log.debug("cannot refresh the heartbeat record %s (%s): writing it again",
                      self.path, err)
            self.beat(state, task, tasks_done)

    def _close(self) -> None:
        protocol.close_quietly(self._fd)
        self._fd = None

    def remove(self) -> None:
        """Delete the record (the worker is exiting cleanly)."""
        self._close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove the heartbeat record %s: %s", self.path, err)


def _pid_gone(host: str, pid: int) -> bool:
    """True if ``pid`` is a process of this host that no longer exists."""
    if host != HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def list_workers(root: str | os.PathLike, queue: str | None = None
                 ) -> tuple[list[WorkerRecord], list[WorkerRecord]]:
    """(live, lost) workers of ``root`` (of ``queue`` only, if given), each
    sorted by host and pid. Raises RootMissingError / RootUninitiatedError
    if ``root`` is not a ddmq root. Unreadable records are skipped."""
    clock = Broker(root).clock
    folder = heartbeat_dir(root)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return [], []
    now = clock.now()
    live: list[WorkerRecord] = []
    lost: list[WorkerRecord] = []
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        record = read_record(os.path.join(folder, name), now)
        if record is None or (queue is not None and record.queue != queue):
            continue
        (lost if record.lost else live).append(record)
    live.sort(key=lambda r: (r.host, r.pid))
    lost.sort(key=lambda r: (r.host, r.pid))
    return live, lost


def read_record(path: str, now: float) -> WorkerRecord | None:
    """The record at ``path``, judged live or lost at ``now`` (file server
    clock); None if it is gone or unreadable."""
    try:
        data, mtime = _read_record(path)
        cause = data.get("cause")
        record = WorkerRecord(
            host=str(data["host"]), pid=int(data["pid"]), queue=str(data["queue"]),
            state=str(data.get("state", "")), task=data.get("task"),
            tasks_done=int(data.get("tasks_done", 0)), started=float(data["started"]),
            last_seen=float(data["last_seen"]), interval=float(data["interval"]),
            age=0.0, lost=False, path=path, claimer=str(data.get("claimer") or ""),
            cause=cause if isinstance(cause, str) else None, **record_fields(data),  # type: ignore[arg-type]
            **activity_fields(data))  # type: ignore[arg-type]
    except FileNotFoundError:
        return None  # the worker exited meanwhile
    except (OSError, UnsafeFileError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.debug("skipping unreadable heartbeat record %s: %s", path, err)
        return None
    judge(record, mtime, now)
    return record


def judge(record: WorkerRecord, mtime: float, now: float) -> None:
    """Set ``record``'s last_seen, age and lost from its file's modification
    time ``mtime`` at ``now`` (both file server clock)."""
    record.last_seen = mtime
    record.age = max(0.0, now - mtime)
    record.lost = (record.cause is not None or record.age > LOST_AFTER * record.interval
                   or _pid_gone(record.host, record.pid))


def mark_ended(path: str, cause: str) -> bool:
    """Write into the record at ``path`` of a worker that ended how it did
    (``cause``, e.g. "was killed by SIGKILL"): it is then listed as lost at
    once, on every node, with that cause. False if there is no readable
    record (the worker never wrote one, or removed it: it exited cleanly)."""
    try:
        data, _ = _read_record(path)
        if not isinstance(data, dict):
            return False
        data.update(state="ended", cause=cause)  # "task" stays: the one it held, if any
        protocol.atomic_write(path, json.dumps(data).encode("utf-8"), mode=0o600)
        return True
    except (OSError, UnsafeFileError, ValueError) as err:
        log.debug("cannot write how the worker of %s ended: %s", path, err)
        return False


def _read_record(path: str) -> tuple[Any, float]:
    """(the parsed record, its modification time). Like every read of ddmq,
    a link is not followed and only a regular file is read."""
    fd, st = reading.open_regular(path, _RECORD_MAX)
    try:
        return json.loads(os.read(fd, _RECORD_MAX + 1)), st.st_mtime
    finally:
        os.close(fd)


def prune_lost(root: str | os.PathLike, older_than: float = 86400.0) -> list[str]:
    """Delete the records of workers lost for more than ``older_than``
    seconds; returns the paths deleted."""
    _, lost = list_workers(root)
    removed = []
    for record in lost:
        if record.age > older_than:
            try:
                os.unlink(record.path)
                removed.append(record.path)
            except OSError:
                pass
    return removed
