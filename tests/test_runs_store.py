"""The store of named runs (ddmq.executor.runs): keys, segments, one driver at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ddmq.executor import runs
from ddmq.executor.runs import Run, RunError, RunInUseError, call_key, function_key

SECRET = b"s" * 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(runs.__file__)))
REPO = os.path.dirname(REPO)


def square(x):
    return x * x


def compile_function(source: str, name: str = "simulate"):
    namespace: dict = {}
    exec(compile(textwrap.dedent(source), "<test>", "exec"), namespace)
    fn = namespace[name]
    fn.__module__ = "__main__"
    fn.__qualname__ = name
    return fn


def test_a_call_key_depends_on_the_function_code_and_the_arguments():
    fk = function_key(square)
    assert call_key(fk, (3,), None) == call_key(function_key(square), (3,), None)
    assert call_key(fk, (3,), None) != call_key(fk, (4,), None)
    assert call_key(fk, (3,), None) != call_key(fk, (3,), {"y": 1})
    assert call_key(fk, (3,), None, explicit="a") == call_key(fk, (4,), None, explicit="a")


def test_editing_the_body_changes_the_key_moving_it_does_not():
    before = compile_function("def simulate(x):\n    return x + 1\n")
    fixed = compile_function("def simulate(x):\n    return x + 2\n")
    moved = compile_function("\n\n\n# a comment\ndef simulate(x):\n    return x + 1\n")
    assert function_key(before) != function_key(fixed)
    assert function_key(before) == function_key(moved)


def test_outcomes_survive_a_new_driver_in_few_files(tmp_path):
    run = Run(tmp_path, "nightly", SECRET)
    assert run.open() == {}
    for i in range(1000):
        run.record(f"k{i}", i % 10 != 0, i if i % 10 else ValueError(i))
        if i % 10 == 9:
            run.flush(force=True)  # 100 flushes: compaction keeps the files few
    run.close()
    files = os.listdir(run.folder)
    assert len(files) <= runs.COMPACT_AFTER + 2, files
    again = Run(tmp_path, "nightly", SECRET).open()
    assert len(again) == 1000
    assert again["k5"] == (True, 5)
    assert not again["k10"].ok and isinstance(again["k10"].value, ValueError)


def test_a_segment_not_signed_with_the_secret_is_ignored(tmp_path):
    run = Run(tmp_path, "r", SECRET)
    run.open()
    run.record("k", True, 1)
    run.close()
    other = Run(tmp_path, "r", b"other" * 8)
    assert len(other.open()) == 0
    other.close()
    assert len(Run(tmp_path, "r", SECRET).open()) == 1


def test_bad_run_names_are_refused(tmp_path):
    for bad in ("", "../x", "a/b", ".hidden", "x" * 200, None):
        with pytest.raises(RunError):
            Run(tmp_path, bad, SECRET)  # type: ignore[arg-type]


DRIVER = """
import sys, time
from ddmq.executor.runs import Run
run = Run(sys.argv[1], "shared", b"s" * 32)
run.open()
print("driving", flush=True)
time.sleep(60)
"""


def test_a_second_driver_of_a_live_run_is_refused_and_a_dead_ones_run_taken_over(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert first.stdout.readline().strip() == "driving"
        with pytest.raises(RunInUseError) as caught:
            Run(tmp_path, "shared", SECRET).open()
        assert caught.value.pid == first.pid and str(first.pid) in str(caught.value)
        with pytest.raises(RunInUseError):
            runs.remove_run(tmp_path, "shared")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = Run(tmp_path, "shared", SECRET)
    second.open()  # the dead driver's record is taken over
    assert runs.read_driver(second.folder)["pid"] == os.getpid()
    second.close()
    assert runs.read_driver(second.folder) is None
    (info,) = runs.list_runs(tmp_path, SECRET)
    assert info.name == "shared" and info.driver is None
    runs.remove_run(tmp_path, "shared")
    assert runs.list_runs(tmp_path) == []


def test_a_driver_on_another_host_is_dead_when_its_beat_stops():
    now = time.time()
    assert runs.driver_alive({"host": "elsewhere", "pid": 1, "beat": now - 5})
    assert not runs.driver_alive({"host": "elsewhere", "pid": 1, "beat": now - 10 * runs.BEAT_SECONDS})
