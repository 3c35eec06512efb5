"""Shared fixtures: a fresh ddmq root in a real temporary folder."""

from __future__ import annotations

import os

import pytest

import ddmq


@pytest.fixture
def root(tmp_path) -> str:
    """Path of a new, initiated ddmq root."""
    path = tmp_path / "root"
    ddmq.broker(path, create=True)
    return str(path)


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
