"""``examples/slurm_workers.sh`` submitted as its comment (and the README) says:
``sbatch examples/slurm_workers.sh ROOT``, from a shell where the project's Python is active."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from ddmq.executor import DDMQExecutor

from . import tasks
from .helpers import live_workers, wait_for
from .testbed import HERE, REPO

EXAMPLE = os.path.join(REPO, "examples", "slurm_workers.sh")


def test_example_script_runs_an_array_of_workers(slurm, slurm_root, tmp_path):
    """Plain sbatch: 4 array tasks of one worker each serve a map; the drain signal of the time
    limit (USR1 to the batch shell) ends one cleanly (COMPLETED), scancel the rest."""
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    # As the example says: submit from a shell where the main program's environment is active
    # (this interpreter first on PATH) and its code on PYTHONPATH (the tests' tasks module).
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), REPO]))
    done = subprocess.run(["sbatch", EXAMPLE, slurm_root], cwd=submit_dir, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    array = re.fullmatch(r"Submitted batch job (\d+)\n", done.stdout).group(1)
    wait_for("4 live workers", lambda: len(live_workers(slurm_root)) == 4, timeout=60)
    states = slurm.states(*(f"{array}_{i}" for i in range(4)))
    assert set(states.values()) == {"RUNNING"}

    with DDMQExecutor(slurm_root, max_workers=0) as ex:
        out = list(ex.map(tasks.where, range(40), [0.2] * 40, chunksize=1))
    assert [value for value, _, _ in out] == [x * x for x in range(40)]
    assert len({job for _, _, job in out}) >= 2 and len({node for _, node, _ in out}) >= 2

    slurm.command("scancel", "--batch", "--signal=USR1", f"{array}_0")
    assert slurm.wait_for_state(f"{array}_0", {"COMPLETED", "FAILED"}, timeout=30) == "COMPLETED"
    output = (submit_dir / f"ddmq-workers-{array}_0.out").read_text()
    assert "SIGUSR1: workers drain" in output and "exit status 0" in output
    slurm.command("scancel", array)
    for index in range(1, 4):
        slurm.wait_for_state(f"{array}_{index}", {"CANCELLED"}, timeout=30)
    wait_for("no live worker", lambda: not live_workers(slurm_root), timeout=20)
