"""Files and links planted in a shared root: nothing is read, written or deleted through them,
and the queue keeps flowing.

A root often lives in a group-writable project folder, so anyone of the group
can put a file into a queue: by mistake, or to make the owner's processes do
something. Each test plants one thing with a message's or a spare's name (as
another user where the tests run as root: ``nobody``, in a group that may
write the root), publishes good messages around it, and checks that

* the good messages are delivered, and a batch claim is not cut short;
* the planted thing is set aside (dead-lettered) or ignored, never followed:
  a file outside the root keeps its content, a FIFO never blocks anyone;
* nothing raises but the documented errors.

Consumers that could block run in a child process with a time-out, so a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import grp
import json
import os
import pathlib
import pwd
import shutil
import resource
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

import ddmq
from ddmq.layout import SPARE_PREFIX, WaitingName
from ddmq.message import next_queue_number
from conftest import run_as_unprivileged

AS_ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody").pw_uid if AS_ROOT else os.geteuid()
GROUP = grp.getgrnam("nogroup").gr_gid if AS_ROOT else os.getegid()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(ddmq.__file__)))


@pytest.fixture
def tmp_path():
    """A folder the other user can reach (pytest's own are private to us)."""
    folder = tempfile.mkdtemp(prefix="ddmq-hostile-")
    os.chmod(folder, 0o711)
    yield pathlib.Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared(tmp_path):
    """A root the group may write (as on a project folder), a queue with a
    good message before and after the planted thing, and a file outside the
    root that stands for the owner's shell start-up file."""
    root = tmp_path / "root"
    b = ddmq.broker(str(root), create=True)
    b.create_queue("q")
    for sub in ("tmp", "dead"):  # made when first needed; here they are there, group-writable
        os.mkdir(root / "q" / sub)
    for folder in (root, root / "q", root / "q" / "work", root / "q" / "tmp", root / "q" / "dead"):
        os.chown(folder, os.geteuid(), GROUP)
        os.chmod(folder, 0o2775)
    victim = tmp_path / "bashrc"
    victim.write_text("# the owner's start-up file\n")
    yield b, root, victim
    b.close()


def plant(path, make) -> None:
    """Make the thing at ``path`` as the other user (``make(path)`` in a child
    running as ``nobody`` when we are root)."""
    if not AS_ROOT:
        make(str(path))
        return
    pid = os.fork()
    if pid == 0:  # the other user, in the group that may write the root
        try:
            os.setgroups([GROUP])
            os.setgid(GROUP)
            os.setuid(NOBODY)
            make(str(path))
            os._exit(0)
        except BaseException as err:  # pragma: no cover - reported by the exit status
            print(f"plant failed: {err!r}", file=sys.stderr)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"could not plant {path}"


def message_name(priority: int = 999) -> str:
    """A name that sorts between two messages published around it."""
    return WaitingName(priority, next_queue_number(), os.urandom(16).hex()).format()


def consume_in_child(root, n: int, timeout: float = 60) -> list:
    """consume(n) in a fresh process; the texts it got (and acked)."""
    code = textwrap.dedent(f"""
        import json, ddmq
        b = ddmq.broker({str(root)!r})
        got = b.consume("q", n={n})
        got = got if isinstance(got, list) else [got] if got else []
        for m in got:
            b.ack(m)
        print(json.dumps([m.message for m in got]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def around(b, make_planted):
    """Publish "before", plant a thing named like a message, publish "after"."""
    b.publish("q", "before")
    name = message_name()
    plant(os.path.join(b.root, "q", name), make_planted)
    b.publish("q", "after")
    return name


def test_a_fifo_named_like_a_message_is_set_aside_and_blocks_no_one(shared):
    b, root, _ = shared
    name = around(b, lambda p: os.mkfifo(p, 0o666))
    assert consume_in_child(root, 16) == ["before", "after"]
    assert b.list_dead("q") == [f"unparseable.{name}"]
    assert stat.S_ISFIFO(os.lstat(root / "q" / "dead" / f"unparseable.{name}").st_mode)


def test_a_folder_named_like_a_message_is_set_aside(shared):
    b, root, _ = shared
    name = around(b, lambda p: os.mkdir(p))
    assert consume_in_child(root, 16) == ["before", "after"]
    assert b.list_dead("q") == [f"unparseable.{name}"]


def test_an_unreadable_file_is_set_aside_and_the_batch_goes_on(shared):
    """A mode-000 file of another user: the owner (without root's override
    of permissions) cannot read it; the good messages of the batch are
    delivered and nothing stays leased."""
    b, root, _ = shared

    def unreadable(path):
        with open(path, "w") as handle:
            handle.write("{}")
        os.chmod(path, 0)

    name = around(b, unreadable)
    code = textwrap.dedent("""
        import json, sys, ddmq
        b = ddmq.broker(sys.argv[1])
        got = b.consume("q", n=16)
        for m in got:
            b.ack(m)
        print(json.dumps([m.message for m in got]))
    """)
    done = run_as_unprivileged(code, str(root))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["before", "after"]
    assert b.get_message_list("q") == ([], [])
    assert b.list_dead("q") == [f"unparseable.{name}"]


def test_a_symlinked_message_is_never_followed(shared):
    """A link named like a message, to a file outside the root that holds a
    valid message: not delivered, not read, set aside; the file outside is
    neither changed nor reused after anything is acked."""
    b, root, victim = shared
    outside = json.dumps({"message": "from outside", "queue": "q", "id": None})
    victim.write_text(outside)
    name = around(b, lambda p: os.symlink(victim, p))
    assert consume_in_child(root, 16) == ["before", "after"]
    assert b.list_dead("q") == [f"unparseable.{name}"]
    assert os.path.islink(root / "q" / "dead" / f"unparseable.{name}")
    for i in range(40):  # acked files become spares; none of them may be the link
        b.publish("q", i)
        b.ack(b.consume("q"))
    assert victim.read_text() == outside


def test_a_link_to_dev_zero_is_not_read(shared):
    b, root, _ = shared
    name = around(b, lambda p: os.symlink("/dev/zero", p))
    assert consume_in_child(root, 16) == ["before", "after"]
    assert b.list_dead("q") == [f"unparseable.{name}"]


def test_a_huge_file_is_set_aside_without_being_read(shared):
    """A 200 MB file (sparse: it costs no disk) named like a message is
    dead-lettered by its size, before any of it is read: the consumer's
    peak memory stays far below the file's size."""
    b, root, _ = shared

    def huge(path):
        with open(path, "wb") as handle:
            handle.truncate(200 << 20)

    name = around(b, huge)
    code = textwrap.dedent("""
        import json, sys, ddmq
        b = ddmq.broker(sys.argv[1])
        got = b.consume("q", n=16)
        for m in got:
            b.ack(m)
        # VmHWM, this program's own peak: ru_maxrss would carry over the
        # parent's (pytest's) from before the exec.
        with open("/proc/self/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
        print(json.dumps([[m.message for m in got], peak]))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    got, peak = json.loads(done.stdout)
    assert got == ["before", "after"]
    assert peak < 100 << 20, f"peak memory {peak >> 20} MB: the file was read"
    assert b.list_dead("q") == [f"unparseable.{name}"]


def test_a_message_over_the_size_limit_is_refused_at_publish(shared):
    b, root, _ = shared
    b.update_settings_file("q", {"max_message_bytes": 1000})
    with pytest.raises(ddmq.InvalidMessageError, match="max_message_bytes"):
        b.publish("q", "x" * 2000)
    assert b.get_message_list("q") == ([], [])
    assert os.listdir(root / "q" / "tmp") == []


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_spare_is_never_written_through(shared, kind):
    """``tmp/spare.*`` planted as a link to the owner's start-up file: a
    publish (or a nack's requeue, which publishes) must not write the
    message into it. A hard link needs the victim's own file (the kernel's
    protected_hardlinks refuses others), so it is planted by the owner."""
    b, root, victim = shared
    spare = root / "q" / "tmp" / f"{SPARE_PREFIX}planted"
    if kind == "symlink":
        plant(spare, lambda p: os.symlink(victim, p))
    else:
        os.link(victim, spare)
    before = victim.read_text()
    b.publish("q", "echo pwned >> ~/.bashrc")
    msg = b.consume("q")
    b.nack(msg)
    for i in range(40):
        b.publish("q", i)
    assert victim.read_text() == before
    texts = []
    while (m := b.consume("q")) is not None:
        texts.append(m.message)
        b.ack(m)
    assert texts == ["echo pwned >> ~/.bashrc", *range(40)]


def test_a_queue_folder_linked_to_another_root_is_not_purged_or_deleted(shared, tmp_path):
    b, root, _ = shared
    other = ddmq.broker(str(tmp_path / "other"), create=True)
    other.publish("theirs", "keep me")
    plant(root / "evil", lambda p: os.symlink(tmp_path / "other" / "theirs", p))
    assert "evil" not in b.list_queues()
    with pytest.raises(ddmq.QueueNotFoundError):
        b.purge_queue("evil")
    with pytest.raises(ddmq.QueueNotFoundError):
        b.delete_queue("evil")
    assert len(other.get_message_list("theirs")[0]) == 1
    other.close()


def test_a_dead_folder_linked_elsewhere_is_not_emptied_by_delete_queue(shared, tmp_path):
    b, root, victim = shared
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    os.chmod(elsewhere, 0o777)
    b.publish("q", "x")
    if os.path.isdir(root / "q" / "dead"):  # housekeeping removes it when empty
        os.rmdir(root / "q" / "dead")
    plant(root / "q" / "dead", lambda p: os.symlink(elsewhere, p))
    b.delete_queue("q")
    assert (elsewhere / "precious.txt").read_text() == "keep"
    assert not os.path.lexists(root / "q")


def test_a_fifo_left_as_an_abandoned_requeue_does_not_block_housekeeping(shared):
    b, root, _ = shared
    b.publish("q", "good")
    name = message_name()
    old = int(b.clock.now()) - 1000
    plant(root / "q" / "tmp" / f"requeue.{old}.evilhost.1.abc.1.{name}", lambda p: os.mkfifo(p, 0o666))
    code = textwrap.dedent("""
        import sys, ddmq
        b = ddmq.broker(sys.argv[1])
        b.clean("q", force=True)
        m = b.consume("q")
        b.ack(m)
        print(m.message)
    """)
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "good"
    assert b.list_dead("q") == [f"unparseable.{name}"]


def test_get_message_of_a_planted_link_raises_the_documented_error(shared):
    b, root, victim = shared
    name = message_name()
    plant(root / "q" / name, lambda p: os.symlink(victim, p))
    with pytest.raises(ddmq.errors.UnsafeFileError):
        b.get_message(os.path.join("q", name))


def test_peak_memory_helper_reports_bytes():
    """ru_maxrss is in KiB on Linux: the huge-file test relies on that."""
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > 1 << 20
