"""Scenario 1: the executor on node c, workers on nodes a and b; 5,000 tasks, every future right.

Four real worker processes (``python -m ddmq.worker ROOT -vv``), two on node a's mount and two on
node b's, serve a ``DDMQExecutor(ROOT_ON_C, max_workers=0)`` in this process, on node c's mount.
It runs 5,000 calls: 1,000 by ``submit`` (one task message each), 3,000 by ``map(chunksize=20)``
and 1,000 by ``map`` with the automatic chunk size (chosen from the live workers' heartbeats).
Every task notes where it ran on local disk (see ``harness.recording_task``), so the test knows
which calls ran more than once and where. A call may run twice only after a lease was lost (its
worker died, hung or was cut off: at-least-once); this run has no faults, so none may.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import time


from .harness import (LEASE_LOST_LINES, Cluster, LogCapture, Workers, executor, new_root,
                      read_runs, record, recording_task, wait_for)

N_SUBMIT = 1000
N_MAP = 3000
MAP_CHUNK = 20
N_AUTO = 1000
WORKERS = {"a1": "a", "a2": "a", "b1": "b", "b2": "b"}


def test_5000_tasks_from_node_c_run_once_each_on_nodes_a_and_b(cluster: Cluster, workers: Workers,
                                                                tmp_path):
    rel, b = new_root(cluster, "executor", node="c")
    runs = str(tmp_path / "runs")
    os.makedirs(runs)
    task = recording_task(runs)
    for name, node in WORKERS.items():
        workers.start(name, node, cluster.path(node, rel))

    with LogCapture() as logs, executor(cluster.path("c", rel), max_workers=0) as ex:
        # The automatic chunk size counts the live workers: let them all say hello first.
        ready_s = wait_for(lambda: len(ex.workers()[0]) == len(WORKERS), 60,
                           what="all four workers' heartbeats")
        started = time.monotonic()
        submitted = {i: ex.submit(task, f"s{i}", i) for i in range(N_SUBMIT)}
        submit_s = time.monotonic() - started
        mapped = list(ex.map(task, [f"m{i}" for i in range(N_MAP)], range(N_MAP),
                             chunksize=MAP_CHUNK, timeout=300))
        # map(chunksize=None) sends about len / (4 x live workers) calls per message (README).
        auto_chunk = -(-N_AUTO // (4 * len(ex.workers()[0])))
        auto = list(ex.map(task, [f"x{i}" for i in range(N_AUTO)], range(N_AUTO), timeout=300))
        done, not_done = concurrent.futures.wait(submitted.values(), timeout=300)
        run_s = time.monotonic() - started
        assert not not_done, f"{len(not_done)} submitted futures not resolved after 300 s"
        task_queue = b.get_message_list(ex.queue)
        dead = b.list_dead(ex.queue)
        reply_queue = ex.reply_queue
    codes = workers.stop()

    # Every future is right, and ran on a worker of node a or b.
    wrong = {f"s{i}": f.exception() or f.result() for i, f in submitted.items()
             if f.exception() is not None or f.result()[0] != i * i}
    wrong.update({f"m{i}": r for i, r in enumerate(mapped) if r[0] != i * i})
    wrong.update({f"x{i}": r for i, r in enumerate(auto) if r[0] != i * i})
    assert not wrong, f"{len(wrong)} wrong results, e.g. {list(wrong.items())[:5]}"
    assert len(mapped) == N_MAP and len(auto) == N_AUTO
    results = [f.result() for f in submitted.values()] + mapped + auto
    where = collections.Counter(node for _, node, _ in results)
    assert set(where) == {"a", "b"}, f"results came from nodes {dict(where)}; expected a and b only"

    # Where each call ran, from the tasks' own notes; which ran more than once.
    notes = read_runs(runs)
    starts = collections.Counter(key for kind, key, *_ in notes if kind == "S")
    ends = collections.Counter(key for kind, key, *_ in notes if kind == "E")
    keys = {f"s{i}" for i in range(N_SUBMIT)} | {f"m{i}" for i in range(N_MAP)} | \
        {f"x{i}" for i in range(N_AUTO)}
    assert set(starts) == keys and set(ends) == keys, "calls that never ran, or ran unasked"
    twice = {k: c for k, c in starts.items() if c > 1}
    by_worker = collections.Counter(f"{node}:{pid}" for kind, _, node, pid, _ in notes if kind == "S")
    told = {name: [line for line in workers.text(name).splitlines()
                   if any(s in line for s in LEASE_LOST_LINES)] for name in WORKERS}
    # Housekeeping (the executor's, here, or a worker's) requeued a task whose lease had ended.
    expired = [r[3] for r in logs.lines("expired:")] + \
        [line for name in WORKERS for line in workers.text(name).splitlines() if "expired:" in line]
    stale_replies = logs.lines("dropping a reply")
    record("executor on c, workers on a+b (scenario 1)",
           tasks=len(keys), submitted=N_SUBMIT, mapped=N_MAP, map_chunksize=MAP_CHUNK,
           mapped_auto=N_AUTO, auto_chunksize=auto_chunk,
           task_messages=N_SUBMIT + -(-N_MAP // MAP_CHUNK) + -(-N_AUTO // auto_chunk),
           workers=len(WORKERS), workers_ready_s=round(ready_s, 1), submit_s=round(submit_s, 1),
           run_s=round(run_s, 1), tasks_per_s=round(len(keys) / run_s, 1),
           runs_by_node=dict(collections.Counter(n for kind, _, n, _, _ in notes if kind == "S")),
           runs_by_worker=dict(by_worker), run_more_than_once=len(twice),
           workers_told_lease_lost=sum(len(v) for v in told.values()), leases_expired=len(expired),
           stale_replies_dropped=len(stale_replies))

    # A call runs twice only after its lease ended and it was requeued; no fault, no lost lease.
    assert not twice or expired, (
        f"{len(twice)} calls ran more than once although no lease ended: two workers held one "
        f"task at once (e.g. {sorted(twice)[:5]}); workers that found their lease gone at ack: "
        f"{ {n: len(v) for n, v in told.items()} }")
    assert not expired and not any(told.values()), f"leases lost without a fault: {expired[:5]}, {told}"
    assert not twice, f"{len(twice)} calls ran more than once: {sorted(twice)[:10]}"
    assert len(by_worker) == len(WORKERS), f"not every worker ran tasks: {dict(by_worker)}"

    # Nothing left behind: the task queue is empty, the reply queue is gone, workers exit 0.
    assert task_queue == ([], []) and dead == [], (task_queue, dead)
    assert reply_queue not in b.list_queues()
    assert codes == {name: 0 for name in WORKERS}, \
        f"workers did not stop cleanly on SIGTERM: {codes}, {[workers.text(n)[-2000:] for n in codes]}"
