"""The Slurm testbed of these tests: a real Slurm 22.05 on this machine, with fake nodes.

``Testbed.up()`` runs ``up.sh 3`` from ``<repo>/../shared/testbed/slurm/`` (read-only, not
part of the repository; CI puts ``shared/`` beside the checkout) with a state folder of its
own (``SLURM_BASE=/tmp/ddmq-slurm-t<pid>``) and free ports, so that it never meets another
Slurm of this machine::

    munged (user munge, private key and socket)     $BASE/munge/
    slurmctld                                       port P, $BASE/slurm.conf
    slurmd -N n1 | n2 | n3                          ports Q..Q+2, all on this host

Clients find it through ``SLURM_CONF=$BASE/slurm.conf`` (jobs inherit it). ``down()`` runs
``down.sh``, which cancels the jobs and stops exactly the processes of its pid files. A session
that died without ``down()`` leaves ``$BASE/owner`` naming its pid; the next session takes
such a testbed down (:func:`remove_stale`).

Facts the tests plan with (research, Part B): ``scontrol show job`` keeps a finished job 300 s,
time limits are enforced about once a minute, there is no ``sacct``, and every fake node is
this host (identify them by ``SLURMD_NODENAME``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time

# Generic helpers of the GlusterFS harness: is a Debian package installed, is a process alive.
from cluster.harness import _alive, _installed

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
#: The testbed scripts: in ``shared/`` beside the checkout.
SCRIPTS = os.path.join(os.path.dirname(REPO), "shared", "testbed", "slurm")
BASE_PREFIX = "/tmp/ddmq-slurm-t"
NODES = ("n1", "n2", "n3")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
#: Figures measured by the tests: name -> {figure: value}; printed at the end of the run.
FIGURES: dict[str, dict] = {}


def record(name: str, **figures) -> None:
    FIGURES.setdefault(name, {}).update(figures)


class TestbedError(RuntimeError):
    """up.sh or down.sh failed."""


def precondition_problem() -> str | None:
    """Why the testbed cannot be built here, or None if it can be tried."""
    if sys.platform != "linux":
        return f"needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "needs root (it starts slurmctld, slurmd and munged); run as root to include it"
    if not os.path.isfile(os.path.join(SCRIPTS, "up.sh")):
        return f"no testbed scripts at {SCRIPTS} (shared/ is not beside the checkout)"
    if shutil.which("dpkg-query") is None:
        return "not a Debian system (the testbed runs Debian's slurm-wlm packages)"
    missing = [p for p in PACKAGES if not _installed(p)]
    if missing and shutil.which("apt-get") is None:
        return f"packages {', '.join(missing)} are missing and apt-get is unavailable"
    return None


def cgroup_wanted() -> bool:
    """Whether to bring the testbed up with cgroups (``--mem`` enforced): ``DDMQ_SLURM_CGROUP=1``
    or ``0`` says; by default yes where the cgroup v1 memory controller is mounted (the testbed's
    cgroup.conf is for v1) and no other slurmd runs here (fake nodes of two testbeds would share
    the cgroup folders ``slurm_n1``...)."""
    wanted = os.environ.get("DDMQ_SLURM_CGROUP", "auto")
    if wanted in ("0", "1"):
        return wanted == "1"
    if not os.path.ismount("/sys/fs/cgroup/memory"):
        return False
    others = subprocess.run(["pgrep", "-x", "slurmd"], capture_output=True, text=True)
    return others.returncode == 1 and not others.stdout.strip()


def _free(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports (Slurm's own 6817 onwards if free)."""
    for first in [6817, *range(16817, 30000, 10)]:
        if all(_free(first + i) for i in range(count)):
            return first
    raise TestbedError("no free ports for Slurm")


def remove_stale() -> list[str]:
    """Take down the testbeds of earlier sessions that died without doing it (their owner is gone)."""
    removed = []
    for base in sorted(glob.glob(BASE_PREFIX + "*")):
        try:
            with open(os.path.join(base, "owner"), encoding="utf-8") as handle:
                owner = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _alive(owner):
            continue
        subprocess.run(["bash", os.path.join(SCRIPTS, "down.sh")], capture_output=True, text=True,
                       timeout=180, env={**os.environ, "SLURM_BASE": base})
        removed.append(base)
    return removed


class Testbed:
    """One running Slurm: its configuration file, nodes and timings."""

    def __init__(self, nodes: int = len(NODES), cgroup: bool = False):
        self.nodes = [f"n{i + 1}" for i in range(nodes)]
        self.base = f"{BASE_PREFIX}{os.getpid()}"
        self.conf = os.path.join(self.base, "slurm.conf")
        self.cgroup = cgroup
        self.up_seconds: float | None = None
        self.down_seconds: float | None = None
        self.kill_wait = 10

    def _run(self, script: str, *args: str, env: dict[str, str], timeout: float) -> str:
        try:
            done = subprocess.run(["bash", os.path.join(SCRIPTS, script), *args], env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise TestbedError(f"{script} took more than {timeout:.0f} s") from err
        if done.returncode != 0:
            raise TestbedError(f"{script} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}".strip())
        return done.stdout

    def up(self) -> str:
        first = free_ports(len(self.nodes) + 1)
        env = {**os.environ, "SLURM_BASE": self.base, "SLURM_CTLD_PORT": str(first),
               "SLURM_NODE_PORT": str(first + 1), "SLURM_KILLWAIT": str(self.kill_wait),
               "SLURM_CGROUP": "1" if self.cgroup else "0"}
        started = time.monotonic()
        out = self._run("up.sh", str(len(self.nodes)), env=env, timeout=900)  # may install packages
        self.up_seconds = time.monotonic() - started
        with open(os.path.join(self.base, "owner"), "w", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        return out

    def down(self) -> str:
        started = time.monotonic()
        try:
            out = self._run("down.sh", env={**os.environ, "SLURM_BASE": self.base}, timeout=300)
        except TestbedError as err:
            # down.sh also fails when it sees Slurm daemons of another testbed of this machine;
            # ours are gone when it removed our state folder (it does so after stopping them).
            if os.path.exists(self.base):
                raise
            out = str(err)
        self.down_seconds = time.monotonic() - started
        return out

    # --- for the tests ----------------------------------------------------------------------

    def command(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run a Slurm client command against this testbed; its stdout."""
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "SLURM_CONF": self.conf})
        if check and done.returncode != 0:
            raise TestbedError(f"{' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def states(self, *job_ids: str) -> dict[str, str]:
        """{job id (123_4): state} of these jobs, or of all the testbed's jobs, from squeue."""
        args = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"]
        if job_ids:
            args += ["-j", ",".join(job_ids)]
        out = self.command(*args)
        return dict(line.split("|", 1) for line in out.split())

    def active_jobs(self) -> list[str]:
        return self.command("squeue", "-h", "-r", "-o", "%i").split()

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job of the testbed and wait until they are gone (a test's leftovers must
        not hold the next test's nodes)."""
        if self.active_jobs():
            self.command("scancel", "-u", str(os.getuid()), check=False)
        deadline = time.monotonic() + timeout
        while self.active_jobs():
            if time.monotonic() > deadline:
                raise TestbedError(f"jobs still there {timeout:.0f} s after scancel: {self.active_jobs()}")
            time.sleep(0.5)

    def wait_for_state(self, job_id: str, states: set[str], timeout: float = 60) -> str:
        """Wait until job ``job_id`` is in one of ``states``; that state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.states(job_id).get(job_id, "")
            if state in states:
                return state
            time.sleep(0.3)
        raise TestbedError(f"job {job_id} is {state or 'gone'}, not {sorted(states)}, after {timeout:.0f} s")
