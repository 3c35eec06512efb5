"""Task functions of benchmarks/executor_throughput.py.

They live in a module, not in the script, so that every executor pickles them
by reference, as the research harness did (shared/research/executor-baselines.md):
a function defined in ``__main__`` is pickled by value by cloudpickle, with a
fresh copy of the globals it uses, which would make ``one_mb`` regenerate its
megabyte on every call in DDMQExecutor and loky but not in ProcessPoolExecutor.
"""

from __future__ import annotations

import os
import time
from typing import Any

MB = 1_000_000
_PAYLOAD: list[bytes] = []


def noop(x: Any = None) -> Any:
    return x


def sleep20(x: Any) -> Any:
    time.sleep(0.02)
    return x


def one_mb(x: int) -> bytes:
    """A new 1 MB bytes object per call, its first 8 bytes the argument: W5
    measures the transport of results, not os.urandom (the random megabyte is
    drawn once per worker process), and no executor can send one object once
    for several calls (pickle's memo would, for calls sharing a chunk or a
    reply, if every call returned the same object)."""
    if not _PAYLOAD:
        _PAYLOAD.append(os.urandom(MB))
    return x.to_bytes(8, "little") + _PAYLOAD[0][8:]


def sleep100(x: Any) -> Any:
    """100 ms of waiting (benchmarks/many_workers.py)."""
    time.sleep(0.1)
    return x


def slow_noting_start(x: int, seconds: float, folder: str) -> int:
    """Note when this call started in ``folder/x.PID``, then wait ``seconds``
    (benchmarks/slow_after_quick.py)."""
    with open(os.path.join(folder, f"{x}.{os.getpid()}"), "w", encoding="utf-8") as handle:
        handle.write(repr(time.time()))
    time.sleep(seconds)
    return x
