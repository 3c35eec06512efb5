"""The jobs of one name, from one ``squeue`` call, asked at most every few seconds.

:func:`list_jobs` runs ``squeue -h -r -t all -u UID --name NAME -o FORMAT``:
one line per array task (``-r``), finished ones too (``-t all``: Slurm keeps
them ``MinJobAge`` seconds, 300 by default), of this user only, parsed into
:class:`JobRow`. Its answer is shared by every caller in the process and
reused for :data:`MIN_INTERVAL` seconds, so that no number of executors,
pollers and status commands in one process asks the controller more often
than that for one name (a failure is remembered as long, and raised again).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any

from .commands import run
from .errors import SlurmError
from .formats import NO_VALUE, parse_duration, parse_timestamp

__all__ = ["MIN_INTERVAL", "JobRow", "ACTIVE_STATES", "PENDING_STATES", "list_jobs", "parse_rows"]

#: Least seconds between two ``squeue`` calls for one job name, per process.
MIN_INTERVAL = 5.0

#: Job states in which a job still holds, or waits for, its resources.
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                            "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"})
ACTIVE_STATES = PENDING_STATES | {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}

# squeue -o fields, "|" between them; the comment last, so that it may hold anything.
_FIELDS = ("id", "job_id", "array_id", "index", "state", "node", "reason", "start", "end",
           "time_limit", "elapsed", "memory", "name", "comment")
_FORMAT = "|".join(("%i", "%A", "%F", "%K", "%T", "%N", "%r", "%S", "%e", "%l", "%M", "%m",
                    "%j", "%k"))


@dataclasses.dataclass(frozen=True)
class JobRow:
    """One job (one array task), as ``squeue`` shows it.

    ``id``: how Slurm names it for people and for ``scontrol``/``scancel``
    (``123_4``; ``123`` for a job that is not an array). ``job_id``: the
    number Slurm gave this task once it started (a pending task still shows
    its array's). ``array_id``, ``index``: its array and its place in it.
    ``node``: where it runs or ran ("" while pending). ``reason``: why it
    waits, or how it ended (Slurm's word, e.g. ``Resources``,
    ``NonZeroExitCode``). ``start``, ``end``: epoch seconds (``end`` of a
    running job is when its time limit falls). ``time_limit``, ``elapsed``:
    seconds. ``memory``: what it asked for, per node or per CPU.
    """

    id: str
    job_id: str
    array_id: str
    index: int | None
    state: str
    node: str
    reason: str
    start: float | None
    end: float | None
    time_limit: float | None
    elapsed: float | None
    memory: str
    name: str
    comment: str

    @property
    def active(self) -> bool:
        """True while the job runs or waits to run."""
        return self.state in ACTIVE_STATES

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _text(value: str) -> str:
    return "" if value.strip().upper() in NO_VALUE else value.strip()


def parse_rows(out: str) -> list[JobRow]:
    """The rows of ``squeue -o`` output in ddmq's format (lines that do not
    parse are skipped)."""
    rows = []
    for line in out.splitlines():
        cells = line.split("|", len(_FIELDS) - 1)
        if len(cells) != len(_FIELDS):
            continue
        v = dict(zip(_FIELDS, cells))
        index = v["index"].strip()
        rows.append(JobRow(
            id=v["id"].strip(), job_id=v["job_id"].strip(), array_id=v["array_id"].strip(),
            index=int(index) if index.isdigit() else None, state=v["state"].strip(),
            node=_text(v["node"]), reason=_text(v["reason"]), start=parse_timestamp(v["start"]),
            end=parse_timestamp(v["end"]), time_limit=parse_duration(v["time_limit"]),
            elapsed=parse_duration(v["elapsed"]), memory=_text(v["memory"]), name=v["name"].strip(),
            comment=_text(v["comment"])))
    return rows


class _Answer:
    __slots__ = ("at", "rows", "error")

    def __init__(self, at: float, rows: list[JobRow], error: SlurmError | None):
        self.at, self.rows, self.error = at, rows, error


_answers: dict[tuple[str, str, str], _Answer] = {}
_lock = threading.Lock()
#: ``squeue`` calls made by this process (for tests and figures).
calls = 0


def list_jobs(name: str, *, min_interval: float = MIN_INTERVAL) -> tuple[list[JobRow], float]:
    """(rows, taken): this user's jobs named ``name``, pending, running and
    recently finished, and the ``time.monotonic()`` at which ``squeue``
    answered. An answer younger than ``min_interval`` seconds (never less
    than :data:`MIN_INTERVAL`) is reused. Raises SlurmError if ``squeue``
    is missing or fails (and again, without asking, for that long)."""
    global calls
    key = (os.environ.get("SLURM_CONF", ""), str(os.getuid()), name)
    with _lock:  # one caller asks; the others wait for its answer
        answer = _answers.get(key)
        now = time.monotonic()
        if answer is None or now - answer.at >= max(min_interval, MIN_INTERVAL):
            calls += 1
            try:
                out = run(["squeue", "-h", "-r", "-t", "all", "-u", key[1], f"--name={name}",
                           "-o", _FORMAT])
                answer = _Answer(time.monotonic(), parse_rows(out), None)
            except SlurmError as err:
                answer = _Answer(time.monotonic(), [], err)
            _answers[key] = answer
    if answer.error is not None:
        raise answer.error
    return list(answer.rows), answer.at
