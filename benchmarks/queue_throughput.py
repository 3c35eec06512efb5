"""Queue throughput benchmark: ddmq against a raw-syscall lower bound and the original ddmq 0.9.14.

What is measured
----------------
One process creates a queue, publishes N messages of about 50 bytes (timed), then consumes and
acknowledges messages one at a time until the queue is empty (timed). This is the unit of the
original ddmq README ("publish then consume 5000 messages in 45 s") and of the team's research
notes (shared/research/filequeue-anchors.md, section 6). Three implementations do that workload:

* ``ddmq``: this repository's package, library defaults::

      b = ddmq.broker(root, create=True); b.create_queue('q')
      b.publish('q', msg_text=TEXT)                       # N times
      m = b.consume('q'); b.ack(m)                        # until consume() returns None

* ``raw``: the bare rename protocol with the same guarantees as ddmq's defaults (no fsync), in
  plain Python. It is the lower bound ddmq's overhead is judged against.
  Publish: ``os.open(q/tmp/NAME, O_WRONLY|O_CREAT|O_EXCL)``, write the JSON message, close,
  ``rename(q/tmp/NAME -> q/NAME)``. Consume: one ``listdir`` sorted by (int priority, int queue
  number), then per message ``rename(q/NAME -> q/work/EXPIRY.NAME)``, open + read +
  ``json.loads``, ``unlink`` (the ack); a final ``listdir`` confirms the queue is empty.

* ``original``: ddmq 0.9.14 from PyPI with its defaults, run by another interpreter
  (``--original-python``, see ``benchmarks/setup_original_ddmq.sh``). Same calls as ``ddmq``.

How
---
Every run happens in a fresh subprocess (this script re-invoked with ``--worker``) and in a fresh
queue root inside the benchmarked folder, so imports, caches and directory state never carry over
from one run to the next. The worker times the publish and the consume+ack phases with
``time.perf_counter`` (wall) and ``time.process_time`` (CPU, user + system of the worker) and
prints one JSON line. Interpreter start-up, imports and queue creation are not timed.

Each repetition runs every implementation once on every ``--dir`` (the order of the
implementations rotates between repetitions). Ratios such as ddmq/raw are computed between runs
of the *same* repetition, so both sides saw about the same machine load, and the tables report
medians over the repetitions. On a shared machine wall-clock rates are noisy; CPU seconds are
steadier but do not count time spent waiting on the disk, so both are reported.

The depth series publishes D messages and drains them, for each D in ``--depths``, for ``ddmq``
and ``raw``, and reports the drain cost per message (wall and CPU microseconds). A protocol that
lists the whole queue for every claim costs O(D) per message (quadratic in total); a good one
stays flat as D grows.

Output: markdown tables on stdout (for the README), all raw numbers and the machine's description
in JSON (``--json``), and a chart (``--png``) when matplotlib is importable.

Usage::

    python benchmarks/queue_throughput.py --dir /tmp --dir /dev/shm --reps 3 \\
        --original-python /tmp/ddmq-original-venv/bin/python
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parent.parent
RESULTS_DIR = SCRIPT.parent / "results"
QUEUE = "q"
MESSAGE_BYTES = 50
LEASE_SECONDS = 600  # ddmq's default message_timeout; only used to name raw work files
IMPLEMENTATIONS = ("raw", "ddmq", "original")
DEPTH_IMPLEMENTATIONS = ("raw", "ddmq")

Run = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Worker side: runs in a fresh interpreter, imports only the standard library and the queue.
# ---------------------------------------------------------------------------------------------

def message_text(i: int) -> str:
    """The body of message ``i``: MESSAGE_BYTES characters of text."""
    return f"benchmark message {i:010d} ".ljust(MESSAGE_BYTES, "x")


def run_broker(ddmq_module: Any, root: str, n: int) -> Run:
    """Publish n messages, then consume + ack until empty, through a (new or original) broker."""
    broker = ddmq_module.broker(root, create=True)
    broker.create_queue(QUEUE)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        broker.publish(QUEUE, msg_text=message_text(i))
    wall1, cpu1 = time.perf_counter(), time.process_time()
    consumed = 0
    while True:
        msg = broker.consume(QUEUE)
        if msg is None:
            break
        broker.ack(msg)
        consumed += 1
    wall2, cpu2 = time.perf_counter(), time.process_time()

    return {"n": n, "consumed": consumed,
            "publish_s": wall1 - wall0, "consume_s": wall2 - wall1,
            "cpu_publish_s": cpu1 - cpu0, "cpu_consume_s": cpu2 - cpu1}


def raw_sort_key(name: str) -> tuple[int, int]:
    """Order waiting files PRIO.QNUM.ddmqID by the numbers, never by the text."""
    priority, queue_number, _ = name.split(".", 2)
    return int(priority), int(queue_number)


def run_raw(root: str, n: int) -> Run:
    """The lower bound: tmp + rename publish, one listing, rename claim, read, unlink (ack)."""
    queue_dir = os.path.join(root, QUEUE)
    tmp_dir = os.path.join(queue_dir, "tmp")
    work_dir = os.path.join(queue_dir, "work")
    for folder in (root, queue_dir, tmp_dir, work_dir):
        os.makedirs(folder, mode=0o700, exist_ok=True)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        msg_id = uuid.uuid4().hex
        queue_number = time.time_ns()
        name = f"999.{queue_number}.ddmq{msg_id}"
        body = json.dumps({
            "message": message_text(i), "queue": QUEUE, "id": msg_id, "priority": 999,
            "queue_number": queue_number, "filename": name, "requeue": True,
            "requeue_counter": 0, "requeue_limit": None, "timeout": None, "requeue_prio": 0,
        }).encode()
        tmp_path = os.path.join(tmp_dir, name)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        os.rename(tmp_path, os.path.join(queue_dir, name))
    wall1, cpu1 = time.perf_counter(), time.process_time()

    consumed = 0
    while True:
        names = sorted((name for name in os.listdir(queue_dir) if ".ddmq" in name),
                       key=raw_sort_key)
        if not names:
            break
        for name in names:
            work_path = os.path.join(work_dir, f"{int(time.time()) + LEASE_SECONDS}.{name}")
            try:
                os.rename(os.path.join(queue_dir, name), work_path)
            except FileNotFoundError:  # another consumer won the claim
                continue
            with open(work_path, "rb") as handle:
                json.loads(handle.read())
            os.unlink(work_path)
            consumed += 1
    wall2, cpu2 = time.perf_counter(), time.process_time()

    return {"n": n, "consumed": consumed,
            "publish_s": wall1 - wall0, "consume_s": wall2 - wall1,
            "cpu_publish_s": cpu1 - cpu0, "cpu_consume_s": cpu2 - cpu1}


def import_repo_ddmq() -> Any:
    """Import this repository's ddmq, whatever else is installed."""
    sys.path.insert(0, str(REPO_ROOT))
    import ddmq
    return ddmq


def import_original_ddmq() -> Any:
    """Import the installed ddmq 0.9.14 and make sure it is not this repository's package."""
    import ddmq
    if Path(ddmq.__file__).resolve().is_relative_to(REPO_ROOT):
        raise RuntimeError(f"expected the installed original ddmq, got {ddmq.__file__}")
    return ddmq


def loaded_source_digest(package: str) -> str:
    """A digest of the source files of ``package``'s modules loaded in this process."""
    digest = hashlib.sha1()
    for name in sorted(sys.modules):
        if name == package or name.startswith(package + "."):
            source = getattr(sys.modules[name], "__file__", None)
            if source:
                digest.update(name.encode() + b"\0" + Path(source).read_bytes())
    return digest.hexdigest()[:12]


def worker_main(impl: str, root: str, n: int) -> None:
    """Run one workload and print its measurements as the last line of stdout."""
    module_file, version, digest = None, None, None
    if impl == "raw":
        result = run_raw(root, n)
    elif impl == "ddmq":
        module = import_repo_ddmq()
        result = run_broker(module, root, n)
        module_file, version = module.__file__, getattr(module, "__version__", None)
        digest = loaded_source_digest("ddmq")
    else:
        from importlib.metadata import version as distribution_version
        module = import_original_ddmq()
        result = run_broker(module, root, n)
        module_file, version = module.__file__, distribution_version("ddmq")
    if result["consumed"] != n:
        raise RuntimeError(f"{impl}: published {n} but consumed {result['consumed']}")
    result.update({"impl": impl, "python": platform.python_version(),
                   "module_file": module_file, "module_version": version,
                   "module_digest": digest})
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Parent side: spawns the workers, summarises, prints, saves, draws.
# ---------------------------------------------------------------------------------------------

class WorkerFailed(RuntimeError):
    """A benchmark subprocess exited with an error."""


def spawn_worker(python: str, impl: str, root: str, n: int) -> Run:
    """Run one workload in a fresh subprocess of ``python``; return its measurements."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the original must not see this repository's ddmq
    cmd = [python, str(SCRIPT), "--worker", impl, root, str(n)]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(root))
    wall = time.perf_counter() - wall0
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise WorkerFailed(f"{impl} worker failed (exit {proc.returncode}):\n{tail}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result = json.loads(lines[-1])
    result["child_wall_s"] = wall
    result["child_cpu_s"] = ((usage_after.ru_utime - usage_before.ru_utime)
                             + (usage_after.ru_stime - usage_before.ru_stime))
    return add_rates(result)


def add_rates(run: Run) -> Run:
    """Add the derived rates (messages per second) and per-message costs to a run."""
    n = run["n"]
    run["cpu_s"] = run["cpu_publish_s"] + run["cpu_consume_s"]
    run["publish_rate"] = n / run["publish_s"]
    run["consume_rate"] = n / run["consume_s"]
    run["total_rate"] = n / (run["publish_s"] + run["consume_s"])
    run["msgs_per_cpu_s"] = n / run["cpu_s"] if run["cpu_s"] > 0 else None
    run["publish_us_per_msg"] = 1e6 * run["publish_s"] / n
    run["drain_us_per_msg"] = 1e6 * run["consume_s"] / n
    run["drain_cpu_us_per_msg"] = 1e6 * run["cpu_consume_s"] / n
    return run


def fresh_root(base: str, label: str) -> str:
    """A path that does not exist yet inside ``base``; the run creates it."""
    return os.path.join(base, f"{label}-{uuid.uuid4().hex[:8]}")


def run_in_fresh_root(python: str, impl: str, base: str, label: str, n: int) -> Run:
    root = fresh_root(base, label)
    try:
        return spawn_worker(python, impl, root, n)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- machine description ----------------------------------------------------------------------

def mount_of(path: str) -> dict[str, str]:
    """The /proc/mounts entry (longest matching mount point) holding ``path``."""
    real = os.path.realpath(path)
    best: dict[str, str] = {}
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                device, mount_point, fstype, options = line.split()[:4]
                mount_point = mount_point.replace("\\040", " ")
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best.get("mount_point", "")):
                    best = {"device": device, "mount_point": mount_point,
                            "fstype": fstype, "options": options}
    except OSError:
        pass
    return best


def fs_info(path: str) -> dict[str, Any]:
    """Describe the filesystem of ``path`` (type from /proc/mounts, falling back to ``stat -f``)."""
    info: dict[str, Any] = {"dir": path, **mount_of(path)}
    try:
        stat_f = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        stat_f = None
    info["stat_f_type"] = stat_f
    info["fstype"] = info.get("fstype") or stat_f or "unknown"
    info["label"] = f"{info['fstype']} {path}"
    return info


def read_first(path: str, prefix: str) -> str | None:
    """The value of the first ``prefix: value`` line of a /proc file, if any."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git_revision() -> str | None:
    """HEAD of the repository, with "+dirty" if ddmq/ has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no", "--", "ddmq"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": read_first("/proc/cpuinfo", "model name"),
        "memory": read_first("/proc/meminfo", "MemTotal"),
        "loadavg_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "repo_revision": git_revision(),
    }


# --- the two benchmarks -----------------------------------------------------------------------

def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_available(python: str, impl: str, base: str) -> str | None:
    """Run a one-message smoke test; return None if ``impl`` works, else the reason it does not."""
    try:
        run_in_fresh_root(python, impl, base, f"check-{impl}", 1)
    except (WorkerFailed, OSError) as err:
        return str(err)
    return None


def throughput_runs(dirs: list[dict[str, Any]], impls: dict[str, str], n: int, original_n: int,
                    reps: int) -> list[Run]:
    """Every implementation on every folder, ``reps`` times, each in a fresh process and root."""
    runs = []
    names = list(impls)
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for fs in dirs:
            for impl in order:
                count = original_n if impl == "original" else n
                run = run_in_fresh_root(impls[impl], impl, fs["base"], f"rep{rep}-{impl}", count)
                run.update({"rep": rep, "fs": fs["label"]})
                runs.append(run)
                progress(f"  rep {rep + 1}/{reps}  {fs['label']:<20} {impl:<8} n={count:<6} "
                         f"publish {run['publish_rate']:8.0f}/s  consume+ack "
                         f"{run['consume_rate']:8.0f}/s  total {run['total_rate']:8.0f}/s  "
                         f"cpu {run['cpu_s']:6.2f}s")
    return runs


def depth_runs(dirs: list[dict[str, Any]], impls: dict[str, str], depths: list[int]) -> list[Run]:
    """Publish D then drain, for each depth D, once per implementation and folder."""
    runs = []
    for fs in dirs:
        for depth in depths:
            for impl in DEPTH_IMPLEMENTATIONS:
                if impl not in impls:
                    continue
                run = run_in_fresh_root(impls[impl], impl, fs["base"], f"depth{depth}-{impl}",
                                        depth)
                run.update({"depth": depth, "fs": fs["label"]})
                runs.append(run)
                progress(f"  depth {depth:<7} {fs['label']:<20} {impl:<8} "
                         f"publish {run['publish_us_per_msg']:7.1f} us/msg  drain "
                         f"{run['drain_us_per_msg']:7.1f} us/msg (cpu "
                         f"{run['drain_cpu_us_per_msg']:7.1f})")
    return runs


# --- summaries ----------------------------------------------------------------------------------

def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize_throughput(runs: list[Run], fs_labels: list[str]) -> list[dict[str, Any]]:
    """Medians per (folder, implementation), and ratios taken within each repetition."""
    by_key = {(r["fs"], r["impl"], r["rep"]): r for r in runs}
    rows = []
    for fs in fs_labels:
        for impl in IMPLEMENTATIONS:
            mine = [r for r in runs if r["fs"] == fs and r["impl"] == impl]
            if not mine:
                continue
            row: dict[str, Any] = {"fs": fs, "impl": impl, "n": mine[0]["n"], "runs": len(mine)}
            for key in ("publish_rate", "consume_rate", "total_rate", "cpu_s", "msgs_per_cpu_s"):
                row[key] = median_of([r[key] for r in mine])
            row["total_rate_min"] = min(r["total_rate"] for r in mine)
            row["total_rate_max"] = max(r["total_rate"] for r in mine)
            for other in ("raw", "original"):
                if other == impl:
                    continue
                wall, cpu = [], []
                for r in mine:
                    peer = by_key.get((fs, other, r["rep"]))
                    if peer is not None:
                        wall.append(ratio(r["total_rate"], peer["total_rate"]))
                        cpu.append(ratio(r["msgs_per_cpu_s"], peer["msgs_per_cpu_s"]))
                if wall:
                    row[f"vs_{other}"] = median_of(wall)
                    row[f"vs_{other}_cpu"] = median_of(cpu)
            rows.append(row)
    return rows


def summarize_depths(runs: list[Run]) -> list[dict[str, Any]]:
    """Per-message costs per depth, with CPU cost relative to the smallest depth."""
    rows = []
    smallest: dict[tuple[str, str], Run] = {}
    for run in sorted(runs, key=lambda r: r["depth"]):
        first = smallest.setdefault((run["fs"], run["impl"]), run)
        rows.append({
            "fs": run["fs"], "impl": run["impl"], "depth": run["depth"],
            "publish_us_per_msg": run["publish_us_per_msg"],
            "drain_us_per_msg": run["drain_us_per_msg"],
            "drain_cpu_us_per_msg": run["drain_cpu_us_per_msg"],
            "drain_cpu_vs_smallest": ratio(run["drain_cpu_us_per_msg"],
                                           first["drain_cpu_us_per_msg"]),
        })
    rows.sort(key=lambda r: (r["fs"], DEPTH_IMPLEMENTATIONS.index(r["impl"]), r["depth"]))
    return rows


# --- printing -----------------------------------------------------------------------------------

def fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


IMPL_LABELS = {"ddmq": "**ddmq**", "raw": "raw lower bound", "original": "ddmq 0.9.14"}


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| fs | implementation | N | publish msg/s | consume+ack msg/s | **total msg/s** "
        "| min-max | CPU s | msgs/CPU-s | x raw (wall / CPU) | x 0.9.14 (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        vs_raw = (f"{fmt(row.get('vs_raw'), '.2f')} / {fmt(row.get('vs_raw_cpu'), '.2f')}"
                  if "vs_raw" in row else "")
        vs_orig = (f"{fmt(row.get('vs_original'), '.1f')} / "
                   f"{fmt(row.get('vs_original_cpu'), '.1f')}" if "vs_original" in row else "")
        lines.append(
            f"| {row['fs']} | {IMPL_LABELS[row['impl']]} | {row['n']} "
            f"| {fmt(row['publish_rate'])} | {fmt(row['consume_rate'])} "
            f"| **{fmt(row['total_rate'])}** "
            f"| {fmt(row['total_rate_min'])}-{fmt(row['total_rate_max'])} "
            f"| {fmt(row['cpu_s'], '.2f')} | {fmt(row['msgs_per_cpu_s'])} "
            f"| {vs_raw} | {vs_orig} |")
    return "\n".join(lines)


def depth_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| fs | implementation | depth | publish µs/msg | drain µs/msg | drain CPU µs/msg "
        "| drain CPU vs smallest depth |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['fs']} | {IMPL_LABELS[row['impl']]} | {row['depth']} "
            f"| {fmt(row['publish_us_per_msg'], '.1f')} | {fmt(row['drain_us_per_msg'], '.1f')} "
            f"| {fmt(row['drain_cpu_us_per_msg'], '.1f')} "
            f"| {fmt(row['drain_cpu_vs_smallest'], '.2f', 'x')} |")
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    machine = results["machine"]
    config = results["config"]
    parts = [
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), load average "
        f"{' '.join(f'{x:.2f}' for x in machine['loadavg_start'])} at start, "
        f"{' '.join(f'{x:.2f}' for x in machine['loadavg_end'])} at end; "
        f"Python {machine['python']}; ddmq at {machine['repo_revision'] or 'unknown revision'}.",
        "Folders: " + "; ".join(f"{fs['dir']} = {fs['fstype']} ({fs.get('device', '?')})"
                                for fs in results["filesystems"]) + ".",
        "",
        f"### Publish N, then consume + ack until empty (median of {config['reps']} "
        "repetition(s), one fresh process each)",
        "",
        throughput_table(results["throughput_summary"]),
        "",
        "total msg/s = N / (publish time + consume time). CPU s = user + system seconds of the "
        "timed phases. Ratios compare runs of the same repetition, then take the median.",
    ]
    if config["original_n"] != config["n"] and results["throughput_summary"]:
        parts.append(f"ddmq 0.9.14 ran with N = {config['original_n']} (its per-message cost "
                     "grows with N, so its rates are not strictly comparable).")
    parts.extend(f"Note: {note}" for note in results["notes"])
    if results["depth_summary"]:
        parts += ["", "### Drain cost as the queue grows (publish D, then consume + ack all; "
                  "one run each)", "", depth_table(results["depth_summary"])]
    return "\n".join(parts)


# --- chart --------------------------------------------------------------------------------------

def draw_chart(results: dict[str, Any], png: Path) -> str | None:
    """Bars of total msg/s per implementation and folder, and lines of drain cost per depth.

    Returns None when drawn, or why the chart was skipped.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: chart skipped (pip install matplotlib)"

    summary = results["throughput_summary"]
    depth_rows = results["depth_summary"]
    fs_labels = [fs["label"] for fs in results["filesystems"]]
    impls = [impl for impl in IMPLEMENTATIONS if any(r["impl"] == impl for r in summary)]
    colors = {"raw": "tab:gray", "ddmq": "tab:blue", "original": "tab:red"}
    labels = {"raw": "raw lower bound", "ddmq": "ddmq", "original": "ddmq 0.9.14"}

    panels = 3 if depth_rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        values = []
        for fs in fs_labels:
            row = next((r for r in summary if r["fs"] == fs and r["impl"] == impl), None)
            values.append(row["total_rate"] if row else 0)
        xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(fs_labels))]
        bars = ax.bar(xs, values, width, label=labels[impl], color=colors[impl])
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(fs_labels)), fs_labels)
    ax.set_yscale("log")
    rates = [r["total_rate"] for r in summary]
    if rates:
        ax.set_ylim(bottom=min(rates) / 4)  # a log axis would otherwise start near the smallest bar
    ax.set_ylabel("messages/s (publish + consume + ack), log scale")
    ax.set_title(f"N = {results['config']['n']}, median of {results['config']['reps']} runs")
    ax.legend()

    styles = ["-", "--", ":", "-."]
    for panel, (key, title) in enumerate([("drain_us_per_msg", "drain wall µs per message"),
                                          ("drain_cpu_us_per_msg", "drain CPU µs per message")]):
        if not depth_rows:
            break
        ax = axes[0][panel + 1]
        for f, fs in enumerate(fs_labels):
            for impl in DEPTH_IMPLEMENTATIONS:
                points = [(r["depth"], r[key]) for r in depth_rows
                          if r["fs"] == fs and r["impl"] == impl]
                if points:
                    ax.plot(*zip(*points), styles[f % len(styles)], marker="o",
                            color=colors[impl], label=f"{labels[impl]}, {fs}")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("queue depth (messages published before draining)")
        ax.set_title(title + " (flat = O(1) per message)")
        ax.legend(fontsize=8)

    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return None


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", action="append", dest="dirs", metavar="DIR",
                        help="folder to benchmark in (repeatable; default /tmp); "
                             "each run uses a fresh subfolder")
    parser.add_argument("-n", type=int, default=5000, help="messages per run (default 5000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--original-python", metavar="PATH",
                        help="interpreter with ddmq 0.9.14 installed "
                             "(see benchmarks/setup_original_ddmq.sh)")
    parser.add_argument("--original-n", type=int, help="messages per run of ddmq 0.9.14 "
                                                       "(default: N)")
    parser.add_argument("--depths", help="comma-separated depth series, '' to skip "
                                         "(default 1000,10000,100000; with --quick 1000,10000)")
    parser.add_argument("--quick", action="store_true", help="shorter depth series")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "queue_throughput.json",
                        help="where to write all results (default %(default)s)")
    parser.add_argument("--png", type=Path, default=RESULTS_DIR / "queue_throughput.png",
                        help="where to draw the chart (default %(default)s)")
    args = parser.parse_args(argv)
    if args.depths is None:
        args.depths = "1000,10000" if args.quick else "1000,10000,100000"
    args.depth_list = [int(d) for d in args.depths.split(",") if d.strip()]
    args.dirs = args.dirs or ["/tmp"]
    args.original_n = args.original_n or args.n
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        impl, root, n = argv[1:4]
        worker_main(impl, root, int(n))
        return 0

    args = parse_args(argv)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "queue_throughput",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "config": {"n": args.n, "original_n": args.original_n, "reps": args.reps,
                   "depths": args.depth_list, "message_bytes": MESSAGE_BYTES},
        "machine": machine_info(),
        "notes": [],
    }

    filesystems = []
    for path in args.dirs:
        info = fs_info(path)
        info["base"] = tempfile.mkdtemp(prefix="ddmq-bench-", dir=path)
        filesystems.append(info)
    results["filesystems"] = filesystems

    impls = {"raw": sys.executable, "ddmq": sys.executable}
    if args.original_python:
        impls["original"] = args.original_python
    else:
        results["notes"].append("ddmq 0.9.14 not run (no --original-python; "
                                "see benchmarks/setup_original_ddmq.sh).")
    for impl in ("ddmq", "original"):
        if impl in impls:
            reason = check_available(impls[impl], impl, filesystems[0]["base"])
            if reason:
                del impls[impl]
                results["notes"].append(f"{impl} skipped: {reason.splitlines()[-1]}")
                progress(f"{impl} skipped:\n{reason}")

    try:
        progress(f"throughput: N={args.n}, {args.reps} repetitions, {list(impls)} on "
                 f"{[fs['label'] for fs in filesystems]}")
        runs = throughput_runs(filesystems, impls, args.n, args.original_n, args.reps)
        progress(f"depth series: {args.depth_list}")
        depths = depth_runs(filesystems, impls, args.depth_list)
    finally:
        for fs in filesystems:
            shutil.rmtree(fs.pop("base"), ignore_errors=True)

    results["machine"]["loadavg_end"] = os.getloadavg()
    throughput_versions = {run["module_digest"] for run in runs if run["impl"] == "ddmq"}
    depth_versions = {run["module_digest"] for run in depths if run["impl"] == "ddmq"}
    if len(throughput_versions | depth_versions) > 1:
        results["notes"].append(
            f"ddmq's source changed during the benchmark (at start: "
            f"{results['machine']['repo_revision']}, now: {git_revision()}); distinct versions "
            f"among the ddmq runs: {len(throughput_versions)} in the throughput table, "
            f"{len(depth_versions)} in the depth series (module_digest in the JSON). "
            "Run again for a clean comparison.")
    results["elapsed_s"] = time.perf_counter() - started
    results["throughput_runs"] = runs
    results["throughput_summary"] = summarize_throughput(runs, [fs["label"] for fs in filesystems])
    results["depth_runs"] = depths
    results["depth_summary"] = summarize_depths(depths)

    print(report(results))
    print(f"\n(benchmark took {results['elapsed_s']:.0f} s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")
    skipped = draw_chart(results, args.png)
    print(skipped or f"chart drawn to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
