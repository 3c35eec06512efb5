"""Fixtures of the cluster tests: the GlusterFS testbed (once per session), client processes,
and the figures the tests measure.

The tests that use the ``cluster`` fixture are marked ``cluster`` (select them with
``-m cluster``, leave them out with ``-m 'not cluster'``). They run by default where the
testbed can be built: as root on Debian with /dev/fuse; elsewhere they skip and say why.
``DDMQ_CLUSTER=skip`` skips them anyway. When bring-up fails although it could run, the tests
fail in CI (``CI=true``) or with ``DDMQ_CLUSTER=require``, and skip with the reason otherwise.
``DDMQ_CLUSTER_FIGURES=FILE`` writes the measured figures to FILE as JSON.
"""

from __future__ import annotations

import json
import os

import pytest

from .harness import (FIGURES, HERE, Agents, Cluster, TestbedError, Workers, precondition_problem,
                      record, remove_stale_clusters)


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs the GlusterFS testbed of tests/cluster "
                                       "(root, /dev/fuse, Debian packages)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()) and str(item.path).startswith(HERE):
            item.add_marker(pytest.mark.cluster)


def _must_run() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or \
        os.environ.get("DDMQ_CLUSTER") == "require"


@pytest.fixture(scope="session")
def cluster():
    """Three nodes a, b, c sharing one GlusterFS volume (see harness.py); up for the session."""
    if os.environ.get("DDMQ_CLUSTER") == "skip":
        pytest.skip("DDMQ_CLUSTER=skip")
    problem = precondition_problem()
    if problem:
        pytest.skip(f"cluster testbed: {problem}")
    remove_stale_clusters()
    testbed = Cluster()
    try:
        testbed.up()
    except (TestbedError, OSError) as err:
        if _must_run():
            pytest.fail(f"cluster testbed did not come up: {err}")
        pytest.skip(f"cluster testbed did not come up: {err}")
    record("bring-up", seconds=round(testbed.up_seconds or 0, 1), nodes=testbed.nodes)
    try:
        yield testbed
    finally:
        testbed.down()


@pytest.fixture(autouse=True)
def _recovered_cluster(request):
    """After each test that used the cluster, undo the faults it may have left (a failed test
    can leave a node cut off or the server down)."""
    yield
    testbed = getattr(request.node, "funcargs", {}).get("cluster")
    if testbed is not None:
        testbed.recover()


@pytest.fixture
def agents(tmp_path):
    group = Agents(str(tmp_path / "agents"))
    yield group
    group.close()


@pytest.fixture
def workers(tmp_path):
    group = Workers(str(tmp_path / "workers"))
    yield group
    group.close()


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("ddmq cluster figures")
    for name, figures in FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(figures, default=str)}")
    path = os.environ.get("DDMQ_CLUSTER_FIGURES")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(FIGURES, handle, indent=1, default=str)
        terminalreporter.write_line(f"(written to {path})")
