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
    b.close()  # its spares go, and the tmp/ folder they leave empty
    assert sorted(os.listdir(os.path.join(root, "jobs"))) == ["ddmq.yaml", "work"]


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
    assert held.filename.count(".") == 3  # EXPIRY.PRIO.QNUM.ddmqIDZCLAIMER
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


def test_fifo_order_holds_across_versions(original, tmp_path):
    """0.9.14's queue numbers are str(time.time()) without the dot (15-17
    digits), ours the time in ns (19): both are compared as the time they
    say, so one priority's messages come out in the order they were
    published, whichever version published or consumes them."""
    root = str(tmp_path / "root")
    b = ddmq.broker(root, create=True)
    b.publish("q", "1 ddmq")
    run_original(original, root, "ddmq.broker(root).publish('q', msg_text='2 original', priority=999, clean=False)")
    b.publish("q", "3 ddmq")
    run_original(original, root, "ddmq.broker(root).publish('q', msg_text='4 original', priority=999, clean=False)")
    ours = [b.consume("q") for _ in range(4)]
    assert [m.message for m in ours] == ["1 ddmq", "2 original", "3 ddmq", "4 original"]
    for m in ours:  # given back untouched, for the original to consume
        b.nack(m, requeue=True, count=False)
    out = run_original(original, root, """
import json
b = ddmq.broker(root)
print(json.dumps([b.consume('q', clean=False).message for _ in range(4)]))
""")
    assert json.loads(out) == ["1 ddmq", "2 original", "3 ddmq", "4 original"]


def test_a_default_message_of_ours_is_requeued_not_lost_by_the_original(original, tmp_path):
    """We write "requeue": true (the queue's setting at publish), which 0.9.14
    acts on: its clean requeues an expired lease, its nack requeues; we keep
    "the queue's setting when it matters" for ourselves in requeue_given."""
    root = str(tmp_path / "root")
    b = ddmq.broker(root, create=True)
    b.publish("q", "expires")
    b.publish("q", "nacked")
    out = run_original(original, root, """
import json, os, time
b = ddmq.broker(root)
expiring = b.consume('q', clean=False)
nacked = b.consume('q', clean=False)
work = os.path.join(root, 'q', 'work')
old = os.path.join(work, expiring.filename)
os.rename(old, os.path.join(work, str(int(time.time()) - 10) + expiring.filename[expiring.filename.index('.'):]))
b.nack(nacked)
b.clean('q', force=True)
print(json.dumps(sorted(m.split('.')[0] for m in b.get_message_list('q')[0])))
print(json.dumps(b.get_message_list('q')[1]))
""")
    priorities, work = (json.loads(line) for line in out.splitlines())
    # Both back (0.9.14 turns its requeue priority 0 into 999: its own bug).
    assert work == [] and priorities == ["999", "999"]
    texts = sorted(b.consume("q").message for _ in range(2))
    assert texts == ["expires", "nacked"]
    b.update_settings_file("q", {"requeue": False})  # for us, null still means "the setting now"
    b.publish("q", "follows the setting")
    msg = b.consume("q")
    assert msg.requeue is None
    b.nack(msg)
    assert b.get_message_list("q")[0] == []


def test_a_custom_requeue_priority_of_ours_is_honoured_by_the_original(original, tmp_path):
    root = str(tmp_path / "root")
    b = ddmq.broker(root, create=True)
    b.publish("q", "x", requeue_prio=7)
    out = run_original(original, root, """
b = ddmq.broker(root)
b.nack(b.consume('q', clean=False))
print(b.get_message_list('q')[0][0])
""")
    assert out.startswith("7.")
    msg = b.consume("q")
    assert (msg.priority, msg.requeue, msg.requeue_prio, msg.requeue_counter) == (7, True, 7, 1)


def test_the_original_deletes_a_message_we_consumed(original, tmp_path):
    """Our work names keep the claimer's tag inside the last field
    (ddmqIDZCLAIMER), a name 0.9.14's delete_message accepts."""
    root = str(tmp_path / "root")
    b = ddmq.broker(root, create=True)
    b.publish("q", "x")
    msg = b.consume("q")
    run_original(original, root, f"""
import os
b = ddmq.broker(root)
b.delete_message(os.path.join(root, 'q', 'work', {msg.filename!r}))
""")
    assert b.get_message_list("q") == ([], [])


def test_the_original_deletes_an_idle_queue_of_ours(original, tmp_path):
    """tmp/ and dead/ exist only while needed, so 0.9.14's delete_queue,
    which removes only the files it knows, removes an idle queue whole."""
    root = str(tmp_path / "root")
    b = ddmq.broker(root, create=True)
    for i in range(5):
        b.publish("q", i)
    for _ in range(5):
        b.ack(b.consume("q"))
    b.close()
    run_original(original, root, "ddmq.broker(root).delete_queue('q')")
    assert not os.path.exists(os.path.join(root, "q"))
    assert b.list_queues() == []
