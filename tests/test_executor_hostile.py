"""The executor against what someone else can plant in a shared root, bad arguments, and a full disk.

Real executors, real worker processes, real files and links, and a real
tmpfs filled to the last byte (as root; skipped elsewhere). The trust model
(README): whoever can write the root but cannot read its secret must not run
code, fail a task, or make ddmq read, write or delete anything outside the root.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time

import pytest

import ddmq
from conftest import mounted_tmpfs, tree
from ddmq.executor import DDMQExecutor
from ddmq.executor.spill import SPILL_DIR, spill_folder

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LONG = 120  # seconds: only reached when something is broken
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, HERE])}


# --- tasks (module level: the workers import this module) ------------------------------

def square(x):
    return x * x


def reverse(data):
    return data[::-1]


def fill_disk(i, folder, gate):
    """Wait for ``gate``, then fill the filesystem of ``folder`` to the last byte
    (with ``folder/ballast``)."""
    from cluster.test_resources import fill_space

    while not os.path.exists(gate):
        time.sleep(0.01)
    fill_space(folder)
    with open(gate + ".filled", "w", encoding="utf-8"):
        pass
    return i


def quick_or_fill(i, folder, gate, fill_at):
    return fill_disk(i, folder, gate) if i == fill_at else i


# --- helpers --------------------------------------------------------------------------------

def wait_for(condition, timeout: float = LONG, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def start_worker(root: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ddmq.worker", root, *args], env=ENV)


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(LONG)


@pytest.fixture
def outside(tmp_path):
    """A folder outside the root, with a file in it that must stay as it is."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "keep").write_bytes(b"keep me")
    return str(path)


# --- refusals -------------------------------------------------------------------------------

def test_a_forged_refusal_is_ignored_and_the_task_still_runs(root, caplog):
    caplog.set_level(logging.ERROR, logger="ddmq.executor.collector")
    with DDMQExecutor(root, max_workers=0) as ex:
        future = ex.submit(square, 7)
        task = future._task_id
        b = ddmq.broker(root)
        forged = [{"v": 2, "task": task, "worker": "evil:1", "rejected": "forged, unsigned"},
                  {"v": 2, "task": task, "worker": "evil:1", "rejected": "forged", "sig": "00" * 32}]
        for body in forged:
            b.publish(ex.reply_queue, [body])  # anyone who can write the root can do this
        wait_for(lambda: b.get_message_list(ex.reply_queue) == ([], []),
                 what="the collector to read the forged refusals")
        wait_for(lambda: caplog.text.count("ignoring a refusal") == 2, what="two log lines")
        assert not future.done()  # not failed by someone who cannot sign
        worker = start_worker(root, "--idle-timeout", "5")
        try:
            assert future.result(timeout=LONG) == 49
        finally:
            stop_worker(worker)


# --- spill folders planted as links ---------------------------------------------------------

def test_a_payloads_folder_planted_as_a_link_is_never_followed(root, outside, caplog):
    before = tree(outside)
    os.symlink(outside, os.path.join(root, SPILL_DIR))
    big = os.urandom(300_000)  # over INLINE_MAX both ways: spill files, were the folder there
    with DDMQExecutor(root, max_workers=1) as ex:
        assert ex.submit(reverse, big).result(timeout=LONG) == big[::-1]
    assert tree(outside) == before  # nothing read, written or deleted there
    assert os.path.islink(os.path.join(root, SPILL_DIR))  # left as it is
    assert "large payloads travel inline" in caplog.text


def test_a_spill_folder_swapped_for_a_link_while_running_is_never_followed(root, outside):
    before = tree(outside)
    big = os.urandom(300_000)
    with DDMQExecutor(root, max_workers=1) as ex:
        assert ex.submit(reverse, big).result(timeout=LONG) == big[::-1]  # the real folder
        folder = spill_folder(root, ex.reply_queue)
        os.rename(folder, folder + ".moved")
        os.symlink(outside, folder)
        assert ex.submit(reverse, big).result(timeout=LONG) == big[::-1]  # inline, both ways
        assert list(ex.map(reverse, [big, b"ab"], chunksize=2)) == [big[::-1], b"ba"]
    assert tree(outside) == before
    assert not os.path.lexists(folder)  # at shutdown the link went, as a name only
    shutil.rmtree(folder + ".moved")


def test_a_spill_folder_of_another_user_is_not_written_into(root, outside):
    big = os.urandom(300_000)
    base = os.path.join(root, SPILL_DIR)
    os.mkdir(base, 0o777)
    os.chown(base, 12345, 12345)  # planted by another user of a group-writable root
    with DDMQExecutor(root, max_workers=1) as ex:
        assert ex.submit(reverse, big).result(timeout=LONG) == big[::-1]
    assert os.listdir(base) == []


def test_stale_spill_folders_planted_as_links_are_pruned_as_names(root, outside):
    before = tree(outside)
    base = os.path.join(root, SPILL_DIR)
    os.makedirs(base, mode=0o700)
    link = os.path.join(base, "reply-gone-1-abcd")
    os.symlink(outside, link)
    old = time.time() - 7200
    os.utime(link, (old, old), follow_symlinks=False)
    with DDMQExecutor(root, max_workers=0):
        pass
    assert not os.path.lexists(link)
    assert tree(outside) == before


# --- arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["", "   ", b"", None, 3, "a\0b"], ids=repr)
def test_a_root_that_is_not_a_folder_path_is_refused_before_anything_changes(tmp_path, monkeypatch,
                                                                                bad):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ddmq.InvalidRootError) as caught:
        DDMQExecutor(bad, max_workers=0)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ddmq.DdmqError)
    assert "root" in str(caught.value)
    assert os.listdir(tmp_path) == []  # the current folder was not made a root


def test_a_root_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "a-file"
    path.write_bytes(b"data")
    with pytest.raises(ddmq.InvalidRootError, match="not a folder"):
        DDMQExecutor(str(path), max_workers=0)
    assert os.listdir(tmp_path) == ["a-file"] and path.read_bytes() == b"data"


# --- a full disk ------------------------------------------------------------------------------

NO_REUSE_WORKER = r"""
import sys
from ddmq import reuse
reuse.REUSE_FILESYSTEMS = frozenset()  # as on a network filesystem: every file is new
from ddmq.executor.worker_cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_map_finishes_when_space_returns_without_waiting_out_the_lease(tmp_path, monkeypatch):
    """The worker runs batches of quick tasks (up to 16 per claim); one task fills the disk,
    so that neither the results nor a give-back can be written; space comes back a few
    seconds later. With a lease of an hour, the map completes within the test's bound only
    if the worker keeps trying as the filesystem recovers. Files are not reused (as on a
    network filesystem, and as in the trial): a spare would need no new space."""
    monkeypatch.setattr(ddmq.reuse, "REUSE_FILESYSTEMS", frozenset())
    with mounted_tmpfs(str(tmp_path / "small"), "size=8m") as mount:
        root = os.path.join(mount, "root")
        ballast = os.path.join(mount, "ballast")
        gate = str(tmp_path / "gate")
        log_path = tmp_path / "worker.log"
        n, fill_at = 200, 60
        ex = DDMQExecutor(root, max_workers=0, lease=3600)
        with open(log_path, "w") as log:
            worker = subprocess.Popen([sys.executable, "-c", NO_REUSE_WORKER, root, "-v"],
                                      stderr=log, env=ENV)
        try:
            results = ex.map(quick_or_fill, range(n), [mount] * n, [gate] * n,
                             [fill_at] * n, chunksize=1, timeout=LONG)
            with open(gate, "w", encoding="utf-8"):  # every task is published: fill now
                pass
            wait_for(lambda: os.path.exists(gate + ".filled"), what="the disk to be full")
            wait_for(lambda: "trying again" in log_path.read_text(), what="a failed publish")
            time.sleep(3)  # results and give-backs fail meanwhile
            freed = time.monotonic()
            os.unlink(ballast)
            assert list(results) == list(range(n))
            print(f"\n[figure] full disk: the map completed {time.monotonic() - freed:.2f} s "
                  "after space came back", file=sys.stderr)
            ex.shutdown(wait=True)
        finally:
            ex.shutdown(wait=False, cancel_futures=True)  # failed: never wait out the lease
            stop_worker(worker)
        assert ddmq.broker(root).get_message_list("tasks") == ([], [])
    text = log_path.read_text()
    assert "No space left" in text and "the filesystem has room again" in text
