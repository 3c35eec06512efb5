"""The server operations of one executor task on the shared volume: the figure per task of the
README's model for 1,000 workers on Lustre or NFS (test_load.py measures the idle worker's,
with poll_max 1 and 5 s).

An executor on node c, one ``python -m ddmq.worker`` on node a; the brick's own counters
(``gluster volume profile``) over: N quick tasks submitted one by one (the executor knows
them quick, so the burst goes out in bundles of several tasks per message; the worker answers
them in shared reply messages), N calls in a map of chunks of 20, and N_SLOW tasks of 0.2 s (one
message each: task message, reply message, the worker's heartbeat rewrites, the executor's
housekeeping rounds).
"""

from __future__ import annotations

import time

from .harness import Cluster, executor, new_root, record, wait_for
from .test_load import DATA_FOPS

N = 200
CHUNK = 20
#: Tasks of 0.2 s: one at a time on the worker (no batch), each seen in its heartbeat record.
N_SLOW = 50


def _metadata(fops: dict[str, int]) -> int:
    return sum(v for k, v in fops.items() if k not in DATA_FOPS)


def test_server_operations_per_task(cluster: Cluster, workers):
    rel, _ = new_root(cluster, "taskload", node="c")
    workers.start("w", "a", cluster.path("a", rel))
    with executor(cluster.path("c", rel), max_workers=0) as ex:
        wait_for(lambda: len(ex.workers()[0]) == 1, 60, what="the worker's heartbeat")
        ex.submit(divmod, 1, 1).result(timeout=60)  # warm
        cluster.profile_start()
        cluster.profile_interval()
        started = time.monotonic()
        futures = [ex.submit(divmod, i, 7) for i in range(N)]
        assert [f.result(timeout=300) for f in futures] == [divmod(i, 7) for i in range(N)]
        one_s = time.monotonic() - started
        single = cluster.profile_interval()
        started = time.monotonic()
        assert list(ex.map(divmod, range(N), [7] * N, chunksize=CHUNK, timeout=300)) == \
            [divmod(i, 7) for i in range(N)]
        map_s = time.monotonic() - started
        chunked = cluster.profile_interval()
        started = time.monotonic()
        slow = [ex.submit(time.sleep, 0.2) for _ in range(N_SLOW)]
        assert [f.result(timeout=300) for f in slow] == [None] * N_SLOW
        slow_s = time.monotonic() - started
        one_by_one = cluster.profile_interval()
    workers.stop()
    per_task = _metadata(single) / N
    per_call = _metadata(chunked) / N
    record("server load per executor task",
           tasks=N, seconds=round(one_s, 1), metadata_ops_per_task=round(per_task, 1),
           all_ops_per_task=round(sum(single.values()) / N, 1),
           ops_per_task={k: round(v / N, 2) for k, v in sorted(single.items())},
           map_chunk=CHUNK, map_seconds=round(map_s, 1),
           metadata_ops_per_call_in_chunks=round(per_call, 2),
           all_ops_per_call_in_chunks=round(sum(chunked.values()) / N, 2),
           slow_tasks=N_SLOW, slow_seconds=round(slow_s, 1),
           metadata_ops_per_task_of_200ms=round(_metadata(one_by_one) / N_SLOW, 1),
           ops_per_task_of_200ms={k: round(v / N_SLOW, 2) for k, v in sorted(one_by_one.items())})
    per_slow_task = _metadata(one_by_one) / N_SLOW  # one message each: not bundled, not chunked
    # A burst of quick submits travels in bundles, a map in chunks: each call
    # costs a small part of a message's operations.
    assert per_slow_task < 200
    assert per_task < per_slow_task / 10 and per_call < per_slow_task / 10

