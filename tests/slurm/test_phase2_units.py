"""Walltime decisions, environment checks and worker activity, without a Slurm: the arithmetic
of ddmq.executor.walltime_guard, and real workers that believe they run in a Slurm job (its
SLURM_JOB_ID and DDMQ_JOB_END_TIME set by hand)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
import warnings

import pytest

from ddmq.executor import DDMQExecutor, list_workers
from ddmq.executor.activity import Activity, activity_fields, done_last_minute
from ddmq.executor.environment import (EnvironmentCheck, EnvironmentWarning, differences,
                                       slurm_place, unpickling_note, versions)
from ddmq.executor.walltime_guard import Durations, Walltime, task_cost

from . import tasks
from .testbed import REPO

NOW = 1_800_000_000.0


def doc(fn="f", calls=1, duration=None):
    d = {"task": "t.1", "fn": fn, "calls": calls}
    if duration is not None:
        d["duration"] = duration
    return d


# --- the walltime arithmetic -------------------------------------------------------------

def test_without_an_end_everything_fits_and_nothing_drains():
    w = Walltime(None, now=NOW)
    assert w.fits(doc(duration=1e9), NOW) and not w.draining(NOW)
    assert w.drain_at is None and w.give_back_at is None
    assert w.stop_deadline(NOW, NOW - 5, 100.0, grace=30) == NOW + 30  # --grace, as SIGTERM


def test_default_margins_follow_the_time_left():
    assert (Walltime(NOW + 3600, now=NOW).drain_margin, Walltime(NOW + 3600, now=NOW).idle_margin) == (120, 10)
    short = Walltime(NOW + 60, now=NOW)  # a quarter of a minute, half of that
    assert (short.drain_margin, short.idle_margin) == (15, 7.5)
    assert Walltime(NOW + 20, now=NOW).drain_margin == 10  # never below Slurm's resolution
    given = Walltime(NOW + 3600, drain_margin=300, idle_margin=30, now=NOW)
    assert (given.drain_at, given.give_back_at) == (NOW + 3300, NOW + 3570)
    with pytest.raises(ValueError):
        Walltime(NOW, idle_margin=-1)


def test_a_task_fits_by_its_hint_or_the_function_s_recent_calls():
    w = Walltime(NOW + 100, drain_margin=30, idle_margin=10, now=NOW)  # drain 70, give back 90
    assert w.fits(doc(), NOW + 60)            # never ran here: fits while the drain is ahead
    assert not w.fits(doc(), NOW + 70)        # ... and not after
    w.ran(doc(calls=4), 20.0)                 # 5 s a call
    assert w.expected(doc(calls=2)) == 10.0
    assert w.fits(doc(calls=2), NOW + 80)     # known: may start after the drain point if it fits
    assert not w.fits(doc(calls=3), NOW + 80)
    assert w.fits(doc("g", duration=50), NOW + 40) and not w.fits(doc("g", duration=51), NOW + 40)
    assert w.expected(doc(duration=1)) == 1   # the caller's hint wins over the record
    assert task_cost({"fn": "", "calls": 0, "duration": float("nan")}) == (None, 1, None)
    assert task_cost("not an envelope") == (None, 1, None)


def test_durations_keep_the_longest_recent_calls():
    d = Durations(kept=3)
    for seconds in (1, 9, 2, 3, 4):
        d.add("f", seconds)
    assert d.per_call("f") == 4 and d.per_call("g") is None  # 9 fell out of the last three


def test_the_running_task_goes_back_at_the_give_back_point_or_at_once_if_it_cannot_fit():
    w = Walltime(NOW + 100, drain_margin=30, idle_margin=10, now=NOW)
    assert w.stop_deadline(NOW + 70, NOW + 65, 10.0, grace=30) == NOW + 90  # ends at 75: fine
    assert w.stop_deadline(NOW + 70, NOW + 65, 40.0, grace=30) == NOW + 70  # would end at 105
    assert w.stop_deadline(NOW + 70, NOW + 65, None, grace=30) == NOW + 90  # unknown: let it try
    assert w.stop_deadline(NOW + 95, None, None, grace=30) == NOW + 95      # past it already


# --- the environment ---------------------------------------------------------------------

def test_versions_that_break_unpickling_differ_and_others_do_not():
    ours = {"python": "3.11.7", "cloudpickle": "3.0.0", "ddmq": "1.0.0"}
    assert differences({"python": "3.11.2", "cloudpickle": "3.0.0"}, ours) == {}
    assert differences({"python": "3.12.1", "cloudpickle": "2.2.1", "ddmq": "0.9"}, ours) == {
        "python": ("3.11.7", "3.12.1"), "cloudpickle": ("3.0.0", "2.2.1")}
    assert differences({}, ours) == {}  # an old worker that does not say
    assert unpickling_note(None) == "" and unpickling_note(versions()) == ""
    note = unpickling_note({"python": "2.7.18"})
    assert "Python" in note and "2.7.18 where the task was submitted" in note


def test_slurm_place_names_the_array_task_and_node():
    assert slurm_place({"SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "15",
                        "SLURMD_NODENAME": "n2"}) == {"slurm_job": "12_3", "node": "n2"}
    assert slurm_place({"SLURM_JOB_ID": "15"}) == {"slurm_job": "15"}
    assert slurm_place({}) == {}


def test_a_worker_on_another_python_is_warned_of_once():
    check = EnvironmentCheck()
    other = types.SimpleNamespace(host="h", pid=1, node="n1", python="2.7.18",
                                  cloudpickle=versions()["cloudpickle"])
    with pytest.warns(EnvironmentWarning, match="runs Python .* 2.7.18 there"):
        assert len(check.check([other])) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check.check([other, types.SimpleNamespace(host="h", pid=2, **versions())]) == []


def test_a_task_that_cannot_be_unpickled_says_which_versions_differ(tmp_path):
    """The worker cannot import the task's module; the task said it came from another
    Python: the error the future raises says both."""
    module = tmp_path / "only_here.py"
    module.write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_here
        with DDMQExecutor(str(tmp_path / "root"), max_workers=1) as ex:
            ex._task_advice["env"] = dict(versions(), python="2.7.18")
            module.unlink()  # gone for the worker (the PYTHONPATH still names the folder)
            with pytest.raises(ModuleNotFoundError) as caught:
                ex.submit(only_here.f).result(timeout=60)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_here", None)
    text = str(caught.value.__cause__)
    assert "this worker's environment differs from the executor's" in text
    assert f"Python {versions()['python']} on this worker, 2.7.18 where the task was submitted" in text


# --- activity ----------------------------------------------------------------------------

def test_done_in_the_last_minute_from_ten_second_slots():
    a = Activity()
    start = 10 * 180_000_000.0
    a.fields("idle", None, 0, now=start)
    a.fields("running", "t.1", 30, now=start + 5)           # 30 in slot 0
    fields = a.fields("running", "t.2", 40, now=start + 35)  # 10 in slot 3
    record = types.SimpleNamespace(**activity_fields(fields))
    assert (record.done[-4:], record.since) == ([30, 0, 0, 10], start + 35)
    assert done_last_minute(record, start + 40) == 40
    assert done_last_minute(record, start + 65) == pytest.approx(10 + 30 * 0.5)  # half of slot 0 left
    assert done_last_minute(record, start + 100) == 0  # slot 3 ended at 40: 60 s ago
    assert done_last_minute(types.SimpleNamespace(done=[], done_slot=0), start) == 0


# --- real workers that believe they run in a Slurm job -------------------------------------

def _worker(root: str, end: float, *args: str) -> subprocess.Popen:
    env = dict(os.environ, SLURM_JOB_ID="999999", DDMQ_JOB_END_TIME=str(int(end)),
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), REPO]),
               PATH=os.path.dirname(sys.executable))  # no squeue: the end is the variable's
    return subprocess.Popen([sys.executable, "-m", "ddmq.worker", root, "-v", *args], env=env,
                            stderr=subprocess.PIPE, text=True)


def test_a_worker_gives_back_a_task_that_would_outlast_its_job_and_exits(tmp_path):
    """The job ends in 30 s (drain margin 20, idle margin 5): a task hinted at 30 s a call is
    given back before it starts (no retry used: retries=0), the worker exits 0, and a worker
    without a limit runs it."""
    root = str(tmp_path / "root")
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    with DDMQExecutor(root, max_workers=0, retries=0, task_duration=30) as ex:
        proc = _worker(root, time.time() + 30, "--drain-margin", "20", "--idle-margin", "5")
        future = ex.submit(tasks.attempt, 1, 0.1, str(attempts))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "would not finish before its Slurm job ends" in err and not os.listdir(attempts)
        free = subprocess.Popen([sys.executable, "-m", "ddmq.worker", root, "--max-tasks", "1"],
                                env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                    [os.path.dirname(os.path.dirname(__file__)), REPO])))
        assert future.result(timeout=30)[0] == 1
        free.wait(30)


def test_sigusr1_drains_a_worker_the_running_task_finishes_if_it_fits(tmp_path):
    """SIGUSR1 while a 2 s task runs, the job's end far away: the task finishes, its result
    arrives, the worker takes nothing more and exits 0."""
    root = str(tmp_path / "root")
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    with DDMQExecutor(root, max_workers=0) as ex:
        proc = _worker(root, time.time() + 3600)
        first = ex.submit(tasks.attempt, 1, 2.0, str(attempts))
        deadline = time.monotonic() + 30
        while not os.listdir(attempts) and time.monotonic() < deadline:
            time.sleep(0.05)
        later = ex.submit(tasks.attempt, 2, 0.1, str(attempts))
        proc.send_signal(signal.SIGUSR1)
        assert first.result(timeout=30)[0] == 1
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "SIGUSR1 received" in err, err
        assert not later.done() and sorted(os.listdir(attempts)) == ["1"]
        assert later.cancel()


def test_a_worker_s_record_says_its_versions_and_slurm_place(tmp_path):
    root = str(tmp_path / "root")
    with DDMQExecutor(root, max_workers=0):
        proc = _worker(root, time.time() + 3600)
        try:
            deadline = time.monotonic() + 30
            while not list_workers(root)[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            (record,) = list_workers(root)[0]
            assert (record.slurm_job, record.python, record.cloudpickle) == (
                "999999", versions()["python"], versions()["cloudpickle"])
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
