"""Scenario 6: resources run out. A full filesystem (a small tmpfs), a read-only one, a folder
without permission: every call fails with a clear error (``FilesystemError`` with the errno;
one line ``ddmq: error: ...`` and status 1 from the command line), nothing partial becomes
visible, no message is lost, and the queue works again once space or permission returns.

These need no cluster, only root (to mount a tmpfs, and to drop the capabilities that
override permissions). tests/test_broker.py already covers publish on a full, a read-only and
a non-writable ``tmp/``; this file adds consume, ack, nack and housekeeping, and the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys

import pytest

import ddmq
from ddmq.cli import main
from conftest import mounted_tmpfs, run_as_unprivileged

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fill_space(path: str) -> str:
    """Fill the filesystem of ``path`` with one file; return its path (delete it to free)."""
    ballast = os.path.join(path, "ballast")
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for size in (65536, 4096, 512, 1):
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * size)
    os.close(fd)
    return ballast


def fill_inodes(path: str) -> str:
    """Use up the inodes of the filesystem of ``path`` with empty files in one folder; return
    the folder (delete it to free)."""
    ballast = os.path.join(path, "ballast")
    os.makedirs(ballast, exist_ok=True)
    with contextlib.suppress(OSError):
        for i in range(100_000):
            os.close(os.open(os.path.join(ballast, str(i)), os.O_WRONLY | os.O_CREAT, 0o600))
    return ballast


def cli(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str, words: str) -> bool:
    return (err.startswith("ddmq: error: ") and err.count("\n") == 1 and words in err
            and "Traceback" not in err)


def queue_files(b: ddmq.Broker, queue: str = "q") -> dict[str, list[str]]:
    """The names in each of the queue's folders; tmp/ and dead/ are made when first
    needed (ddmq.layout), and on a full disk they may not have been."""
    folder = os.path.join(b.root, queue)

    def names(sub: str) -> list[str]:
        path = os.path.join(folder, sub)
        if sub in ("tmp", "dead") and not os.path.exists(path):
            return []
        return sorted(n for n in os.listdir(path) if sub or n[0].isdigit())

    return {sub or "waiting": names(sub) for sub in ("", "work", "tmp", "dead")}


def tree(path: str) -> dict[str, bytes]:
    """Every file under ``path`` with its content, to prove nothing changed."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                out[os.path.relpath(os.path.join(folder, name), path)] = handle.read()
    return out


def all_parse(b: ddmq.Broker, queue: str = "q") -> bool:
    """Every waiting and at-work file is a whole message (nothing half-written is visible)."""
    waiting, work = b.get_message_list(queue)
    paths = [os.path.join(queue, n) for n in waiting] + [os.path.join(queue, "work", n) for n in work]
    return all(isinstance(b.get_message(p), ddmq.Message) for p in paths)


# --- full ----------------------------------------------------------------------------------

@pytest.mark.parametrize("options, fill", [("size=256k", fill_space), ("nr_inodes=64", fill_inodes)],
                         ids=["no space", "no inodes"])
def test_full_filesystem_consume_ack_nack_and_clean(tmp_path, monkeypatch, capsys, options, fill):
    """On a full filesystem claims and acks still work (renames and unlinks need no space);
    publish, nack and the requeue of an expired lease fail with ENOSPC, and the message they
    were about stays safe (taken privately, never half-written); once space returns it is
    back in the queue and the queue works as before."""
    with mounted_tmpfs(str(tmp_path / "full"), options) as mount:
        b = ddmq.broker(os.path.join(mount, "r"), create=True)
        b.create_queue("q")
        for i in range(5):
            b.publish("q", f"m{i}", clean=False)
        nacked = b.consume("q", clean=False)
        expired = b.consume("q", clean=False)
        by_cli = b.consume("q", clean=False)
        ballast = fill(mount)

        acked = b.consume("q")  # its automatic housekeeping has nothing to requeue yet
        b.ack(acked)
        b.close()  # the acked file, kept for a publish to rewrite, goes: publishing needs new room
        fill(mount)  # what the ack freed
        with pytest.raises(ddmq.FilesystemError) as caught:
            b.publish("q", "x" * 10_000)
        assert caught.value.errno == errno.ENOSPC and "No space left" in str(caught.value)
        with pytest.raises(ddmq.FilesystemError) as caught:
            b.nack(nacked)
        assert caught.value.errno == errno.ENOSPC
        work = os.path.join(b.root, "q", "work")
        os.rename(os.path.join(work, expired.filename),  # its lease ended 10 s ago
                  os.path.join(work, f"{int(b.clock.now()) - 10}.{expired.filename.partition('.')[2]}"))
        with pytest.raises(ddmq.FilesystemError) as caught:
            b.clean("q", force=True)
        assert caught.value.errno == errno.ENOSPC
        status, out, err = cli(capsys, "publish", b.root, "q", "x" * 10_000)
        assert status == 1 and out == "" and one_line_error(err, "No space left"), err
        status, out, err = cli(capsys, "nack", b.root, "q", by_cli.filename)
        assert status == 1 and out == "" and one_line_error(err, "No space left"), err
        # Nothing half-written is visible. What the caller nacked is still at work under
        # its lease, the caller's to nack again; the expired one was taken for a requeue
        # and waits in tmp/ for housekeeping (or, with no inode left for a tmp/ folder,
        # stays at work).
        assert all_parse(b)
        files = queue_files(b)

        def ids(names):
            return sorted(re.search(r"ddmq[0-9a-f]{32}", n).group() for n in names)

        caller_ids = ids([nacked.filename, by_cli.filename])
        expired_id = ids([expired.filename])
        assert ids(files["work"]) in (caller_ids, sorted(caller_ids + expired_id)), files
        assert ids(files["work"] + files["tmp"]) == sorted(caller_ids + expired_id), files
        assert all(n.startswith("requeue.") for n in files["tmp"]), files
        assert files["dead"] == [], files
        assert len(files["waiting"]) == 1  # m4

        # Space returns. Housekeeping finishes the requeues it finds stale (after 60 s in
        # production: REQUEUE_STALE_SECONDS; at once here), and nothing is missing.
        if os.path.isdir(ballast):
            shutil.rmtree(ballast)
        else:
            os.unlink(ballast)
        monkeypatch.setattr(sys.modules["ddmq.housekeeping"], "REQUEUE_STALE_SECONDS", 0)
        b.clean("q", force=True)
        b.nack(nacked)
        status, out, err = cli(capsys, "nack", b.root, "q", by_cli.filename)
        assert status == 0, err
        got = []
        while (msg := b.consume("q")) is not None:
            got.append((msg.message, msg.requeue_counter))
            b.ack(msg)
        assert sorted(got) == sorted([(nacked.message, 1), (expired.message, 1), (by_cli.message, 1),
                                      ("m4", 0)])
        b.close()
        assert queue_files(b) == {"waiting": [], "work": [], "tmp": [], "dead": []}
        b.publish("q", "works again")
        assert b.consume("q").message == "works again"


# --- read-only -----------------------------------------------------------------------------

def test_read_only_filesystem_ack_consume_and_cli(tmp_path, capsys):
    """On a read-only filesystem every change fails with EROFS and changes nothing; a lease
    held meanwhile is still ours once the filesystem is writable again."""
    with mounted_tmpfs(str(tmp_path / "ro"), "size=1m") as mount:
        b = ddmq.broker(os.path.join(mount, "r"), create=True)
        b.create_queue("q")
        for i in range(3):
            b.publish("q", f"m{i}")
        held = b.consume("q")
        subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
        try:
            before = tree(mount)
            for call in (lambda: b.ack(held), lambda: b.nack(held), lambda: b.consume("q"),
                         lambda: b.extend_lease(held, 60)):
                with pytest.raises(ddmq.FilesystemError) as caught:
                    call()
                assert caught.value.errno == errno.EROFS and "Read-only" in str(caught.value)
            assert b.clean("q", force=True)  # nothing expired: nothing to change, no error
            for argv in (("publish", b.root, "q", "m"), ("consume", b.root, "q"),
                         ("ack", b.root, "q", held.filename), ("purge", b.root, "q"),
                         ("create", b.root, "new")):
                status, out, err = cli(capsys, *argv)
                assert status == 1 and out == "" and one_line_error(err, "Read-only file system"), \
                    (argv, err)
            assert tree(mount) == before
        finally:
            subprocess.run(["mount", "-o", "remount,rw", mount], check=True)
        b.ack(held)
        assert sorted(m.message for m in b.consume("q", n=5)) == ["m1", "m2"]


# --- permission ----------------------------------------------------------------------------

CONSUME = """
import sys, ddmq
try:
    m = ddmq.broker(sys.argv[1]).consume("q")
    print("OK", m and m.message)
except ddmq.FilesystemError as e:
    print("FilesystemError", e.errno, e)
"""
CLI = "import sys; from ddmq.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize("folder, mode", [("work", 0o555), ("", 0o333), ("", 0o555)],
                         ids=["work/ not writable", "queue not readable", "queue not writable"])
def test_folder_without_permission_consume_and_cli(b, folder, mode):
    """A consumer without permission on the queue's folders gets EACCES, clearly, from the
    library and as one line from the command line; the message stays where it was; once the
    permission is back, it is consumed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop the capabilities that override permissions")
    b.publish("q", "kept")
    path = os.path.join(b.root, "q", folder)
    before = tree(b.root)
    os.chmod(path, mode)
    try:
        lib = run_as_unprivileged(CONSUME, b.root)
        cmd = run_as_unprivileged(CLI, "consume", b.root, "q")
    finally:
        os.chmod(path, 0o755)
    assert lib.stdout.split()[:2] == ["FilesystemError", str(errno.EACCES)], lib.stdout + lib.stderr
    assert "Permission denied" in lib.stdout
    assert cmd.returncode == 1 and cmd.stdout == "" and one_line_error(cmd.stderr, "Permission denied"), \
        cmd.stderr
    assert tree(b.root) == before
    assert b.consume("q").message == "kept"
