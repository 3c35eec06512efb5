"""The checks of ``DDMQExecutor``'s options, made before anything on disk changes.

Each bad option raises ``ValueError`` saying which option and what it was
given; a run name that cannot be one raises :class:`~.errors.RunError`.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .runs import check_run_name


def check_options(max_workers: int | None, lease: float | None, retries: int, priority: int | None,
                  task_duration: float | None, workers: Any, run: str | None,
                  retry_failed: bool) -> int:
    """Check the executor's options; return ``max_workers`` (None: ``os.cpu_count()``)."""
    if max_workers is None:
        max_workers = os.cpu_count() or 1
    if type(max_workers) is not int or max_workers < 0:
        raise ValueError(f"max_workers must be a whole number >= 0 or None, not {max_workers!r}")
    if lease is not None and (not isinstance(lease, (int, float)) or not lease >= 1):
        raise ValueError(f"lease must be at least 1 second or None, not {lease!r}")
    if type(retries) is not int or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0, not {retries!r}")
    if priority is not None and (type(priority) is not int or priority < 0):
        raise ValueError(f"priority must be a whole number >= 0 or None, not {priority!r}")
    if task_duration is not None and (isinstance(task_duration, bool) or not isinstance(
            task_duration, (int, float)) or not 0 <= task_duration < math.inf):
        raise ValueError(f"task_duration must be 0 or more seconds or None, not {task_duration!r}")
    if workers is not None:
        from ..slurm import SlurmWorkers  # Slurm only when asked for
        if not isinstance(workers, SlurmWorkers):
            raise ValueError(f"workers must be a ddmq.slurm.SlurmWorkers or None, not {workers!r}")
    if retry_failed and run is None:
        raise ValueError("retry_failed=True needs a run (run='NAME')")
    if run is not None:
        check_run_name(run)
    return max_workers
