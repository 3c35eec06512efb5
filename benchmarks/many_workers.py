"""Many workers on one queue: 64 local workers on one machine, the root on tmpfs.

What is measured (issue 12, "Scale"):

=====  ===========================================================  =====================
idle   CPU of the 64 workers together while no task waits,           % of one core
       over ``--idle-seconds`` (after they settled into their wait)   (target <= 1 %)
map    ``list(ex.map(sleep_100ms, range(64 * 50), chunksize=1))``     efficiency =
       with the 64 workers warm                                       ideal / wall (>= 0.90)
=====  ===========================================================  =====================

The ideal wall time of the map is ``tasks * 0.1 s / 64``: every worker busy
all the time. CPU is read from ``/proc/PID/stat`` (user + system) of the
worker processes, so the figure is the workers' own, not the executor's (the
executor's is reported beside it), and per task during the map. The map
is long enough (5 s ideal) to measure the steady state, where 64 workers
compete for the head of one queue. The executor is a plain
``DDMQExecutor(root, max_workers=64)``: its local workers are the same
``python -m ddmq.worker`` processes as on a cluster.

Usage::

    python benchmarks/many_workers.py [--workers 64] [--dir /dev/shm] [--reps 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_tasks import sleep100  # noqa: E402
from ddmq.executor import DDMQExecutor, list_workers  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (those gone count 0)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, ValueError, IndexError):
            continue
    return total


def worker_pids(ex: DDMQExecutor) -> list[int]:
    return [w.proc.pid for w in ex._pool.workers]


def measure(workers: int, folder: str, idle_seconds: float, per_worker: int) -> dict[str, float]:
    root = tempfile.mkdtemp(prefix="ddmq-many-", dir=folder)
    try:
        started = time.perf_counter()
        with DDMQExecutor(root, max_workers=workers, start_timeout=300) as ex:
            ready = time.perf_counter() - started
            pids = worker_pids(ex)
            # Warm: every worker ran a task, then all settle into their idle wait.
            list(ex.map(sleep100, range(workers), chunksize=1))
            time.sleep(min(15.0, idle_seconds))
            cpu0, own0, t0 = cpu_seconds(pids), cpu_seconds([os.getpid()]), time.perf_counter()
            time.sleep(idle_seconds)
            wall = time.perf_counter() - t0
            idle_pct = 100 * (cpu_seconds(pids) - cpu0) / wall
            executor_pct = 100 * (cpu_seconds([os.getpid()]) - own0) / wall
            live = len(list_workers(root)[0])

            n = workers * per_worker
            cpu0, own0 = cpu_seconds(pids), cpu_seconds([os.getpid()])
            t = time.perf_counter()
            out = list(ex.map(sleep100, range(n), chunksize=1))
            wall = time.perf_counter() - t
            assert out == list(range(n))
            busy_cpu = cpu_seconds(pids) - cpu0
            own_cpu = cpu_seconds([os.getpid()]) - own0
        return {"workers": workers, "live workers seen": live, "start-up s": ready,
                "idle CPU % of a core (workers)": idle_pct,
                "idle CPU % of a core (executor)": executor_pct,
                "map tasks": n, "map wall s": wall,
                "efficiency": (n * 0.1 / workers) / wall,
                "map worker CPU per task (ms)": 1000 * busy_cpu / n,
                "map executor CPU per task (ms)": 1000 * own_cpu / n}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--dir", default="/dev/shm", help="where the root goes (default: tmpfs)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--tasks-per-worker", type=int, default=50)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    runs = []
    for rep in range(args.reps):
        figures = measure(args.workers, args.dir, args.idle_seconds, args.tasks_per_worker)
        runs.append(figures)
        print(f"# rep {rep + 1}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in figures.items()), file=sys.stderr)
    keys = [k for k in runs[0] if isinstance(runs[0][k], float)]
    print(f"| {args.workers} workers, root in {args.dir} | median of {args.reps} | runs |")
    print("| --- | --- | --- |")
    for key in keys:
        values = [r[key] for r in runs]
        print(f"| {key} | {statistics.median(values):.3g} | {', '.join(f'{v:.3g}' for v in values)} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version(), "runs": runs}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
