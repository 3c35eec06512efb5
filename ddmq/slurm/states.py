"""Why a Slurm job ended: its state read from Slurm, and said in one line.

:func:`job_end` asks ``scontrol show job -o ID`` (Slurm keeps a finished job
``MinJobAge`` seconds, 300 by default), and if the controller no longer
knows the job, ``sacct`` (where accounting is enabled). :class:`JobEnd`
holds what matters to a ddmq user: the state, the exit status or signal,
the node, the memory and time limits asked for; :func:`describe` turns it
into one line, e.g.::

    Slurm job 123_4 on n2 ran out of memory (limit --mem=100M): OUT_OF_MEMORY

The states, and what they mean for the workers of the job:

    COMPLETED      every worker ended cleanly (signal, --idle-timeout)
    FAILED         a worker exited with an error status (127: its interpreter is missing)
    CANCELLED      scancel (by the user, ddmq, or an administrator)
    TIMEOUT        the job reached its time limit
    OUT_OF_MEMORY  the job went over its memory limit and was killed (cgroups)
    NODE_FAIL      its node stopped answering; what ran there is lost
    PREEMPTED      a job of higher priority took its resources
    BOOT_FAIL, DEADLINE   its node could not boot; it could not finish by its --deadline

Finished results are remembered for the life of the process: they do not change.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
import threading
from typing import Any

from .commands import run
from .errors import SlurmCommandError, SlurmError
from .formats import NO_VALUE, check_job_id, parse_duration, parse_timestamp

__all__ = ["JobEnd", "ENDED_BADLY", "FINAL_STATES", "job_end", "array_ends", "parse_scontrol", "describe"]

log = logging.getLogger(__name__)

#: States of a job whose workers did not end of their own accord.
ENDED_BADLY = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                         "PREEMPTED", "BOOT_FAIL", "DEADLINE"})
#: States after which a job never changes again.
FINAL_STATES = ENDED_BADLY | {"COMPLETED"}


@dataclasses.dataclass(frozen=True)
class JobEnd:
    """A job's state, and what explains it.

    ``id``: ``123_4`` for an array task, else ``123``. ``exit_status`` and
    ``signal``: of the batch script (Slurm's ``ExitCode=STATUS:SIGNAL``).
    ``memory_limit``: as it was asked for, e.g. ``--mem=100M`` or
    ``--mem-per-cpu=1G``. ``time_limit``, ``run_time``: seconds.
    ``source``: ``scontrol`` or ``sacct``.
    """

    id: str
    state: str
    reason: str = ""
    exit_status: int | None = None
    signal: int | None = None
    node: str = ""
    memory_limit: str = ""
    time_limit: float | None = None
    run_time: float | None = None
    start: float | None = None
    end: float | None = None
    source: str = "scontrol"

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def ended_badly(self) -> bool:
        return self.state in ENDED_BADLY

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), description=describe(self))


# --- scontrol -------------------------------------------------------------------------

_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")


def parse_scontrol(out: str) -> list[dict[str, str]]:
    """The records of ``scontrol show ... -o`` (one per line), as
    {key: value}; a value runs until the next `` Key=`` (so values with
    spaces, such as a command line, stay whole)."""
    records = []
    for line in out.splitlines():
        keys = list(_KEY.finditer(line))
        record = {}
        for this, following in zip(keys, keys[1:] + [None]):
            stop = following.start() if following is not None else len(line)
            record[this.group(1)] = line[this.end():stop].strip()
        if record:
            records.append(record)
    return records


def _memory_limit(record: dict[str, str]) -> str:
    for key, option in (("MinMemoryNode", "--mem"), ("MinMemoryCPU", "--mem-per-cpu")):
        value = record.get(key, "")
        if value and value.upper() not in NO_VALUE and value != "0":
            return f"{option}={value}"
    return ""


def _exit_code(text: str) -> tuple[int | None, int | None]:
    status, _, sig = text.partition(":")
    return (int(status) if status.isdigit() else None, int(sig) if sig.isdigit() else None)


def _from_scontrol(record: dict[str, str]) -> JobEnd:
    array, task = record.get("ArrayJobId", ""), record.get("ArrayTaskId", "")
    job_id = f"{array}_{task}" if array and task.isdigit() else record.get("JobId", "")
    status, sig = _exit_code(record.get("ExitCode", ""))
    node = record.get("NodeList", "")
    return JobEnd(id=job_id, state=record.get("JobState", "UNKNOWN").split("+")[0],
                  reason=record.get("Reason", "") if record.get("Reason", "") != "None" else "",
                  exit_status=status, signal=sig, node="" if node.upper() in NO_VALUE else node,
                  memory_limit=_memory_limit(record),
                  time_limit=parse_duration(record.get("TimeLimit", "")),
                  run_time=parse_duration(record.get("RunTime", "")),
                  start=parse_timestamp(record.get("StartTime", "")),
                  end=parse_timestamp(record.get("EndTime", "")))


def _from_sacct(job_id: str) -> JobEnd | None:
    """The job's end from accounting, or None where there is none (no
    ``sacct``, accounting disabled, job unknown)."""
    try:
        out = run(["sacct", "-n", "-P", "-X", "-j", job_id,
                   "-o", "JobID,State,ExitCode,NodeList,ReqMem,Timelimit,Elapsed"])
    except SlurmError as err:
        log.debug("sacct cannot say how job %s ended: %s", job_id, err)
        return None
    for line in out.splitlines():
        cells = line.split("|")
        if len(cells) != 7 or cells[0] != job_id:
            continue
        status, sig = _exit_code(cells[2])
        mem = cells[4].strip()
        return JobEnd(id=job_id, state=cells[1].split()[0].rstrip("+") if cells[1].split() else "UNKNOWN",
                      exit_status=status, signal=sig, node="" if cells[3].upper() in NO_VALUE else cells[3],
                      memory_limit=f"--mem={mem}" if mem and mem != "0" else "",
                      time_limit=parse_duration(cells[5]), run_time=parse_duration(cells[6]),
                      source="sacct")
    return None


_known: dict[str, JobEnd] = {}
_known_lock = threading.Lock()


def _scontrol(job_id: str) -> list[JobEnd]:
    """``scontrol show job -o ID``: one record, or one per task of an array;
    [] if the controller does not know the job (any more). Final ones are
    remembered."""
    try:
        records = parse_scontrol(run(["scontrol", "show", "job", "-o", job_id]))
    except SlurmCommandError as err:
        if "invalid job id" not in err.stderr.lower():
            raise
        return []
    ends = [_from_scontrol(r) for r in records]
    with _known_lock:
        _known.update((e.id, e) for e in ends if e.final)
    return ends


def job_end(job_id: str) -> JobEnd | None:
    """How job ``job_id`` (``123`` or ``123_4``) ended, or where it stands
    if it has not; None if neither the controller nor accounting knows it
    any more. Raises ValueError for what is not a job id, SlurmError if
    ``scontrol`` is missing or the controller does not answer."""
    job_id = check_job_id(job_id)
    with _known_lock:
        if job_id in _known:
            return _known[job_id]
    ends = _scontrol(job_id)
    found = next((e for e in ends if e.id == job_id), ends[0] if len(ends) == 1 else None)
    if found is None:
        found = _from_sacct(job_id)
        if found is not None and found.final:
            with _known_lock:
                _known[job_id] = found
    return found


def array_ends(array_id: str) -> dict[str, JobEnd]:
    """{task id: JobEnd} of every task of array ``array_id`` the controller
    still knows, from one ``scontrol`` call (a pending range counts once)."""
    return {e.id: e for e in _scontrol(check_job_id(array_id))}


# --- in words -------------------------------------------------------------------------

def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe(end: JobEnd) -> str:
    """One line saying what became of the job, ending with Slurm's state."""
    where = f"Slurm job {end.id}" + (f" on {end.node}" if end.node else "")
    limit = f" (limit {end.memory_limit})" if end.memory_limit else ""
    state = end.state
    if state == "OUT_OF_MEMORY":
        what = f"ran out of memory{limit}"
    elif state == "TIMEOUT":
        hours = f" ({end.time_limit / 60:g} min)" if end.time_limit else ""
        what = f"reached its time limit{hours}"
    elif state == "NODE_FAIL":
        what = "lost its node (node failure): what ran there is lost"
    elif state == "CANCELLED":
        what = "was cancelled (scancel)"
    elif state == "PREEMPTED":
        what = "was preempted by a job of higher priority"
    elif state == "BOOT_FAIL":
        what = "could not start: its node failed to boot"
    elif state == "DEADLINE":
        what = "could not finish before its deadline"
    elif state == "FAILED":
        if end.signal:
            what = f"was killed by {_signal_name(end.signal)}"
            if end.signal == signal.SIGKILL and end.memory_limit:
                what += f" (out of memory?{limit})"
        elif end.exit_status == 127:
            what = "failed with exit status 127 (command not found: is the workers' python there?)"
        else:
            what = f"failed with exit status {end.exit_status if end.exit_status is not None else '?'}"
    elif state == "COMPLETED":
        what = "ended normally"
    elif state in ("PENDING", "REQUEUED", "CONFIGURING"):
        what = "is waiting to start" + (f" ({end.reason})" if end.reason else "")
    elif state in ("RUNNING", "COMPLETING"):
        what = "is running"
    else:
        what = "is in state " + state
    return f"{where} {what}: {state}"
