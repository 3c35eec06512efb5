"""Dead workers noticed in seconds, and the error that says how they died; no silent hang when
nobody serves the queue; heartbeat records that stay current (issue 11, sections 3, 4 and 6).

Real worker processes, real signals, real crashes. Every wait is on a condition with a
generous timeout; durations are measured only to be printed (``pytest -s`` shows them as
``[figure] ...``), never asserted. Leases are made far longer than the waits (``LEASE`` >
``LONG``), so a task that runs again before ``LONG`` did not wait for its lease.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ddmq
from ddmq.executor import DDMQExecutor, WorkerLostError, list_workers
from ddmq.executor.heartbeat import HOST, record_path
from test_executor import worker_env
from test_worker import wait_until  # (condition, what, timeout=120)

LONG = 120   # seconds: only reached when something is broken
LEASE = 600  # longer than LONG: waiting for a lease would fail the test


# --- tasks (module level: the workers import this module) ------------------------------

def note_and_wait(log, gate, value):
    """Append 'start PID' to ``log``, wait for ``gate`` to exist, append 'end PID'."""
    with open(log, "a") as handle:
        handle.write(f"start {os.getpid()}\n")
    deadline = time.monotonic() + LONG
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(log, "a") as handle:
        handle.write(f"end {os.getpid()}\n")
    return value


def kill_own_worker(_):
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(_):
    ctypes.string_at(0)


def exit_3(_):
    os._exit(3)


def raise_timeout():
    raise TimeoutError("the task's own")


# --- helpers ------------------------------------------------------------------------------

def figure(name, seconds):
    print(f"\n[figure] {name}: {seconds:.1f} s")


def start_worker(root, *args, host=None):
    """``python -m ddmq.worker ROOT ARGS`` started here, not by an executor; with ``host``, in
    a UTS namespace of its own whose host name is ``host``: a worker "on another node", whose
    death only its heartbeat can tell (its pid means nothing on this host)."""
    command = [sys.executable, "-m", "ddmq.worker", str(root), *args]
    if host is not None:
        command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *command]
    return subprocess.Popen(command, env=worker_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_ready(root, proc, host=HOST):
    wait_until(lambda: os.path.exists(record_path(root, host, proc.pid)) or proc.poll() is not None,
               "the worker's heartbeat record")
    assert proc.poll() is None, "the worker exited while starting"


def starts(log):
    """The pids that started the task, in order."""
    text = log.read_text() if log.exists() else ""
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("start ")]


def stop(*procs):
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.wait(LONG)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("hostname") is None:
        return False
    done = subprocess.run(["unshare", "--uts", "hostname", "ddmq-probe"], capture_output=True)
    return done.returncode == 0


needs_other_host = pytest.mark.skipif(not _can_unshare(),
                                      reason="needs unshare --uts (root) for a worker with another host name")


# --- section 3: local workers ----------------------------------------------------------------

def test_a_local_worker_killed_mid_task_its_task_runs_again_at_once(tmp_path):
    root, log, gate = tmp_path / "root", tmp_path / "task.log", tmp_path / "go"
    with DDMQExecutor(root, max_workers=2, lease=LEASE) as ex:
        future = ex.submit(note_and_wait, str(log), str(gate), "survived")
        wait_until(lambda: starts(log), "the task to start")
        (victim,) = starts(log)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        gate.touch()
        assert future.result(timeout=LONG) == "survived"
        figure("local worker SIGKILLed mid-task -> its future resolved", time.monotonic() - killed)
    first, second = starts(log)
    assert first == victim and second != victim
    assert log.read_text().splitlines()[-1] == f"end {second}"


@pytest.mark.parametrize("task, words", [
    (kill_own_worker, ["was killed by SIGKILL", "out-of-memory killer", "memory limits"]),
    (segfault, ["was killed by SIGSEGV", "segmentation fault"]),
    (exit_3, ["ended with exit status 3"]),
], ids=["SIGKILL", "SIGSEGV", "exit-3"])
def test_a_task_that_kills_its_worker_each_time_fails_at_once_saying_how(tmp_path, task, words):
    root = tmp_path / "root"
    with DDMQExecutor(root, max_workers=1, lease=LEASE, retries=2) as ex:
        started = time.monotonic()
        future = ex.submit(task, 1)
        with pytest.raises(WorkerLostError) as info:
            future.result(timeout=LONG)
        figure(f"task whose worker dies ({task.__name__}), 3 attempts -> its future failed",
               time.monotonic() - started)
        text = str(info.value)
        print(text)
        assert future._task_id in text and task.__name__ in text and "3 attempt(s)" in text
        attempts = [line.strip() for line in text.splitlines() if line.strip().startswith("attempt ")]
        assert [line.split(":")[0] for line in attempts] == ["attempt 1", "attempt 2", "attempt 3"]
        for line in attempts:
            assert all(word in line for word in words), line
        pids = {line.split()[3] for line in attempts}  # "attempt N: worker HOST:PID ..."
        assert len(pids) == 3, attempts
        (dead,) = ddmq.broker(root).list_dead(ex.queue)
        assert dead in text
        assert ex.submit(pow, 2, 5).result(timeout=LONG) == 32  # a fresh local worker took over


def test_workers_list_the_local_workers_that_died_and_how(tmp_path):
    root = tmp_path / "root"
    with DDMQExecutor(root, max_workers=1, lease=LEASE, retries=0) as ex:
        with pytest.raises(WorkerLostError):
            ex.submit(exit_3, 1).result(timeout=LONG)
        wait_until(lambda: list_workers(root)[0], "the worker that replaces it")
        live, lost = list_workers(root)
        assert len(live) == 1 and [r.cause for r in lost] == ["ended with exit status 3"]
        assert lost[0].lost and lost[0].state == "ended"


# --- section 3: workers elsewhere ------------------------------------------------------------

def test_a_worker_started_elsewhere_killed_mid_task_its_task_runs_again_at_once(tmp_path):
    root, log, gate = tmp_path / "root", tmp_path / "task.log", tmp_path / "go"
    with DDMQExecutor(root, max_workers=0, lease=LEASE) as ex:
        victim = start_worker(root)
        rescuer = None
        try:
            wait_ready(root, victim)
            future = ex.submit(note_and_wait, str(log), str(gate), "survived")
            wait_until(lambda: starts(log), "the task to start")
            rescuer = start_worker(root)
            wait_ready(root, rescuer)
            victim.kill()
            killed = time.monotonic()
            victim.wait()
            gate.touch()
            assert future.result(timeout=LONG) == "survived"
            figure("worker started elsewhere (this host) SIGKILLed mid-task -> its future resolved",
                   time.monotonic() - killed)
        finally:
            stop(victim, *([rescuer] if rescuer else []))
    assert starts(log) == [victim.pid, rescuer.pid]


@needs_other_host
def test_a_worker_on_another_host_killed_mid_task_is_found_by_its_heartbeat(tmp_path):
    """Default heartbeat settings: the task must run again long before its lease, and, on a
    real cluster, in well under 30 s (lost after 3 beats of 5 s, plus a housekeeping round)."""
    root, log, gate = tmp_path / "root", tmp_path / "task.log", tmp_path / "go"
    with DDMQExecutor(root, max_workers=0, lease=LEASE) as ex:
        victim = start_worker(root, host="node-b")
        rescuer = None
        try:
            wait_ready(root, victim, host="node-b")
            future = ex.submit(note_and_wait, str(log), str(gate), "survived")
            wait_until(lambda: starts(log), "the task to start")
            rescuer = start_worker(root)
            wait_ready(root, rescuer)
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            gate.touch()
            assert future.result(timeout=LONG) == "survived"
            figure("worker on another host SIGKILLed mid-task (default heartbeat) -> its future "
                   "resolved", time.monotonic() - killed)
            _, lost = ex.workers()
            assert [(r.host, r.pid) for r in lost] == [("node-b", victim.pid)]
        finally:
            stop(victim, *([rescuer] if rescuer else []))
    assert starts(log) == [victim.pid, rescuer.pid]


@needs_other_host
def test_the_error_says_when_and_where_a_remote_worker_stopped_beating(tmp_path, capsys):
    root = tmp_path / "root"
    with DDMQExecutor(root, max_workers=0, lease=LEASE, retries=0) as ex:
        worker = start_worker(root, "--heartbeat", "0.5", host="node-b")
        try:
            with pytest.raises(WorkerLostError) as info:
                ex.submit(kill_own_worker, 1).result(timeout=LONG)
        finally:
            stop(worker)
    text = str(info.value)
    print(text)
    (attempt,) = [line for line in text.splitlines() if line.strip().startswith("attempt ")]
    assert f"worker node-b:{worker.pid} stopped sending heartbeats at " in attempt
    assert attempt.rstrip().endswith(" on node-b")
    from ddmq.cli import main
    assert main(["workers", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"node-b:{worker.pid} stopped sending heartbeats at " in out


# --- section 3: settings apply ---------------------------------------------------------------

def test_the_lease_is_the_task_queues_message_timeout_unless_given(tmp_path):
    root = tmp_path / "root"
    b = ddmq.broker(root, create=True)
    b.update_settings_file("", {"message_timeout": 17})
    b.create_queue("other")
    b.update_settings_file("other", {"message_timeout": 23})
    for queue, lease, expected in [("tasks", None, 17), ("other", None, 23), ("other", 5, 5)]:
        with DDMQExecutor(root, max_workers=0, queue=queue, lease=lease) as ex:
            assert ex.lease == expected
            future = ex.submit(pow, 2, 2)
            wait_until(lambda: b.get_message_list(queue)[0], "the task to be published")
            (name,), _ = b.get_message_list(queue)
            assert b.get_message(os.path.join(queue, name)).timeout == expected
            assert future.cancel()


# --- section 4: nobody serves the queue -------------------------------------------------------

NO_WORKER_SCRIPT = textwrap.dedent("""
    import concurrent.futures as cf, os, subprocess, sys, time
    import ddmq.executor.watchdog as watchdog
    from ddmq.executor import DDMQExecutor

    watchdog.NO_WORKER_WARN_AFTER = 1.0
    root, gate1, gate2 = sys.argv[1:4]

    def hold(gate):
        while not os.path.exists(gate):
            time.sleep(0.01)
        return 42

    def wait_for(path):
        while not os.path.exists(path):
            time.sleep(0.02)

    with DDMQExecutor(root, max_workers=0) as ex:
        future = ex.submit(hold, gate2)
        try:
            future.result(timeout=0.5)
        except cf.TimeoutError as err:
            print("result:", type(err).__name__, err, flush=True)
        try:
            list(ex.map(pow, [2], [3], timeout=0.5))
        except cf.TimeoutError as err:
            print("map:", type(err).__name__, err, flush=True)
        wait_for(gate1)  # the test saw the warning
        worker = subprocess.Popen([sys.executable, "-m", "ddmq.worker", root, "--heartbeat", "0.5"])
        print("value:", future.result(timeout=120), flush=True)
        worker.terminate()
        worker.wait(120)
""")


def test_nobody_serving_the_queue_is_said_without_logging_and_timeouts_say_where_things_stand(
        tmp_path):
    root, gate1, gate2 = tmp_path / "root", tmp_path / "go1", tmp_path / "go2"
    script, out, err = tmp_path / "driver.py", tmp_path / "out", tmp_path / "err"
    script.write_text(NO_WORKER_SCRIPT)
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        driver = subprocess.Popen([sys.executable, str(script), str(root), str(gate1), str(gate2)],
                                  env=worker_env(), stdout=stdout, stderr=stderr)
    try:
        wait_until(lambda: "NoWorkerWarning" in err.read_text(), "the warning")
        warning = err.read_text()
        assert f"no worker serves queue 'tasks' of {root}" in warning
        assert f"python -m ddmq.worker {root} --queue tasks" in warning
        gate1.touch()
        wait_until(lambda: "now serve queue 'tasks'" in err.read_text(), "the second warning")
        gate2.touch()
        assert driver.wait(LONG) == 0, err.read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
    text = out.read_text()
    print(text)
    assert "value: 42" in text
    result = next(line for line in text.splitlines() if line.startswith("result:"))
    assert result.startswith("result: ResultTimeoutError no result after 0.5 s")
    assert "1 wait in queue 'tasks', 0 run and 0 are done; 0 worker(s) are live" in result
    assert f"python -m ddmq.worker {root} --queue tasks" in result
    assert next(line for line in text.splitlines() if line.startswith("map: ResultTimeoutError"))
    warnings = [line for line in err.read_text().splitlines() if "NoWorkerWarning: " in line]
    assert len(warnings) == 2, warnings  # once, and once when a worker came
    print("\n".join(warnings))


def test_a_task_that_raises_timeout_error_is_not_taken_for_a_time_out(tmp_path):
    root = tmp_path / "root"
    with DDMQExecutor(root, max_workers=1) as ex:
        future = ex.submit(raise_timeout)
        with pytest.raises(TimeoutError, match="^the task's own$"):  # the builtin, as raised
            future.result(timeout=LONG)



# --- section 6: heartbeat records are current, and cheap --------------------------------------

def test_an_idle_worker_refreshes_its_record_without_rewriting_it(tmp_path):
    root = tmp_path / "root"
    ddmq.broker(root, create=True)
    worker = start_worker(root, "--heartbeat", "0.2")
    try:
        wait_ready(root, worker)
        path = record_path(root, HOST, worker.pid)
        wait_until(lambda: list_workers(root)[0], "the worker to be listed")
        before = os.stat(path)
        wait_until(lambda: os.stat(path).st_mtime_ns > before.st_mtime_ns, "a heartbeat")
        assert os.stat(path).st_ino == before.st_ino  # one utime, not a new file
        (record,), _ = list_workers(root)
        assert record.state == "idle" and record.claimer and record.age < 60
    finally:
        stop(worker)
