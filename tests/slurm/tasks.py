"""Functions the Slurm tests run in workers (a small module the workers import by name:
``slurm.tasks``, found through the PYTHONPATH the jobs get from the test process)."""

from __future__ import annotations

import os
import time


def job() -> str:
    """``ARRAYID_INDEX`` of the Slurm array task this runs in."""
    return f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"


def where(x: int, pause: float = 0.0) -> tuple[int, str | None, str]:
    """(x squared, the node, the array task) after ``pause`` seconds."""
    if pause:
        time.sleep(pause)
    return x * x, os.environ.get("SLURMD_NODENAME"), job()


def where_slowly(x: int, pause: float) -> tuple[int, str | None, str]:
    """:func:`where`, under a name of its own: an executor that saw ``where`` return quickly
    bundles a burst of its calls (see ddmq.executor.publisher); calls of a function not seen
    yet go one per message."""
    return where(x, pause)


def attempt(x: int, seconds: float, folder: str) -> tuple[int, str]:
    """Note the attempt in ``folder/x`` (one line per start: the array task), sleep, and
    return (x, the array task)."""
    with open(os.path.join(folder, str(x)), "a", encoding="utf-8") as handle:
        handle.write(job() + "\n")
    time.sleep(seconds)
    return x, job()


def end_time() -> tuple[str, float | None, float | None]:
    """(the Slurm job id, when its time limit falls) as a worker inside it learns it: from its
    job's script, and asking Slurm afresh."""
    from ddmq.slurm import job_end_time
    return os.environ.get("SLURM_JOB_ID", ""), job_end_time(), job_end_time(fresh=True)


def hog(megabytes: int) -> int:
    """Take ``megabytes`` of memory (touched, so that it counts), then hold it a moment."""
    block = bytearray(megabytes * 1024 * 1024)
    for at in range(0, len(block), 4096):
        block[at] = 1
    time.sleep(1)
    return len(block)


def started_at() -> float:
    """When this call started (epoch seconds)."""
    return time.time()
