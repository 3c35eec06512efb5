"""SlurmWorkers and SlurmJobs against a real Slurm: real sbatch, real jobs on fake nodes n1..n3,
real worker processes serving a DDMQExecutor started with ``max_workers=0``."""

from __future__ import annotations

import os
import time

import pytest

import ddmq
from ddmq.executor import DDMQExecutor
from ddmq.slurm import SlurmJobs, SlurmWorkers, describe, find_jobs, squeue
from ddmq.slurm.jobs import explain

from . import tasks
from .helpers import live_workers, submit_foreign, wait_for
from .testbed import record


def running_rows(jobs: SlurmJobs, count: int, timeout: float = 30):
    """Wait until ``squeue`` shows ``count`` of the jobs running; their rows."""
    def running():
        rows = [r for r in jobs.poll() if r.state == "RUNNING"]
        return rows if len(rows) >= count else []
    return wait_for(f"{count} jobs running", running, timeout)


def test_array_spreads_over_nodes_serves_a_map_and_cancel_touches_no_other_job(slurm, slurm_root):
    """One array of 3 jobs x 2 workers (2 CPUs each: one job per node) serves a map from an
    executor with no workers of its own; the workers know their job's end; stop() cancels our
    jobs and no other, even one with the same name."""
    jobs = SlurmJobs(SlurmWorkers(3, workers_per_job=2, time="10"))
    submitted = time.monotonic()
    ids = jobs.start(slurm_root, "tasks")
    first = wait_for("a first worker", lambda: live_workers(slurm_root))
    first_seconds = time.monotonic() - submitted
    wait_for("6 live workers", lambda: len(live_workers(slurm_root)) == 6)
    all_seconds = time.monotonic() - submitted
    assert len(ids) == 1 and first
    foreign = submit_foreign(slurm, "not-ddmq")
    twin = submit_foreign(slurm, jobs.tag.name)  # our name, but not our comment

    rows = running_rows(jobs, 3)
    assert sorted(r.node for r in rows) == ["n1", "n2", "n3"]
    assert {r.array_id for r in rows} == {ids[0]} and sorted(r.index for r in rows) == [0, 1, 2]
    assert sorted(r.id for r in find_jobs(slurm_root)) == sorted(r.id for r in rows)

    with DDMQExecutor(slurm_root, max_workers=0, queue="tasks") as ex:
        out = list(ex.map(tasks.where, range(60), [0.2] * 60, chunksize=1))
        assert [value for value, _, _ in out] == [x * x for x in range(60)]
        assert {node for _, node, _ in out} == {"n1", "n2", "n3"}
        assert {job for _, _, job in out} == {r.id for r in rows}
        started = time.monotonic()
        quick = list(ex.map(tasks.where, range(300), chunksize=1))
        rate = len(quick) / (time.monotonic() - started)
        job_id, end, asked = ex.submit(tasks.end_time).result(timeout=30)
    by_job = {r.job_id: r for r in jobs.poll()}
    assert end == asked == by_job[job_id].end, (end, asked, by_job[job_id])
    record("serve", sbatch_to_first_heartbeat_s=round(first_seconds, 2),
           sbatch_to_6_heartbeats_s=round(all_seconds, 2), tasks_per_s_3_nodes=round(rate, 1),
           workers=6)

    assert jobs.stop() == ids
    for row in rows:
        slurm.wait_for_state(row.id, {"CANCELLED"}, timeout=30)
    wait_for("no live worker after scancel", lambda: not live_workers(slurm_root), timeout=20)
    states = slurm.states(foreign, twin)
    assert states[foreign] in ("PENDING", "RUNNING") and states[twin] in ("PENDING", "RUNNING")
    end_of = jobs.cause_of(rows[0].id)
    assert end_of.state == "CANCELLED" and end_of.node == rows[0].node
    assert describe(end_of) == f"Slurm job {rows[0].id} on {rows[0].node} was cancelled (scancel): CANCELLED"


def test_scancel_of_one_job_mid_map_runs_its_tasks_again_elsewhere(slurm, slurm_root, tmp_path):
    """scancel one job while its workers run tasks: they give them back (--grace 1 s), other
    jobs run them, every future gets its right result and none fails."""
    jobs = SlurmJobs(SlurmWorkers(3, workers_per_job=2, time="10"), worker_args=["--grace", "1"])
    jobs.start(slurm_root, "tasks")
    wait_for("6 live workers", lambda: len(live_workers(slurm_root)) == 6)
    rows = running_rows(jobs, 3)
    victim = next(r for r in rows if r.node == "n2")
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    with DDMQExecutor(slurm_root, max_workers=0, queue="tasks", lease=5, retries=2) as ex:
        futures = [ex.submit(tasks.attempt, x, 3.0, str(attempts)) for x in range(12)]
        wait_for("6 tasks started", lambda: len(os.listdir(attempts)) >= 6, timeout=30)
        slurm.command("scancel", victim.id)
        results = [f.result(timeout=120) for f in futures]
    assert [x for x, _ in results] == list(range(12))
    assert all(job != victim.id for _, job in results)
    cut = {}
    for name in os.listdir(attempts):
        runs = (attempts / name).read_text().split()
        if victim.id in runs:
            cut[name] = runs
    assert cut, "the cancelled job was running tasks"
    assert all(len(runs) >= 2 and runs[-1] != victim.id for runs in cut.values()), cut
    assert slurm.states(victim.id)[victim.id] == "CANCELLED"
    assert sum(r.state == "RUNNING" for r in jobs.poll() if r.id != victim.id) >= 2
    jobs.stop()


def test_array_size_limit_splits_the_jobs_in_several_arrays(slurm, slurm_root):
    """max_array_size=2: 5 jobs go in arrays of 2, 2 and 1; squeue shows 5 tasks, none with an
    index beyond the limit."""
    jobs = SlurmJobs(SlurmWorkers(5, time="5"), max_array_size=2)
    ids = jobs.start(slurm_root, "tasks")
    assert len(ids) == 3 and [a.size for a in jobs.arrays] == [2, 2, 1]
    assert [p.size for p in jobs.plan(5)] == [2, 2, 1]
    rows = wait_for("5 jobs in squeue", lambda: [] if len(jobs.poll()) < 5 else jobs.poll())
    assert {r.array_id for r in rows} == set(ids)
    assert max(r.index for r in rows) == 1
    for array in jobs.arrays:
        assert f"--array=0-{array.size - 1}" in jobs.plan(array.size)[0].command
    jobs.stop()


def test_a_job_whose_workers_cannot_start_ends_failed_with_exit_status_127(slurm, slurm_root):
    """A wrong interpreter: the job FAILS with exit status 127, and ddmq says why in one line."""
    jobs = SlurmJobs(SlurmWorkers(1, time="5", python="/nonexistent/python3"))
    (array,) = jobs.start(slurm_root, "tasks")
    job_id = f"{array}_0"
    slurm.wait_for_state(job_id, {"FAILED"}, timeout=30)
    end = jobs.cause_of(job_id)
    assert (end.state, end.exit_status, end.signal) == ("FAILED", 127, 0)
    assert describe(end).startswith(f"Slurm job {job_id} on n")
    assert "failed with exit status 127" in describe(end)
    rows = wait_for("the failed job in squeue", lambda: [r for r in jobs.poll() if r.state == "FAILED"])
    assert explain(rows)[job_id] == end


def test_drain_signal_lets_the_running_task_finish_and_the_job_complete(slurm, slurm_root, tmp_path):
    """The signal Slurm sends before the time limit (--signal=B:USR1@margin, here sent at once
    with scancel --batch): the worker takes no new task, finishes the running one within its
    grace, and exits; the job ends COMPLETED, the task's future has its result."""
    jobs = SlurmJobs(SlurmWorkers(1, time="10"))
    (array,) = jobs.start(slurm_root, "tasks")
    command = jobs.plan(1)[0].command
    assert "--signal=B:USR1@120" in command  # a quarter of 10 min is more than 120 s
    wait_for("a live worker", lambda: live_workers(slurm_root))
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    with DDMQExecutor(slurm_root, max_workers=0, queue="tasks") as ex:
        future = ex.submit(tasks.attempt, 1, 3.0, str(attempts))
        wait_for("the task started", lambda: os.listdir(attempts))
        slurm.command("scancel", "--batch", "--signal=USR1", f"{array}_0")
        assert future.result(timeout=30) == (1, f"{array}_0")
    assert slurm.wait_for_state(f"{array}_0", {"COMPLETED"}, timeout=30) == "COMPLETED"
    assert not live_workers(slurm_root)
    with open(os.path.join(slurm_root, ".slurm", f"job-{array}_0.out"), encoding="utf-8") as handle:
        output = handle.read()
    assert "SIGUSR1, the time limit is near: workers drain" in output
    assert "exit status 0" in output


def test_adaptive_scales_up_with_the_backlog_and_down_by_idle_timeout(slurm, slurm_root):
    """jobs=(1, 3): one job from the start; 12 waiting tasks of 2 s bring 2 more (never beyond
    3); once the queue is empty their workers idle out and those jobs COMPLETE, the minimum
    stays. squeue is asked at most every 5 s."""
    jobs = SlurmJobs(SlurmWorkers((1, 3), time="10"), idle_timeout=3, scale_interval=2)
    (keep,) = jobs.start(slurm_root, "tasks")
    calls_before, started = squeue.calls, time.monotonic()
    wait_for("the first worker", lambda: live_workers(slurm_root))
    most_active = 0
    with DDMQExecutor(slurm_root, max_workers=0, queue="tasks") as ex:
        futures = [ex.submit(tasks.where, x, 2.0) for x in range(12)]
        broker = ddmq.broker(slurm_root)
        while not all(f.done() for f in futures):
            live = live_workers(slurm_root)
            waiting = len(broker.get_message_list("tasks")[0])
            jobs.scale(waiting, len(live), sum(1 for w in live if w.state == "idle"))
            pending, running = jobs.counts()
            most_active = max(most_active, pending + running)
            time.sleep(0.5)
        assert [f.result()[0] for f in futures] == [x * x for x in range(12)]
    assert [a.idle_timeout for a in jobs.arrays] == [None, 3]
    assert sum(a.size for a in jobs.arrays) == 3 and most_active <= 3
    assert len({f.result()[2] for f in futures}) >= 2  # the added jobs ran tasks too
    extra = jobs.arrays[1].array_id
    for index in range(jobs.arrays[1].size):
        slurm.wait_for_state(f"{extra}_{index}", {"COMPLETED"}, timeout=40)
    assert slurm.states(f"{keep}_0")[f"{keep}_0"] == "RUNNING"
    elapsed = time.monotonic() - started
    assert squeue.calls - calls_before <= elapsed / squeue.MIN_INTERVAL + 1
    record("adaptive", jobs_added=jobs.arrays[1].size, squeue_calls=squeue.calls - calls_before,
           seconds=round(elapsed, 1))
    jobs.stop()


@pytest.mark.slurm_walltime
def test_time_limit_drains_the_workers_before_slurm_kills_the_job(slurm, slurm_root):
    """A 1-minute job: the workers are told to drain (USR1 about 15 s before the limit), exit
    cleanly, and the job ends COMPLETED; a plain job of the same limit ends TIMEOUT, which ddmq
    reads and says."""
    jobs = SlurmJobs(SlurmWorkers(1, time="1"))
    (array,) = jobs.start(slurm_root, "tasks")
    plain = slurm.command("sbatch", "--parsable", "-t", "1", "--output=/dev/null",
                          "--wrap", "sleep 600").strip()
    started = time.monotonic()
    wait_for("a live worker", lambda: live_workers(slurm_root))
    job_id = f"{array}_0"
    slurm.wait_for_state(job_id, {"COMPLETED", "TIMEOUT", "FAILED", "CANCELLED"}, timeout=150)
    drained = time.monotonic() - started
    slurm.wait_for_state(plain, {"TIMEOUT"}, timeout=150)
    timed_out = time.monotonic() - started
    ours = jobs.cause_of(job_id)
    assert ours.state == "COMPLETED", describe(ours)
    assert ours.run_time is not None and ours.run_time < 60
    with open(os.path.join(slurm_root, ".slurm", f"job-{job_id}.out"), encoding="utf-8") as handle:
        assert "SIGUSR1, the time limit is near" in handle.read()
    theirs = jobs.cause_of(plain)
    assert theirs.state == "TIMEOUT"
    assert describe(theirs) == f"Slurm job {plain} on {theirs.node} reached its time limit (1 min): TIMEOUT"
    record("walltime", drained_after_s=round(drained, 1), run_time_s=ours.run_time,
           plain_timeout_after_s=round(timed_out, 1))


def test_a_job_over_its_memory_limit_is_said_to_be_out_of_memory(slurm, slurm_root):
    """With cgroups: a task that takes more than the job's --mem gets the job killed; Slurm's
    state is OUT_OF_MEMORY and ddmq's line names the limit."""
    if not slurm.cgroup:
        pytest.skip("the testbed runs without cgroups (cgroup v1 missing, another Slurm here, or "
                    "DDMQ_SLURM_CGROUP=0): --mem is not enforced")
    jobs = SlurmJobs(SlurmWorkers(1, time="5", mem="100M"))
    (array,) = jobs.start(slurm_root, "tasks")
    wait_for("a live worker", lambda: live_workers(slurm_root))
    with DDMQExecutor(slurm_root, max_workers=0, queue="tasks", lease=5, retries=0) as ex:
        future = ex.submit(tasks.hog, 400)
        job_id = f"{array}_0"
        slurm.wait_for_state(job_id, {"OUT_OF_MEMORY", "FAILED", "COMPLETED"}, timeout=60)
        end = jobs.cause_of(job_id)
        assert end.state == "OUT_OF_MEMORY", describe(end)
        assert describe(end) == (f"Slurm job {job_id} on {end.node} ran out of memory "
                                 "(limit --mem=100M): OUT_OF_MEMORY")
        future.cancel()
