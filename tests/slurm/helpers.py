"""Small helpers of the Slurm tests: waiting for a condition, the workers of a root, sbatch."""

from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

from ddmq.executor import list_workers

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 60, pause: float = 0.2) -> T:
    """Call ``check`` until it returns something true; that value (AssertionError after
    ``timeout`` seconds, naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what} (last: {value!r})")
        time.sleep(pause)


def live_workers(root: str, queue: str = "tasks") -> list:
    """The live workers of ``queue`` from their heartbeat records ([] before the root exists)."""
    if not os.path.exists(os.path.join(root, "ddmq.yaml")):
        return []
    return list_workers(root, queue)[0]


def submit_foreign(slurm, name: str, seconds: int = 600) -> str:
    """A job that is not ddmq's (a sleep named ``name``); its id."""
    return slurm.command("sbatch", "--parsable", f"--job-name={name}", "--output=/dev/null",
                         "--wrap", f"sleep {seconds}").strip()
