"""Worker heartbeat records: which workers serve a root, and which were lost.

Every worker keeps one small JSON file, ``ROOT/.workers/HOST.PID.json``,
rewritten every ``interval`` seconds (by :func:`ddmq.protocol.atomic_write`:
a temporary file in the same folder, renamed over the old record, so a
reader sees a whole record)::

    {"host": "node12", "pid": 4242, "queue": "tasks", "state": "running",
     "task": "3f9a1c2e.17", "tasks_done": 118, "started": 1764050000.1,
     "last_seen": 1764050123.4, "interval": 10.0, "version": "1.0.0"}

A worker that exits cleanly removes its record. A record not rewritten for
:data:`LOST_AFTER` intervals belongs to a lost worker (killed, crashed, or its
node is gone); so does one of this host whose process no longer exists.
Ages are measured with the file server's clock (the modification time it
stamped on the record), so nodes whose clocks differ still agree.

``list_workers(root)`` is what ``ddmq workers ROOT`` prints; the executor
uses it to count the workers serving its queue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from .. import __version__, protocol
from ..broker import Broker
from ..errors import UnsafeFileError
from ..layout import HOST

__all__ = ["HEARTBEAT_DIR", "LOST_AFTER", "HOST", "WorkerRecord", "Heartbeat", "heartbeat_dir",
           "record_path", "list_workers", "prune_lost"]

log = logging.getLogger(__name__)

#: The folder of the records, in the root (hidden: it is not a queue).
HEARTBEAT_DIR = ".workers"
#: A record older than this many of its intervals belongs to a lost worker.
LOST_AFTER = 3
#: Largest record read (a record is a few hundred bytes).
_RECORD_MAX = 1 << 16


@dataclasses.dataclass
class WorkerRecord:
    """One worker, as its heartbeat record describes it.

    ``age`` is seconds since the record was last written (file server clock);
    ``lost`` is True when the worker stopped beating (see the module docstring).
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def heartbeat_dir(root: str | os.PathLike) -> str:
    """The folder of the heartbeat records of ``root``."""
    return os.path.join(os.fspath(root), HEARTBEAT_DIR)


def record_path(root: str | os.PathLike, host: str, pid: int) -> str:
    """Where the worker ``pid`` of ``host`` keeps its record."""
    return os.path.join(heartbeat_dir(root), f"{host}.{pid}.json")


class Heartbeat:
    """The record of this process: :meth:`beat` writes it, :meth:`remove`
    deletes it. Not thread-safe: one thread beats."""

    def __init__(self, root: str | os.PathLike, queue: str, interval: float):
        self.root = os.fspath(root)
        self.interval = float(interval)
        self.path = record_path(self.root, HOST, os.getpid())
        self._static = {"host": HOST, "pid": os.getpid(), "queue": queue,
                        "started": time.time(), "interval": self.interval,
                        "version": __version__}

    def beat(self, state: str, task: str | None, tasks_done: int) -> None:
        """Write the record now. Errors are logged, never raised: a missed
        beat makes the worker look lost for a while, nothing worse."""
        record = dict(self._static, state=state, task=task, tasks_done=tasks_done,
                      last_seen=time.time())
        data = json.dumps(record).encode("utf-8")
        try:
            try:
                protocol.atomic_write(self.path, data, mode=0o600)
            except FileNotFoundError:
                os.makedirs(heartbeat_dir(self.root), mode=0o700, exist_ok=True)
                protocol.atomic_write(self.path, data, mode=0o600)
        except OSError as err:
            log.warning("cannot write the heartbeat record %s: %s", self.path, err)

    def remove(self) -> None:
        """Delete the record (the worker is exiting cleanly)."""
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
        path = os.path.join(folder, name)
        try:
            data, mtime = _read_record(path)
            record = WorkerRecord(
                host=str(data["host"]), pid=int(data["pid"]), queue=str(data["queue"]),
                state=str(data.get("state", "")), task=data.get("task"),
                tasks_done=int(data.get("tasks_done", 0)), started=float(data["started"]),
                last_seen=float(data["last_seen"]), interval=float(data["interval"]),
                age=max(0.0, now - mtime), lost=False, path=path)
        except FileNotFoundError:
            continue  # the worker exited meanwhile
        except (OSError, UnsafeFileError, ValueError, KeyError, TypeError) as err:
            log.debug("skipping unreadable heartbeat record %s: %s", path, err)
            continue
        if queue is not None and record.queue != queue:
            continue
        record.lost = (record.age > LOST_AFTER * record.interval
                       or _pid_gone(record.host, record.pid))
        (lost if record.lost else live).append(record)
    live.sort(key=lambda r: (r.host, r.pid))
    lost.sort(key=lambda r: (r.host, r.pid))
    return live, lost


def _read_record(path: str) -> tuple[Any, float]:
    """(the parsed record, its modification time). Like every read of ddmq,
    a link is not followed and only a regular file is read."""
    fd, st = protocol.open_regular(path, _RECORD_MAX)
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
