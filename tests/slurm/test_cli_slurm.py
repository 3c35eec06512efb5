"""``ddmq slurm submit|status|cancel`` against a real Slurm, run as the user runs them
(``python -m ddmq`` processes: each asks squeue afresh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .helpers import live_workers, submit_foreign, wait_for
from .testbed import REPO


def ddmq(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ddmq", *argv], capture_output=True, text=True,
                          timeout=60, env=env)


def ok(*argv: str) -> str:
    done = ddmq(*argv)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done.stdout


def status(root: str, *options: str) -> list[dict]:
    return json.loads(ok("slurm", "status", root, "--format", "json", *options))


def test_submit_status_cancel_from_the_command_line(slurm, slurm_root):
    """submit (with an sbatch option after --) starts workers on separate nodes; status lists
    our jobs only, per queue; cancel --queue cancels that queue's jobs, cancel all of the
    root's, and a job that is not ddmq's survives both."""
    foreign = submit_foreign(slurm, "not-ddmq")
    out = ok("slurm", "submit", "-f", slurm_root, "--jobs", "2", "--time", "5", "--", "--exclusive")
    assert out.startswith("Submitted Slurm job array ") and "2 job(s) of 1 worker(s) for queue tasks" in out
    other = json.loads(ok("slurm", "submit", slurm_root, "--queue", "other", "--jobs", "1",
                          "--time", "5", "--format", "json"))
    assert other["queue"] == "other" and len(other["arrays"]) == 1
    wait_for("2 workers of queue tasks", lambda: len(live_workers(slurm_root)) == 2)
    wait_for("the worker of queue other", lambda: live_workers(slurm_root, "other"))

    def three_running():
        rows = status(slurm_root)
        return rows if len(rows) == 3 and all(r["state"] == "RUNNING" for r in rows) else []
    jobs = wait_for("3 running jobs", three_running)
    assert sorted(r["queue"] for r in jobs) == ["other", "tasks", "tasks"]
    tasks = [r for r in jobs if r["queue"] == "tasks"]
    assert len({r["node"] for r in tasks}) == 2  # --exclusive: a node each
    assert foreign not in {r["id"] for r in jobs}
    assert [r["id"] for r in status(slurm_root, "--queue", "tasks")] == [r["id"] for r in tasks]
    table = ok("slurm", "status", slurm_root).splitlines()
    assert table[0].split() == ["job", "state", "node", "elapsed", "limit", "queue", "reason"]
    assert sum("RUNNING" in line for line in table) == 3
    assert table[-1] == "3 job(s): 0 pending, 3 running, 0 ended"

    out = ok("slurm", "cancel", slurm_root, "--queue", "tasks")
    assert out.strip() == f"Cancelled Slurm job {tasks[0]['array_id']} of {slurm_root}"
    for row in tasks:
        slurm.wait_for_state(row["id"], {"CANCELLED"}, timeout=30)
    after = {r["id"]: r for r in status(slurm_root)}
    for row in tasks:
        assert after[row["id"]]["cause"] == (f"Slurm job {row['id']} on {row['node']} was "
                                             "cancelled (scancel): CANCELLED")
    (other_row,) = [r for r in after.values() if r["queue"] == "other"]
    assert other_row["state"] == "RUNNING"
    assert ok("slurm", "cancel", slurm_root).strip() == \
        f"Cancelled Slurm job {other_row['array_id']} of {slurm_root}"
    slurm.wait_for_state(other_row["id"], {"CANCELLED"}, timeout=30)
    assert slurm.states(foreign)[foreign] in ("PENDING", "RUNNING")
    assert ok("slurm", "cancel", slurm_root).strip() == f"No pending or running ddmq Slurm jobs on {slurm_root}"


def test_status_and_cancel_of_a_root_without_jobs(slurm, tmp_path):
    root = str(tmp_path / "never-used")
    assert ok("slurm", "status", root).strip() == f"No ddmq Slurm jobs on {root}"
    assert status(root) == []
    assert json.loads(ok("slurm", "cancel", root, "--format", "json")) == []


def test_sbatch_refusing_is_one_error_line(slurm, slurm_root):
    done = ddmq("slurm", "submit", "-f", slurm_root, "--jobs", "1", "--", "--partition=nowhere")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("ddmq: error: sbatch --parsable ") and done.stderr.count("\n") == 1
    assert "invalid partition" in done.stderr.lower()
    assert "Traceback" not in done.stderr
