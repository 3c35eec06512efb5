"""Executor records: which executors of a root are alive, so that what a dead one left behind can go.

Every executor (the *driver* of its tasks) keeps one small JSON file named
for its reply queue, ``ROOT/.executors/REPLY_QUEUE.json``::

    {"host": "node12", "pid": 4242, "started": 98765432, "reply": "reply-node12-4242-3f9a1c2e",
     "queue": "tasks", "interval": 10.0, "beat": 1764050123.4, "version": "1.0.0"}

``started`` is when process ``pid`` started (clock ticks since boot, see
:func:`process_start`), so that a pid used again by another
process does not pass for the executor. The record is written (by
:func:`ddmq.protocol.atomic_write`: a reader sees a whole record) *before*
the reply queue is made, rewritten every :data:`BEAT_SECONDS` by the
collector's housekeeping round, and removed *after* the reply queue and the
spill folder at shutdown. An executor is **dead** when:

- its record is of this host, and its pid is gone or is another process
  (another start time): known at once, without waiting for beats;
- its record is of another host, and was not rewritten for
  :data:`DEAD_AFTER` seconds (by the modification time the file server
  stamped, against the file server's clock: nodes whose clocks differ agree);
- it has no record (an executor of an earlier ddmq, or one whose cleanup was
  cut short after the record went), and its reply queue's name says this host
  and a pid that no longer exists. Without a record, an executor of another
  host is never judged dead.

Only executors' own reply queues (``reply-HOST-PID-TOKEN``) are judged: the
reply queue of a named run (``run-NAME``, :mod:`ddmq.executor.runs`)
outlives its drivers, by design, and is never anyone's to remove.
What follows from a death is :mod:`ddmq.executor.reaper`'s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from typing import Any

from .. import __version__, protocol, reading
from ..clock import ServerClock
from ..errors import UnsafeFileError
from ..layout import HOST

__all__ = ["DRIVERS_DIR", "BEAT_SECONDS", "DEAD_AFTER", "DriverRecord", "is_executor_reply",
           "reply_queue_name", "record_path", "read_record", "death", "process_start"]

log = logging.getLogger(__name__)

#: The folder of the records, in the root (hidden: it is not a queue).
DRIVERS_DIR = ".executors"
#: Seconds between two rewrites of an executor's record.
BEAT_SECONDS = 10.0
#: An executor of another host whose record is older than this is dead. Much
#: longer than a beat: a driver judged dead loses its reply queue, so a few
#: missed beats (a busy file server, a full disk) must not pass for a death.
DEAD_AFTER = 60.0
#: Largest record read (a record is a few hundred bytes).
_RECORD_MAX = 1 << 16

#: An executor's own reply queue: ``reply-HOST-PID-TOKEN`` (see DDMQExecutor).
_REPLY = re.compile(r"^reply-(?P<host>.*)-(?P<pid>[0-9]+)-(?P<token>[0-9a-f]+)$")


def is_executor_reply(queue: str) -> bool:
    """True if ``queue`` is an executor's own reply queue (never a run's)."""
    return _REPLY.match(queue) is not None


def _host_in_name() -> str:
    """This host as it appears in a reply queue's name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", HOST)[:40]


def reply_queue_name(token: str) -> str:
    """The reply queue of an executor of this process: ``reply-HOST-PID-TOKEN``
    (``token`` hex), the name :func:`death` judges when there is no record."""
    return f"reply-{_host_in_name()}-{os.getpid()}-{token}"


def drivers_dir(root: str | os.PathLike) -> str:
    return os.path.join(os.fspath(root), DRIVERS_DIR)


def record_path(root: str | os.PathLike, reply: str) -> str:
    """Where the executor whose reply queue is ``reply`` keeps its record."""
    return os.path.join(drivers_dir(root), f"{reply}.json")


class DriverRecord:
    """The record of this process's executor: :meth:`write` at start,
    :meth:`beat` from the collector's housekeeping round, :meth:`remove` at
    the end. Errors are logged, never raised: without its record, an
    executor is judged as one of an earlier ddmq (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, reply: str, queue: str):
        self.root = os.fspath(root)
        self.reply = reply
        self.path = record_path(self.root, reply)
        self._static = {"host": HOST, "pid": os.getpid(), "started": process_start(os.getpid()),
                        "reply": reply, "queue": queue, "interval": BEAT_SECONDS,
                        "version": __version__}
        self._next_beat = 0.0
        self._written = False

    def write(self) -> None:
        """Write the record now."""
        if not is_executor_reply(self.reply):
            return
        self._next_beat = time.monotonic() + BEAT_SECONDS
        data = json.dumps(dict(self._static, beat=time.time())).encode("utf-8")
        folder = drivers_dir(self.root)
        try:
            st = protocol.lstat(folder, 30.0)
            if st is None:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            elif not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise UnsafeFileError(f"{folder} is not a folder of this user (a link?): "
                                      "not written into")
            protocol.atomic_write(self.path, data, mode=0o600)
            self._written = True
        except (OSError, UnsafeFileError) as err:
            log.warning("cannot write the executor record %s: %s", self.path, err)

    def beat(self) -> None:
        """Rewrite the record if :data:`BEAT_SECONDS` passed since the last time."""
        if time.monotonic() >= self._next_beat:
            self.write()

    def remove(self) -> None:
        """Delete the record (the reply queue and spill folder are gone)."""
        if self._written:
            protocol.remove_quietly(self.path)
            self._written = False


def read_record(root: str | os.PathLike, reply: str) -> tuple[dict[str, Any], float] | None:
    """(the record of the executor of ``reply``, its modification time), or
    None if there is none or it cannot be read (a link, not JSON, ...)."""
    path = record_path(root, reply)
    try:
        fd, st = reading.open_regular(path, _RECORD_MAX)
    except (OSError, UnsafeFileError):
        return None
    try:
        data = json.loads(os.read(fd, _RECORD_MAX + 1))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return (data, st.st_mtime) if isinstance(data, dict) else None


def death(root: str | os.PathLike, reply: str, clock: ServerClock) -> str | None:
    """Why the executor whose reply queue is ``reply`` is known to be dead
    (for messages: "its process is gone", ...), or None if it may be alive
    or is not an executor's (see the module docstring)."""
    match = _REPLY.match(reply)
    if match is None:
        return None
    found = read_record(root, reply)
    if found is None:
        pid = int(match.group("pid"))
        if match.group("host") == _host_in_name() and process_start(pid) is None:
            return f"pid {pid} on this host is gone"
        return None
    record, mtime = found
    try:
        host, pid = str(record["host"]), int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if host == HOST:
        started = process_start(pid)
        if started is None:
            return f"pid {pid} on {host} is gone"
        if record.get("started") is not None and started not in (-1, record.get("started")):
            return f"pid {pid} on {host} is another process now"
        return None
    silent = clock.now() - mtime
    if silent > DEAD_AFTER:
        return f"pid {pid} on {host} stopped beating {silent:.0f} s ago"
    return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it
    does not exist or is a zombie (killed, not reaped yet by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        try:
            os.kill(pid, 0)
            return -1  # exists; start time unknown (not Linux)
        except ProcessLookupError:
            return None
        except PermissionError:
            return -1
