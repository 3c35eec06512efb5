"""Cluster benchmark: ddmq on the GlusterFS testbed of tests/cluster (issue 4, "Benchmarks").

Two measurements on one testbed (a GlusterFS server and three FUSE client "nodes" a, b, c on
this machine, see tests/cluster/harness.py and the README, "Running on a cluster"):

1. Queue throughput, network mount against local disk. Exactly the measurement of
   ``benchmarks/queue_throughput.py`` (whose functions this script calls): one process
   publishes N messages, then consumes and acks until the queue is empty; ``ddmq`` against the
   ``raw`` rename protocol in plain Python (the lower bound), each run in a fresh process and a
   fresh root, on node a's mount and on a local folder (``--local-dir``, default /var/tmp), in
   the same repetitions so both see the same machine load.

2. Executor scaling. ``DDMQExecutor(root, max_workers=0)`` on node c's mount, and
   ``python -m ddmq.worker ROOT`` workers started on 1, 2 and 3 nodes (a; a+b; a+b+c), each
   given the root as seen through its own node's mount. Default: one worker per node. On a real
   cluster a node would run one worker per core; here the "nodes" share this machine's cores
   (2 on the usual VM) with the GlusterFS server and the three client daemons, so one worker
   per node measures how the queue scales across mounts (separate caches and connections)
   rather than CPU oversubscription. ``--workers-per-node`` changes it. Two workloads, both
   ``map(..., chunksize=1)`` so every task is one message that crosses the network filesystem
   (publish, claim, reply, ack):

   * ``sleep``: ``--sleep-tasks`` (300) calls of ``time.sleep(--sleep-ms / 1000)`` (50 ms).
     The tasks wait instead of computing, so workers on a 2-core machine can scale. Reported:
     tasks/s, the ideal rate (workers / sleep), efficiency = ideal wall time / measured wall
     time, and the speed-up over 1 node.
   * ``noop``: ``--noop-tasks`` (300) calls of a function that returns its argument: the cost
     of the queue itself (file server round trips and CPU of the clients and the server). It
     shows what more nodes give when there is no waiting to overlap: on 2 cores, little.

   Each repetition starts a fresh root and fresh workers for each node count (the order of the
   node counts rotates between repetitions), waits until every worker wrote its heartbeat, warms
   up with one round trip, then runs ``sleep`` and ``noop``. Workers run with ``-v``; their
   logs give the tasks each one ran. A task run twice (a duplicate after a lost lease, or two
   nodes claiming one message through a stale name cache) shows as more task runs than tasks submitted
   and as replies the executor dropped as "not pending".

The testbed: by default this script brings up its own (tag ``bench<pid>``, state
``/var/tmp/ddmq-cluster/bench<pid>``) with ``tests/cluster/harness.Cluster`` and always tears
it down at the end, also on Ctrl-C or SIGTERM. ``--cluster-state DIR`` uses a testbed that is
already up instead (e.g. ``/var/tmp/ddmq-cluster/dqc1234``) and leaves it up; only this
script's own folders in it are removed. Needs root and /dev/fuse (and Debian's GlusterFS
packages, which ``testbed.sh`` installs); otherwise it says why and exits with status 2.

Output: markdown tables on stdout (for the README), all numbers in JSON (``--json``), and a
chart (``--png``) when matplotlib is importable. The figures are wall-clock rates on a small
machine that may be shared with other jobs: compare runs of one repetition, and expect noise.

Usage (as root)::

    python benchmarks/cluster_throughput.py                 # ~4-5 minutes
    python benchmarks/cluster_throughput.py --quick         # ~1 minute, 1 repetition
    python benchmarks/cluster_throughput.py --cluster-state /var/tmp/ddmq-cluster/dqc1234
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLUSTER_DIR = REPO / "tests" / "cluster"
for _path in (REPO, HERE, CLUSTER_DIR):  # the repo's ddmq, the other benchmarks, the harness
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import queue_throughput as qt  # noqa: E402
from harness import Cluster, TestbedError, precondition_problem  # noqa: E402
from bench_tasks import noop  # noqa: E402

RESULTS_DIR = HERE / "results"
Run = dict[str, Any]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the testbed ---------------------------------------------------------------------------------

class Testbed:
    """Node name -> mount point of a running testbed; ``owned`` if this script brought it up."""

    def __init__(self, mounts: dict[str, str], state: str, tag: str, owned: bool,
                 cluster: Any = None):
        self.mounts, self.state, self.tag, self.owned, self.cluster = mounts, state, tag, owned, cluster
        self.nodes = list(mounts)
        self.up_seconds: float | None = None

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "tag": self.tag, "nodes": self.nodes, "mounts": self.mounts,
                "started_by_this_run": self.owned, "bring_up_s": self.up_seconds}


class CannotRun(Exception):
    """The benchmark cannot run here (main says why and exits with status 2)."""


def attach(state: str) -> Testbed:
    """A testbed that is already up, from its state folder (its env file names tag and nodes)."""
    env: dict[str, str] = {}
    try:
        with open(os.path.join(state, "env"), encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.strip().partition("=")
                env[key] = value.strip('"')
    except OSError as err:
        raise CannotRun(f"{state} is not a testbed state folder: {err}") from None
    nodes = env.get("NODES", "a b c").split()
    mounts = {n: os.path.join(state, "mnt", n) for n in nodes}
    missing = [m for m in mounts.values() if not os.path.ismount(m)]
    if missing:
        raise CannotRun(f"not mounted: {', '.join(missing)}")
    return Testbed(mounts, state, env.get("TAG", "?"), owned=False)


def bring_up() -> Testbed:
    """A testbed of our own, not up yet: main brings it up and always tears it down."""
    cluster = Cluster(tag=f"bench{os.getpid() % 100000}")
    if os.path.exists(cluster.state):  # left by someone else: never ours to bring down
        raise CannotRun(f"{cluster.state} exists already (a testbed that is up, or left over); "
                        "bring it down with DDMQ_CLUSTER_STATE=... tests/cluster/testbed.sh down "
                        "or use it with --cluster-state")
    testbed = Testbed(dict(cluster.mounts), cluster.state, cluster.tag, owned=True, cluster=cluster)
    return testbed


def tear_down(testbed: Testbed) -> None:
    """Bring down a testbed this script started; a second Ctrl-C does not interrupt it."""
    if not testbed.owned:
        return
    # Ignored signals stay ignored in testbed.sh and umount too.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        progress(f"tearing down the testbed {testbed.state} ...")
        progress(testbed.cluster.down())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def other_testbeds(mine: str) -> list[str]:
    """Network namespaces of other testbeds on this machine (noise; never touched)."""
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    except OSError:
        return []
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted({n.rsplit("-", 1)[0] for n in names if n.endswith("-srv") and
                   not n.startswith(mine + "-")})


# --- 1. queue throughput (queue_throughput.py's functions) -----------------------------------------

def queue_benchmark(testbed: Testbed, local_dir: str, n: int, reps: int,
                    notes: list[str]) -> dict[str, Any]:
    node = testbed.nodes[0]
    filesystems = []
    for path, label in ((testbed.mounts[node], f"GlusterFS (node {node})"),
                        (local_dir, None)):
        info = qt.fs_info(path)
        info["label"] = label or f"local {info['fstype']} ({path})"
        info["base"] = tempfile.mkdtemp(prefix="ddmq-bench-", dir=path)
        filesystems.append(info)
    impls = {"raw": sys.executable, "ddmq": sys.executable}
    try:
        reason = qt.check_available(sys.executable, "ddmq", filesystems[0]["base"])
        if reason:
            raise RuntimeError(f"ddmq does not run on {filesystems[0]['label']}:\n{reason}")
        progress(f"queue throughput: N={n}, {reps} repetition(s), {list(impls)} on "
                 f"{[fs['label'] for fs in filesystems]}")
        runs = qt.throughput_runs(filesystems, impls, n, n, reps)
    finally:
        for fs in filesystems:
            shutil.rmtree(fs.pop("base"), ignore_errors=True)
    versions = {run["module_digest"] for run in runs if run["impl"] == "ddmq"}
    if len(versions) > 1:
        notes.append("ddmq's source changed during the queue benchmark (module_digest differs "
                     "between runs); run again for a clean comparison.")
    return {"filesystems": filesystems, "runs": runs,
            "summary": qt.summarize_throughput(runs, [fs["label"] for fs in filesystems])}


# --- 2. executor scaling ------------------------------------------------------------------------

class Workers:
    """``python -m ddmq.worker`` processes started by this script, each on one node's mount."""

    def __init__(self, logs: str):
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen, str]] = []   # (node, process, log file)

    def start(self, node: str, root: str) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE)] +
                                            ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        log_path = os.path.join(self.logs, f"worker-{node}-{len(self.procs)}.log")
        with open(log_path, "wb") as out:
            # Own session: a Ctrl-C at the terminal reaches only this script, which stops them.
            proc = subprocess.Popen([sys.executable, "-m", "ddmq.worker", root, "-v",
                                     "--grace", "5"], env=env, cwd=str(REPO),
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((node, proc, log_path))
        return proc

    def wait_ready(self, root: str, timeout: float = 60) -> None:
        """Until every worker's heartbeat record is visible under ``root``."""
        from ddmq.executor import heartbeat
        deadline = time.monotonic() + timeout
        for node, proc, log_path in self.procs:
            path = heartbeat.record_path(root, heartbeat.HOST, proc.pid)
            while not os.path.exists(path):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {proc.pid} on node {node} exited "
                                       f"{proc.returncode} at start:\n{tail(log_path)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {proc.pid} on node {node} not ready after "
                                       f"{timeout} s:\n{tail(log_path)}")
                time.sleep(0.05)

    def stop(self, timeout: float = 20) -> list[dict[str, Any]]:
        """SIGTERM every worker (SIGKILL after ``timeout``); what each did, from its log."""
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        out = []
        for node, proc, log_path in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            text = Path(log_path).read_text(errors="replace")
            done = re.findall(r"exits after (\d+) task", text)
            out.append({"node": node, "pid": proc.pid, "exit": proc.returncode,
                        "tasks": int(done[-1]) if done else None,
                        "warnings": [line for line in text.splitlines()
                                     if " WARNING: " in line or " ERROR: " in line]})
        self.procs = []
        return out


def tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class DroppedReplies(logging.Handler):
    """Counts the executor's "dropping a reply ... not pending" records (a task's second result)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("dropping a reply for task"):
            self.count += 1


def executor_run(testbed: Testbed, exec_node: str, worker_nodes: list[str], per_node: int,
                 args: argparse.Namespace, workers: Workers, dropped: DroppedReplies) -> Run:
    """One node count of one repetition: fresh root, fresh workers, warm-up, sleep, noop."""
    from ddmq.executor import DDMQExecutor
    rel = f"ddmq-bench-exec-{uuid.uuid4().hex[:8]}"
    root = os.path.join(testbed.mounts[exec_node], rel)
    run: Run = {"worker_nodes": worker_nodes, "nodes": len(worker_nodes),
                "workers": len(worker_nodes) * per_node, "executor_node": exec_node}
    dropped.count = 0
    started = time.perf_counter()
    ex = DDMQExecutor(root, max_workers=0)
    ok = False
    try:
        for node in worker_nodes:
            for _ in range(per_node):
                workers.start(node, os.path.join(testbed.mounts[node], rel))
        workers.wait_ready(root)
        ex.submit(noop, 0).result(timeout=120)
        run["startup_s"] = time.perf_counter() - started

        sleep_s, n_sleep = args.sleep_ms / 1000, args.sleep_tasks
        t = time.perf_counter()
        results = list(ex.map(time.sleep, [sleep_s] * n_sleep, chunksize=1, timeout=600))
        run["sleep_wall_s"] = time.perf_counter() - t
        assert results == [None] * n_sleep
        run["sleep_rate"] = n_sleep / run["sleep_wall_s"]
        run["sleep_ideal_rate"] = run["workers"] / sleep_s
        run["sleep_efficiency"] = (n_sleep * sleep_s / run["workers"]) / run["sleep_wall_s"]

        t = time.perf_counter()
        results = list(ex.map(noop, range(args.noop_tasks), chunksize=1, timeout=600))
        run["noop_wall_s"] = time.perf_counter() - t
        assert results == list(range(args.noop_tasks))
        run["noop_rate"] = args.noop_tasks / run["noop_wall_s"]
        ok = True
    finally:
        ex.shutdown(wait=ok, cancel_futures=not ok)
        report = workers.stop(timeout=20 if ok else 3)
        if ok or os.path.isdir(root):
            shutil.rmtree(root, ignore_errors=True)
    run["submitted"] = 1 + args.sleep_tasks + args.noop_tasks
    run["worker_report"] = report
    counts = [w["tasks"] for w in report]
    run["task_runs"] = sum(counts) if None not in counts else None
    run["extra_runs"] = run["task_runs"] - run["submitted"] if run["task_runs"] is not None else None
    run["dropped_replies"] = dropped.count
    by_node: dict[str, int] = {}
    for w in report:
        by_node[w["node"]] = by_node.get(w["node"], 0) + (w["tasks"] or 0)
    run["task_runs_by_node"] = by_node
    run["worker_warnings"] = sum(len(w["warnings"]) for w in report)
    bad = [w for w in report if w["exit"] != 0]
    if bad:
        raise RuntimeError(f"workers did not exit 0: {[(w['node'], w['pid'], w['exit']) for w in bad]}")
    return run


def executor_benchmark(testbed: Testbed, args: argparse.Namespace, logs: str) -> list[Run]:
    exec_node = testbed.nodes[-1]
    counts = [k for k in args.node_counts if k <= len(testbed.nodes)]
    dropped = DroppedReplies()
    ddmq_log = logging.getLogger("ddmq")
    ddmq_log.addHandler(dropped)
    if ddmq_log.getEffectiveLevel() > logging.INFO:
        ddmq_log.setLevel(logging.INFO)  # for the handler; only WARNING+ reaches stderr
    workers = Workers(logs)
    runs = []
    progress(f"executor scaling: executor on node {exec_node}, workers on "
             f"{[testbed.nodes[:k] for k in counts]} x {args.workers_per_node} per node; "
             f"{args.sleep_tasks} x sleep {args.sleep_ms} ms, {args.noop_tasks} x noop, "
             f"{args.reps} repetition(s)")
    try:
        for rep in range(args.reps):
            order = counts[rep % len(counts):] + counts[:rep % len(counts)]
            for k in order:
                run = executor_run(testbed, exec_node, testbed.nodes[:k], args.workers_per_node,
                                   args, workers, dropped)
                run["rep"] = rep
                runs.append(run)
                progress(f"  rep {rep + 1}/{args.reps}  {k} node(s) {run['workers']} worker(s)  "
                         f"sleep {run['sleep_rate']:6.1f} tasks/s (eff {run['sleep_efficiency']:.2f})"
                         f"  noop {run['noop_rate']:6.1f} tasks/s  start-up "
                         f"{run['startup_s']:.1f} s  runs by node {run['task_runs_by_node']}  "
                         f"extra runs {run['extra_runs']}, dropped replies {run['dropped_replies']}"
                         f", worker warnings {run['worker_warnings']}")
    finally:
        if workers.procs:  # interrupted: stop what is left
            workers.stop(timeout=3)
        ddmq_log.removeHandler(dropped)
    return runs


def summarize_executor(runs: list[Run]) -> list[dict[str, Any]]:
    """Medians per node count; speed-ups over 1 node taken within each repetition."""
    base = {r["rep"]: r for r in runs if r["nodes"] == min(x["nodes"] for x in runs)}
    rows = []
    for k in sorted({r["nodes"] for r in runs}):
        mine = [r for r in runs if r["nodes"] == k]
        row: dict[str, Any] = {"nodes": k, "workers": mine[0]["workers"],
                               "worker_nodes": mine[0]["worker_nodes"], "runs": len(mine)}
        for key in ("sleep_rate", "sleep_ideal_rate", "sleep_efficiency", "noop_rate",
                    "startup_s"):
            row[key] = statistics.median(r[key] for r in mine)
        for key in ("sleep_rate", "noop_rate"):
            row[key + "_min"] = min(r[key] for r in mine)
            row[key + "_max"] = max(r[key] for r in mine)
            speedups = [r[key] / base[r["rep"]][key] for r in mine if r["rep"] in base]
            row[key.replace("_rate", "_speedup")] = statistics.median(speedups) if speedups else None
        row["extra_runs"] = sum(r["extra_runs"] or 0 for r in mine)
        row["dropped_replies"] = sum(r["dropped_replies"] for r in mine)
        row["worker_warnings"] = sum(r["worker_warnings"] for r in mine)
        rows.append(row)
    return rows


# --- printing -----------------------------------------------------------------------------------

def executor_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    f = qt.fmt
    lines = [
        "| worker nodes | workers | sleep tasks/s | ideal | **efficiency** | speed-up vs 1 node "
        "| noop tasks/s | speed-up vs 1 node | start-up s | extra runs / dropped replies |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['nodes']} ({'+'.join(row['worker_nodes'])}) | {row['workers']} "
            f"| {f(row['sleep_rate'], '.1f')} ({f(row['sleep_rate_min'], '.1f')}-"
            f"{f(row['sleep_rate_max'], '.1f')}) | {f(row['sleep_ideal_rate'], '.0f')} "
            f"| **{f(row['sleep_efficiency'], '.2f')}** | {f(row['sleep_speedup'], '.2f', 'x')} "
            f"| {f(row['noop_rate'], '.1f')} ({f(row['noop_rate_min'], '.1f')}-"
            f"{f(row['noop_rate_max'], '.1f')}) | {f(row['noop_speedup'], '.2f', 'x')} "
            f"| {f(row['startup_s'], '.1f')} | {row['extra_runs']} / {row['dropped_replies']} |")
    return "\n".join(lines)


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    m = results["machine"]
    tb = results["testbed"]
    parts = [
        f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), load average "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])} at start, "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_end'])} at end; Python {m['python']}; "
        f"ddmq at {m['repo_revision'] or 'unknown revision'}.",
        f"Testbed: {tb['state']} ({'brought up by this run' if tb['started_by_this_run'] else 'existing'}"
        f"{', %.0f s to bring up' % tb['bring_up_s'] if tb.get('bring_up_s') else ''}); "
        f"other testbeds running meanwhile: {', '.join(results['other_testbeds']) or 'none'}.",
    ]
    if results.get("queue"):
        q = results["queue"]
        parts += [
            "",
            f"### Queue: publish N, then consume + ack until empty (N = {args.n}, median of "
            f"{args.reps} repetition(s), one fresh process each)",
            "",
            qt.throughput_table(q["summary"]),
            "",
            "Folders: " + "; ".join(f"{fs['label']} = {fs['dir']} ({fs['fstype']})"
                                    for fs in q["filesystems"]) + ".",
        ]
    if results.get("executor_summary"):
        parts += [
            "",
            f"### Executor: DDMQExecutor(max_workers=0) on node {results['executor_node']}, "
            f"{args.workers_per_node} worker(s) per node (median of {args.reps} repetition(s), "
            "min-max in brackets)",
            "",
            executor_table(results["executor_summary"], args),
            "",
            f"sleep: {args.sleep_tasks} x time.sleep({args.sleep_ms / 1000:g}), chunksize=1; "
            f"ideal = workers / {args.sleep_ms / 1000:g} s; efficiency = ideal wall / measured "
            f"wall. noop: {args.noop_tasks} x return x, chunksize=1. Speed-ups are taken within "
            "each repetition, then the median. extra runs = task runs the workers counted - "
            "tasks submitted; dropped replies = second results the executor ignored.",
        ]
    parts.extend(f"Note: {note}" for note in results["notes"])
    return "\n".join(parts)


# --- chart --------------------------------------------------------------------------------------

def draw_chart(results: dict[str, Any], png: Path) -> str | None:
    """Queue msg/s per folder (as queue_throughput.py draws it), executor tasks/s per node count.

    Returns None when drawn, or why the chart was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: chart skipped (pip install matplotlib)"
    colors = {"raw": "tab:gray", "ddmq": "tab:blue"}
    labels = {"raw": "raw lower bound", "ddmq": "ddmq"}
    queue = results.get("queue")
    rows = results.get("executor_summary") or []
    panels = (1 if queue else 0) + (2 if rows else 0)
    if not panels:
        return "nothing to draw"
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    axes = list(axes[0])

    if queue:
        ax = axes.pop(0)
        summary = queue["summary"]
        fs_labels = [fs["label"] for fs in queue["filesystems"]]
        impls = [i for i in ("raw", "ddmq") if any(r["impl"] == i for r in summary)]
        width = 0.8 / max(len(impls), 1)
        for k, impl in enumerate(impls):
            values = [next((r["total_rate"] for r in summary if r["fs"] == fs and r["impl"] == impl), 0)
                      for fs in fs_labels]
            xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(fs_labels))]
            bars = ax.bar(xs, values, width, label=labels[impl], color=colors[impl])
            ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(fs_labels)), fs_labels)
        ax.set_yscale("log")
        rates = [r["total_rate"] for r in summary]
        if rates:
            ax.set_ylim(bottom=min(rates) / 4, top=max(rates) * 3)
        ax.set_ylabel("messages/s (publish + consume + ack), log scale")
        ax.set_title(f"Queue, one process: N = {results['config']['n']}, "
                     f"median of {results['config']['reps']}")
        ax.legend(loc="upper left")

    if rows:
        nodes = [r["nodes"] for r in rows]
        workers = [r["workers"] for r in rows]
        for ax, key, title in ((axes[0], "sleep", f"{results['config']['sleep_tasks']} tasks "
                                f"sleeping {results['config']['sleep_ms']} ms"),
                               (axes[1], "noop", f"{results['config']['noop_tasks']} no-op tasks")):
            values = [r[f"{key}_rate"] for r in rows]
            errors = [[v - r[f"{key}_rate_min"] for v, r in zip(values, rows)],
                      [r[f"{key}_rate_max"] - v for v, r in zip(values, rows)]]
            ax.errorbar(nodes, values, yerr=errors, marker="o", color="tab:blue", capsize=4,
                        label="DDMQExecutor (median, min-max)")
            if key == "sleep":
                ax.plot(nodes, [r["sleep_ideal_rate"] for r in rows], "--", color="tab:gray",
                        label="ideal (workers / sleep)")
                notes = [f"{v:.1f}/s\neff {r['sleep_efficiency']:.2f}" for v, r in zip(values, rows)]
            else:  # no ideal line: on a machine this small, no-op tasks are not expected to scale
                notes = [f"{v:.1f}/s\n{r['noop_speedup']:.2f}x" for v, r in zip(values, rows)]
            for x, y, text in zip(nodes, values, notes):
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(10, -10),
                            fontsize=8, va="center")
            ax.set_xticks(nodes, [f"{k} ({w} worker{'s' if w > 1 else ''})"
                                  for k, w in zip(nodes, workers)])
            ax.set_xlim(min(nodes) - 0.4, max(nodes) + 0.6)
            ax.set_ylim(bottom=0, top=max(max(r[f"{key}_rate_max"] for r in rows),
                                          max(r["sleep_ideal_rate"] for r in rows) if key == "sleep"
                                          else 0) * 1.15)
            ax.set_xlabel(f"nodes with workers (executor on node {results['executor_node']})")
            ax.set_ylabel("tasks/s")
            ax.set_title(f"Executor on GlusterFS: {title}")
            ax.legend(fontsize=8, loc="upper left")

    fig.suptitle(f"ddmq on the GlusterFS testbed ({results['machine']['cpu_count']} CPUs shared "
                 "by server, clients and workers)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return None


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster-state", metavar="DIR",
                        help="use the testbed that is up with this state folder (left up); "
                             "default: bring up a new one and tear it down at the end")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("-n", type=int, default=1000,
                        help="messages per queue run (default 1000)")
    parser.add_argument("--local-dir", default="/var/tmp",
                        help="local-disk folder for the queue comparison (default /var/tmp)")
    parser.add_argument("--nodes", default="1,2,3",
                        help="node counts with workers, comma-separated (default 1,2,3)")
    parser.add_argument("--workers-per-node", type=int, default=1,
                        help="workers started on each node (default 1)")
    parser.add_argument("--sleep-tasks", type=int, default=300, help="sleep tasks (default 300)")
    parser.add_argument("--sleep-ms", type=float, default=50, help="each one's sleep (default 50)")
    parser.add_argument("--noop-tasks", type=int, default=300, help="no-op tasks (default 300)")
    parser.add_argument("--skip-queue", action="store_true", help="only the executor scaling")
    parser.add_argument("--skip-executor", action="store_true", help="only the queue throughput")
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition, N = 300, 100 tasks of each kind (about a minute)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "cluster_throughput.json",
                        help="where to write all results (default %(default)s)")
    parser.add_argument("--png", type=Path, default=RESULTS_DIR / "cluster_throughput.png",
                        help="where to draw the chart (default %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.n, args.sleep_tasks, args.noop_tasks = 1, 300, 100, 100
    try:
        args.node_counts = sorted({int(k) for k in args.nodes.split(",") if k.strip()})
    except ValueError:
        parser.error(f"--nodes: not a list of numbers: {args.nodes!r}")
    if not args.node_counts or min(args.node_counts) < 1:
        parser.error("--nodes: node counts must be 1 or more")
    for name in ("reps", "n", "workers_per_node", "sleep_tasks", "noop_tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    return args


def keep_logs(logs: str) -> str:
    """Keep the workers' logs after a failure, if there are any; say where."""
    if os.listdir(logs):
        return f" (worker logs kept in {logs})"
    shutil.rmtree(logs, ignore_errors=True)
    return ""


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.cluster_state is None:
        problem = precondition_problem()
        if problem:
            print(f"cluster_throughput: cannot bring up the GlusterFS testbed: {problem}.\n"
                  "Run as root on Debian with /dev/fuse, or pass --cluster-state DIR of a "
                  "testbed that is up.", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _terminate)  # the same clean-up path as Ctrl-C
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "cluster_throughput",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "config": {"n": args.n, "reps": args.reps, "local_dir": args.local_dir,
                   "node_counts": args.node_counts, "workers_per_node": args.workers_per_node,
                   "sleep_tasks": args.sleep_tasks, "sleep_ms": args.sleep_ms,
                   "noop_tasks": args.noop_tasks, "chunksize": 1,
                   "message_bytes": qt.MESSAGE_BYTES},
        "machine": qt.machine_info(),
        "notes": [],
    }
    try:
        testbed = attach(args.cluster_state) if args.cluster_state else bring_up()
    except CannotRun as err:
        print(f"cluster_throughput: {err}", file=sys.stderr)
        return 2
    logs = tempfile.mkdtemp(prefix="ddmq-cluster-bench-logs-")
    try:
        if testbed.owned:
            progress(f"bringing up the testbed {testbed.state} (tag {testbed.tag}) ...")
            t = time.perf_counter()
            testbed.cluster.up()
            testbed.up_seconds = time.perf_counter() - t
            progress(f"  up in {testbed.up_seconds:.1f} s: {testbed.mounts}")
        results["testbed"] = testbed.describe()
        results["other_testbeds"] = other_testbeds(testbed.tag)
        if results["other_testbeds"]:
            results["notes"].append(
                f"other testbeds were running on this machine meanwhile "
                f"({', '.join(results['other_testbeds'])}): the figures are noisier.")
        if not args.skip_queue:
            results["queue"] = queue_benchmark(testbed, args.local_dir, args.n, args.reps,
                                               results["notes"])
        if not args.skip_executor:
            results["executor_node"] = testbed.nodes[-1]
            results["executor_runs"] = executor_benchmark(testbed, args, logs)
            results["executor_summary"] = summarize_executor(results["executor_runs"])
            if max(args.node_counts) > len(testbed.nodes):
                results["notes"].append(f"the testbed has {len(testbed.nodes)} nodes: larger "
                                        "node counts skipped")
            extra = sum(r["extra_runs"] or 0 for r in results["executor_runs"])
            if extra or any(r["dropped_replies"] for r in results["executor_runs"]):
                results["notes"].append(
                    f"{extra} task(s) ran more than once (see extra runs and dropped replies; "
                    "with no worker lost, that is two nodes claiming one message: a bug).")
    except KeyboardInterrupt:
        progress("interrupted" + keep_logs(logs))
        return 130
    except TestbedError as err:
        progress(f"cluster_throughput: the testbed did not come up or failed:\n{err}")
        keep_logs(logs)
        return 2
    except BaseException:
        progress("failed" + keep_logs(logs))
        raise
    else:
        shutil.rmtree(logs, ignore_errors=True)
    finally:
        tear_down(testbed)

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - started
    print(report(results, args))
    print(f"\n(benchmark took {results['elapsed_s']:.0f} s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {args.json}")
    skipped = draw_chart(results, args.png)
    print(skipped or f"chart drawn to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
