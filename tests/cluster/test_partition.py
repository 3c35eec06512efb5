"""Scenario 2: a node is cut off from the file server in the middle of a run.

Two workers on node a and two on node b serve an executor on node c with a 5 s lease. Each worker
takes one 3 s task; while b's two are running, node b's network link goes down (``testbed.sh
partition b``: its I/O blocks, as on a hard NFS mount). Then:

* b's tasks stop having their leases extended; once the leases end, the executor's housekeeping
  requeues them and node a's workers run them again, and their futures resolve (from node a);
* the link comes back (``heal``) before GlusterFS's ping-timeout (42 s) would turn the blocked
  I/O into ENOTCONN; b's workers finish what they were doing: their late results reach the
  reply queue and the executor drops them (the first result of a task wins), and each b worker
  learns that its lease was lost (its lease extension or its ack finds the work file gone);
* nothing the caller sees is lost, changed or doubled, and node b's workers go on working.
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time


from .harness import (LEASE_LOST_LINES, Cluster, LogCapture, Workers, executor, new_root,
                      read_runs, record, recording_task, wait_for)

LEASE = 5           # seconds: the executor's lease
LONG = 3.0          # seconds each of the first four tasks runs
SHORT = 0.2
N_DURING = 30       # tasks submitted while b is cut off
N_AFTER = 40        # tasks mapped after b is back
PARTITION_MAX = 30  # b must be back well before the client's ping-timeout (42 s)
WORKERS = {"a1": "a", "a2": "a", "b1": "b", "b2": "b"}
DROP = re.compile(r"dropping a reply for task (\S+) from worker (\S+):")


def test_a_cut_off_node_is_rerun_elsewhere_and_its_late_results_are_ignored(
        cluster: Cluster, workers: Workers, tmp_path):
    rel, b = new_root(cluster, "partition", node="c")
    runs = str(tmp_path / "runs")
    os.makedirs(runs)
    task = recording_task(runs)
    for name, node in WORKERS.items():
        workers.start(name, node, cluster.path(node, rel))
    pids = {p.pid: n for n, p in workers.procs.items()}
    resolved: dict[str, list] = collections.defaultdict(list)  # key -> every outcome it was given

    def watch(key, future):
        future.add_done_callback(lambda f: resolved[key].append((time.time(), f.result())))
        return future

    def running_on(node):
        """Keys of tasks started but not ended on ``node``."""
        notes = read_runs(runs)
        ended = {(k, p) for kind, k, n, p, _ in notes if kind == "E"}
        return {k for kind, k, n, p, _ in notes if kind == "S" and n == node and (k, p) not in ended}

    with LogCapture() as logs, executor(cluster.path("c", rel), max_workers=0, lease=LEASE) as ex:
        wait_for(lambda: len(ex.workers()[0]) == len(WORKERS), 60, what="the workers' heartbeats")
        first = {f"long{i}": watch(f"long{i}", ex.submit(task, f"long{i}", i, LONG)) for i in range(4)}
        wait_for(lambda: len(running_on("b")) == 2 and len(running_on("a")) == 2, 30,
                 pause=0.02, what="each worker running one long task")
        cut_off = sorted(running_on("b"))
        cluster.partition("b")
        t_cut = time.time()
        # Proof that b is cut off: a file created through b's mount waits for the link.
        probe: dict[str, float] = {}

        def create_on_b():
            with open(cluster.path("b", rel, "probe"), "w"):
                probe["returned"] = time.time()

        prober = threading.Thread(target=create_on_b, daemon=True)
        prober.start()
        try:
            during = {f"d{i}": watch(f"d{i}", ex.submit(task, f"d{i}", 100 + i, SHORT))
                      for i in range(N_DURING)}
            # b's tasks come back after their lease and are run by node a's workers.
            wait_for(lambda: all(first[k].done() for k in cut_off), PARTITION_MAX - 5, pause=0.1,
                     what=f"the tasks of cut-off node b ({cut_off}) resolved elsewhere")
            t_resolved = time.time()
            time.sleep(1)
            assert "returned" not in probe, "node b's mount answered while b was cut off"
        finally:
            cluster.heal("b")
        t_heal = time.time()
        prober.join(60)
        assert "returned" in probe, "node b's mount did not answer again within 60 s of the heal"

        # b's workers finish their tasks; their late results arrive and are dropped.
        wait_for(lambda: len(logs.lines("dropping a reply")) >= len(cut_off), 60, pause=0.1,
                 what="the late results of node b")
        t_dropped = time.time()
        wait_for(lambda: all(any(s in workers.text(n) for s in LEASE_LOST_LINES)
                             for n, node in WORKERS.items() if node == "b"), 30, pause=0.1,
                 what="b's workers told that their leases were lost")
        # b's workers are back at work.
        after = list(ex.map(task, [f"x{i}" for i in range(N_AFTER)], range(N_AFTER), [SHORT] * N_AFTER,
                            chunksize=1, timeout=120))
        for future in during.values():
            future.result(timeout=120)
        time.sleep(2)  # room for any further late reply to arrive (and to be dropped)
        drops = [DROP.search(r[3]).groups() for r in logs.lines("dropping a reply")]
    codes = workers.stop()

    notes = read_runs(runs)
    starts = [(k, n, p, t) for kind, k, n, p, t in notes if kind == "S"]
    ran = collections.Counter(k for k, *_ in starts)
    on_b_while_cut = [k for k, n, _, t in starts if n == "b" and t_cut < t < t_heal]
    reruns = {k: min(t for kk, n, _, t in starts if kk == k and n == "a") for k in cut_off}
    b_start = {k: min(t for kk, n, _, t in starts if kk == k and n == "b") for k in cut_off}
    told = {n: [line for line in workers.text(n).splitlines() if any(s in line for s in LEASE_LOST_LINES)]
            for n, node in WORKERS.items() if node == "b"}
    record("node cut off (scenario 2)", lease_s=LEASE, task_s=LONG, cut_off_tasks=len(cut_off),
           rerun_after_cut_s=[round(reruns[k] - t_cut, 1) for k in cut_off],
           rerun_after_first_start_s=[round(reruns[k] - b_start[k], 1) for k in cut_off],
           resolved_after_cut_s=round(t_resolved - t_cut, 1), partition_s=round(t_heal - t_cut, 1),
           b_mount_blocked_s=round(probe["returned"] - t_cut, 1),
           b_answered_after_heal_s=round(probe["returned"] - t_heal, 1),
           late_results_after_heal_s=round(t_dropped - t_heal, 1), stale_results_ignored=len(drops),
           lease_lost_notices_on_b=sum(len(v) for v in told.values()),
           tasks=len(first) + len(during) + len(after), runs=len(starts),
           run_more_than_once=sum(1 for c in ran.values() if c > 1),
           ran_on_b_after_heal=sum(1 for k, n, _, t in starts if n == "b" and t > t_heal))

    # The partition really cut b off: its mount blocked, and b started nothing meanwhile.
    assert probe["returned"] - t_cut >= t_resolved - t_cut, "b's mount answered during the partition"
    assert not on_b_while_cut, f"node b started tasks while cut off: {on_b_while_cut}"
    # b's tasks were run again by node a, not before their lease had ended.
    for k in cut_off:
        assert reruns[k] - b_start[k] >= LEASE - 1.0, \
            f"{k} re-run {reruns[k] - b_start[k]:.1f} s after b started it: before its {LEASE} s lease ended"
    # The executor kept the first result of each task (from node a for b's tasks), never changed it.
    futures = {**first, **during}
    assert all(len(resolved[k]) == 1 for k in futures), \
        {k: v for k, v in resolved.items() if len(v) != 1}
    for k, future in futures.items():
        assert future.result() == resolved[k][0][1]
    for k in cut_off:
        assert first[k].result()[1] == "a", f"{k}: kept the result from node {first[k].result()[1]}"
    # Nothing lost or doubled in what the caller sees: every value right and there once.
    assert [first[f"long{i}"].result()[0] for i in range(4)] == [i * i for i in range(4)]
    assert [during[f"d{i}"].result()[0] for i in range(N_DURING)] == [(100 + i) ** 2 for i in range(N_DURING)]
    assert [r[0] for r in after] == [i * i for i in range(N_AFTER)]
    # Each late result came from one of b's workers, which was told its lease was lost.
    assert len(drops) == len(cut_off), f"stale results dropped: {drops}, expected one per task of {cut_off}"
    for task_id, worker in drops:
        name = pids.get(int(worker.rpartition(":")[2]))
        assert name in told, f"a late result for {task_id} came from {worker} ({name}), not from node b"
        assert any(task_id in line or "lease already lost at ack" in line for line in told[name]), \
            f"worker {name} was not told that its lease of {task_id} was lost: {told[name]}"
    # Only the tasks that were cut off ran twice; b works again after the heal.
    assert {k for k, c in ran.items() if c > 1} == set(cut_off), ran
    assert any(n == "b" and t > t_heal for _, n, _, t in starts), "node b ran nothing after the heal"
    assert b.get_message_list(ex.queue) == ([], []) and b.list_dead(ex.queue) == []
    assert codes == {name: 0 for name in WORKERS}, codes
