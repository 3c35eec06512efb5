"""Shared fixtures and helpers: fresh ddmq roots in real temporary folders,
real tmpfs mounts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

import ddmq


@pytest.fixture
def root(tmp_path) -> str:
    """Path of a new, initiated ddmq root."""
    path = tmp_path / "root"
    ddmq.broker(path, create=True)
    return str(path)


@contextlib.contextmanager
def mounted_tmpfs(path: str, options: str):
    """A real tmpfs mounted at ``path`` (made here) with mount ``options``;
    skips the test where mounting is not allowed (not root)."""
    os.makedirs(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=True)


def run_as_unprivileged(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -c code args`` so that folder permissions apply to it: as
    root, without the capabilities that override them (setpriv)."""
    command = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(ddmq.__file__)))
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": repo})


def populate(root: str | os.PathLike) -> dict[str, str]:
    """Make ``root`` with queue q holding a waiting message, one at work and a
    dead letter; returns the names of the last two ("work", "dead")."""
    b = ddmq.broker(root, create=True)
    b.create_queue("q")
    b.publish("q", "at work")
    work = b.consume("q").filename
    b.publish("q", "to reject")
    dead = b.reject(b.consume("q"))
    b.publish("q", "waiting")
    return {"work": work, "dead": dead}


@pytest.fixture
def b(root) -> ddmq.Broker:
    """A broker on a root that has one queue, ``q``."""
    broker = ddmq.broker(root)
    broker.create_queue("q")
    return broker


def expire(broker: ddmq.Broker, queue: str, name: str, seconds_ago: int = 10) -> str:
    """Make the lease of work file ``name`` end in the past, as if time passed."""
    work = os.path.join(broker.root, queue, "work")
    rest = name.partition(".")[2]
    new = f"{int(broker.clock.now()) - seconds_ago}.{rest}"
    os.rename(os.path.join(work, name), os.path.join(work, new))
    return new


def tree(path: str) -> dict[str, bytes]:
    """Every file under ``path`` with its content, to prove nothing changed."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            with open(full, "rb") as handle:
                out[os.path.relpath(full, path)] = handle.read()
    return out
