"""SpillStore: spill files written whole, read, released as spares (a bounded number), removed.

Real folders under ``tmp_path`` (a local filesystem, where released files are
kept as spares); no mocks.
"""

from __future__ import annotations

import os
import time

import pytest

from ddmq import reuse
from ddmq.errors import UnsafeFileError
from ddmq.executor import spill
from ddmq.executor.errors import PayloadMissingError
from ddmq.executor.spill import SPARE_SIZE_MAX, SPARES_MAX, SpillStore, payload_path, read_payload
from ddmq.layout import is_spare

REPLY = "reply-host-1-abcd"


@pytest.fixture
def store(tmp_path):
    if reuse.filesystem_type(str(tmp_path)) not in reuse.REUSE_FILESYSTEMS:
        pytest.skip("spares are kept on local filesystems only")
    return SpillStore(tmp_path)


def write(store: SpillStore, name: str, data: bytes, reply: str = REPLY) -> str:
    writer = store.writer(reply, name)
    writer.write(data[: len(data) // 2])
    writer.write(memoryview(data)[len(data) // 2:])  # buffers are taken too
    writer.commit()
    return writer.path


def names(folder: str) -> list[str]:
    return sorted(os.listdir(folder))


def test_a_file_appears_whole_under_its_name_only_at_commit(store):
    folder = store.create(REPLY)
    writer = store.writer(REPLY, "t.1.task.x")
    writer.write(b"abc")
    assert names(folder) == [".tmp-t.1.task.x"]  # a name no reader is given
    writer.commit()
    assert names(folder) == ["t.1.task.x"]
    assert read_payload(writer.path, "t.1") == b"abc"
    assert store.file_of({"file": "t.1.task.x"}, REPLY) == writer.path


def test_a_discarded_file_leaves_nothing(store):
    folder = store.create(REPLY)
    writer = store.writer(REPLY, "t.1.task.x")
    writer.write(b"abc")
    writer.discard()
    assert names(folder) == []


def test_a_released_file_is_rewritten_for_the_next_payload_and_cut_to_size(store):
    folder = store.create(REPLY)
    path = write(store, "t.1.result.a", b"x" * 5000)
    inode = os.stat(path).st_ino
    store.release(path)
    (spare,) = names(folder)
    assert is_spare(spare)
    path = write(store, "t.2.result.b", b"short")
    assert os.stat(path).st_ino == inode and names(folder) == ["t.2.result.b"]
    assert read_payload(path, "t.2") == b"short"


def test_spares_are_bounded_per_folder_and_large_files_are_not_kept(store):
    folder = store.create(REPLY)
    paths = [write(store, f"t.{i}.result.a", b"data") for i in range(SPARES_MAX + 3)]
    for path in paths:
        store.release(path)
    assert len(names(folder)) == SPARES_MAX  # the rest were removed
    big = write(store, "t.big.result.a", b"x")
    os.truncate(big, SPARE_SIZE_MAX + 1)  # sparse: large without writing it
    store.release(big)
    assert len(names(folder)) == SPARES_MAX - 1  # one spare rewritten for it, then removed
    assert not os.path.exists(big)


def test_discard_releases_the_file_an_envelope_names(store):
    folder = store.create(REPLY)
    write(store, "t.1.result.a", b"data")
    store.discard({"file": "t.1.result.a"}, REPLY)
    assert [n for n in names(folder) if not is_spare(n)] == []
    store.discard({"payload": "inline"}, REPLY)  # nothing to release
    store.discard("not an envelope", REPLY)


def test_names_from_messages_cannot_leave_the_folder(tmp_path):
    for bad in ("../x", "a/b", ".hidden", "", None, 3, "x" * 300):
        assert payload_path(str(tmp_path), bad) is None
    assert payload_path(None, "t.1.task.x") is None
    assert payload_path(str(tmp_path), "t.1.task.x") == str(tmp_path / "t.1.task.x")


def test_a_writer_in_a_missing_folder_raises(tmp_path):
    with pytest.raises(OSError):
        SpillStore(tmp_path).writer("reply-gone", "t.1.task.x")


def test_a_missing_file_is_waited_for_then_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "SPILL_WAIT", 0.2)
    started = time.monotonic()
    with pytest.raises(PayloadMissingError, match="t.9"):
        read_payload(str(tmp_path / "gone"), "t.9")
    assert 0.2 <= time.monotonic() - started < 5


def test_an_empty_file_is_read_at_once(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    started = time.monotonic()
    assert read_payload(str(tmp_path / "empty"), "t.1") == b""
    assert time.monotonic() - started < 1


def test_remove_deletes_the_folder_and_prune_only_stale_folders_of_gone_executors(store, tmp_path):
    for reply in ("reply-live", "reply-dead-old", "reply-dead-new", REPLY):
        store.create(reply)
    write(store, "t.1.task.a", b"data", reply=REPLY)
    store.remove(REPLY)
    assert not os.path.exists(store.folder(REPLY))
    old = time.time() - 7200
    os.utime(store.folder("reply-dead-old"), (old, old))
    os.utime(store.folder("reply-live"), (old, old))
    assert store.prune(["reply-live"]) == [store.folder("reply-dead-old")]
    assert names(os.path.join(str(tmp_path), spill.SPILL_DIR)) == ["reply-dead-new", "reply-live"]


def test_a_planted_hard_link_under_a_spare_name_is_never_written_through(store, tmp_path):
    folder = store.create(REPLY)
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    os.link(outside, os.path.join(folder, "spare.planted"))
    path = write(store, "t.1.task.a", b"payload")
    assert outside.read_bytes() == b"keep me"
    assert read_payload(path, "t.1") == b"payload"
    assert names(folder) == ["t.1.task.a"]  # the planted name was dropped, not written


def test_a_link_or_fifo_is_not_read(tmp_path):
    (tmp_path / "target").write_bytes(b"secret stuff")
    os.symlink(tmp_path / "target", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    for name in ("link", "fifo"):
        with pytest.raises(UnsafeFileError):
            read_payload(str(tmp_path / name), "t.1")
