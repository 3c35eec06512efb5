"""The environment a process unpickles in: its Python, cloudpickle and ddmq versions, and where it runs.

A worker unpickles the caller's functions, so it must run the same Python
(major.minor: the bytecode of a function sent by value, and pickle's view
of the standard library, change between them) and the same cloudpickle (its
format changes between releases). A stale environment shows up as errors
that name neither (``TypeError: code() argument 13 must be str``), so both
sides say what they run::

    executor                                      worker
    --------                                      ------
    task envelope  "env": {"python": "3.11.7",    heartbeat record: "python", "cloudpickle",
                           "cloudpickle": "3.0.0",  "version" (ddmq's), and in a Slurm job
                           "ddmq": "1.0.0"}          "slurm_job" (123_4, or the job id) and "node"
         │                                              │
         └─ the worker, when a task fails to unpickle,  └─ the executor warns once per difference
            names the versions that differ                 that breaks unpickling (check_workers)

The ``env`` field is advisory: it is not signed (the signature covers the
payload, which is what is unpickled), and is only ever used to word an
error message.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
import warnings
from typing import Any, Iterable, Mapping

import cloudpickle

from .. import __version__

__all__ = ["VERSIONS", "BREAKING", "versions", "slurm_place", "heartbeat_fields", "record_fields",
           "differences",
           "describe_differences", "unpickling_note", "EnvironmentWarning", "EnvironmentCheck"]

log = logging.getLogger(__name__)

#: The versions a process states, by name.
VERSIONS = ("python", "cloudpickle", "ddmq")
#: The versions that must match for a worker to unpickle what the executor pickled
#: (Python compared on major.minor only).
BREAKING = ("python", "cloudpickle")


def versions() -> dict[str, str]:
    """This process's Python, cloudpickle and ddmq versions."""
    return {"python": platform.python_version(), "cloudpickle": str(cloudpickle.__version__),
            "ddmq": __version__}


def slurm_place(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where this process runs under Slurm: ``slurm_job`` (``ARRAY_TASK`` as
    ``123_4``, or the job id) and ``node``; {} outside a Slurm job."""
    env = os.environ if environ is None else environ
    array, index = env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")
    job = f"{array}_{index}" if array.isdigit() and index.isdigit() else env.get("SLURM_JOB_ID", "")
    place = {}
    if job:
        place["slurm_job"] = job
    if env.get("SLURMD_NODENAME"):
        place["node"] = env["SLURMD_NODENAME"]
    return place


def heartbeat_fields() -> dict[str, str]:
    """What a worker adds to its heartbeat record: its Python and
    cloudpickle versions (ddmq's is there already, as "version"), and its
    Slurm job and node when it runs in one."""
    mine = versions()
    return {"python": mine["python"], "cloudpickle": mine["cloudpickle"], **slurm_place()}


#: The fields of :func:`heartbeat_fields` and ddmq's version, as a record names them.
RECORD_FIELDS = ("version", "python", "cloudpickle", "slurm_job", "node")


def record_fields(data: Mapping[str, Any]) -> dict[str, str]:
    """Those fields of a heartbeat record's data, as text ("" where missing)."""
    return {name: data[name] if isinstance(data.get(name), str) else "" for name in RECORD_FIELDS}


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def differences(theirs: Mapping[str, Any], ours: Mapping[str, str] | None = None,
                names: Iterable[str] = BREAKING) -> dict[str, tuple[str, str]]:
    """{name: (ours, theirs)} for each of ``names`` both state and that
    differ (Python by major.minor). Unstated versions are not differences."""
    ours = versions() if ours is None else ours
    found = {}
    for name in names:
        mine, other = ours.get(name), theirs.get(name)
        if not isinstance(mine, str) or not isinstance(other, str) or not other:
            continue
        if name == "python" and _major_minor(mine) == _major_minor(other):
            continue
        if mine != other:
            found[name] = (mine, other)
    return found


def describe_differences(found: Mapping[str, tuple[str, str]], ours: str, theirs: str) -> str:
    """``Python 3.11.7 here, 3.12.1 on the worker; cloudpickle ...`` for
    the differences of :func:`differences`."""
    label = {"python": "Python", "cloudpickle": "cloudpickle", "ddmq": "ddmq"}
    return "; ".join(f"{label.get(name, name)} {mine} {ours}, {other} {theirs}"
                     for name, (mine, other) in found.items())


def unpickling_note(task_env: Any) -> str:
    """For a task that could not be unpickled on this worker: which versions
    differ from those of the executor that sent it (its envelope's ``env``);
    "" when none is known to."""
    if not isinstance(task_env, dict):
        return ""
    found = differences(task_env, names=VERSIONS)
    if not found:
        return ""
    return ("this worker's environment differs from the executor's: "
            + describe_differences(found, "on this worker", "where the task was submitted")
            + " (run the workers with the executor's interpreter and packages)")


class EnvironmentWarning(UserWarning):
    """A live worker runs a Python or cloudpickle that cannot reliably
    unpickle this executor's tasks."""


class EnvironmentCheck:
    """Warns once (``warnings.warn``, :class:`EnvironmentWarning`) for each
    distinct breaking difference between this process and a live worker of
    ``root``. :meth:`scan` is called by the executor's housekeeping round;
    it looks at most every ``interval`` seconds, with one listing of the
    heartbeat folder, and reads each worker's record once (its versions do
    not change while it lives). Thread-safe."""

    def __init__(self, root: str | None = None, interval: float = 10.0) -> None:
        self.root = root
        self.interval = interval
        self._told: set[tuple[str, str, str]] = set()
        self._read: set[str] = set()  # record file names looked at
        self._next = 0.0
        self._lock = threading.Lock()
        self._ours = versions()

    def scan(self) -> list[str]:
        """Look at the records of workers not seen yet (at most every
        ``interval`` s); the warnings given now. Never raises."""
        from .heartbeat import heartbeat_dir, read_record  # heartbeat imports this module

        now = time.monotonic()
        if self.root is None or now < self._next:
            return []
        self._next = now + self.interval
        folder = heartbeat_dir(self.root)
        try:
            names = [n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith(".")]
        except OSError:
            return []
        fresh = []
        for name in names:
            if name in self._read:
                continue
            record = read_record(os.path.join(folder, name), time.time())
            if record is not None:
                self._read.add(name)
                if not record.lost:
                    fresh.append(record)
        self._read.intersection_update(names)
        return self.check(fresh)

    def check(self, records: Iterable[Any]) -> list[str]:
        """Look at worker records (anything with ``host``, ``pid`` and the
        version attributes); the warnings given now."""
        given = []
        for record in records:
            stated = {name: getattr(record, name, None) for name in BREAKING}
            found = differences(stated, self._ours)
            for name, (mine, other) in found.items():
                key = (name, mine, other)
                with self._lock:
                    if key in self._told:
                        continue
                    self._told.add(key)
                where = getattr(record, "node", None) or getattr(record, "host", "?")
                text = (f"worker {getattr(record, 'host', '?')}:{getattr(record, 'pid', '?')} "
                        f"(on {where}) runs {describe_differences({name: (mine, other)}, 'here', 'there')}"
                        ": it may fail to unpickle this executor's tasks; run the workers with "
                        "this interpreter and its packages")
                log.warning("%s", text)
                warnings.warn(text, EnvironmentWarning, stacklevel=2)
                given.append(text)
        return given
