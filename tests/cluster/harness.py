"""The cluster harness: a GlusterFS "cluster" on this machine, its faults, and client processes.

``Cluster.up()`` runs ``testbed.sh up`` (next to this file), which builds, as root::

    netns <tag>-srv : glusterd + brick   (volume "ddmq", on a private /24 of its own)
    netns <tag>-a   : FUSE client  ->  <state>/mnt/a      "node a"
    netns <tag>-b   : FUSE client  ->  <state>/mnt/b      "node b"
    netns <tag>-c   : FUSE client  ->  <state>/mnt/c      "node c"

Each node is one mount with its own client process, caches and TCP connection; a process "on
node b" is any process that uses ``<state>/mnt/b``. ``Cluster.down()`` stops exactly the
processes ``up`` started and deletes exactly its namespaces and state folder.

Faults (each a ``testbed.sh`` command): ``partition``/``heal`` a node, ``pause_server`` (SIGSTOP
the brick: I/O blocks), ``restart_server`` / ``kill_server`` + ``start_server`` (I/O fails with
ENOTCONN until the client reconnects), and clock skew for chosen processes with the
``libfaketime.so.1`` of PyPI's wheel (:meth:`Cluster.skewed_env`).

:class:`Agents` starts ``agent.py`` roles as real subprocesses on chosen nodes and reads their
logs. :func:`precondition_problem` says why the cluster cannot run here (tests then skip).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Iterable

import ddmq

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(HERE, "testbed.sh")
AGENT = os.path.join(HERE, "agent.py")
STATE_BASE = "/var/tmp/ddmq-cluster"
#: Figures measured by the tests: name -> {figure: value}; printed at the end of the run.
FIGURES: dict[str, dict] = {}
PACKAGES = ("glusterfs-server", "glusterfs-client", "fuse3", "iproute2", "util-linux", "strace")


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                          capture_output=True, text=True)
    return done.returncode == 0 and "install ok installed" in done.stdout


def precondition_problem() -> str | None:
    """Why the cluster cannot be built on this machine, or None if it can be tried."""
    if sys.platform != "linux":
        return f"needs Linux (network namespaces, FUSE), not {sys.platform}"
    if os.geteuid() != 0:
        return "needs root (network namespaces, FUSE mounts); run as root to include them"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: FUSE is not available in this machine or container"
    if shutil.which("dpkg-query") is None:
        return "not a Debian system (the testbed installs Debian's glusterfs packages)"
    missing = [p for p in PACKAGES if not _installed(p)]
    if missing and shutil.which("apt-get") is None:
        return f"packages {', '.join(missing)} are missing and apt-get is unavailable"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_clusters() -> list[str]:
    """Tear down clusters left by earlier test sessions that died without cleaning up (their
    owner process is gone). ``testbed.sh down`` stops only processes whose command line names
    that cluster's own state folder, so nothing else is touched."""
    removed = []
    if not os.path.isdir(STATE_BASE):
        return removed
    for name in sorted(os.listdir(STATE_BASE)):
        state = os.path.join(STATE_BASE, name)
        try:
            with open(os.path.join(state, "owner"), encoding="utf-8") as handle:
                owner = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _alive(owner):
            continue
        subprocess.run(["bash", SCRIPT, "down"], env={**os.environ, "DDMQ_CLUSTER_STATE": state},
                       capture_output=True, text=True, timeout=180)
        removed.append(state)
    return removed


class TestbedError(RuntimeError):
    """A testbed.sh command failed."""


class Cluster:
    """One running testbed: its nodes' mount points and its fault switches."""

    def __init__(self, nodes: Iterable[str] = ("a", "b", "c"), tag: str | None = None):
        self.tag = tag or f"dqc{os.getpid() % 100000}"
        self.state = os.path.join(STATE_BASE, self.tag)
        self.nodes = list(nodes)
        self.mounts = {n: os.path.join(self.state, "mnt", n) for n in self.nodes}
        self.env = {**os.environ, "DDMQ_CLUSTER_STATE": self.state, "DDMQ_CLUSTER_TAG": self.tag,
                    "DDMQ_CLUSTER_NODES": " ".join(self.nodes), "PYTHON": sys.executable}
        self.faketime_lib: str | None = None
        self.up_seconds: float | None = None
        self.faults: list[dict[str, Any]] = []   # every fault fired, with its times

    # --- life cycle ----------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(["bash", SCRIPT, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise TestbedError(f"testbed.sh {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}".strip())
        return done.stdout.strip()

    def up(self) -> None:
        started = time.monotonic()
        out = self.run("up", timeout=900)  # the first run installs packages (apt, pip)
        # Mark the cluster as this process's, so a later session can tell it is stale if we die.
        with open(os.path.join(self.state, "owner"), "w", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        self.faketime_lib = self.run("faketime-lib").splitlines()[-1]
        self.up_seconds = time.monotonic() - started
        assert all(os.path.ismount(m) for m in self.mounts.values()), out

    def down(self) -> str:
        return self.run("down", timeout=300)

    def path(self, node: str, *parts: str) -> str:
        """``parts`` as seen through ``node``'s mount."""
        return os.path.join(self.mounts[node], *parts)

    # --- faults ----------------------------------------------------------------------------

    def server_pids(self) -> tuple[int, int]:
        """(glusterd, brick) PIDs."""
        glusterd, brick = self.run("server-pids").split()
        return int(glusterd), int(brick)

    def _fault(self, kind: str, *args: str, timeout: float = 120) -> dict[str, Any]:
        record: dict[str, Any] = {"fault": kind, "args": list(args), "start": time.time()}
        record["pids_before"] = self.server_pids()
        self.run(kind, *args, timeout=timeout)
        record["end"] = time.time()
        record["pids_after"] = self.server_pids()
        self.faults.append(record)
        return record

    def pause_server(self, seconds: float) -> dict[str, Any]:
        """SIGSTOP the brick for ``seconds``, then SIGCONT it (returns when it runs again)."""
        return self._fault("pause-server", str(seconds))

    def restart_server(self, down_seconds: float, sig: str = "TERM") -> dict[str, Any]:
        """Stop glusterd and the brick with ``sig``, wait, start them; returns when the brick is
        up again (clients reconnect about 1-5 s later)."""
        return self._fault("restart-server", str(down_seconds), sig)

    def kill_server(self, sig: str = "KILL") -> dict[str, Any]:
        return self._fault("kill-server", sig)

    def start_server(self) -> dict[str, Any]:
        return self._fault("start-server")

    def partition(self, node: str) -> None:
        self.run("partition", node)

    def heal(self, node: str) -> None:
        self.run("heal", node)

    def recover(self) -> None:
        """Undo whatever faults a test left: heal every node, resume or restart the server,
        and wait until every mount answers."""
        self.run("recover")
        self.wait_usable()

    def wait_usable(self, timeout: float = 60) -> float:
        """Block until every mount answers again; the seconds it took."""
        started = time.monotonic()
        for mount in self.mounts.values():
            while True:
                try:
                    os.listdir(mount)
                    break
                except OSError:
                    if time.monotonic() - started > timeout:
                        raise
                    time.sleep(0.1)
        return time.monotonic() - started

    # --- the file server's own counters -------------------------------------------------------

    def profile_start(self) -> None:
        """Turn on the brick's per-operation counters (gluster volume profile)."""
        self.run("profile", "start")

    def profile_interval(self) -> dict[str, int]:
        """Operations (FOPs) the brick served since the previous call, by name."""
        return parse_profile(self.run("profile", "interval"))

    # --- clock skew --------------------------------------------------------------------------

    def skewed_env(self, offset: str, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a process whose clock is ``offset`` (e.g. "+300s") off.

        Uses PyPI's libfaketime.so.1 (Debian's 0.9.10 breaks Python 3.11's time.sleep and
        monotonic clock); monotonic time stays real, so sleeps and timeouts keep their length."""
        assert self.faketime_lib, "the cluster is not up"
        env = dict(base if base is not None else os.environ)
        env.update(LD_PRELOAD=self.faketime_lib, FAKETIME=offset, FAKETIME_DONT_FAKE_MONOTONIC="1")
        return env


_PROFILE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+ ns\s+[\d.]+ ns\s+[\d.]+ ns\s+(\d+)\s+([A-Z_]+)\s*$")


def parse_profile(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = _PROFILE_ROW.match(line)
        if match:
            counts[match.group(2)] = counts.get(match.group(2), 0) + int(match.group(1))
    return counts


# --- client processes ----------------------------------------------------------------------------

class Agents:
    """``agent.py`` processes of one test, each with a name, a node and a log file. Kills
    whatever is still running when the test ends."""

    def __init__(self, logs: str):
        self.logs = logs
        os.makedirs(logs, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> str:
        return os.path.join(self.logs, f"{name}.log")

    def start(self, name: str, role: str, env: dict[str, str] | None = None,
              stdin: Any = subprocess.DEVNULL, stdout: Any = None, **args: Any) -> subprocess.Popen:
        args.setdefault("log", self.log(name))
        env = dict(env if env is not None else os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        if stdout is None:  # the agent's own output (a crash before its log opens) to NAME.out
            with open(os.path.join(self.logs, f"{name}.out"), "wb") as out:
                proc = subprocess.Popen([sys.executable, AGENT, role, json.dumps(args)], env=env,
                                        stdin=stdin, stdout=out, stderr=subprocess.STDOUT)
        else:
            proc = subprocess.Popen([sys.executable, AGENT, role, json.dumps(args)], env=env,
                                    stdin=stdin, stdout=stdout)
        self.procs[name] = proc
        return proc

    def wait(self, names: Iterable[str] | None = None, timeout: float = 120) -> None:
        """Wait for the named agents (default: all); each must exit 0."""
        names = list(self.procs) if names is None else list(names)
        wait_all([self.procs[name] for name in names], timeout)
        hung = [n for n in names if self.procs[n].poll() is None]
        assert not hung, f"agents still running after {timeout}s: {hung}"
        failed = {n: self.error(n) for n in names if self.procs[n].returncode != 0}
        assert not failed, f"agents failed: {failed}"

    def error(self, name: str) -> str:
        """What a failed agent left: its traceback (LOG.err), else its output."""
        for path in (self.log(name) + ".err", os.path.join(self.logs, f"{name}.out")):
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    text = handle.read().strip()
            except FileNotFoundError:
                continue
            if text:
                return f"exit {self.procs[name].returncode}: {text[-3000:]}"
        return f"exit {self.procs[name].returncode}, no output"

    def events(self, name: str) -> list[list[str]]:
        """The complete event lines of an agent's log, split into fields (no summary)."""
        return [f for f in read_log(self.log(name)) if f[0] != "S"]

    def summary(self, name: str) -> dict[str, Any]:
        """The agent's closing summary (see agent.py)."""
        for fields in reversed(read_log(self.log(name))):
            if fields[0] == "S":
                return json.loads(" ".join(fields[1:]))
        raise AssertionError(f"agent {name} wrote no summary: {self.error(name)}")

    def close(self) -> None:
        kill_all(self.procs.values())


def wait_all(procs: Iterable[subprocess.Popen], timeout: float) -> None:
    """Wait for the processes to exit, ``timeout`` seconds for all of them together."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def kill_all(procs: Iterable[subprocess.Popen]) -> None:
    """SIGKILL the processes still running, and reap them."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


def read_log(path: str) -> list[list[str]]:
    """Complete lines of an agent's log, split into fields (a torn last line is dropped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.split("\n")[:-1] if line]


def new_root(cluster: Cluster, name: str, node: str = "a", **queues: dict) -> tuple[str, ddmq.Broker]:
    """A fresh ddmq root on the shared volume; returns its path relative to a mount and a
    broker on it through ``node``. ``queues`` maps queue names to their settings."""
    rel = f"{name}-{uuid.uuid4().hex[:6]}"
    b = ddmq.broker(cluster.path(node, rel), create=True)
    for queue, settings in queues.items():
        b.create_queue(queue)
        if settings:
            b.update_settings_file(queue, settings)
    return rel, b


def record(name: str, **figures) -> None:
    """Keep a measured figure for the summary at the end of the run (and DDMQ_CLUSTER_FIGURES)."""
    FIGURES.setdefault(name, {}).update(figures)
    print(f"\n[figure] {name}: {json.dumps(figures, default=str)}")


def touch(path: str) -> None:
    with open(path, "w", encoding="utf-8"):
        pass


# --- executor workers, their tasks, and the executor's own log (scenarios 1, 2, 5) ---------------

class Workers:
    """``python -m ddmq.worker ROOT -vv`` processes of one test, each on one node's mount, with
    its log (stdout and stderr) in ``LOGS/NAME.log``. Each gets ``DDMQ_TEST_NODE=NODE`` in its
    environment, so the tasks of :func:`recording_task` can say where they ran. Kills whatever
    is still running when the test ends."""

    def __init__(self, logs: str):
        self.logs = logs
        os.makedirs(logs, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.nodes: dict[str, str] = {}

    def log(self, name: str) -> str:
        return os.path.join(self.logs, f"{name}.log")

    def start(self, name: str, node: str, root: str, *args: str) -> subprocess.Popen:
        assert name not in self.procs, f"worker {name} started twice"
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["DDMQ_TEST_NODE"] = node
        with open(self.log(name), "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "ddmq.worker", root, "-vv", *args],
                                    env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs[name] = proc
        self.nodes[name] = node
        return proc

    def running(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30) -> int:
        """Send ``sig`` to the worker and wait for it; its exit status (-9 after SIGKILL)."""
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait(timeout)

    def stop(self, names: Iterable[str] | None = None, timeout: float = 60) -> dict[str, int]:
        """SIGTERM the named workers (default: those running) and wait; their exit statuses."""
        names = self.running() if names is None else list(names)
        for name in names:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        wait_all([self.procs[name] for name in names], timeout)
        return {name: self.procs[name].returncode for name in names}

    def text(self, name: str) -> str:
        try:
            with open(self.log(name), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def by_pid(self) -> dict[int, str]:
        return {p.pid: n for n, p in self.procs.items()}

    def close(self) -> None:
        kill_all(self.procs.values())


#: Worker log lines that say the worker was told its lease was lost (ddmq/worker.py).
LEASE_LOST_LINES = ("lost the lease of task", "lease already lost at ack", "ran past a lost lease")


def recording_task(runs: str):
    """A task function for the executor tests: ``task(key, value, seconds=0)`` notes its start
    and end (``S|E KEY NODE PID TIME``, one ``os.write`` each) in ``RUNS/NODE.PID`` on this
    machine's local disk, sleeps ``seconds``, and returns ``(value * value, NODE, PID)``.

    It is a closure, so the executor sends it by value (cloudpickle): workers need not import
    the test modules. ``NODE`` comes from the worker's ``DDMQ_TEST_NODE`` (see :class:`Workers`).
    The notes are on local disk, not the shared volume, so a partitioned node can still write
    them."""

    def task(key, value, seconds=0.0):
        import os as _os
        import time as _time
        node = _os.environ.get("DDMQ_TEST_NODE", "?")
        pid = _os.getpid()
        fd = _os.open(_os.path.join(runs, f"{node}.{pid}"), _os.O_WRONLY | _os.O_CREAT | _os.O_APPEND,
                      0o644)
        try:
            _os.write(fd, f"S {key} {node} {pid} {_time.time():.3f}\n".encode())
            if seconds:
                _time.sleep(seconds)
            _os.write(fd, f"E {key} {node} {pid} {_time.time():.3f}\n".encode())
        finally:
            _os.close(fd)
        return value * value, node, pid

    return task


def read_runs(runs: str) -> list[tuple[str, str, str, int, float]]:
    """Every note of :func:`recording_task` in ``runs``: (S|E, key, node, pid, time), by time."""
    notes = []
    for name in os.listdir(runs):
        for fields in read_log(os.path.join(runs, name)):
            if len(fields) == 5:
                notes.append((fields[0], fields[1], fields[2], int(fields[3]), float(fields[4])))
    notes.sort(key=lambda n: n[4])
    return notes


class LogCapture(logging.Handler):
    """Records of a logger (default ``ddmq``: the executor's collector and housekeeping in this
    process), as (time, logger name, level name, message). Use as a context manager."""

    def __init__(self, logger: str = "ddmq", level: int = logging.INFO):
        super().__init__(level)
        self.logger = logging.getLogger(logger)
        self.records: list[tuple[float, str, str, str]] = []
        self._old_level = self.logger.level

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break the test
            text = str(record.msg)
        self.records.append((record.created, record.name, record.levelname, text))

    def lines(self, containing: str) -> list[tuple[float, str, str, str]]:
        return [r for r in list(self.records) if containing in r[3]]

    def __enter__(self) -> "LogCapture":
        self.logger.addHandler(self)
        if self.logger.level == logging.NOTSET or self.logger.level > self.level:
            self.logger.setLevel(self.level)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._old_level)


@contextlib.contextmanager
def executor(root: str, **kwargs: Any):
    """A DDMQExecutor on ``root``. Shut down waiting for its futures if the block succeeded;
    else without waiting and with its waiting tasks cancelled (workers may be gone)."""
    from ddmq.executor import DDMQExecutor
    ex = DDMQExecutor(root, **kwargs)
    ok = False
    try:
        yield ex
        ok = True
    finally:
        ex.shutdown(wait=ok, cancel_futures=not ok)


def wait_for(predicate, timeout: float, pause: float = 0.05, what: str = "a condition") -> float:
    """Poll ``predicate`` until it is true; the seconds it took. AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(pause)
    return time.monotonic() - started
