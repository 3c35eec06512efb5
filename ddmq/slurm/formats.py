"""Slurm's text formats, both ways: durations, timestamps, job ids.

Slurm writes durations as ``[DAYS-]HOURS:MINUTES:SECONDS`` (``squeue``'s
``%l`` and ``%M``, ``scontrol``'s ``TimeLimit``), reads them in more forms
(``--time=MINUTES``, ``MINUTES:SECONDS``, ``DAYS-HOURS``...), and writes
timestamps in the local time zone without one (``2025-01-31T17:03:00``).
``UNLIMITED``, ``INFINITE``, ``N/A``, ``Unknown`` and ``None`` mean "no
value" (None here). A job id is ``123``, or ``123_4`` for task 4 of array 123.
"""

from __future__ import annotations

import datetime
import math
import re
import time

__all__ = ["NO_VALUE", "parse_duration", "format_duration", "parse_timestamp", "slurm_time",
           "check_job_id"]

#: What Slurm prints where there is no value.
NO_VALUE = frozenset({"", "UNLIMITED", "INFINITE", "N/A", "NONE", "UNKNOWN", "(NULL)"})

_DURATION = re.compile(r"^(?:(?P<days>\d+)-)?(?P<rest>\d+(?::\d+){0,2})$")


def parse_duration(text: str, *, minutes_alone: bool = False) -> float | None:
    """Seconds of a Slurm duration; None for "no limit" or what is not one.

    As Slurm prints them (``minutes_alone=False``): ``SS``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH:MM:SS``. As ``sbatch --time`` reads them
    (``minutes_alone=True``): ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS``."""
    text = text.strip()
    if text.upper() in NO_VALUE:
        return None
    found = _DURATION.match(text)
    if not found:
        return None
    parts = [int(p) for p in found.group("rest").split(":")]
    days = found.group("days")
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
        return float(((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds)
    if len(parts) == 1:
        return float(parts[0] * 60 if minutes_alone else parts[0])
    if len(parts) == 2:
        return float(parts[0] * 60 + parts[1])
    return float((parts[0] * 60 + parts[1]) * 60 + parts[2])


def format_duration(seconds: float) -> str:
    """``D-HH:MM:SS`` (or ``HH:MM:SS``) for ``sbatch --time``, rounded up to a
    whole second."""
    total = int(math.ceil(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def slurm_time(value: str | float | datetime.timedelta) -> tuple[str, float | None]:
    """A time limit as ``sbatch --time`` takes it, and in seconds.

    A string is Slurm's own format (``"30"`` is 30 minutes, ``"2:00:00"``
    two hours); a number is seconds; a timedelta is itself. Raises
    ValueError for what is none of these."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool):
        raise ValueError(f"time must be a Slurm time string, seconds or a timedelta, not {value!r}")
    if isinstance(value, (int, float)):
        if not value > 0 or math.isinf(value):
            raise ValueError(f"time must be more than 0 seconds, not {value!r}")
        return format_duration(value), float(math.ceil(value))
    if isinstance(value, str):
        seconds = parse_duration(value, minutes_alone=True)
        if seconds is None and value.strip().upper() not in ("UNLIMITED", "INFINITE"):
            raise ValueError(f"not a Slurm time limit: {value!r} (e.g. '30' minutes, "
                             "'2:00:00', '1-00:00:00')")
        return value.strip(), seconds
    raise ValueError(f"time must be a Slurm time string, seconds or a timedelta, not {value!r}")


def parse_timestamp(text: str) -> float | None:
    """Epoch seconds of a Slurm timestamp (local time, ``YYYY-MM-DDTHH:MM:SS``);
    None for "no value" or what is not one."""
    text = text.strip()
    if text.upper() in NO_VALUE:
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


_JOB_ID = re.compile(r"^[0-9]+(?:_[0-9]+)?$")


def check_job_id(job_id: object) -> str:
    """``job_id`` as text if it is a Slurm job id (``123`` or ``123_4``), else
    ValueError: what goes on a Slurm command line is never an option."""
    text = str(job_id).strip() if isinstance(job_id, (str, int)) and not isinstance(job_id, bool) else ""
    if not _JOB_ID.match(text):
        raise ValueError(f"not a Slurm job id: {job_id!r} (e.g. 123 or 123_4)")
    return text
