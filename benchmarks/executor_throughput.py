"""Executor benchmark: DDMQExecutor side by side with ProcessPoolExecutor and loky.

What is measured (every executor with 2 workers, the same workloads as the
team's research notes, shared/research/executor-baselines.md):

====  =====================================================  ============================
W1    ``list(ex.map(noop, range(10_000)))``, default args      tasks/s
W2    10,000 ``submit(noop, i)``, then every ``result()``      tasks/s
W3    ``list(ex.map(noop, range(2_000), chunksize=100))``      tasks/s (median of 15 maps)
W4    200 tasks sleeping 20 ms (``map``, default args)         efficiency = 2 s / wall
W5    1,000 tasks each returning 1 MB (``map``, chunksize=1)    MB/s (10^6 bytes)
W6    one no-op ``submit(...).result()`` round trip, 200 times  median and p99 ms
====  =====================================================  ============================

How: each repetition creates every executor once (start-up timed separately,
workers warmed by one round trip), runs W1-W6 on it, and shuts it down; the
order of the executors rotates between repetitions, so a noisy minute of this
shared machine hits one repetition of several executors rather than every
repetition of one. The tables report medians over the repetitions, and the
ratio of ddmq to ProcessPoolExecutor computed within each repetition.
DDMQExecutor runs on a queue root in ``--dir`` (default: a temporary folder on
local disk; pass ``/dev/shm`` for tmpfs, or a network mount).

Output: a markdown table on stdout (for the README), all numbers in JSON
(``--json``), and a chart (``--png``) when matplotlib is importable.

Usage::

    python benchmarks/executor_throughput.py [--reps 3] [--dir DIR] [--only ddmq,ppe] [--quick]

It imports the ddmq of the checkout it is in (not PYTHONPATH's): to compare
two versions, run each checkout's own copy, from a folder that holds no
``ddmq`` (``python -m ddmq.worker`` looks in the current folder first).

``--run`` measures instead what a named run (``DDMQExecutor(root,
run=NAME)``) costs per call: W1 (5 maps per repetition) and W3 on an
executor with ``run=`` and on one without, both started once, taking turns
map by map (the order swapped every repetition), each map on arguments no
map had before (a run would return known calls without running them), and
W3 again on a list of ints that are not consecutive; it reports the medians
and the overhead per call::

    python benchmarks/executor_throughput.py --run [--reps 15] [--dir DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):  # the repo's ddmq, and bench_tasks for every executor's workers
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_tasks import MB, noop, one_mb, sleep20  # noqa: E402
noop_too = functools.partial(noop)  # noop under another run key (see measure_run_overhead)
from ddmq.executor import DDMQExecutor  # noqa: E402

WORKERS = 2


# --- executors ------------------------------------------------------------------------------

def make_executor(kind: str, folder: str) -> tuple[concurrent.futures.Executor, Callable[[], None]]:
    """A started executor with 2 workers, and what to do after its shutdown."""
    if kind == "ddmq":
        root = tempfile.mkdtemp(prefix="ddmq-bench-", dir=folder)
        return DDMQExecutor(root, max_workers=WORKERS), lambda: shutil.rmtree(root, ignore_errors=True)
    if kind == "ppe":
        return concurrent.futures.ProcessPoolExecutor(max_workers=WORKERS), lambda: None
    if kind == "loky":
        import loky
        return loky.ProcessPoolExecutor(max_workers=WORKERS), lambda: None
    raise ValueError(kind)


def available(kinds: list[str]) -> list[str]:
    out = []
    for kind in kinds:
        if kind == "loky":
            try:
                import loky  # noqa: F401
            except ImportError:
                print("# loky is not installed: its column is skipped (pip install loky)", file=sys.stderr)
                continue
        out.append(kind)
    return out


# --- workloads --------------------------------------------------------------------------------

W3_MAPS = 15
#: W1 maps per repetition of --run (one is too few to tell 10 % apart).
W1_MAPS = 5


def run_workloads(ex: concurrent.futures.Executor, scale: float) -> dict[str, float]:
    n1, n2, n3, n4, n5, n6 = (max(10, int(n * scale)) for n in (10_000, 10_000, 2_000, 200, 1_000, 200))
    out: dict[str, float] = {}

    t = time.perf_counter()
    assert list(ex.map(noop, range(n1))) == list(range(n1))
    out["W1 tasks/s"] = n1 / (time.perf_counter() - t)

    t = time.perf_counter()
    futures = [ex.submit(noop, i) for i in range(n2)]
    assert [f.result() for f in futures] == list(range(n2))
    out["W2 tasks/s"] = n2 / (time.perf_counter() - t)

    # One map takes milliseconds: time it W3_MAPS times and keep the median.
    took = []
    for _ in range(W3_MAPS):
        t = time.perf_counter()
        assert list(ex.map(noop, range(n3), chunksize=100)) == list(range(n3))
        took.append(time.perf_counter() - t)
    out["W3 tasks/s"] = n3 / statistics.median(took)

    t = time.perf_counter()
    assert list(ex.map(sleep20, range(n4))) == list(range(n4))
    wall = time.perf_counter() - t
    out["W4 efficiency"] = (n4 * 0.02 / WORKERS) / wall

    t = time.perf_counter()
    total = sum(len(r) for r in ex.map(one_mb, range(n5), chunksize=1))
    out["W5 MB/s"] = total / MB / (time.perf_counter() - t)

    samples = []
    for i in range(n6):
        t = time.perf_counter()
        ex.submit(noop, i).result()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    out["W6 p50 ms"] = statistics.median(samples)
    out["W6 p99 ms"] = samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]
    return out


def measure(kind: str, folder: str, scale: float) -> dict[str, float]:
    t = time.perf_counter()
    ex, after = make_executor(kind, folder)
    try:
        ex.submit(noop, 0).result(timeout=120)  # workers up and warm
        startup = time.perf_counter() - t
        cpu0 = _cpu_of_tree()
        out = run_workloads(ex, scale)
        out["cpu s (all processes)"] = _cpu_of_tree() - cpu0
        out["start-up s"] = startup
    finally:
        ex.shutdown(wait=True)
        after()
    return out


def _cpu_of_tree() -> float:
    """User+system CPU seconds of this process and all its live descendants."""
    pids, total = [os.getpid()], 0.0
    tick = os.sysconf("SC_CLK_TCK")
    seen = set()
    while pids:
        pid = pids.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                pids.extend(int(p) for p in handle.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


# --- the cost of a named run -------------------------------------------------------------------

def measure_run_overhead(folder: str, reps: int, scale: float) -> dict[str, dict[str, float]]:
    """Seconds per call of W1 and W3, with ``run=`` and without (see the
    module docstring): {"W1": {"plain": s, "run": s}, ...} (medians). Also
    W3 on a list of ints that are not consecutive (the keys of such calls
    are kept one by one, where those of a range are kept as spans)."""
    n1, n3 = max(10, int(10_000 * scale)), max(10, int(2_000 * scale))
    roots = [tempfile.mkdtemp(prefix="ddmq-bench-", dir=folder) for _ in range(2)]
    executors = {"plain": DDMQExecutor(roots[0], max_workers=WORKERS),
                 "run": DDMQExecutor(roots[1], max_workers=WORKERS, run="bench")}
    start = [0]

    def fresh(n: int, spread: bool) -> Sequence[int]:  # arguments no map had before
        start[0] += 2 * n
        return range(start[0] - 2 * n, start[0], 2) if spread else range(start[0] - n, start[0])

    def one_map(ex: concurrent.futures.Executor, n: int, chunksize: int | None,
                spread: bool = False) -> float:
        args = list(fresh(n, True)) if spread else fresh(n, False)
        fn = noop_too if spread else noop  # a function of its own: its keys are apart
        t = time.perf_counter()
        assert list(ex.map(fn, args, chunksize=chunksize)) == list(args)
        return (time.perf_counter() - t) / n

    workloads = {"W1": (n1, None, False, W1_MAPS), "W3": (n3, 100, False, W3_MAPS),
                 "W3, args not a range": (n3, 100, True, W3_MAPS)}
    took: dict[str, dict[str, list[float]]] = {w: {k: [] for k in executors} for w in workloads}
    try:
        for ex in executors.values():
            ex.submit(noop, -1).result(timeout=120)  # workers up and warm
            one_map(ex, n1, None)
        for rep in range(reps):
            order = list(executors) if rep % 2 == 0 else list(executors)[::-1]
            print(f"# rep {rep + 1}/{reps}: {' then '.join(order)} ...", file=sys.stderr, flush=True)
            for workload, (n, chunksize, spread, maps) in workloads.items():
                for _ in range(maps):
                    for kind in order:
                        took[workload][kind].append(one_map(executors[kind], n, chunksize, spread))
    finally:
        for ex in executors.values():
            ex.shutdown(wait=True)
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    return {w: {k: statistics.median(v) for k, v in by_kind.items()} for w, by_kind in took.items()}


def run_table(cost: dict[str, dict[str, float]]) -> str:
    lines = ["| workload | without run (µs/call) | with run= (µs/call) | overhead per call |",
             "|---|---|---|---|"]
    for workload, by_kind in cost.items():
        plain, run = by_kind["plain"] * 1e6, by_kind["run"] * 1e6
        lines.append(f"| {workload} | {plain:.2f} ({1e6 / plain:,.0f} tasks/s) | {run:.2f} "
                     f"({1e6 / run:,.0f} tasks/s) | {run - plain:+.2f} µs ({(run / plain - 1) * 100:+.1f} %) |")
    return "\n".join(lines)


# --- reporting --------------------------------------------------------------------------------

COLUMNS = ["W1 tasks/s", "W2 tasks/s", "W3 tasks/s", "W4 efficiency", "W5 MB/s", "W6 p50 ms",
           "W6 p99 ms", "start-up s"]
TARGETS = {"W1 tasks/s": "≥ ProcessPool", "W2 tasks/s": "≥ 1,000", "W3 tasks/s": "≥ ½ ProcessPool",
           "W4 efficiency": "≥ 0.95", "W5 MB/s": "≥ 300", "W6 p50 ms": "≤ 2", "W6 p99 ms": "≤ 20",
           "start-up s": ""}
NAMES = {"ddmq": "DDMQExecutor", "ppe": "ProcessPoolExecutor", "loky": "loky"}


def fmt(value: float, column: str) -> str:
    if "efficiency" in column:
        return f"{value:.2f}"
    if "ms" in column or column.endswith(" s"):
        return f"{value:.2f}"
    return f"{value:,.0f}"


def table(runs: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| executor | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for kind, reps in runs.items():
        cells = [fmt(statistics.median(r[c] for r in reps), c) for c in COLUMNS]
        lines.append(f"| {NAMES[kind]} | " + " | ".join(cells) + " |")
    if "ddmq" in runs and "ppe" in runs:
        ratios = []
        for column in COLUMNS:
            per_rep = [d[column] / p[column] for d, p in zip(runs["ddmq"], runs["ppe"]) if p[column]]
            ratios.append(f"{statistics.median(per_rep):.2f}x" if per_rep else "")
        lines.append("| ddmq / ProcessPool (per-rep median) | " + " | ".join(ratios) + " |")
    lines.append("| target for ddmq | " + " | ".join(TARGETS[c] for c in COLUMNS) + " |")
    return "\n".join(lines)


def chart(runs: dict[str, list[dict[str, float]]], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return
    panels = ["W1 tasks/s", "W2 tasks/s", "W3 tasks/s", "W4 efficiency", "W5 MB/s", "W6 p50 ms"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.4))
    kinds = list(runs)
    for ax, column in zip(axes, panels):
        values = [statistics.median(r[column] for r in runs[k]) for k in kinds]
        ax.bar(range(len(kinds)), values, color=["#d9534f", "#5b8def", "#8fbc5a"][:len(kinds)])
        ax.set_xticks(range(len(kinds)), [NAMES[k].replace("Executor", "") for k in kinds],
                      rotation=30, ha="right", fontsize=8)
        ax.set_title(column + (" (lower is better)" if "ms" in column else ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"Executors with {WORKERS} workers, median of {len(next(iter(runs.values())))} reps",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"# chart written to {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="folder for DDMQExecutor's queue root (default: the temp folder)")
    parser.add_argument("--only", default="ddmq,ppe,loky",
                        help="executors, comma-separated: " + ", ".join(NAMES))
    parser.add_argument("--quick", action="store_true", help="a tenth of every workload, 1 rep")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "executor_throughput.json"))
    parser.add_argument("--png", default=os.path.join(HERE, "results", "executor_throughput.png"))
    parser.add_argument("--run", action="store_true",
                        help="measure the cost per call of run= on W1 and W3 instead (see above)")
    args = parser.parse_args(argv)
    scale, reps = (0.1, 1) if args.quick else (1.0, args.reps)
    if args.run:
        print(run_table(measure_run_overhead(args.dir, reps, scale)))
        return 0
    unknown = [kind for kind in args.only.split(",") if kind not in NAMES]
    if unknown:
        parser.error(f"--only: unknown executor {unknown[0]!r} (choose from {', '.join(NAMES)})")
    kinds = available(args.only.split(","))
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for rep in range(reps):
        order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
        for kind in order:
            print(f"# rep {rep + 1}/{reps}: {NAMES[kind]} ...", file=sys.stderr, flush=True)
            runs[kind].append(measure(kind, args.dir, scale))
    print(table(runs))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                               "python": platform.python_version(), "dir": args.dir,
                               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                   "workers": WORKERS, "scale": scale, "runs": runs}, handle, indent=1)
    print(f"# numbers written to {args.json}", file=sys.stderr)
    chart(runs, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
