"""``python -m ddmq.worker`` as a real process: signals, leases, lost workers, heartbeats.

Tasks write marker files so the tests can see where a task is without
timing assumptions; gates (files the test creates) hold a task until the
test is ready. Leases are short (1 s) so lost-worker recovery takes seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import ddmq
from ddmq.executor import DDMQExecutor, WorkerLostError, list_workers
from ddmq.executor.heartbeat import HOST, Heartbeat, prune_lost, record_path
from test_executor import published, start_worker, wait_for  # the gate of a task (workers import this module too)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LONG = 120  # seconds: only reached when something is broken


# --- tasks (module level: the workers import this module) ------------------------------

def logged_gated(log, gate, value):
    """Append 'start PID' to ``log``, wait for ``gate``, append 'end PID'."""
    with open(log, "a") as handle:
        handle.write(f"start {os.getpid()}\n")
    if gate:
        wait_for(gate)
    with open(log, "a") as handle:
        handle.write(f"end {os.getpid()}\n")
    return value


def slow_once(log, seconds):
    with open(log, "a") as handle:
        handle.write(f"ran {os.getpid()}\n")
    time.sleep(seconds)
    return "slow done"


def die(log):
    with open(log, "a") as handle:
        handle.write(f"died {os.getpid()}\n")
    os._exit(3)


def double(x):
    return 2 * x


# --- helpers ------------------------------------------------------------------------------

def wait_until(condition, what, timeout=LONG):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_ready(root, proc):
    wait_until(lambda: os.path.exists(record_path(root, HOST, proc.pid)) or proc.poll() is not None,
               "the worker's heartbeat")
    assert proc.poll() is None, "the worker exited while starting"


def lines(path):
    return path.read_text().split() if path.exists() else []


# --- the command line ---------------------------------------------------------------------

def test_help_explains_the_options():
    out = subprocess.run([sys.executable, "-m", "ddmq.worker", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=LONG)
    assert out.returncode == 0
    for word in ("ROOT", "--queue", "--max-tasks", "--idle-timeout", "--heartbeat", "--grace",
                 "SIGTERM", "import"):
        assert word in out.stdout


def test_idle_timeout_and_max_tasks_exit_0(tmp_path):
    root = tmp_path / "root"
    proc = start_worker(root, "--idle-timeout", "0.3")
    assert proc.wait(LONG) == 0
    assert os.path.isfile(root / "ddmq.yaml") and (root / ".ddmq-secret").is_file()
    assert list_workers(root) == ([], [])  # a clean exit removes the heartbeat record
    with DDMQExecutor(root, max_workers=0) as ex:
        futures = [ex.submit(double, x) for x in range(3)]
        proc = start_worker(root, "--max-tasks", "2")
        assert proc.wait(LONG) == 0
        wait_until(lambda: sum(f.done() for f in futures) == 2, "two results")
        assert len(ddmq.broker(root).get_message_list(ex.queue)[0]) == 1
        ex.shutdown(cancel_futures=True)


# --- signals ------------------------------------------------------------------------------

def test_sigterm_of_an_idle_worker_exits_0(tmp_path):
    root = tmp_path / "root"
    proc = start_worker(root)
    wait_ready(root, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(LONG) == 0
    assert list_workers(root) == ([], [])


def test_sigterm_lets_the_running_task_finish(tmp_path):
    root, log, gate = tmp_path / "root", tmp_path / "task.log", tmp_path / "go"
    with DDMQExecutor(root, max_workers=0) as ex:
        proc = start_worker(root, log=tmp_path / "w.log")
        future = ex.submit(logged_gated, str(log), str(gate), "finished")
        wait_until(lambda: lines(log), "the task to start")
        proc.terminate()
        wait_until(lambda: list_workers(root)[0][0].state == "stopping", "the worker to stop")
        later = ex.submit(double, 1)  # must not be taken by the stopping worker
        (record,), _ = list_workers(root)
        gate.touch()
        assert future.result(timeout=LONG) == "finished"
        assert proc.wait(LONG) == 0
        assert not later.done() and len(ddmq.broker(root).get_message_list(ex.queue)[0]) == 1
        assert later.cancel()
    assert record.pid == proc.pid


def test_sigterm_after_grace_gives_the_task_back(tmp_path):
    root, log, gate = tmp_path / "root", tmp_path / "task.log", tmp_path / "go"
    with DDMQExecutor(root, max_workers=0) as ex:
        first = start_worker(root, "--grace", "0.2", log=tmp_path / "w.log")
        future = ex.submit(logged_gated, str(log), str(gate), "finished")
        wait_until(lambda: lines(log), "the task to start")
        first.terminate()
        assert first.wait(LONG) == 0
        waiting, work = ddmq.broker(root).get_message_list(ex.queue)
        assert len(waiting) == 1 and not work, "the task went back to the queue"
        gate.touch()
        second = start_worker(root)
        assert future.result(timeout=LONG) == "finished"
        second.terminate()
        assert second.wait(LONG) == 0
    runs = log.read_text().splitlines()
    assert runs == [f"start {first.pid}", f"start {second.pid}", f"end {second.pid}"]


def test_worker_stops_when_its_parent_dies(tmp_path):
    root = tmp_path / "root"
    env = dict(os.environ, PYTHONPATH=REPO)
    shell = subprocess.Popen(["sh", "-c", f'{sys.executable} -m ddmq.worker "$0" --heartbeat 0.5 '
                              f'--parent $$ & wait', str(root)], env=env)

    def live():
        try:
            return list_workers(root)[0]
        except ddmq.RootError:  # the worker has not made the root yet
            return []

    wait_until(live, "the worker")
    (record,) = live()
    shell.kill()
    shell.wait()
    wait_until(lambda: not os.path.exists(record.path), "the orphaned worker to exit cleanly")


# --- lost workers, leases, poison -------------------------------------------------------------

def test_sigkill_mid_task_the_task_runs_elsewhere(tmp_path):
    root, log, gate = tmp_path / "root", tmp_path / "task.log", tmp_path / "go"
    with DDMQExecutor(root, max_workers=0, lease=1) as ex:
        victim = start_worker(root)
        wait_ready(root, victim)
        future = ex.submit(logged_gated, str(log), str(gate), "survived")
        wait_until(lambda: lines(log), "the task to start")
        victim.kill()
        victim.wait()
        _, lost = list_workers(root)
        assert [r.pid for r in lost] == [victim.pid], "a killed worker is listed as lost"
        gate.touch()
        rescuer = start_worker(root)
        assert future.result(timeout=LONG) == "survived"
        rescuer.terminate()
        assert rescuer.wait(LONG) == 0
    assert log.read_text().splitlines() == [f"start {victim.pid}", f"start {rescuer.pid}",
                                            f"end {rescuer.pid}"]


def test_lease_is_extended_so_a_long_task_runs_once(tmp_path):
    root, log = tmp_path / "root", tmp_path / "task.log"
    with DDMQExecutor(root, max_workers=0, lease=1) as ex:
        workers = [start_worker(root) for _ in range(2)]
        try:
            # 4 s at a 1 s lease; the executor requeues expired leases every 2 s
            assert ex.submit(slow_once, str(log), 4).result(timeout=LONG) == "slow done"
        finally:
            for w in workers:
                w.terminate()
            assert [w.wait(LONG) for w in workers] == [0, 0]
    assert len(log.read_text().splitlines()) == 1


def test_poison_task_fails_its_future_after_the_retries(tmp_path):
    root, log = tmp_path / "root", tmp_path / "task.log"
    with DDMQExecutor(root, max_workers=1, lease=1, retries=1) as ex:
        future = ex.submit(die, str(log))
        with pytest.raises(WorkerLostError) as info:
            future.result(timeout=LONG)
        text = str(info.value)
        assert future._task_id in text and "2 attempt" in text and "lost" in text and "die" in text
        (dead,) = ddmq.broker(root).list_dead(ex.queue)
        assert dead.startswith("requeue_limit.") and dead in text
        assert len(log.read_text().splitlines()) == 2
        assert ex.submit(double, 21).result(timeout=LONG) == 42  # a fresh local worker took over


# --- heartbeat records -----------------------------------------------------------------------

def test_heartbeat_records_list_live_and_lost_workers(tmp_path):
    root = tmp_path / "root"
    ddmq.broker(root, create=True)
    beat = Heartbeat(root, "tasks", interval=5)
    beat.beat("running", "abc.1", 7)
    (live,), lost = list_workers(root)
    assert not lost
    assert (live.host, live.pid, live.queue, live.task, live.tasks_done, live.state) == \
        (HOST, os.getpid(), "tasks", "abc.1", 7, "running")
    assert list_workers(root, queue="other") == ([], [])
    old = time.time() - 3600
    os.utime(beat.path, (old, old))  # silent for 12 intervals
    live, (gone,) = list_workers(root)
    assert not live and gone.lost and gone.age > 15
    assert prune_lost(root, older_than=60) == [beat.path]
    assert list_workers(root) == ([], [])
    beat.beat("idle", None, 8)
    beat.remove()
    assert list_workers(root) == ([], [])
    os.mkfifo(os.path.join(os.path.dirname(beat.path), "planted.1.json"))
    assert list_workers(root) == ([], [])  # not opened: it would block


def whoami(x):
    return os.getpid(), x


def test_quick_tasks_are_claimed_in_batches_and_answered_together(tmp_path):
    """A worker that finds many quick tasks waiting claims several at once and
    sends their results in one reply message; every future still gets its own."""
    root = tmp_path / "root"
    log = tmp_path / "worker.log"
    with DDMQExecutor(root, max_workers=0) as ex:
        futures = [ex.submit(whoami, i) for i in range(60)]
        worker = start_worker(root, "--max-tasks", "60", "-vv", log=log)
        assert [f.result(timeout=LONG)[1] for f in futures] == list(range(60))
        assert worker.wait(timeout=LONG) == 0
    done_lines = [line for line in log.read_text().splitlines() if "done: tasks" in line]
    sizes = [len(line.split("done: tasks", 1)[1].split(",")) for line in done_lines]
    assert sum(sizes) == 60 and max(sizes) > 1, sizes


def test_slow_tasks_are_not_batched_so_all_workers_share_them(tmp_path):
    root = tmp_path / "root"
    with DDMQExecutor(root, max_workers=0) as ex:
        ex.submit(whoami, -1)  # warms nothing: just shows tasks may wait before workers exist
        futures = [ex.submit(slow_once, str(tmp_path / "slow.log"), 0.3) for _ in range(6)]
        workers = [start_worker(root, "--max-tasks", "4") for _ in range(2)]
        assert [f.result(timeout=LONG) for f in futures] == ["slow done"] * 6
        runners = {line.split()[1] for line in (tmp_path / "slow.log").read_text().splitlines()}
        assert len(runners) == 2
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=LONG)


def test_a_batch_that_turns_out_slow_is_given_back_to_other_workers(tmp_path):
    """After quick tasks a worker claims many at once; when they turn out
    slow it gives back those it has not started, for idle workers to take."""
    root, log = tmp_path / "root", tmp_path / "slow.log"
    with DDMQExecutor(root, max_workers=0) as ex:
        first = start_worker(root)
        try:
            quick = [ex.submit(whoami, i) for i in range(40)]
            assert [f.result(timeout=LONG)[1] for f in quick] == list(range(40))  # it batches now
            os.kill(first.pid, signal.SIGSTOP)
            try:
                slow = [ex.submit(slow_once, str(log), 0.3) for _ in range(6)]
                published(ex, 6)  # all six wait before the worker wakes up
            finally:
                os.kill(first.pid, signal.SIGCONT)
            b = ddmq.broker(root)
            wait_until(lambda: len(b.get_message_list(ex.queue)[1]) == 6, "one claim of all six")
            second = start_worker(root)
            try:
                assert [f.result(timeout=LONG) for f in slow] == ["slow done"] * 6
            finally:
                second.terminate()
                assert second.wait(LONG) == 0
        finally:
            first.terminate()
            assert first.wait(LONG) == 0
    runners = {line.split()[1] for line in log.read_text().splitlines()}
    assert runners == {str(first.pid), str(second.pid)}


def test_sigterm_after_grace_gives_back_the_whole_batch(tmp_path):
    """A worker stopped in the middle of a batch of claimed tasks answers the
    ones it ran, gives back the running task and the ones it had not started:
    none waits for a lease."""
    root, log, gate = tmp_path / "root", tmp_path / "task.log", tmp_path / "go"
    ex = DDMQExecutor(root, max_workers=0, lease=600)
    workers = []
    try:
        quick = [ex.submit(whoami, i) for i in range(20)]
        gated = ex.submit(logged_gated, str(log), str(gate), "finished")
        after = [ex.submit(whoami, i) for i in range(10)]
        workers.append(start_worker(root, "--grace", "0.2", log=tmp_path / "w.log"))
        wait_until(lambda: lines(log), "the gated task to start")
        # the results of the batch's quick tasks do not wait for the slow one
        assert [f.result(timeout=LONG)[1] for f in quick] == list(range(20))
        workers[0].terminate()
        assert workers[0].wait(LONG) == 0
        waiting, work = ddmq.broker(root).get_message_list(ex.queue)
        assert (len(work), len(waiting)) == (0, 1 + sum(not f.done() for f in after))
        gate.touch()
        workers.append(start_worker(root))
        assert gated.result(timeout=LONG) == "finished"
        assert [f.result(timeout=LONG)[1] for f in quick + after] == list(range(20)) + list(range(10))
    finally:
        for worker in workers:
            worker.terminate()
            assert worker.wait(LONG) == 0
        ex.shutdown(wait=False, cancel_futures=True)
