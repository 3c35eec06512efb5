"""DDMQExecutor(root, max_workers=0, workers=SlurmWorkers(...)) against a real Slurm: the
executor submits its workers, scales them, explains their deaths, and cancels them."""

from __future__ import annotations

import json
import os
import time

import pytest

from ddmq.executor import DDMQExecutor, WorkerLostError
from ddmq.slurm import SlurmError, SlurmJobs, SlurmWorkers

from . import tasks
from .helpers import live_workers, wait_for
from .test_cli_slurm import ok
from .testbed import record


def test_executor_submits_its_workers_serves_a_map_over_nodes_and_cancels_them(slurm, slurm_root):
    """workers=SlurmWorkers(3, ...): one array of 3 jobs (2 CPUs each, so one per node) is
    submitted by the executor; a map runs on all three nodes; shutdown leaves no job."""
    started = time.time()
    with DDMQExecutor(slurm_root, max_workers=0, workers=SlurmWorkers(3, cpus_per_worker=2, time="10"),
                      lease=10) as ex:
        first = ex.submit(tasks.started_at).result(timeout=60)
        ids = ex._slurm.jobs.array_ids
        assert len(ids) == 1
        out = list(ex.map(tasks.where, range(60), [0.2] * 60, chunksize=1))
        assert [value for value, _, _ in out] == [x * x for x in range(60)]
        assert {node for _, node, _ in out} == {"n1", "n2", "n3"}
        live = live_workers(slurm_root)
        assert {w.node for w in live} == {"n1", "n2", "n3"}
        assert {w.slurm_job for w in live} == {f"{ids[0]}_{i}" for i in range(3)}
        t = time.monotonic()
        quick = list(ex.map(tasks.where, range(600), chunksize=1))
        rate = len(quick) / (time.monotonic() - t)
        # ddmq status while 3 tasks of 4 s run, one per node, and 2 wait
        slow = [ex.submit(tasks.where_slowly, x, 4.0) for x in range(5)]  # one message each
        ids_slow = {f._task_id for f in slow}
        # "running": claimed (a worker that just ran quick tasks claims a few at once, and
        # gives back those it has not started when one turns out slow: while it does, a
        # task is in neither count for a moment, so the status is read until it settles)
        def settled(d):
            (q,) = d["queues"]
            running_slow = sum(w["task"] in ids_slow for w in d["workers"])
            return d if running_slow == 3 and q["waiting"] + q["running"] == 5 else None
        seen = wait_for("3 workers running a slow task, 2 waiting", lambda: settled(
            json.loads(ok("status", slurm_root, "--format", "json"))), timeout=20)
        (queue,) = seen["queues"]
        assert (queue["queue"], queue["waiting"] + queue["running"], queue["live_workers"]) == \
            ("tasks", 5, 3) and queue["running"] >= 3
        assert queue["done_last_minute"] >= 600
        assert {w["where"] for w in seen["workers"]} == {"n1", "n2", "n3"}
        assert {w["slurm_job"] for w in seen["workers"]} == {f"{ids[0]}_{i}" for i in range(3)}
        assert all(w["task"] and w["for_seconds"] is not None for w in seen["workers"])
        table = ok("status", slurm_root)
        assert "done/min" in table and "slurm job" in table and f"{ids[0]}_1" in table
        assert [f.result(timeout=30)[0] for f in slow] == [x * x for x in range(5)]
    for index in range(3):  # scancel'ed at shutdown: no job of ours is left
        slurm.wait_for_state(f"{ids[0]}_{index}", {"CANCELLED", "COMPLETED"}, timeout=30)
    assert not [j for j in slurm.active_jobs() if j.startswith(ids[0])]
    wait_for("no live worker after shutdown", lambda: not live_workers(slurm_root), timeout=20)
    record("executor", first_task_after_s=round(first - started, 2),
           tasks_per_s_3_nodes=round(rate, 1), workers=3)


def test_no_slurm_is_a_clear_error_and_nothing_is_left(monkeypatch, tmp_path):
    """No sbatch on PATH: the constructor raises the SlurmError (which says so) and the
    executor is shut down (no reply queue left behind)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "none.conf"))
    root = str(tmp_path / "root")
    with pytest.raises(SlurmError, match="not found"):
        DDMQExecutor(root, max_workers=0, workers=SlurmWorkers(1))
    assert not [q for q in os.listdir(root) if q.startswith("reply-")]


@pytest.mark.slurm_walltime
def test_tasks_that_would_outlast_the_job_go_to_another_job_without_using_a_retry(slurm, slurm_root,
                                                                                 tmp_path):
    """A 1-minute job of 2 workers (drain margin 15 s, idle margin 7.5 s) and 8 tasks of 14 s,
    retries=0: each worker runs 3 tasks (the second and third fit: it learnt that the function
    takes 14 s), gives the fourth back before starting it, and exits; the job ends COMPLETED
    before its limit. A second job runs the 2 given back; every future has its result (no
    retry was used up: retries=0 would have failed them).

    Slurm's own SIGUSR1 (--signal=B:USR1@15) may come up to a minute early (its resolution),
    which in a 1-minute job would drain the workers at once: here a harmless SIGCONT takes its
    place, so that the workers' own clock decides (SIGUSR1 is tested in test_workers.py)."""
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    second = None
    with DDMQExecutor(slurm_root, max_workers=0, retries=0,
                      workers=SlurmWorkers(1, workers_per_job=2, time="1",
                                           sbatch_args=["--signal=B:CONT@1"])) as ex:
        (array,) = ex._slurm.jobs.array_ids
        short = f"{array}_0"
        futures = [ex.submit(tasks.attempt, x, 14.0, str(attempts)) for x in range(8)]
        state = slurm.wait_for_state(short, {"COMPLETED", "TIMEOUT", "FAILED", "CANCELLED"},
                                     timeout=120)
        end = ex._slurm.jobs.cause_of(short)
        done_in_short = sum(f.done() for f in futures)
        started_in_short = len(os.listdir(attempts))
        other = SlurmJobs(SlurmWorkers(1, workers_per_job=2, time="5"))
        (second,) = other.start(slurm_root, "tasks")
        try:
            results = [f.result(timeout=60) for f in futures]
        finally:
            other.stop()
    assert state == "COMPLETED", end
    assert (done_in_short, started_in_short) == (6, 6)  # the other two never started there
    assert [x for x, _ in results] == list(range(8))
    assert sorted(job for _, job in results) == [short] * 6 + [f"{second}_0"] * 2
    assert all(len((attempts / str(x)).read_text().split()) == 1 for x in range(8))
    with open(os.path.join(slurm_root, ".slurm", f"job-{short}.out"), encoding="utf-8") as handle:
        log = handle.read()
    drained = [line for line in log.splitlines()
               if "INFO: task " in line and "would not finish before its Slurm job" in line]
    assert len(drained) == 2, log
    started = time.mktime(time.strptime(drained[0][:19], "%Y-%m-%d %H:%M:%S"))
    record("walltime_drain", job_limit_s=end.time_limit, job_ran_s=end.run_time,
           ended_before_limit_s=end.time_limit - end.run_time,
           drain_to_job_end_s=round(end.end - started, 1))


def test_an_out_of_memory_job_is_named_in_the_error_of_its_task(slurm, slurm_root):
    """With cgroups: a task over the job's --mem kills its worker; the future (retries=0) fails
    with a WorkerLostError that says the job ran out of memory, and which limit."""
    if not slurm.cgroup:
        pytest.skip("the testbed runs without cgroups: --mem is not enforced")
    with DDMQExecutor(slurm_root, max_workers=0, retries=0,
                      workers=SlurmWorkers(1, time="5", mem="100M")) as ex:
        (array,) = ex._slurm.jobs.array_ids
        future = ex.submit(tasks.hog, 400)
        with pytest.raises(WorkerLostError) as caught:
            future.result(timeout=60)
    text = str(caught.value)
    assert f"its Slurm job {array}_0 on n" in text and "ran out of memory (limit --mem=100M)" in text
    assert "OUT_OF_MEMORY" in text
    # ... and the command line says it too
    failures = [f["what"] for f in json.loads(ok("status", slurm_root, "--format", "json"))["failures"]]
    assert any(f.startswith("dead letter (requeue_limit) in tasks: tasks/dead/requeue_limit.")
               for f in failures), failures
    assert any("ran out of memory (limit --mem=100M): OUT_OF_MEMORY" in f and f.startswith("Slurm job")
               for f in failures), failures
    assert any(f.startswith("worker ") and "OUT_OF_MEMORY" in f for f in failures), failures
    workers = ok("workers", slurm_root)
    assert "slurm job" in workers.splitlines()[0] and "ran out of memory" in workers
    jobs = json.loads(ok("slurm", "status", slurm_root, "--format", "json"))
    assert [j["cause"] for j in jobs] == [f"Slurm job {array}_0 on {jobs[0]['node']} ran out of "
                                          "memory (limit --mem=100M): OUT_OF_MEMORY"]


def test_a_failed_node_s_tasks_run_elsewhere(slurm, slurm_root, tmp_path):
    """scontrol update nodename=n2 state=down while its worker runs a task of 10 s: Slurm
    signals the job (SIGTERM, SIGKILL KillWait = 10 s later), the worker gives the task back
    when its --grace (7 s) is over, the task runs again on another node, and every future has
    its right result."""
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    try:
        with DDMQExecutor(slurm_root, max_workers=0, retries=1,
                          workers=SlurmWorkers(3, cpus_per_worker=2, time="10")) as ex:
            wait_for("3 live workers", lambda: len(live_workers(slurm_root)) == 3, timeout=60)
            on_n2 = next(w.slurm_job for w in live_workers(slurm_root) if w.node == "n2")
            futures = [ex.submit(tasks.attempt, x, 10.0, str(attempts)) for x in range(6)]
            wait_for("a task started on n2", lambda: any(
                on_n2 in (attempts / name).read_text() for name in os.listdir(attempts)), timeout=30)
            slurm.command("scontrol", "update", "nodename=n2", "state=down", "reason=ddmq-test")
            results = [f.result(timeout=90) for f in futures]
    finally:
        slurm.command("scontrol", "update", "nodename=n2", "state=resume", check=False)
    assert [x for x, _ in results] == list(range(6))
    cut = [name for name in os.listdir(attempts)
           if on_n2 in (attempts / name).read_text().split()[:-1]]
    assert cut, "a task was cut on n2"
    assert all(job != on_n2 for _, job in results)


def test_adaptive_jobs_scale_up_with_the_backlog_and_end_when_idle(slurm, slurm_root):
    """jobs=(1, 3), idle_timeout=3: the executor starts 1 job; 12 tasks of 2 s make it submit 2
    more; once the queue is empty their workers idle out and those jobs COMPLETE, while the
    minimum's job runs until shutdown cancels it."""
    with DDMQExecutor(slurm_root, max_workers=0,
                      workers=SlurmWorkers((1, 3), time="10", idle_timeout=3)) as ex:
        (keep,) = ex._slurm.jobs.array_ids
        out = list(ex.map(tasks.where, range(12), [2.0] * 12, chunksize=1))
        assert [value for value, _, _ in out] == [x * x for x in range(12)]
        arrays = ex._slurm.jobs.arrays
        assert [a.idle_timeout for a in arrays] == [None, 3] and sum(a.size for a in arrays) == 3
        assert len({job for _, _, job in out}) >= 2  # the added jobs ran tasks too
        extra = arrays[1].array_id
        for index in range(arrays[1].size):
            slurm.wait_for_state(f"{extra}_{index}", {"COMPLETED"}, timeout=40)
        assert slurm.states(f"{keep}_0")[f"{keep}_0"] == "RUNNING"
    slurm.wait_for_state(f"{keep}_0", {"CANCELLED"}, timeout=30)
