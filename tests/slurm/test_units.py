"""ddmq.slurm without a Slurm: its formats, tags, scripts, parsers, scaler and errors. These run
anywhere (no ``slurm`` fixture); the output samples are what Slurm 22.05 printed on the testbed."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

import pytest

from ddmq.cli import main
from ddmq.slurm import (JobEnd, JobTag, Scaler, SlurmCommandError, SlurmJobs, SlurmNotFoundError,
                        SlurmWorkers, describe, find_jobs, job_end_time)
from ddmq.slurm.commands import ClusterConfig, run
from ddmq.slurm.formats import check_job_id, parse_duration, parse_timestamp, slurm_time
from ddmq.slurm.squeue import parse_rows
from ddmq.slurm.states import _from_scontrol, parse_scontrol
from ddmq.slurm.walltime import drain_margin, worker_grace


@pytest.fixture
def no_slurm(monkeypatch, tmp_path):
    """A PATH without any Slurm command (and a fresh squeue cache key)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-slurm.conf"))


# --- formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, printed, typed", [
    ("45", 45, 2700), ("5:00", 300, 300), ("1:02:03", 3723, 3723), ("2-03:04:05", 183845, 183845),
    ("1-02", 93600, 93600), ("UNLIMITED", None, None), ("N/A", None, None), ("soon", None, None),
])
def test_durations_as_slurm_prints_and_reads_them(text, printed, typed):
    assert parse_duration(text) == printed  # squeue's %l and %M, scontrol's TimeLimit
    assert parse_duration(text, minutes_alone=True) == typed  # sbatch --time: "45" is minutes


def test_time_limits_from_strings_seconds_and_timedeltas():
    assert slurm_time("30") == ("30", 1800.0)
    assert slurm_time(90) == ("00:01:30", 90.0)
    assert slurm_time(datetime.timedelta(days=1, seconds=1)) == ("1-00:00:01", 86401.0)
    for bad in ("half an hour", 0, -5, True, float("inf"), None):
        with pytest.raises(ValueError):
            slurm_time(bad)


def test_timestamps_are_local_time():
    assert parse_timestamp("2026-12-04T18:17:25") == time.mktime((2026, 12, 4, 18, 17, 25, 0, 0, -1))
    assert parse_timestamp("N/A") is None and parse_timestamp("Unknown") is None


def test_job_ids_are_never_options():
    assert check_job_id("123") == "123" and check_job_id(123) == "123" and check_job_id("12_3") == "12_3"
    for bad in ("-u", "12_", "1,2", "", True, "123_[0-3]"):
        with pytest.raises(ValueError):
            check_job_id(bad)


# --- tags ------------------------------------------------------------------------------------

def test_tag_names_the_root_and_the_comment_its_queue(tmp_path):
    root = str(tmp_path / "a root: with=odd|chars%")
    tag = JobTag(root, "tasks")
    assert tag.name.startswith("ddmq-") and len(tag.name) == 17
    assert " " not in tag.comment and "=" not in tag.comment and "|" not in tag.comment
    assert tag.owns(tag.name, tag.comment)
    assert JobTag(root).owns(tag.name, tag.comment)  # no queue: all of the root's
    assert not JobTag(root, "other").owns(tag.name, tag.comment)
    assert not tag.owns(tag.name, "")  # our name, not our comment: someone else's job
    assert not tag.owns("ddmq-000000000000", tag.comment)
    assert JobTag(os.path.relpath(root)).name == tag.name  # as an absolute path
    with pytest.raises(ValueError):
        JobTag("/x\ny", "tasks")


# --- SlurmWorkers and the script ---------------------------------------------------------------

def test_slurm_workers_take_exactly_the_documented_arguments():
    workers = SlurmWorkers(3, workers_per_job=2, time="1:00:00", partition="debug", mem="4G",
                           cpus_per_worker=2, gpus="a100:1", account="proj", sbatch_args=["--qos=low"],
                           python="/opt/py/bin/python", env={"OMP_NUM_THREADS": "2", "X": None})
    assert workers.resource_options() == [
        "--nodes=1", "--ntasks=1", "--cpus-per-task=4", "--time=1:00:00", "--partition=debug",
        "--account=proj", "--mem=4G", "--gres=gpu:a100:1"]
    assert not workers.adaptive and (workers.min_jobs, workers.max_jobs) == (3, 3)
    assert SlurmWorkers((0, 8)).adaptive
    assert repr(SlurmWorkers(2, mem=100)) == "SlurmWorkers(2, mem=100)"


@pytest.mark.parametrize("kwargs", [
    {"jobs": 0}, {"jobs": (3, 2)}, {"jobs": (0, 0)}, {"jobs": 1.5}, {"jobs": 2, "workers_per_job": 0},
    {"jobs": 2, "mem": "lots"}, {"jobs": 2, "time": "soon"}, {"jobs": 2, "gpus": "1 2"},
    {"jobs": 2, "partition": "a b"}, {"jobs": 2, "sbatch_args": "--qos=x"},
    {"jobs": 2, "sbatch_args": ["--job-name=mine"]}, {"jobs": 2, "sbatch_args": ["-Jmine"]},
    {"jobs": 2, "sbatch_args": ["--array=0-9"]}, {"jobs": 2, "sbatch_args": ["--comment", "x"]},
    {"jobs": 2, "env": {"1X": "y"}}, {"jobs": 2, "env": {"X": 1}},
])
def test_slurm_workers_refuse_what_sbatch_would_not_take_or_what_breaks_the_tag(kwargs):
    jobs = kwargs.pop("jobs")
    with pytest.raises(ValueError):
        SlurmWorkers(jobs, **kwargs)


def test_the_sbatch_command_and_script(tmp_path):
    jobs = SlurmJobs(SlurmWorkers(5, workers_per_job=3, time="20", env={"PYTHONPATH": "/mine"},
                                  sbatch_args=["--qos=low"]),
                     max_array_size=2, idle_timeout=30, worker_args=["--heartbeat", "5"])
    tag = JobTag(str(tmp_path / "r%o ot"), "q")
    plans = jobs.plan(5, idle_timeout=30, config=ClusterConfig(max_array_size=1001, kill_wait=30),
                      tag=tag)
    assert [p.size for p in plans] == [2, 2, 1]
    command = plans[0].command
    assert command[:2] == ["sbatch", "--parsable"]
    assert f"--job-name={tag.name}" in command and f"--comment={tag.comment}" in command
    assert "--array=0-1" in command and "--array=0-0" in plans[2].command
    assert "--signal=B:USR1@120" in command and "--cpus-per-task=3" in command
    assert f"--output={tmp_path}/r%%o ot/.slurm/job-%A_%a.out" in command
    assert command[-1] == "--qos=low"  # the user's options last: they win
    script = plans[0].script
    assert script.startswith("#!/bin/bash\n") and "export PYTHONPATH=/mine\n" in script
    assert (f"{sys.executable} -m ddmq.worker '{tmp_path}/r%o ot' --queue q --grace 27 -v "
            "--idle-timeout 30 --heartbeat 5 --drain-margin 120 &") in script
    assert "for _ in $(seq 3); do" in script and "trap drain USR1" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # who passes scancel's SIGTERM on to the workers: the shell, unless Slurm signals them itself
    forwards = 'workers stop"; kill -TERM "${pids[@]}" 2>/dev/null\' TERM'
    assert forwards in script
    linuxproc = ClusterConfig(proctrack="proctrack/linuxproc")
    assert linuxproc.term_reaches_children and not ClusterConfig().term_reaches_children
    assert forwards not in jobs.plan(1, config=linuxproc, tag=tag)[0].script
    # the cluster's MaxArraySize bounds the arrays as much as the user's limit does
    assert [p.size for p in jobs.plan(5, config=ClusterConfig(max_array_size=1), tag=tag)] == [1] * 5


def test_drain_margin_and_grace_fit_the_limits():
    assert drain_margin(None) == 120 and drain_margin(3600) == 120
    assert drain_margin(60) == 15 and drain_margin(10) == 10 and drain_margin(3600, 300) == 300
    assert worker_grace(30) == 27 and worker_grace(10) == 7 and worker_grace(60) == 30
    assert worker_grace(2) == 1


# --- what Slurm says -----------------------------------------------------------------------------

SQUEUE = """\
1_6|1|1|6|PENDING||Resources|N/A|N/A|5:00|0:00|1G|ddmq-abc|ddmq:tasks:/tmp/x%20y
1_0|2|1|0|RUNNING|n1|None|2026-12-04T18:12:25|2026-12-04T18:17:25|5:00|0:30|1G|ddmq-abc|ddmq:tasks:/tmp/x%20y
9|9|9|N/A|FAILED|n2|NonZeroExitCode|2026-12-04T18:13:05|2026-12-04T18:13:05|UNLIMITED|0:00|1G|other|(null)
garbage
"""


def test_squeue_rows():
    pending, running, failed = parse_rows(SQUEUE)
    assert (pending.id, pending.array_id, pending.index, pending.node, pending.reason) == \
        ("1_6", "1", 6, "", "Resources")
    assert pending.pending and pending.active and pending.start is None
    assert (running.node, running.time_limit, running.elapsed, running.reason) == ("n1", 300, 30, "")
    assert running.end - running.start == 300 and not running.pending and running.active
    assert (failed.index, failed.time_limit, failed.comment, failed.active) == (None, None, "", False)


SCONTROL = ("JobId=31 ArrayJobId=30 ArrayTaskId=1 JobName=ddmq-abc UserId=root(0) JobState=OUT_OF_MEMORY "
            "Reason=OutOfMemory Dependency=(null) ExitCode=0:125 RunTime=00:00:04 TimeLimit=00:05:00 "
            "StartTime=2026-12-04T18:12:25 EndTime=2026-12-04T18:12:29 NodeList=n2 BatchHost=n2 "
            "MinCPUsNode=1 MinMemoryNode=100M MinTmpDiskNode=0 Command=/a dir/with spaces "
            "WorkDir=/tmp Comment=ddmq:tasks:/tmp/x Power=")


def test_scontrol_records_and_the_line_that_says_why():
    (record,) = parse_scontrol(SCONTROL)
    assert record["Command"] == "/a dir/with spaces" and record["Power"] == ""
    end = _from_scontrol(record)
    assert (end.id, end.state, end.node, end.memory_limit, end.run_time) == \
        ("30_1", "OUT_OF_MEMORY", "n2", "--mem=100M", 4)
    assert describe(end) == "Slurm job 30_1 on n2 ran out of memory (limit --mem=100M): OUT_OF_MEMORY"
    assert json.loads(json.dumps(end.to_dict()))["description"] == describe(end)
    said = {state: describe(JobEnd("7", state, node="n1", exit_status=3, time_limit=120))
            for state in ("TIMEOUT", "NODE_FAIL", "CANCELLED", "PREEMPTED", "FAILED", "COMPLETED",
                          "PENDING", "RUNNING", "SPECIAL_EXIT")}
    assert said["TIMEOUT"] == "Slurm job 7 on n1 reached its time limit (2 min): TIMEOUT"
    assert said["FAILED"] == "Slurm job 7 on n1 failed with exit status 3: FAILED"
    assert said["NODE_FAIL"].endswith("lost its node (node failure): what ran there is lost: NODE_FAIL")
    assert said["PREEMPTED"] == "Slurm job 7 on n1 was preempted by a job of higher priority: PREEMPTED"
    assert said["SPECIAL_EXIT"] == "Slurm job 7 on n1 is in state SPECIAL_EXIT: SPECIAL_EXIT"
    killed = JobEnd("7", "FAILED", signal=9, memory_limit="--mem-per-cpu=1G")
    assert describe(killed) == ("Slurm job 7 was killed by SIGKILL (out of memory? "
                                "(limit --mem-per-cpu=1G)): FAILED")


def test_cluster_config_from_scontrol_show_config():
    config = ClusterConfig.parse("Configuration data as of 2026-12-04T18:12:00\n"
                                 "KillWait                = 10 sec\nMaxArraySize            = 10001\n"
                                 "MinJobAge               = 300 sec\n"
                                 "ProctrackType           = proctrack/linuxproc\n")
    assert config == ClusterConfig(max_array_size=10001, kill_wait=10, min_job_age=300,
                                   proctrack="proctrack/linuxproc")
    assert ClusterConfig.parse("") == ClusterConfig()


# --- scaling ---------------------------------------------------------------------------------

def test_scaler_adds_jobs_for_the_backlog_between_min_and_max():
    scaler = Scaler(1, 4, workers_per_job=2, interval=10)
    assert scaler.decide(0, 0, 0, 0, now=0).keep == 1  # below the minimum, whatever the backlog
    scaler = Scaler(1, 4, workers_per_job=2, interval=10)
    first = scaler.decide(waiting=9, live_workers=0, pending_jobs=0, running_jobs=0, now=0)
    assert (first.keep, first.extra) == (1, 3)  # 1 job's 2 workers, then ceil(7 / 2), up to 4 jobs
    assert scaler.decide(100, 0, 0, 0, now=5).total == 0  # within the interval
    assert scaler.decide(100, 2, 0, 4, now=20).total == 0  # at the maximum
    assert scaler.decide(2, 2, 1, 1, now=30).total == 0  # a pending job's workers will take them
    assert scaler.decide(2, 0, 0, 1, now=40).total == 0  # so will those of a job just started
    assert scaler.decide(2, 2, 0, 1, idle_workers=2, now=50).total == 0  # and idle workers
    assert scaler.decide(5, 2, 0, 1, now=60).extra == 3  # 5 tasks, nobody free: 3 jobs of 2
    with pytest.raises(ValueError):
        Scaler(3, 2)


def test_fixed_jobs_do_not_scale():
    jobs = SlurmJobs(SlurmWorkers(2))
    assert jobs.scaler is None and jobs.scale(100, 0) == 0


# --- no Slurm here -----------------------------------------------------------------------------

def test_missing_commands_raise_a_clear_error(no_slurm, tmp_path):
    with pytest.raises(SlurmNotFoundError, match=r"^sbatch: command not found; is this a Slurm"):
        run(["sbatch", "--version"])
    with pytest.raises(SlurmNotFoundError, match="squeue: command not found"):
        find_jobs("/tmp/nowhere")
    with pytest.raises(SlurmNotFoundError, match="scontrol: command not found"):
        SlurmJobs(SlurmWorkers(1)).start(str(tmp_path / "root"), "tasks")
    assert not os.path.exists(tmp_path / "root")  # nothing made


def test_a_failed_command_says_what_it_ran_and_what_it_printed():
    err = SlurmCommandError(["sbatch", "--parsable", "--partition=x"], 1,
                            "sbatch: error: invalid partition specified: x\nmore\n")
    assert str(err) == ("sbatch --parsable --partition=x failed (exit status 1): "
                        "sbatch: error: invalid partition specified: x more")
    assert str(SlurmCommandError(["squeue"], None, "")) == "squeue timed out"


def test_end_time_outside_a_job_and_from_the_job_script(monkeypatch, no_slurm):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert job_end_time() is None
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("DDMQ_JOB_END_TIME", "1700000000")
    assert job_end_time() == 1700000000.0  # what the job's script asked once: no Slurm call
    with pytest.raises(SlurmNotFoundError):
        job_end_time(fresh=True)


def test_cli_without_slurm_is_one_error_line(no_slurm, capsys, tmp_path):
    root = str(tmp_path / "root")
    for argv, status in ((["slurm", "submit", "-f", root, "--jobs", "2"], 1),  # no scontrol
                         (["slurm", "status", root], 1), (["slurm", "cancel", root], 1),
                         (["slurm", "submit", root, "--jobs", "0"], 2),
                         (["slurm", "submit", root], 2),
                         (["slurm", "submit", root, "--jobs", "1", "--time", "soon"], 2),
                         (["slurm", "submit", root, "--jobs", "1", "--", "--array=0-3"], 2),
                         (["slurm", "status", root, "--queue", "bad name"], 2),
                         (["slurm", "status", root, "--", "--x"], 2),
                         (["slurm"], 2), (["slurm", "bogus"], 2)):
        assert main(argv) == status, argv
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("ddmq: error: ") and err.count("\n") == 1, (argv, err)
    assert not os.path.exists(root)  # nothing made, not even with -f


def test_cli_dry_run_prints_the_plan_without_slurm(no_slurm, capsys, tmp_path):
    root = str(tmp_path / "root")
    assert main(["slurm", "submit", root, "--jobs", "3", "--max-array-size", "2", "--time", "30",
                 "--dry-run", "--format", "json", "--", "--qos=low"]) == 0
    out, err = capsys.readouterr()
    plans = json.loads(out)
    assert [p["jobs"] for p in plans] == [2, 1] and plans[0]["command"][-1] == "--qos=low"
    assert "ddmq.worker" in plans[0]["script"] and "scontrol is not here" in err
    assert not os.path.exists(root)
