"""Scenario 8 and the queue benchmark on the shared volume: how much work ddmq gives the file
server.

Two counters, both on real processes:

* ``strace -c -f`` attached to the client process: its system calls, of which the file ones
  (open, stat, getdents, rename, unlink, ...) are what a network filesystem client turns into
  requests;
* the brick's own per-operation counters (``gluster volume profile``): the operations the file
  server actually served (LOOKUP, OPENDIR, READDIRP, RENAME, ...), after the client's caches.

An idle consumer (``consume(wait=None)`` on an empty queue) backs off to one look per
``poll_max`` (1 s); it must then cost the server at most a few operations per second, or a
thousand idle workers would flood a Lustre or NFS metadata server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .harness import REPO, Agents, Cluster, new_root, record

#: System calls that name a file or read a folder: each can become a request to the server.
FILE_SYSCALLS = {"open", "openat", "openat2", "creat", "stat", "lstat", "newfstatat", "statx", "fstat",
                 "access", "faccessat", "faccessat2", "getdents", "getdents64", "rename", "renameat",
                 "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "readlink",
                 "readlinkat", "link", "linkat", "chmod", "fchmod", "utimensat", "fsync", "fdatasync",
                 "inotify_add_watch"}
#: Operations the brick serves that are metadata (everything but data reads and writes).
DATA_FOPS = {"READ", "WRITE"}
IDLE_SECONDS = 10
#: "At most a few metadata operations per second" for an idle consumer after its back-off
#: (issue 4): 1,000 idle workers would then cost a metadata server at most 5,000 ops/s.
IDLE_FOPS_PER_S_MAX = 5


def _strace(pid: int, out: str) -> subprocess.Popen:
    if not os.path.exists("/usr/bin/strace"):
        pytest.skip("strace is not installed (testbed.sh install adds it)")
    proc = subprocess.Popen(["strace", "-f", "-c", "-qq", "-o", out, "-p", str(pid)],
                            stderr=subprocess.PIPE)
    time.sleep(0.5)  # attached
    return proc


def _stop_strace(proc: subprocess.Popen, out: str) -> dict[str, int]:
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    calls: dict[str, int] = {}
    with open(out, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
                calls[fields[-1]] = int(fields[3])
    return calls


def _file_calls(calls: dict[str, int]) -> int:
    return sum(n for name, n in calls.items() if name in FILE_SYSCALLS)


def test_idle_consumer_and_each_message_cost_the_server_little(cluster: Cluster, agents: Agents, tmp_path):
    rel, b = new_root(cluster, "load", node="c", iq={}, mq={})
    cluster.profile_start()

    # --- an idle consumer, after its back-off ----------------------------------------------
    idle = agents.start("idle", "idle", root=cluster.path("a", rel), queue="iq", stdout=subprocess.PIPE)
    assert idle.stdout.readline().strip() == b"ready", agents.error("idle")
    time.sleep(5)  # back-off: 1 ms doubling up to poll_max (1 s), and a first housekeeping round
    tracer = _strace(idle.pid, str(tmp_path / "idle.strace"))
    cluster.profile_interval()
    started = time.monotonic()
    time.sleep(IDLE_SECONDS)
    fops = cluster.profile_interval()
    seconds = time.monotonic() - started
    calls = _stop_strace(tracer, str(tmp_path / "idle.strace"))
    idle.kill()
    idle.wait(10)
    idle_fops = {k: round(v / seconds, 2) for k, v in sorted(fops.items())}
    idle_fops_per_s = sum(v for k, v in fops.items() if k not in DATA_FOPS) / seconds
    idle_file_calls_per_s = _file_calls(calls) / seconds
    idle_calls = {k: round(v / seconds, 2) for k, v in sorted(calls.items()) if k in FILE_SYSCALLS}

    # --- publish N, consume + ack N, in one process -----------------------------------------
    n = 200
    cycle = agents.start("cycle", "cycle", root=cluster.path("a", rel), queue="mq", count=n,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert cycle.stdout.readline().strip() == b"ready", agents.error("cycle")
    tracer = _strace(cycle.pid, str(tmp_path / "cycle.strace"))
    cluster.profile_interval()
    cycle.stdin.write(b"go\n")
    cycle.stdin.flush()
    assert cycle.stdout.readline().strip() == b"done"
    fops = cluster.profile_interval()
    calls = _stop_strace(tracer, str(tmp_path / "cycle.strace"))
    cycle.stdin.write(b"exit\n")
    cycle.stdin.close()
    agents.wait(["cycle"], timeout=60)
    assert agents.summary("cycle")["cycled"] == n
    per_msg_fops = {k: round(v / n, 2) for k, v in sorted(fops.items())}
    per_msg_calls = {k: round(v / n, 2) for k, v in sorted(calls.items()) if k in FILE_SYSCALLS}

    record("server load (scenario 8)",
           idle_window_s=round(seconds, 1),
           idle_server_metadata_ops_per_s=round(idle_fops_per_s, 2),
           idle_server_ops_per_s=idle_fops,
           idle_client_file_syscalls_per_s=round(idle_file_calls_per_s, 2),
           idle_client_file_syscalls=idle_calls,
           per_message_server_ops=per_msg_fops,
           per_message_server_ops_total=round(sum(fops.values()) / n, 2),
           per_message_client_file_syscalls=per_msg_calls,
           per_message_client_file_syscalls_total=round(_file_calls(calls) / n, 2))
    assert idle_fops_per_s <= IDLE_FOPS_PER_S_MAX, \
        f"an idle consumer costs the server {idle_fops_per_s:.1f} metadata ops/s: {idle_fops}"


def test_queue_throughput_on_the_shared_volume_and_on_local_disk(cluster: Cluster, tmp_path):
    """benchmarks/queue_throughput.py, one repetition of 1,000 messages, on node a's mount and
    on local disk (/var/tmp); longer runs: benchmarks/cluster_throughput.py."""
    out = tmp_path / "queue_throughput.json"
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "queue_throughput.py"),
         "--dir", cluster.mounts["a"], "--dir", "/var/tmp", "-n", "1000", "--reps", "1",
         "--depths", "", "--json", str(out), "--png", str(tmp_path / "chart.png")],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    rates = {}
    for row in results["throughput_summary"]:
        fs = "gluster" if row["fs"].startswith("fuse.glusterfs") else "local disk"
        rates[f"{fs} {row['impl']}"] = {"publish": round(row["publish_rate"]),
                                        "consume_ack": round(row["consume_rate"]),
                                        "total": round(row["total_rate"])}
    assert {"gluster ddmq", "gluster raw", "local disk ddmq", "local disk raw"} <= set(rates)
    record("queue throughput (msg/s, n=1000, 1 rep)", **rates)


#: Seconds an idle worker is watched: several heartbeats at the default interval.
IDLE_WORKER_SECONDS = 30


@pytest.mark.parametrize("poll_max", [None, 5.0])
def test_idle_worker_costs_the_server_little(cluster: Cluster, workers, tmp_path, poll_max):
    """An idle ``python -m ddmq.worker`` (default settings: its polls, its housekeeping and its
    heartbeat record) must stay within the README's figure of about 3 server operations per idle
    second: a thousand idle workers are a few thousand operations per second. With the root's
    ``poll_max`` at 5 s instead of 1 it costs less: the README's model splits the figure into a
    part per poll and a fixed part (heartbeats, housekeeping, the 10 s listing)."""
    rel, b = new_root(cluster, "idleworker", node="c", tasks={})
    if poll_max is not None:
        b.update_settings_file("", {"poll_max": poll_max})
    cluster.profile_start()
    workers.start("w", "a", cluster.path("a", rel))
    record_file = None
    deadline = time.monotonic() + 60
    while record_file is None and time.monotonic() < deadline:
        names = os.listdir(cluster.path("c", rel, ".workers")) \
            if os.path.isdir(cluster.path("c", rel, ".workers")) else []
        record_file = next((n for n in names if n.endswith(".json")), None)
        time.sleep(0.2)
    assert record_file, workers.text("w")
    time.sleep(5)  # back-off to poll_max, a first housekeeping round
    cluster.profile_interval()
    started = time.monotonic()
    time.sleep(IDLE_WORKER_SECONDS)
    fops = cluster.profile_interval()
    seconds = time.monotonic() - started
    assert workers.running() == ["w"], workers.text("w")
    per_s = sum(v for k, v in fops.items() if k not in DATA_FOPS) / seconds
    record("idle worker server load" + (f", poll_max {poll_max:g} s" if poll_max else ""),
           window_s=round(seconds, 1),
           server_metadata_ops_per_s=round(per_s, 2),
           server_ops_per_s={k: round(v / seconds, 2) for k, v in sorted(fops.items())})
    assert per_s <= IDLE_FOPS_PER_S_MAX, f"an idle worker costs the server {per_s:.1f} ops/s: {fops}"
