"""The broker's contract in one process: ordering, leases, requeue, dead letters, errors."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time

import pytest

import ddmq
from ddmq import protocol, reading, reuse
from ddmq.layout import WorkName
from conftest import expire, mounted_tmpfs, run_as_unprivileged, tree

from ddmq import housekeeping as housekeeping_module, root as root_module


def drain(broker, queue="q"):
    out = []
    while (msg := broker.consume(queue)) is not None:
        out.append(msg.message)
        broker.ack(msg)
    return out


# --- root and queues -------------------------------------------------------------------

def test_root_missing_and_uninitiated(tmp_path):
    with pytest.raises(ddmq.RootMissingError):
        ddmq.broker(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ddmq.RootUninitiatedError):
        ddmq.broker(tmp_path / "empty")
    assert not os.listdir(tmp_path / "empty")


def test_created_root_is_private(tmp_path):
    ddmq.broker(tmp_path / "r", create=True)
    assert stat.S_IMODE(os.stat(tmp_path / "r").st_mode) == 0o700
    assert (tmp_path / "r" / "ddmq.yaml").is_file()


def test_seed_python_example_runs_unchanged(tmp_path):
    b = ddmq.broker(str(tmp_path / "ddmq"), create=True)
    b.publish(queue="queue_name", msg_text="Hello World!")
    msg = b.consume(queue="queue_name")
    assert msg.message == "Hello World!"
    assert b.ack(msg) == [msg.filename]


def test_create_list_delete_queue(root):
    b = ddmq.broker(root)
    assert b.list_queues() == []
    assert b.create_queue("b") and b.create_queue("a") and b.create_queue("a")
    assert b.list_queues() == ["a", "b"]
    b.publish("a", "x")
    b.consume("b")  # an empty queue is fine
    assert b.delete_queue("a")
    assert b.list_queues() == ["b"]
    with pytest.raises(ddmq.QueueNotFoundError):
        b.delete_queue("a")


def test_delete_queue_refuses_foreign_files(b):
    foreign = os.path.join(b.root, "q", "notes.txt")
    open(foreign, "w").close()
    with pytest.raises(ddmq.FilesystemError):
        b.delete_queue("q")
    assert os.path.exists(foreign) and b.queue_exists("q")


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a b", "q\x00", "é", "/abs", "a.b", 5, None])
def test_invalid_queue_names_never_touch_disk(root, name):
    b = ddmq.broker(root, create=True)
    before = tree(os.path.dirname(root))
    for call in (lambda: b.create_queue(name), lambda: b.publish(name, "x"),
                 lambda: b.consume(name), lambda: b.purge_queue(name), lambda: b.delete_queue(name),
                 lambda: b.clean(name)):
        with pytest.raises(ddmq.InvalidNameError):
            call()
    assert tree(os.path.dirname(root)) == before


def test_missing_queue(root):
    b = ddmq.broker(root)
    for call in (lambda: b.publish("nope", "x"), lambda: b.consume("nope"),
                 lambda: b.purge_queue("nope"), lambda: b.clean("nope"),
                 lambda: b.get_message_list("nope")):
        with pytest.raises(ddmq.QueueNotFoundError):
            call()
    assert ddmq.broker(root, create=True).publish("made", "x").queue == "made"


def test_message_paths_cannot_escape_root(b, tmp_path):
    outside = tmp_path / "999.1.ddmqabc"
    outside.write_text("{}")
    with pytest.raises(ddmq.InvalidNameError):
        b.delete_message(str(outside))
    with pytest.raises(ddmq.InvalidNameError):
        b.delete_message("../999.1.ddmqabc")
    with pytest.raises(ddmq.InvalidNameError):
        b.consume("q", path="../../999.1.ddmqabc")
    assert outside.exists()


# --- ordering ------------------------------------------------------------------------

def test_priorities_compare_as_numbers_and_zero_is_highest(b):
    for prio in (1000, 10, 9, 0, 999):
        b.publish("q", f"p{prio}", priority=prio)
    assert drain(b) == ["p0", "p9", "p10", "p999", "p1000"]


def test_fifo_within_priority(b):
    for i in range(300):
        b.publish("q", i, priority=5 if i % 2 else 7)
    got = drain(b)
    assert got == [i for i in range(300) if i % 2] + [i for i in range(300) if not i % 2]


def test_fifo_across_brokers_of_one_process(root):
    pub, con = ddmq.broker(root, create=True), ddmq.broker(root)
    for i in range(50):
        pub.publish("q", i)
    assert [con.consume("q").message for _ in range(50)] == list(range(50))


def test_messages_published_elsewhere_are_seen(root):
    a, c = ddmq.broker(root, create=True), ddmq.broker(root)
    a.create_queue("q")
    assert c.consume("q") is None
    a.publish("q", "late")
    assert c.consume("q", wait=5).message == "late"


def test_falsy_payloads_round_trip(b):
    for value in (0, False, [], {}, "", None):
        b.publish("q", value)
    assert drain(b) == [0, False, [], {}, "", ""]


def test_consume_n_and_path(b):
    msgs = [b.publish("q", i) for i in range(5)]
    got = b.consume("q", n=3)
    assert [m.message for m in got] == [0, 1, 2]
    assert b.consume("q", path=msgs[4].filename).message == 4
    assert b.consume("q", path=msgs[4].filename) is None
    assert b.consume("q", n=5) and b.consume("q", n=5) == []


def test_blocking_consume_times_out(b):
    started = time.monotonic()
    assert b.consume("q", wait=0.3) is None
    assert time.monotonic() - started >= 0.3


# --- ack, nack, leases -----------------------------------------------------------------

def test_consumed_message_is_leased_in_work(b):
    b.publish("q", "x", timeout=30)
    msg = b.consume("q")
    waiting, work = b.get_message_list("q")
    assert waiting == [] and work == [msg.filename]
    assert abs(msg.expiry - (b.clock.now() + 30)) <= 2
    b.ack(msg)
    assert b.get_message_list("q") == ([], [])


def test_ack_of_lost_lease_raises(b):
    b.publish("q", "x")
    msg = b.consume("q")
    b.ack(msg)
    with pytest.raises(ddmq.LeaseLostError) as caught:
        b.ack(msg)
    assert caught.value.missing == [msg.filename]


def test_ack_never_requeues(b):
    b.publish("q", "x", requeue=True)
    b.ack(b.consume("q"))
    assert b.get_message_list("q") == ([], [])


def test_default_nack_requeues_with_counter_and_requeue_prio(b):
    b.publish("q", "low", priority=50)
    b.publish("q", "x", priority=10)
    msg = b.consume("q")
    b.nack(msg)
    again = b.consume("q")
    assert (again.message, again.requeue_counter, again.priority, again.id) == ("x", 1, 0, msg.id)
    b.update_settings_file("q", {"requeue_prio": 7})
    b.nack(again)
    assert b.consume("q").priority == 7


def test_nack_false_drops_and_requeue_false_message(b):
    b.publish("q", "x")
    b.nack(b.consume("q"), requeue=False)
    b.publish("q", "y", requeue=False)
    b.nack(b.consume("q"))
    assert b.get_message_list("q") == ([], []) and b.list_dead("q") == []


def test_nack_past_requeue_limit_dead_letters(b):
    b.publish("q", "poison", requeue_limit=2)
    for _ in range(3):
        b.nack(b.consume("q"))
    assert b.consume("q") is None
    (dead,) = b.list_dead("q")
    assert dead.startswith("requeue_limit.")


def test_extend_lease(b):
    b.publish("q", "x", timeout=5)
    msg = b.consume("q")
    old = msg.filename
    b.extend_lease(msg, 100)
    assert msg.filename != old and msg.expiry >= b.clock.now() + 98
    assert b.get_message_list("q")[1] == [msg.filename]
    b.ack(msg)
    with pytest.raises(ddmq.LeaseLostError):
        b.extend_lease(msg, 100)


def test_expired_lease_is_requeued_by_clean(b):
    b.publish("q", "x")
    msg = b.consume("q")
    expire(b, "q", msg.filename)
    assert b.clean("q", force=True)
    again = b.consume("q")
    assert again.message == "x" and again.requeue_counter == 1
    with pytest.raises(ddmq.LeaseLostError):
        b.ack(msg)
    b.ack(again)


def test_unexpired_lease_is_left_alone(b):
    b.publish("q", "x")
    msg = b.consume("q")
    b.clean("q", force=True)
    assert b.get_message_list("q")[1] == [msg.filename]


def test_expired_past_limit_or_without_requeue_is_dead_lettered_not_deleted(b):
    b.publish("q", "limited", requeue_limit=0)
    b.publish("q", "norequeue", requeue=False)
    for msg in b.consume("q", n=2):
        expire(b, "q", msg.filename)
    b.clean("q", force=True)
    assert sorted(d.split(".")[0] for d in b.list_dead("q")) == ["expired", "requeue_limit"]
    assert b.get_message_list("q") == ([], [])
    dead = b.list_dead("q")
    assert sorted(b.requeue_dead("q")) == dead and b.list_dead("q") == []
    assert sorted(drain(b)) == ["limited", "norequeue"]


def test_automatic_housekeeping_is_rate_limited(b):
    b.update_settings_file("q", {"clean_interval": 3600})
    b.publish("q", "x")
    b.clean("q", force=True)
    msg = b.consume("q")
    expired = expire(b, "q", msg.filename)
    b.publish("q", "y")  # within clean_interval: no housekeeping
    assert b.get_message_list("q")[1] == [expired]
    assert not b.clean("q")
    assert b.clean("q", force=True)
    assert b.get_message_list("q")[1] == []


def test_abandoned_requeue_is_finished_by_housekeeping(b):
    """A housekeeper killed between taking a message and republishing it."""
    b.publish("q", "x")
    msg = b.consume("q")
    waiting = WorkName.parse(msg.filename).waiting
    old = int(b.clock.now()) - 1000
    os.makedirs(os.path.join(b.root, "q", "tmp"), exist_ok=True)
    private = os.path.join(b.root, "q", "tmp", f"requeue.{old}.deadhost.1.abc.1.{waiting}")
    os.rename(os.path.join(b.root, "q", "work", msg.filename), private)
    assert b.consume("q") is None
    b.clean("q", force=True)
    assert drain(b) == ["x"]
    b.close()  # takes its spares along
    assert tmp_names(b) == []


def test_stale_temp_files_of_dead_publishers_are_removed(b):
    tmp = os.path.join(b.root, "q", "tmp")
    os.makedirs(tmp, exist_ok=True)  # made by the first publish
    partial = os.path.join(tmp, "host.1.abc.1")
    with open(partial, "w") as handle:
        handle.write('{"message": "half')
    fresh = os.path.join(tmp, "host.1.abc.2")
    open(fresh, "w").close()
    old = time.time() - 2 * 3600
    os.utime(partial, (old, old))
    b.clean("q", force=True)
    assert os.listdir(tmp) == ["host.1.abc.2"]
    assert b.consume("q") is None


# --- poison and garbage ----------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b'{"message": "half', b"\x00\xff\xfe", b"[1, 2]",
                                     b'"text"', b'{"priority": "high"}', b'{"requeue_counter": -1}'])
def test_unparseable_message_is_dead_lettered_and_never_blocks(b, content):
    with open(os.path.join(b.root, "q", "0.1.ddmqbad"), "wb") as handle:
        handle.write(content)
    b.publish("q", "good")
    assert drain(b) == ["good"]
    assert b.list_dead("q") == ["unparseable.0.1.ddmqbad"]
    with open(os.path.join(b.root, "q", "dead", "unparseable.0.1.ddmqbad"), "rb") as handle:
        assert handle.read() == content


@pytest.mark.parametrize("content", [b"", b'{"message": "half', b"[1, 2]"])
def test_receive_dead_letters_what_it_cannot_read_and_never_blocks(b, content):
    with open(os.path.join(b.root, "q", "0.1.ddmqbad"), "wb") as handle:
        handle.write(content)
    os.symlink("/etc/passwd", os.path.join(b.root, "q", "0.2.ddmqlink"))
    b.publish("q", "good")
    got = b.consume("q", n=10, auto_ack=True)
    assert [msg.message for msg in got] == ["good"]
    assert sorted(b.list_dead("q")) == ["unparseable.0.1.ddmqbad", "unparseable.0.2.ddmqlink"]
    assert b.get_message_list("q") == ([], [])


def test_receive_takes_messages_out_without_a_lease(b):
    first = b.publish("q", "a", priority=1)
    b.publish("q", "b", priority=2)
    msg = b.consume("q", auto_ack=True)
    assert (msg.message, msg.id, msg.filename, msg.expiry) == ("a", first.id, None, None)
    (path,), work = b.get_message_list("q")
    assert work == []
    assert b.consume("q", path=path, auto_ack=True).message == "b"
    assert b.get_message_list("q") == ([], [])
    with pytest.raises(ValueError):  # nothing to ack
        b.ack(msg)
    tmp = os.path.join(b.root, "q", "tmp")
    assert not [n for n in os.listdir(tmp) if not n.startswith("spare.")] if os.path.isdir(tmp) else True


def test_a_watched_queue_takes_news_from_the_watch_instead_of_listing(b, monkeypatch):
    # A consumer that waited on a local queue knows its listing was complete:
    # the watch names what is published later, by any process, and nothing is listed.
    other = ddmq.broker(b.root)
    assert b.consume("q", wait=0.01) is None  # watches the folder, lists it once
    listed = []
    real = protocol.list_folder
    folder = os.path.join(b.root, "q")  # (housekeeping lists work/ and tmp/)
    monkeypatch.setattr(protocol, "list_folder",
                        lambda *a, **k: (a[0] == folder and listed.append(a[0])) or real(*a, **k))
    other.publish("q", "x", priority=5)
    other.publish("q", "y", priority=1)
    assert [m.message for m in b.consume("q", n=5, wait=1, auto_ack=True)] == ["y", "x"]
    assert b.consume("q", wait=0.01) is None
    assert listed == []
    # A lost race that drops untried names ends the trust: the next look lists.
    for i in range(3):
        other.publish("q", i)
    got = other.consume("q", n=3)
    other.ack("q", [m.filename for m in got])
    b._listings._queues["q"].streak = 6.0  # pick at random among the first few
    assert b.consume("q", wait=0.01) is None
    assert listed


def test_foreign_files_are_ignored(b):
    for name in ("notes.txt", ".hidden", "999.x.ddmqabc", "1.2.3", "README"):
        open(os.path.join(b.root, "q", name), "w").close()
    open(os.path.join(b.root, "q", "work", "junk"), "w").close()
    b.publish("q", "x")
    assert len(b.get_message_list("q")[0]) == 1
    assert drain(b) == ["x"]
    b.clean("q", force=True)
    assert os.path.exists(os.path.join(b.root, "q", "work", "junk"))


def test_requeue_dead_by_name(b):
    b.publish("q", "x")
    name = b.reject(b.consume("q"))
    assert b.list_dead("q") == [name]
    assert b.requeue_dead("q", [name]) == [name]
    with pytest.raises(ddmq.MessageNotFoundError):
        b.requeue_dead("q", [name])
    with pytest.raises(ddmq.InvalidNameError):
        b.requeue_dead("q", ["../../etc"])
    assert drain(b) == ["x"]


# --- purge, delete, inspect -------------------------------------------------------------

def test_purge_and_delete_message(b):
    for i in range(4):
        b.publish("q", i)
    first = b.consume("q")
    second = b.publish("q", "other")
    assert b.delete_message(second)
    with pytest.raises(ddmq.MessageNotFoundError):
        b.delete_message(second)
    assert b.delete_message(os.path.join("q", "work", first.filename))
    assert b.purge_queue("q") == (3, 0)
    b.publish("q", 1)
    b.consume("q")
    assert b.purge_queue("q") == (0, 1)


def test_message_file_format_matches_the_original(b):
    msg = b.publish("q", "msg", priority=3)
    with open(os.path.join(b.root, "q", msg.filename)) as handle:
        data = json.load(handle)
    assert {"priority", "queue_number", "requeue_counter", "filename", "queue", "requeue_limit",
            "timeout", "message", "requeue", "id"} <= set(data)
    assert data["priority"] == 3 and data["message"] == "msg" and data["queue"] == "q"
    assert msg.filename == f"3.{msg.queue_number}.ddmq{msg.id}" == data["filename"]


def test_bad_publish_arguments(b):
    before = tree(b.root)
    for kwargs in ({"priority": -1}, {"priority": "1"}, {"priority": 1.5}, {"timeout": 0},
                   {"requeue_limit": -1}, {"requeue": "yes"}, {"msg_text": object()}):
        with pytest.raises(ddmq.InvalidMessageError):
            b.publish("q", **{"msg_text": "x", **kwargs})
    assert tree(b.root) == before
    with pytest.raises(ValueError):
        b.consume("q", n=-1)
    with pytest.raises(ddmq.InvalidNameError):
        b.ack("q", ["not-a-work-file"])


# --- filesystem errors ------------------------------------------------------------------

def test_transient_errors_are_retried_then_raised():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.ESTALE, "Stale file handle")
        return "ok"
    assert protocol.retrying(flaky, "test", retry_timeout=5) == "ok" and len(calls) == 3

    def broken():
        raise OSError(errno.EIO, "Input/output error", "/x")
    started = time.monotonic()
    with pytest.raises(ddmq.FilesystemError) as caught:
        protocol.retrying(broken, "read /x", retry_timeout=0.3)
    assert caught.value.errno == errno.EIO and time.monotonic() - started < 5
    assert isinstance(caught.value, OSError)


def test_a_publish_whose_rename_answer_was_lost_is_not_published_twice(b, monkeypatch):
    """On a network filesystem the server may do a rename and lose its answer
    (the client sees ENOTCONN, as the GlusterFS fault scenario showed); the
    retry then finds the temporary file gone. That publish succeeded: the
    message must not be published again, even after another node took it."""
    real_rename = os.rename
    queue_dir = os.path.join(b.root, "q") + os.sep
    other = ddmq.broker(b.root)
    taken = []

    def rename_answer_lost(src, dst):
        real_rename(src, dst)
        if not taken and os.path.dirname(dst) + os.sep == queue_dir:
            taken.append(other.consume("q"))  # another node claims it at once
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    monkeypatch.setattr(os, "rename", rename_answer_lost)
    msg = b.publish("q", "once")
    monkeypatch.undo()
    assert taken[0] is not None and taken[0].message == "once" and taken[0].id == msg.id
    assert b.get_message_list("q") == ([], [taken[0].filename])  # no second copy waiting
    assert tmp_names(b) == []
    other.ack(taken[0])
    assert drain(b) == []


def spares(broker, queue="q"):
    return sorted(n for n in tmp_names(broker, queue) if n.startswith("spare."))


def tmp_names(broker, queue="q"):
    """What the queue's tmp/ holds ([] when it is not there: it is made by
    the first publish, and close() removes it when it leaves it empty)."""
    tmp = os.path.join(broker.root, queue, "tmp")
    return os.listdir(tmp) if os.path.isdir(tmp) else []


def inode(broker, queue, name, sub=""):
    return os.stat(os.path.join(broker.root, queue, sub, name)).st_ino


def test_acked_files_are_rewritten_by_later_publishes_on_a_local_filesystem(b, monkeypatch):
    assert reuse.filesystem_type(b.root) in reuse.REUSE_FILESYSTEMS  # tmp_path is local
    monkeypatch.setattr(reuse.SparePool, "RELOOK_SECONDS", 0.0)
    for text in ("a", "b", "c"):
        b.publish("q", text)
    consumer = ddmq.broker(b.root)  # another process, as far as the files go
    got = [consumer.consume("q") for _ in range(3)]
    used = {inode(b, "q", m.filename, "work") for m in got}
    consumer.ack(got[0])
    consumer.ack("q", [m.filename for m in got[1:]])
    assert len(spares(b)) == 3 and b.get_message_list("q") == ([], [])  # acked: not in the queue
    longer = b.publish("q", {"text": "a longer message " * 20})
    shorter = b.publish("q", "d")
    assert {inode(b, "q", longer.filename), inode(b, "q", shorter.filename)} <= used
    assert len(spares(b)) == 1
    assert drain(b) == [{"text": "a longer message " * 20}, "d"]  # whole, and nothing of before
    consumer.close()  # what a broker leaves of its own goes with it
    b.close()
    assert spares(b) == [] and tmp_names(b) == []


def test_a_file_that_holds_another_message_is_not_delivered(b, monkeypatch):
    first = b.publish("q", "first")
    other = b.publish("q", "other")
    with open(os.path.join(b.root, "q", other.filename), "rb") as handle:
        other_bytes = handle.read()
    # A consumer whose lease ran out while it read: housekeeping took its work
    # file, which was then acked and rewritten for another message. Lease lost.
    moved = os.path.join(b.root, "q", "tmp", "spare.reused")

    def reused_while_read(path, retry, limit=None):
        os.rename(path, moved)
        return other_bytes

    monkeypatch.setattr(reading, "read", reused_while_read)
    assert b.consume("q", path=first.filename) is None
    monkeypatch.undo()
    assert b.get_message_list("q") == ([other.filename], []) and b.list_dead("q") == []
    # A file that is not what its name says, while no one took it: set aside.
    os.rename(moved, os.path.join(b.root, "q", first.filename))
    with open(os.path.join(b.root, "q", first.filename), "wb") as handle:
        handle.write(other_bytes)
    with pytest.raises(ddmq.MessageNotFoundError):
        b.get_message(os.path.join("q", first.filename))
    assert b.consume("q", path=first.filename) is None
    assert b.get_message_list("q")[1] == [] and b.list_dead("q") == ["unparseable." + first.filename]
    assert b.consume("q").message == "other"


def test_a_consumer_leaves_a_bounded_number_of_spares(b, monkeypatch):
    monkeypatch.setattr(reuse.SparePool, "RELOOK_SECONDS", 0.0)
    limit = root_module.SPARES_MAX
    for i in range(limit + 10):
        b.publish("q", i)
    consumer = ddmq.broker(b.root)
    for _ in range(limit + 10):
        consumer.ack(consumer.consume("q"))
    assert len(spares(b)) == limit  # no one publishes: the rest were unlinked
    for i in range(limit):
        b.publish("q", i)  # each rewrites one
    assert spares(b) == []
    for _ in range(limit):
        consumer.ack(consumer.consume("q"))
    assert len(spares(b)) == limit  # taken ones are made again
    consumer.close()
    assert spares(b) == []


def test_spares_nobody_rewrites_are_removed_by_housekeeping(b, monkeypatch):
    b.publish("q", "x")
    b.ack(b.consume("q"))
    assert len(spares(b)) == 1
    monkeypatch.setattr(housekeeping_module, "SPARE_MAX_AGE_SECONDS", -1)
    b.clean("q", force=True)
    assert spares(b) == []
    b.publish("q", "y")  # its spare is gone: a new file
    assert drain(b) == ["y"]


def test_acked_files_are_unlinked_on_a_network_filesystem_or_a_queue_without_tmp(root, monkeypatch):
    monkeypatch.setattr(reuse, "REUSE_FILESYSTEMS", frozenset())  # as on NFS, GlusterFS, Lustre
    remote = ddmq.broker(root)
    remote.create_queue("q")
    remote.publish("q", "x")
    remote.ack(remote.consume("q"))
    assert spares(remote) == []
    monkeypatch.undo()
    local = ddmq.broker(root)
    local.publish("q", "y")
    msg = local.consume("q")
    os.rmdir(os.path.join(root, "q", "tmp"))  # as in a queue made by ddmq 0.9
    local.ack(msg)
    assert local.get_message_list("q") == ([], []) and not os.path.exists(os.path.join(root, "q", "tmp"))


def test_folder_without_permission_gives_filesystem_error(b):
    tmp = os.path.join(b.root, "q", "tmp")
    os.makedirs(tmp, exist_ok=True)  # made by the first publish
    os.chmod(tmp, 0o555)
    try:
        out = run_as_unprivileged(
            "import ddmq, sys\n"
            "try:\n    ddmq.broker(sys.argv[1]).publish('q', 'x')\n"
            "except ddmq.FilesystemError as e:\n    print(type(e).__name__, e.errno, e)\n", b.root)
    finally:
        os.chmod(tmp, 0o755)
    assert out.stdout.split()[:2] == ["FilesystemError", str(errno.EACCES)], out.stderr
    assert "Permission denied" in out.stdout
    assert b.get_message_list("q") == ([], [])
    b.publish("q", "works again")
    assert drain(b) == ["works again"]


def test_unreadable_queue_is_an_error_not_a_missing_queue(b):
    """A queue folder that cannot be searched is reported as what it is; it
    is never taken for a missing queue (which create=True would recreate)."""
    folder = os.path.join(b.root, "q")
    os.chmod(folder, 0o600)
    try:
        out = run_as_unprivileged(
            "import ddmq, sys\n"
            "b = ddmq.broker(sys.argv[1], create=True)\n"
            "for call in (lambda: b.queue_exists('q'), lambda: b.get_message_list('q'),\n"
            "             lambda: b.publish('q', 'x')):\n"
            "    try:\n        call()\n"
            "    except ddmq.DdmqError as e:\n        print(type(e).__name__, e.errno)\n", b.root)
    finally:
        os.chmod(folder, 0o755)
    assert out.stdout.splitlines() == [f"FilesystemError {errno.EACCES}"] * 3, out.stderr
    assert b.get_message_list("q") == ([], [])


def test_full_filesystem_gives_clear_error_and_recovers(tmp_path):
    """A real, small tmpfs filled up: publish fails cleanly, nothing partial is
    visible, and the queue works again once there is space."""
    with mounted_tmpfs(str(tmp_path / "small"), "size=200k") as mount:
        b = ddmq.broker(os.path.join(mount, "r"), create=True)
        b.create_queue("q")
        big = "x" * 20_000
        published = []
        with pytest.raises(ddmq.FilesystemError) as caught:
            for _ in range(100):
                published.append(b.publish("q", big, clean=False))
        assert caught.value.errno == errno.ENOSPC and "No space" in str(caught.value)
        assert tmp_names(b) == []
        waiting, _ = b.get_message_list("q")
        assert sorted(waiting) == sorted(m.filename for m in published)
        assert all(len(b.consume("q").message) == len(big) for _ in published[:3])
        b.purge_queue("q")
        b.publish("q", "works again")
        assert drain(b) == ["works again"]


def test_read_only_filesystem_gives_clear_error(tmp_path):
    with mounted_tmpfs(str(tmp_path / "ro"), "size=1m") as mount:
        b = ddmq.broker(os.path.join(mount, "r"), create=True)
        b.create_queue("q")
        b.publish("q", "kept")
        subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
        with pytest.raises(ddmq.FilesystemError) as caught:
            b.publish("q", "x")
        assert caught.value.errno == errno.EROFS
        with pytest.raises(ddmq.FilesystemError):
            b.consume("q")
        subprocess.run(["mount", "-o", "remount,rw", mount], check=True)
        assert drain(b) == ["kept"]


def test_nack_without_counting_gives_the_message_back_untouched(b):
    b.publish("q", "x", priority=5, requeue_limit=0)
    b.nack(b.consume("q"), requeue=True, count=False)
    again = b.consume("q")
    assert (again.message, again.priority, again.requeue_counter) == ("x", 5, 0)
    b.nack(again)  # a counted requeue past the limit of 0: dead letter
    assert b.consume("q") is None and len(b.list_dead("q")) == 1


POLLING_CONSUMER = """
import sys, time, ddmq
from ddmq import watch
watch._libc = None  # no inotify: wait by polling, as on a network filesystem
b = ddmq.broker(sys.argv[1])
assert b.consume('q') is None  # lists the empty, quiet queue once
print('listed', flush=True)
started = time.monotonic()
msg = b.consume('q', wait=float(sys.argv[2]))
print(msg.message if msg else None, round(time.monotonic() - started, 1), flush=True)
"""


def test_polling_consumer_of_a_quiet_empty_queue_sees_new_messages(b):
    """An idle consumer looks at an unchanged empty queue with one stat
    instead of a listing; a message published by another process still
    reaches it at its next poll, well before the safety relisting."""
    from ddmq.listing import IDLE_RELIST_SECONDS
    folder = os.path.join(b.root, "q")
    os.utime(folder, (time.time() - 60, time.time() - 60))  # quiet for a minute
    consumer = subprocess.Popen([sys.executable, "-c", POLLING_CONSUMER, b.root,
                                 str(IDLE_RELIST_SECONDS - 2)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert consumer.stdout.readline() == "listed\n"
        time.sleep(1.5)  # the consumer is now skipping listings
        b.publish("q", "seen")
        out = consumer.stdout.readline().split()
    finally:
        consumer.kill()
        consumer.wait()
    assert out[0] == "seen", out


@pytest.mark.parametrize("call, error", [
    (lambda b: b.consume("q", n=0), ValueError),
    (lambda b: b.consume("q", n=-1), ValueError),
    (lambda b: b.consume("q", wait=float("nan")), ValueError),
    (lambda b: b.consume("q", wait=-1), ValueError),
    (lambda b: b.publish("q", _nested(100_000)), ddmq.InvalidMessageError),
])
def test_bad_arguments_raise_documented_errors_before_anything_changes(b, call, error):
    b.publish("q", "waiting")
    before = tree(b.root)
    with pytest.raises(error):
        call(b)
    assert tree(b.root) == before


@pytest.mark.parametrize("lease", [0, -3600, float("inf"), float("nan"), True, "10"])
def test_extend_lease_refuses_leases_that_mean_nothing(b, lease):
    b.publish("q", "x")
    msg = b.consume("q")
    name = msg.filename
    with pytest.raises(ddmq.InvalidMessageError, match="a lease must be"):
        b.extend_lease(msg, lease)
    assert msg.filename == name and b.get_message_list("q")[1] == [name]


def test_consume_waits_for_ever_with_an_infinite_wait(b):
    """wait=inf means what wait=None means; a message there returns at once."""
    b.publish("q", "x")
    assert b.consume("q", wait=float("inf")).message == "x"


def _nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def test_requeue_claims_of_a_dead_consumer_without_waiting_for_its_lease(root):
    """A consumer in another process is SIGKILLed holding two messages: its
    claims, told apart by its claimer tag, are requeued at once (counted)."""
    b = ddmq.broker(root, create=True)
    for text in ("a", "b", "c"):
        b.publish("q", text)
    code = ("import sys, ddmq, ddmq.layout, time\n"
            "b = ddmq.broker(sys.argv[1])\n"
            "got = b.consume('q', n=2)\n"
            "print(ddmq.layout.claimer_tag(), ','.join(m.message for m in got), flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, root], stdout=subprocess.PIPE, text=True)
    tag, held = child.stdout.readline().split()
    child.kill()
    child.wait()
    assert held == "a,b"
    mine = b.consume("q")  # this process's claim is not touched
    assert mine.message == "c"
    assert len(b.requeue_claims("q", tag)) == 2
    again = [b.consume("q") for _ in range(2)]
    assert sorted(m.message for m in again) == ["a", "b"]
    assert [m.requeue_counter for m in again] == [1, 1]
    assert sorted(b.get_message_list("q")[1]) == sorted(m.filename for m in again + [mine])
    with pytest.raises(ValueError):
        b.requeue_claims("q", "../x")
