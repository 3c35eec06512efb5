"""Roots are interchangeable with the original ddmq 0.9.14, run for real.

The original is installed from PyPI into a private folder. It calls
``yaml.load`` without a Loader, which PyYAML 6 refuses, so its child process
gets ``SafeLoader`` as the default Loader; nothing else of it is changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import ddmq
from conftest import expire

SHIM = """
import sys, yaml
_load = yaml.load
yaml.load = lambda stream, Loader=yaml.SafeLoader: _load(stream, Loader=Loader)
sys.path.insert(0, sys.argv[1])
import ddmq
assert ddmq.__file__.startswith(sys.argv[1]), ddmq.__file__
root = sys.argv[2]
"""


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> str:
    target = str(tmp_path_factory.mktemp("ddmq-0.9.14"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--target", target, "ddmq==0.9.14"], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot install the original ddmq 0.9.14 from PyPI: {done.stderr.strip()[-200:]}")
    return target


def run_original(original: str, root: str, code: str) -> str:
    done = subprocess.run([sys.executable, "-c", SHIM + code, original, root],
                          capture_output=True, text=True, timeout=120, cwd=original)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_ddmq_reads_a_root_written_by_the_original(original, tmp_path):
    root = str(tmp_path / "root")
    run_original(original, root, """
b = ddmq.broker(root, create=True)
b.create_queue('jobs')
for text, prio in (('third', 5), ('first', 1), ('second', 2), ('fourth', 999)):
    b.publish('jobs', msg_text=text, priority=prio, clean=False)
print(b.consume('jobs', clean=False).message)
""")
    b = ddmq.broker(root)
    assert b.list_queues() == ["jobs"]
    assert b.get_settings("jobs")["message_timeout"] == 600
    waiting, (in_work,) = b.get_message_list("jobs")
    assert len(waiting) == 3
    assert [b.consume("jobs").message for _ in range(3)] == ["second", "third", "fourth"]
    # The original wrote "requeue": false into every message it published
    # (its default), so the expired one is dead-lettered, not deleted as the
    # original would have done, and can be put back.
    expire(b, "jobs", in_work)
    b.clean("jobs", force=True)
    assert b.consume("jobs") is None
    (dead,) = b.list_dead("jobs")
    assert dead.startswith("expired.")
    b.requeue_dead("jobs")
    again = b.consume("jobs")
    assert again.message == "first"
    b.ack(again)


def test_original_reads_a_root_written_by_ddmq(original, tmp_path):
    root = str(tmp_path / "root")
    b = ddmq.broker(root, create=True)
    b.create_queue("jobs")
    b.publish("jobs", "a", priority=1)
    b.publish("jobs", "b", priority=2)
    out = run_original(original, root, """
import json
b = ddmq.broker(root)
print(json.dumps(b.list_queues()))
first = b.consume('jobs', clean=False)
second = b.consume('jobs', clean=False)
print(json.dumps([first.message, second.message]))
b.ack('jobs', first.filename, clean=False)
b.ack('jobs', second.filename, clean=False)
print(json.dumps(b.get_message_list('jobs')))
""")
    queues, consumed, left = (json.loads(line) for line in out.splitlines())
    assert queues == ["jobs"]
    assert consumed == ["a", "b"]
    assert left == [[], []]
    assert b.get_message_list("jobs") == ([], [])
    assert sorted(os.listdir(os.path.join(root, "jobs"))) == ["ddmq.yaml", "dead", "tmp", "work"]


def test_custom_requeue_priority_of_the_original_is_understood(original, tmp_path):
    root = str(tmp_path / "root")
    run_original(original, root, """
b = ddmq.broker(root, create=True)
b.create_queue('q')
b.publish('q', msg_text='x', requeue=True, requeue_prio=7, clean=False)
""")
    b = ddmq.broker(root)
    msg = b.consume("q")
    assert (msg.requeue, msg.requeue_prio) == (True, 7)
    b.nack(msg)
    assert b.consume("q").priority == 7


def test_original_handles_work_files_of_ddmq_claims(original, tmp_path):
    """ddmq's work names carry its claimer's tag; the original acks them and
    requeues them when their lease has expired (it reads only the expiry)."""
    root = str(tmp_path / "root")
    b = ddmq.broker(root, create=True)
    b.publish("jobs", "acked by the original")
    b.publish("jobs", "expired, requeued by the original", requeue=True)
    held = b.consume("jobs")
    expiring = b.consume("jobs")
    assert held.filename.count(".") == 4  # EXPIRY.PRIO.QNUM.ddmqID.CLAIMER
    expire(b, "jobs", expiring.filename)
    (expired_name,) = [n for n in b.get_message_list("jobs")[1] if n != held.filename]
    out = run_original(original, root, f"""
b = ddmq.broker(root)
b.ack('jobs', {held.filename!r}, clean=False)
b.clean('jobs', force=True)
print(b.get_message_list('jobs')[0])
""")
    assert expired_name not in out
    waiting, work = b.get_message_list("jobs")
    assert work == [] and len(waiting) == 1
    again = b.consume("jobs")
    assert again.message == "expired, requeued by the original"
    assert again.requeue_counter == 1
    b.ack(again)
