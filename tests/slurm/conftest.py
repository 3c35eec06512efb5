"""Fixtures of the Slurm tests: a real Slurm with three fake nodes (once per session), roots
its jobs can use, and the figures the tests measure.

The tests that use the ``slurm`` fixture are marked ``slurm`` (select them with ``-m slurm``,
leave them out with ``-m 'not slurm'``); the one that waits for a real time limit is also
marked ``slurm_walltime`` (about 90 s; ``-m 'not slurm_walltime'`` leaves it out). They run by
default where the testbed can be built: as root on Debian (``testbed.py`` says what it needs);
elsewhere they skip and say why. ``DDMQ_SLURM=skip`` skips them anyway. When bring-up fails
although it could run, they fail in CI (``CI=true``) or with ``DDMQ_SLURM=require``, and skip
with the reason otherwise. The testbed comes up with cgroups (``--mem`` enforced, which the
out-of-memory test needs) where cgroup v1 is there and no other Slurm runs (``testbed.cgroup_wanted``);
``DDMQ_SLURM_CGROUP=1`` or ``0`` decides instead. ``DDMQ_SLURM_FIGURES=FILE`` writes the measured
figures to FILE as JSON.
"""

from __future__ import annotations

import json
import os

import pytest

from .testbed import (FIGURES, HERE, Testbed, TestbedError, cgroup_wanted, precondition_problem,
                      record, remove_stale)


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the Slurm testbed of tests/slurm "
                                       "(root, Debian's slurm-wlm and munge packages)")
    config.addinivalue_line("markers", "slurm_walltime: waits for a real Slurm time limit "
                                       "(about 90 s)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()) and str(item.path).startswith(HERE):
            item.add_marker(pytest.mark.slurm)


def _must_run() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or \
        os.environ.get("DDMQ_SLURM") == "require"


@pytest.fixture(scope="session")
def slurm():
    """Slurm 22.05 with nodes n1, n2, n3 on this host; ``SLURM_CONF`` set for the session."""
    if os.environ.get("DDMQ_SLURM") == "skip":
        pytest.skip("DDMQ_SLURM=skip")
    problem = precondition_problem()
    if problem:
        pytest.skip(f"Slurm testbed: {problem}")
    remove_stale()
    testbed = Testbed(cgroup=cgroup_wanted())
    try:
        testbed.up()
    except (TestbedError, OSError) as err:
        try:
            testbed.down()
        except (TestbedError, OSError):
            pass
        if _must_run():
            pytest.fail(f"Slurm testbed did not come up: {err}")
        pytest.skip(f"Slurm testbed did not come up: {err}")
    record("testbed", up_seconds=round(testbed.up_seconds or 0, 1), nodes=testbed.nodes,
           cgroup=testbed.cgroup)
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = testbed.conf
    try:
        yield testbed
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        testbed.down()
        record("testbed", down_seconds=round(testbed.down_seconds or 0, 1))


@pytest.fixture(autouse=True)
def _no_jobs_left(request):
    """After each test that used the testbed, cancel whatever jobs it left (a failed test can
    leave workers holding the nodes the next test needs)."""
    yield
    testbed = getattr(request.node, "funcargs", {}).get("slurm")
    if testbed is not None:
        testbed.cancel_all()


@pytest.fixture
def slurm_root(slurm, tmp_path) -> str:
    """A path for a ddmq root that the jobs can use (every fake node is this host, and jobs run
    as the submitting user, so any local folder is shared): not made yet."""
    return str(tmp_path / "root")


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("ddmq Slurm figures")
    for name, figures in FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(figures, default=str)}")
    path = os.environ.get("DDMQ_SLURM_FIGURES")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(FIGURES, handle, indent=1, default=str)
        terminalreporter.write_line(f"(written to {path})")
