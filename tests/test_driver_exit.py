"""Ctrl-C and dead drivers leave nothing behind: real driver processes, real signals, real workers.

A *driver* is a Python process that runs ``ex.map`` (or ``result()``) inside
``with DDMQExecutor(...)``, started here as a subprocess; the test sends it a
real SIGINT (what Ctrl-C sends) or SIGKILL. The tasks leave marker files, so
that what ran, what was stopped and what finished can be counted from outside.
The seconds from Ctrl-C to the driver's exit (and to a remote worker's drop)
are printed (``pytest -s``), never asserted: the tests wait on conditions,
with bounds far above what they take.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import ddmq
from ddmq.cli import main as cli_main
from ddmq.executor import DDMQExecutor
from ddmq.executor.drivers import DRIVERS_DIR, record_path
from ddmq.executor.spill import SPILL_DIR
from ddmq.layout import HOST

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LONG = 120  # seconds: only reached when something is broken
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, HERE])}


# --- tasks (module level: the workers import this module) ------------------------------

def _mark(folder: str, name: str) -> None:
    with open(os.path.join(folder, name), "w", encoding="utf-8"):
        pass


def sleeper(i: int, marks: str) -> int:
    """Starts (a marker with the worker's pid), sleeps long, and says whether
    it was stopped or finished."""
    _mark(marks, f"started.{i}.{os.getpid()}")
    try:
        time.sleep(LONG)
    except BaseException:
        _mark(marks, f"stopped.{i}")
        raise
    _mark(marks, f"finished.{i}")
    return i


def record_run(i: int, marks: str, ballast: bytes = b"") -> int:
    _mark(marks, f"ran.{i}.{os.getpid()}")
    return i + len(ballast)


# --- drivers --------------------------------------------------------------------------------

DRIVER = r"""
import os, sys, time
from ddmq.executor import DDMQExecutor
from test_driver_exit import record_run, sleeper

root, marks, mode, workers, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with DDMQExecutor(root, max_workers=workers, lease=600, start_timeout=120) as ex:
    print("reply", ex.reply_queue, flush=True)
    if mode == "map":
        for value in ex.map(sleeper, range(n), [marks] * n, chunksize=1):
            print("result", value, flush=True)
    elif mode == "result":
        futures = [ex.submit(sleeper, i, marks) for i in range(n)]
        print([f.result() for f in futures], flush=True)
    else:  # "publish": tasks with spill files (large arguments), then wait to be killed
        futures = [ex.submit(record_run, i, marks, os.urandom(100_000)) for i in range(n)]
        while any(task.msg is None for task in ex._tasks.tasks()):  # submit returns before
            time.sleep(0.01)                                         # its task is published
        print("published", flush=True)
        time.sleep(600)
"""


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Driver:
    """A driver process; its stdout lines and stderr (a file) can be read while it runs."""

    def __init__(self, root: str, marks: str, mode: str, workers: int, n: int, tmp) -> None:
        self.stderr_path = str(tmp / f"driver-{time.monotonic_ns()}.err")
        self._err = open(self.stderr_path, "w", encoding="utf-8")
        # SIGINT at its default, as in a terminal: a test run started in the
        # background by a shell inherits it ignored, and Python then never
        # raises KeyboardInterrupt.
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER, root, marks, mode, str(workers),
                                      str(n)], stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=ENV, preexec_fn=_sigint_default)
        self.reply = ""

    def expect(self, word: str) -> str:
        """The next stdout line starting with ``word`` (blocks; the driver prints it soon)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(word):
                return line.strip()
        raise AssertionError(f"driver ended without printing {word!r}:\n{self.stderr()}")

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8") as handle:
            return handle.read()

    def wait(self, timeout: float = LONG) -> int:
        code = self.proc.wait(timeout)
        self._err.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


@pytest.fixture
def marks(tmp_path) -> str:
    path = tmp_path / "marks"
    path.mkdir()
    return str(path)


def markers(folder: str, prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(prefix + "."))


def wait_for(condition, timeout: float = LONG, what: str = "") -> float:
    """Wait until ``condition()`` is true; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)
    return time.monotonic() - started


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def start_worker(root: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ddmq.worker", root, "-v", *args],
                            stderr=subprocess.PIPE, text=True, env=ENV)


def stop_worker(proc: subprocess.Popen) -> str:
    """SIGTERM a worker started here; its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=LONG)
    return err


def leftovers(root: str) -> dict[str, list[str]]:
    """What executors left in the root: reply queues, spill folders, records."""
    def names(*path: str) -> list[str]:
        try:
            return sorted(os.listdir(os.path.join(root, *path)))
        except FileNotFoundError:
            return []
    return {"reply queues": [n for n in names() if n.startswith("reply-")],
            "spill folders": names(SPILL_DIR), "records": names(DRIVERS_DIR)}


NOTHING = {"reply queues": [], "spill folders": [], "records": []}


def task_messages(root: str, queue: str = "tasks") -> tuple[list[str], list[str]]:
    return ddmq.broker(root).get_message_list(queue)


def figure(text: str) -> None:
    print(f"\n[figure] {text}", file=sys.stderr)


# --- Ctrl-C ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["map", "result"])
def test_ctrl_c_stops_local_work_in_seconds_and_leaves_nothing(root, marks, tmp_path, mode):
    driver = Driver(root, marks, mode, workers=2, n=12, tmp=tmp_path)
    try:
        driver.expect("reply")
        wait_for(lambda: len(markers(marks, "started")) == 2, what="both workers running a task")
        pids = {int(name.rsplit(".", 1)[1]) for name in markers(marks, "started")}
        interrupted = time.monotonic()
        driver.proc.send_signal(signal.SIGINT)
        code = driver.wait()
        figure(f"Ctrl-C during {mode}() with 2 local workers: driver exited "
               f"{time.monotonic() - interrupted:.2f} s after SIGINT")
    finally:
        driver.kill()
    err = driver.stderr()
    assert code != 0 and "KeyboardInterrupt" in err  # it propagated to the user, as usual
    said = [line for line in err.splitlines() if line.startswith("ddmq:")]
    assert len(said) == 1 and "interrupted" in said[0] and root in said[0], err
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the local workers to be gone")
    assert task_messages(root) == ([], []), err  # cancelled, given back and withdrawn: none left
    assert leftovers(root) == NOTHING
    assert markers(marks, "finished") == []
    assert len(markers(marks, "started")) == 2  # nothing else started meanwhile


def test_ctrl_c_has_a_remote_worker_drop_the_running_task(root, marks, tmp_path):
    worker = start_worker(root, "--heartbeat", "1")
    driver = Driver(root, marks, "map", workers=0, n=3, tmp=tmp_path)
    try:
        driver.expect("reply")
        wait_for(lambda: markers(marks, "started"), what="the worker running a task")
        interrupted = time.monotonic()
        driver.proc.send_signal(signal.SIGINT)
        driver.wait()
        exited = time.monotonic() - interrupted
        dropped = wait_for(lambda: markers(marks, "stopped"), what="the remote worker to stop the task")
        figure(f"Ctrl-C with a remote worker: driver exited {exited:.2f} s after SIGINT; the "
               f"worker stopped the running task {exited + dropped:.2f} s after SIGINT")
        wait_for(lambda: task_messages(root) == ([], []), what="no task message left")
        assert worker.poll() is None  # the worker goes on serving the queue
    finally:
        driver.kill()
        err = stop_worker(worker)
    assert "dropping task" in err and markers(marks, "finished") == []
    said = [line for line in driver.stderr().splitlines() if line.startswith("ddmq:")]
    assert len(said) == 1
    assert leftovers(root) == NOTHING


def test_a_second_ctrl_c_leaves_no_orphan_process(root, marks, tmp_path):
    driver = Driver(root, marks, "map", workers=2, n=12, tmp=tmp_path)
    try:
        driver.expect("reply")
        wait_for(lambda: len(markers(marks, "started")) == 2, what="both workers running a task")
        pids = {int(name.rsplit(".", 1)[1]) for name in markers(marks, "started")}
        driver.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "ddmq: interrupted" in driver.stderr(), what="the line of the first Ctrl-C")
        driver.proc.send_signal(signal.SIGINT)
        driver.wait()
    finally:
        driver.kill()
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the local workers to be gone")
    assert markers(marks, "finished") == []
    assert cli_main(["clean", root, "tasks"]) == 0  # whatever the driver could not remove
    assert leftovers(root)["reply queues"] == []


# --- dead drivers ---------------------------------------------------------------------------

def killed_driver(root: str, marks: str, tmp_path, n: int = 6) -> str:
    """A driver that published ``n`` tasks with spill files, SIGKILLed; its reply queue."""
    driver = Driver(root, marks, "publish", workers=0, n=n, tmp=tmp_path)
    try:
        reply = driver.expect("reply").split()[1]
        driver.expect("published")
    finally:
        driver.kill()
    left = leftovers(root)
    assert left["reply queues"] == [reply] and left["spill folders"] == [reply]
    assert left["records"] == [f"{reply}.json"]
    assert len(task_messages(root)[0]) == n
    return reply


def test_workers_drop_the_tasks_of_a_killed_driver_and_remove_what_it_left(root, marks, tmp_path):
    killed_driver(root, marks, tmp_path)
    worker = start_worker(root, "--idle-timeout", "3")
    try:
        wait_for(lambda: task_messages(root) == ([], []), what="the tasks to be dropped")
        assert worker.wait(LONG) == 0
    finally:
        err = stop_worker(worker)
    assert markers(marks, "ran") == []  # not one of its tasks ran
    assert "dropping the tasks of reply-" in err and "is gone" in err
    assert leftovers(root) == NOTHING


def test_ddmq_clean_removes_what_a_killed_driver_left_but_never_a_run(root, marks, tmp_path, capsys):
    reply = killed_driver(root, marks, tmp_path)
    # A named run whose driver died too: its reply queue outlives its drivers.
    b = ddmq.broker(root)
    b.create_queue("run-nightly")
    os.makedirs(os.path.join(root, SPILL_DIR, "run-nightly"))
    with open(record_path(root, "run-nightly"), "w", encoding="utf-8") as handle:
        json.dump({"host": HOST, "pid": 999_999_999, "started": 1, "reply": "run-nightly"}, handle)
    capsys.readouterr()
    assert cli_main(["clean", root, "tasks"]) == 0
    out = capsys.readouterr().out
    assert f"Removed reply queue of a dead executor: {reply}" in out
    assert leftovers(root) == {"reply queues": [], "spill folders": ["run-nightly"],
                               "records": ["run-nightly.json"]}
    assert b.queue_exists("run-nightly")
    assert len(task_messages(root)[0]) == 6  # its tasks wait: the workers that take them drop them


def test_another_executors_housekeeping_removes_what_a_killed_driver_left(root, marks, tmp_path):
    reply = killed_driver(root, marks, tmp_path)
    with DDMQExecutor(root, max_workers=0) as ex:
        wait_for(lambda: leftovers(root) == {"reply queues": [ex.reply_queue],
                                             "spill folders": [ex.reply_queue],
                                             "records": [f"{ex.reply_queue}.json"]},
                 what=f"{reply} to be removed")
    assert leftovers(root) == NOTHING


def test_executors_of_other_hosts_are_dead_only_when_their_record_stops_beating(root, capsys):
    b = ddmq.broker(root)

    def executor(reply: str, record_age: float | None, host: str = "farhost") -> None:
        b.create_queue(reply)
        os.makedirs(os.path.join(root, SPILL_DIR, reply))
        if record_age is not None:
            path = record_path(root, reply)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                json.dump({"host": host, "pid": 4242, "started": 7, "reply": reply}, handle)
            then = time.time() - record_age
            os.utime(path, (then, then))

    gone = subprocess.run([sys.executable, "-c", "from ddmq.executor.drivers import "
                           "reply_queue_name; print(reply_queue_name('0badc0e1'))"],
                          capture_output=True, text=True, check=True, env=ENV)
    executor("reply-farhost-4242-0badc0de", record_age=600)   # silent for 10 minutes: dead
    executor("reply-farhost-4243-0badc0df", record_age=1)     # beating: alive
    executor("reply-farhost-4244-0badc0e0", record_age=None)  # no record, another host: left alone
    mine = gone.stdout.strip()  # the name of an executor of a process that has exited
    executor(mine, record_age=None)  # no record, this host, its pid gone: dead
    b.create_queue("tasks")
    capsys.readouterr()
    assert cli_main(["clean", root, "tasks"]) == 0
    out = capsys.readouterr().out
    assert "reply-farhost-4242-0badc0de" in out and "stopped beating" in out and mine in out
    assert leftovers(root)["reply queues"] == ["reply-farhost-4243-0badc0df",
                                               "reply-farhost-4244-0badc0e0"]
    assert leftovers(root)["spill folders"] == ["reply-farhost-4243-0badc0df",
                                                "reply-farhost-4244-0badc0e0"]
