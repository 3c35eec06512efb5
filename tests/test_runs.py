"""Named runs (``DDMQExecutor(root, run=NAME)``) with real processes: a driver
SIGKILLed mid-map and started again, a finished run started a third time, a
run of 100,000 calls on disk, a changed function, two drivers, retry_failed,
submit, and ``ddmq runs``.

Every call of the functions below appends a line to a file of its own
(``S`` when it starts, ``E`` when it ends, each one ``os.write``), so a test
counts how many times each call ran. Nothing here asserts on timing.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import ddmq
from ddmq.cli import main as ddmq_main
from ddmq.executor import DDMQExecutor
from ddmq.executor.errors import RunInUseError
from ddmq.executor.runs import runs_folder
from ddmq.layout import HOST

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG = 120

FUNCTIONS = '''
import os, time

CALLS = {calls!r}
PAUSE = {pause!r}


def _mark(x, what):
    fd = os.open(os.path.join(CALLS, str(x)), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, what)
    os.close(fd)


def work(x):
    _mark(x, b"S\\n")
    time.sleep(PAUSE)
    _mark(x, b"E\\n")
    return x * x


def flaky(x):
    _mark(x, b"S\\n")
    if os.path.exists(os.path.join(CALLS, "FAIL")) and x % 3 == 0:
        raise ValueError(f"call {{x}} failed")
    return -x


def quick(x):
    return x + 1


def big(x):
    _mark(x, b"S\\n")
    return bytes([x % 256]) * 200_000  # over 64 KiB: sent back as a spill file
'''

DRIVER = '''
import json, sys, time
t0 = time.monotonic()
from ddmq.executor import DDMQExecutor
import runfns
root, run, n, out, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
with DDMQExecutor(root, max_workers=0, run=run) as ex:
    print("started", flush=True)
    t1 = time.monotonic()
    if mode == "map":
        results = list(ex.map(runfns.work, range(n), chunksize=1))
    elif mode == "publish":  # publish, say so, and wait to be killed
        it = ex.map(runfns.big, range(n), chunksize=1)
        while any(task.msg is None for task in ex._tasks.tasks()):  # submit returns before
            time.sleep(0.01)                                         # its task is published
        print("published", flush=True)
        time.sleep(600)
    elif mode == "big":
        results = [len(r) and r[0] for r in ex.map(runfns.big, range(n), chunksize=1)]
    elif mode == "submit":
        results = [f.result() for f in [ex.submit(runfns.work, i) for i in range(n)]]
    else:  # hold the run until killed
        time.sleep(600)
    t2 = time.monotonic()
with open(out, "w") as handle:
    json.dump({"results": results, "calls": t2 - t1, "total": time.monotonic() - t0}, handle)
'''


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A root, the module of the functions (importable here, by local workers
    and by the processes started with ``lab.env``), and their call logs."""
    class Lab:
        root = str(tmp_path / "root")
        calls = str(tmp_path / "calls")
        mods = str(tmp_path / "mods")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "mods"), REPO]),
                   PYTHONDONTWRITEBYTECODE="1")

        def write_functions(self, pause: float = 0.0, source: str = FUNCTIONS) -> None:
            with open(os.path.join(self.mods, "runfns.py"), "w") as handle:
                handle.write(source.format(calls=self.calls, pause=pause))
            shutil.rmtree(os.path.join(self.mods, "__pycache__"), ignore_errors=True)
            importlib.invalidate_caches()
            sys.modules.pop("runfns", None)

        def runs_of(self) -> dict[int, int]:
            """How many times each call started, by argument."""
            out = {}
            for name in os.listdir(self.calls):
                if name.isdigit():
                    with open(os.path.join(self.calls, name)) as handle:
                        out[int(name)] = handle.read().count("S")
            return out

        def unfinished(self) -> set[int]:
            """The calls started and not ended."""
            out = set()
            for name in os.listdir(self.calls):
                if name.isdigit():
                    with open(os.path.join(self.calls, name)) as handle:
                        text = handle.read()
                    if text.count("S") > text.count("E"):
                        out.add(int(name))
            return out

        def worker(self) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "ddmq.worker", self.root, "--heartbeat", "1"],
                                    env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def driver(self, run: str, n: int, out: str, mode: str = "map") -> subprocess.Popen:
            script = os.path.join(self.mods, "driver.py")
            with open(script, "w") as handle:
                handle.write(DRIVER)
            return subprocess.Popen([sys.executable, script, self.root, run, str(n), out, mode],
                                    env=self.env, stdout=subprocess.PIPE, text=True)

    os.makedirs(Lab.calls)
    os.makedirs(Lab.mods)
    monkeypatch.syspath_prepend(Lab.mods)
    lab = Lab()
    lab.write_functions()
    yield lab
    sys.modules.pop("runfns", None)


def finish(proc: subprocess.Popen, out: str) -> dict:
    assert proc.wait(timeout=LONG) == 0
    with open(out) as handle:
        return json.load(handle)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()


# --- a driver killed and started again ---------------------------------------------------

@pytest.mark.parametrize("mode", ["map", "submit"])
def test_a_driver_killed_mid_map_is_started_again(lab, tmp_path, mode):
    n = 300
    lab.write_functions(pause=0.01)
    workers = [lab.worker(), lab.worker()]
    try:
        first = lab.driver("nightly", n, str(tmp_path / "first.json"), mode)
        assert first.stdout.readline().strip() == "started"
        deadline = time.monotonic() + LONG
        while len(lab.runs_of()) < n // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        in_flight = lab.unfinished()  # at the kill
        ran_before = lab.runs_of()
        assert 0 < len(ran_before) < n  # killed mid-map
        time.sleep(0.5)  # some tasks end meanwhile: their replies wait in run-nightly

        second = finish(lab.driver("nightly", n, str(tmp_path / "second.json"), mode),
                        str(tmp_path / "second.json"))
        assert second["results"] == [x * x for x in range(n)]
        runs = lab.runs_of()
        assert sorted(runs) == list(range(n))  # every call ran
        twice = {x for x, count in runs.items() if count > 1}
        assert twice <= in_flight, (twice, in_flight)
        print(f"\n{mode}: killed after {len(ran_before)} of {n} calls had started, "
              f"{len(in_flight)} in flight; {len(twice)} call(s) ran twice")

        third = finish(lab.driver("nightly", n, str(tmp_path / "third.json"), mode),
                       str(tmp_path / "third.json"))
        assert third["results"] == second["results"]
        assert lab.runs_of() == runs  # nothing ran
        print(f"{mode}: third start: {third['calls'] * 1000:.1f} ms for the calls, "
              f"{third['total']:.2f} s for the whole process")
        # The run finished with nothing in flight: its reply queue is gone.
        assert not os.path.exists(os.path.join(lab.root, "run-nightly"))
    finally:
        stop(workers)


def test_results_that_came_while_no_driver_ran_are_collected(lab, tmp_path):
    n = 20
    first = lab.driver("late", n, str(tmp_path / "first.json"), "publish")
    first.stdout.readline()
    assert first.stdout.readline().strip() == "published"
    first.send_signal(signal.SIGKILL)
    first.wait()
    worker = lab.worker()  # runs every task; the replies wait in run-late, with their spill files
    try:
        deadline = time.monotonic() + LONG
        while len(lab.runs_of()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        while sum(map(len, ddmq.broker(lab.root).get_message_list("tasks"))) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop([worker])
    second = finish(lab.driver("late", n, str(tmp_path / "second.json"), "big"), str(tmp_path / "second.json"))
    assert second["results"] == [x % 256 for x in range(n)]
    assert lab.runs_of() == {x: 1 for x in range(n)}  # each ran once, no worker ran for the second
    assert not os.path.exists(os.path.join(lab.root, ".payloads", "run-late"))


# --- on disk -----------------------------------------------------------------------------

def test_a_run_of_100000_calls_is_a_few_files(lab):
    import runfns
    n = 100_000
    with DDMQExecutor(lab.root, max_workers=2, run="big") as ex:
        assert list(ex.map(runfns.quick, range(n), chunksize=100)) == list(range(1, n + 1))
    folder = os.path.join(runs_folder(lab.root), "big")
    files = os.listdir(folder)
    print(f"\n{n} calls in chunks of 100: {len(files)} file(s) in the run's folder, "
          f"{sum(os.path.getsize(os.path.join(folder, f)) for f in files)} bytes")
    assert len(files) <= 300, files
    # Started again with no worker at all: every result comes from the run.
    with DDMQExecutor(lab.root, max_workers=0, run="big") as ex:
        assert list(ex.map(runfns.quick, range(n), chunksize=100, timeout=LONG)) == list(range(1, n + 1))


def test_a_changed_function_runs_again(lab):
    import runfns
    with DDMQExecutor(lab.root, max_workers=1, run="fix") as ex:
        assert list(ex.map(runfns.work, range(5))) == [0, 1, 4, 9, 16]
    assert lab.runs_of() == {x: 1 for x in range(5)}
    lab.write_functions(source=FUNCTIONS.replace("return x * x", "return x * x + 1000"))
    import runfns as fixed
    with DDMQExecutor(lab.root, max_workers=1, run="fix") as ex:  # new workers: the new code
        assert list(ex.map(fixed.work, range(5))) == [1000, 1001, 1004, 1009, 1016]
    assert lab.runs_of() == {x: 2 for x in range(5)}
    lab.write_functions(source=FUNCTIONS.replace("def work(x):", "\n\n# moved down\ndef work(x):"))
    import runfns as moved
    with DDMQExecutor(lab.root, max_workers=0, run="fix") as ex:  # same code: from the run
        assert list(ex.map(moved.work, range(5), timeout=LONG)) == [0, 1, 4, 9, 16]


# --- two drivers ------------------------------------------------------------------------

def test_a_second_driver_of_a_run_is_refused_naming_the_first(lab, tmp_path):
    first = lab.driver("shared", 0, str(tmp_path / "first.json"), "hold")
    try:
        assert first.stdout.readline().strip() == "started"
        with pytest.raises(RunInUseError) as caught:
            DDMQExecutor(lab.root, max_workers=0, run="shared")
        assert (caught.value.host, caught.value.pid) == (HOST, first.pid)
        assert str(first.pid) in str(caught.value) and HOST in str(caught.value)
        assert os.path.isdir(os.path.join(lab.root, "run-shared"))  # the first's: left alone
        assert ddmq_main(["runs", "rm", lab.root, "shared"]) == 1  # nor removed
        first.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + LONG  # killed, not reaped by its parent yet: a zombie
        while not zombie(first.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        with DDMQExecutor(lab.root, max_workers=0, run="shared"):  # its driver is dead: taken over
            pass
    finally:
        stop([first])


def zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "Z"


# --- failures and submit ----------------------------------------------------------------------

def test_failed_calls_raise_again_unless_retry_failed(lab):
    import runfns
    open(os.path.join(lab.calls, "FAIL"), "w").close()

    def outcomes(ex):
        futures = [ex.submit(runfns.flaky, x) for x in range(9)]
        return [type(f.exception(LONG)).__name__ if f.exception(LONG) else f.result() for f in futures]

    with DDMQExecutor(lab.root, max_workers=1, run="flaky") as ex:
        assert outcomes(ex) == ["ValueError", -1, -2, "ValueError", -4, -5, "ValueError", -7, -8]
        with pytest.raises(ValueError, match="call 0 failed"):
            list(ex.map(runfns.flaky, range(9)))  # in the run: raised again, not run
    os.remove(os.path.join(lab.calls, "FAIL"))
    with DDMQExecutor(lab.root, max_workers=0, run="flaky") as ex:
        assert outcomes(ex)[:3] == ["ValueError", -1, -2]
    assert lab.runs_of() == {x: 1 for x in range(9)}
    with DDMQExecutor(lab.root, max_workers=1, run="flaky", retry_failed=True) as ex:
        assert list(ex.map(runfns.flaky, range(9))) == [-x for x in range(9)]
    assert lab.runs_of() == {x: 2 if x % 3 == 0 else 1 for x in range(9)}


def test_submit_and_explicit_keys(lab):
    import runfns
    with DDMQExecutor(lab.root, max_workers=1, run="keys") as ex:
        assert ex.submit(runfns.work, 3).result(LONG) == 9
        assert ex.submit_with_key("five", runfns.work, 5).result(LONG) == 25
        assert list(ex.map(runfns.work, [6, 7], key=lambda x: f"k{x}")) == [36, 49]
    with DDMQExecutor(lab.root, max_workers=0, run="keys") as ex:
        assert ex.submit(runfns.work, 3).result(LONG) == 9
        # The key stands for the call, whatever the arguments.
        assert ex.submit_with_key("five", runfns.work, 500).result(LONG) == 25
        assert list(ex.map(runfns.work, [60, 70], key=lambda x: f"k{x // 10}", timeout=LONG)) == [36, 49]
        with pytest.raises(TypeError):
            ex.submit_with_key(object(), runfns.work, 1)
    assert lab.runs_of() == {3: 1, 5: 1, 6: 1, 7: 1}


# --- ddmq runs ---------------------------------------------------------------------------------

def test_ddmq_runs_lists_shows_and_removes(lab, capsys):
    import runfns
    open(os.path.join(lab.calls, "FAIL"), "w").close()
    with DDMQExecutor(lab.root, max_workers=1, run="listed") as ex:
        for future in [ex.submit(runfns.flaky, x) for x in range(4)]:
            future.exception(LONG)
    capsys.readouterr()
    assert ddmq_main(["runs", lab.root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["run", "done", "failed", "waiting", "running"]
    assert lines[1].split()[:5] == ["listed", "2", "2", "0", "0"]
    assert ddmq_main(["runs", "--format", "json", "show", lab.root, "listed"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["done"], shown["failed"], shown["driver"], shown["reply_queue"]) == (2, 2, None, "run-listed")
    assert ddmq_main(["runs", "show", lab.root, "nosuch"]) == 1
    assert capsys.readouterr().err.startswith("ddmq: error: no run 'nosuch'")
    assert ddmq_main(["runs", "rm", lab.root, "listed"]) == 0
    assert ddmq_main(["runs", lab.root]) == 0
    assert "No runs" in capsys.readouterr().out
