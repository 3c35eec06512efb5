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
from ddmq.executor import callkeys
from ddmq.executor.callkeys import call_keys, function_key
from ddmq.executor.errors import RunError, RunInUseError
from ddmq.executor.runs import Run

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


def keys_of(*args, **kwargs):
    return list(call_keys(*args, **kwargs))  # a list or a range: compared as lists


def test_a_call_key_depends_on_the_arguments_and_explicit_keys_replace_them():
    (three,) = keys_of([(3,)])
    assert keys_of([(3,)]) == keys_of([(3,)], [{}]) == [three]
    assert keys_of([(3,), (4,), (3.0,), (True,)]) == [three, *keys_of([(4,), (3.0,), (True,)])]
    assert len(set(keys_of([(3,), (4,), (3.0,), (True,), ("3",)]))) == 5
    # A call's key depends on that call only, not on the others of its map.
    assert keys_of([(1,), ("a",)]) == keys_of([(1,)]) + keys_of([("a",)])
    assert keys_of([("a",), ("b",)])[0] == keys_of([("a",), (1,)])[0] == keys_of([("a",)], [{}])[0]
    assert keys_of([(3,)], [{"y": 1}]) != [three]
    assert keys_of([(3,)], [{"y": 1, "z": 2}]) == keys_of([(3,)], [{"z": 2, "y": 1}])
    assert keys_of([(3,), (4,)], explicit=["a", "a"])[0] == keys_of([(4,)], explicit=["a"])[0]
    assert keys_of([(3,)], explicit=[("a", 1)]) != keys_of([(3,)], explicit=["a"])
    with pytest.raises(TypeError):
        keys_of([(3,)], explicit=[object()])
    # Not plain: pickled; a bytearray is not the bytes it holds; long keys are hashed.
    assert keys_of([(bytearray(b"ab"),)]) != keys_of([(b"ab",)])
    assert keys_of([([1, 2],)]) == keys_of([([1, 2],)]) != keys_of([((1, 2),)])
    assert all(len(key) <= callkeys.KEY_MAX for key in keys_of([("x" * 1000,), (list(range(99)),)]))


def test_editing_the_body_changes_the_key_moving_it_does_not():
    before = compile_function("def simulate(x):\n    return x + 1\n")
    fixed = compile_function("def simulate(x):\n    return x + 2\n")
    moved = compile_function("\n\n\n# a comment\ndef simulate(x):\n    return x + 1\n")
    assert function_key(before) != function_key(fixed)
    assert function_key(before) == function_key(moved)


def test_outcomes_survive_a_new_driver_in_few_files(tmp_path):
    run = Run(tmp_path, "nightly", SECRET)
    run.open()
    assert run.counts() == (0, 0)
    for i in range(0, 1000, 10):
        keys = [f"k{j}".encode() for j in range(i, i + 10)]
        values = [None if j % 10 == 0 else j for j in range(i, i + 10)]
        run.record("f", keys, values, [(0, ValueError(i))])
        run.flush()  # 100 flushes, 100 frames appended to one segment
    run.close()
    files = os.listdir(run.folder)
    assert sorted(f.split('.')[0] for f in files) == ['run', 'seg'], files
    again = Run(tmp_path, "nightly", SECRET)
    again.open()
    assert again.counts() == (900, 100)
    assert again.known("f", b"k5") == (True, 5)
    outcome = again.known("f", b"k10")
    assert not outcome.ok and isinstance(outcome.value, ValueError)
    assert again.known("g", b"k5") is None
    again.close()
    info = runs.run_info(tmp_path, "nightly", SECRET)
    assert (info.done, info.failed, info.files) == (900, 100, len(files))


def test_a_success_replaces_a_failure_never_the_reverse(tmp_path):
    run = Run(tmp_path, "r", SECRET)
    run.open()
    run.record("f", [b"a", b"b"], [None, None], [(0, ValueError("a")), (1, ValueError("b"))])
    run.flush()
    run.record("f", [b"a"], [1])
    run.record("f", [b"a"], [None], [(0, ValueError("late"))])
    assert run.known("f", b"a") == (True, 1)
    run.close()
    again = Run(tmp_path, "r", SECRET)
    again.open()
    assert again.known("f", b"a") == (True, 1) and again.counts() == (1, 1)


def test_consecutive_int_keys_are_spans(tmp_path):
    assert call_keys([(5,), (6,), (7,)]) == range(5, 8)
    assert call_keys([(5,), (7,)]) == [5, 7] and call_keys([(5, 1)]) == [(5, 1)]
    run = Run(tmp_path, "r", SECRET)
    run.open()
    run.record("f", range(0, 10), [x if x != 3 else None for x in range(10)], [(3, ValueError("3"))])
    run.record("f", range(10, 20), list(range(10, 20)))
    assert run.counts() == (19, 1) and not run.known("f", 3).ok and run.known("f", 4) == (True, 4)
    assert run.touches("f", range(19, 25)) and run.touches("f", [25, 3])
    assert not run.touches("f", range(20, 30)) and not run.touches("g", range(0, 5))
    assert not run.touches("f", [3], failures=False)
    run.record("f", range(2, 5), [2, 3, 4])  # overlaps a span: kept per call; 3 succeeded now
    assert run.counts() == (20, 0) and run.known("f", 3) == (True, 3)
    run.close()
    again = Run(tmp_path, "r", SECRET)
    again.open()
    assert again.counts() == (20, 0) and again.known("f", 3) == (True, 3)
    assert [again.known("f", x).value for x in range(20)] == list(range(20))
    again.close()
    assert runs.run_info(tmp_path, "r", SECRET)[1:3] == (20, 0)


def test_a_frame_cut_short_ends_its_segment_and_many_segments_are_merged(tmp_path):
    for session in range(runs.COMPACT_AFTER + 1):  # one segment per driver
        run = Run(tmp_path, "r", SECRET)
        run.open()
        run.record("f", [(session,)], [session])
        run.flush()
        run.record("f", [(session, 1)], [-session])
        run.close()
    folder = os.path.join(runs.runs_folder(tmp_path), "r")
    segments = [f for f in os.listdir(folder) if f.startswith("seg.")]
    assert len(segments) == runs.COMPACT_AFTER + 1
    with open(os.path.join(folder, segments[0]), "r+b") as handle:  # killed mid-write
        handle.truncate(os.path.getsize(handle.name) - 3)
    again = Run(tmp_path, "r", SECRET)
    again.open()
    assert again.counts() == (2 * len(segments) - 1, 0)
    again.close()
    assert len([f for f in os.listdir(folder) if f.startswith("seg.")]) == 1  # merged
    merged = Run(tmp_path, "r", SECRET)
    merged.open()
    assert merged.counts() == (2 * len(segments) - 1, 0)
    assert merged.known("f", (3, 1)) == (True, -3)


def test_a_segment_not_signed_with_the_secret_is_ignored(tmp_path):
    run = Run(tmp_path, "r", SECRET)
    run.open()
    run.record("f", [b"k"], [1])
    run.close()
    other = Run(tmp_path, "r", b"other" * 8)
    other.open()
    assert other.counts() == (0, 0)
    other.close()
    again = Run(tmp_path, "r", SECRET)
    again.open()
    assert again.counts() == (1, 0)


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
