"""Tests of the ``ddmq`` command line (:mod:`ddmq.cli`).

Most tests call :func:`ddmq.cli.main` in this process and read its output
with ``capsys``; a few run ``python -m ddmq`` for real. Every bad input is
checked for one error line on stderr, a non-zero status, no traceback and an
unchanged folder tree.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
import yaml

import ddmq
from conftest import expire, populate
from ddmq.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers -----------------------------------------------------------------------------

def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``ddmq argv...`` in this process: (status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def ok(capsys, *argv: str) -> str:
    """Run a command that must succeed without any diagnostics; its stdout."""
    status, out, err = run(capsys, *argv)
    assert (status, err) == (0, ""), err
    return out


def run_process(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ddmq", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def snapshot(path) -> dict[str, object]:
    """Every folder and file under ``path`` (with its content and mode)."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(path):
        rel = os.path.relpath(folder, path)
        out[rel + "/"] = os.stat(folder).st_mode
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                out[os.path.join(rel, name)] = handle.read()
    return out


def work_names(root: str, queue: str = "q") -> list[str]:
    return ddmq.broker(root).get_message_list(queue)[1]


def consume_json(capsys, root: str, queue: str = "q", *options: str) -> list[dict]:
    out = ok(capsys, "consume", *options, root, queue)
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(autouse=True)
def _ddmq_logger_untouched():
    """main() must leave the library's logger as it found it."""
    logger = logging.getLogger("ddmq")
    before = (logger.level, list(logger.handlers))
    yield
    assert (logger.level, list(logger.handlers)) == before


# --- end to end, as a user types it ---------------------------------------------------------------

def test_readme_session_end_to_end(tmp_path):
    root = tmp_path / "ddmq"
    done = run_process("create", "-f", root, "queue_name")
    assert (done.returncode, done.stdout, done.stderr) == (0, "Created new queue: queue_name\n", "")
    done = run_process("publish", root, "queue_name", "Hello World!")
    assert done.returncode == 0 and done.stdout.startswith("Successfully published message:")
    assert "message = Hello World!" in done.stdout
    done = run_process("view", root)
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["| *queue*    | *msg in queue* | *msg at work* |",
                                        "| queue_name | 1              | 0             |"]
    done = run_process("consume", root, "queue_name")
    assert done.returncode == 0, done.stderr
    msg = json.loads(done.stdout)
    assert msg["message"] == "Hello World!" and msg["queue"] == "queue_name"
    assert os.path.exists(root / "queue_name" / "work" / msg["filename"])
    done = run_process("view", "--format", "json", root)
    assert json.loads(done.stdout) == {"queue_name": [0, 1]}
    done = run_process("purge", root, "queue_name")
    assert done.stdout == "Purged queue: queue_name\t(0 messages in queue, 1 messages in work)\n"
    done = run_process("delete", root, "queue_name")
    assert (done.returncode, done.stdout) == (0, "Deleted queue: queue_name\n")
    assert ddmq.broker(root).list_queues() == []


def test_process_version_help_and_errors(tmp_path):
    done = run_process("-v")
    assert (done.returncode, done.stdout) == (0, f"ddmq version {ddmq.__version__}\n")
    assert run_process("--version").stdout == f"ddmq version {ddmq.__version__}\n"
    done = run_process("-h")
    assert done.returncode == 0
    for command in ("view", "create", "delete", "publish", "consume", "ack", "nack", "del_msg",
                    "purge", "clean", "dead", "json"):
        assert command in done.stdout
    done = run_process("publish", "-h")
    assert done.returncode == 0 and "--requeue_prio" in done.stdout and "--skip-cleaning" in done.stdout
    done = run_process("consume", tmp_path / "missing", "q")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("ddmq: error: root folder") and done.stderr.count("\n") == 1
    done = run_process("publish", tmp_path, "q")
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_process_json_payload(tmp_path):
    root = str(tmp_path / "r")
    payload = {"command": "publish", "root": root, "queue": "q", "message": "via json", "f": True, "s": True}
    done = run_process("json", json.dumps(payload))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = run_process("json", json.dumps({"cmd": "consume", "root": root, "queue": "q"}))
    assert json.loads(done.stdout)["message"] == "via json"


# --- happy paths, in process -----------------------------------------------------------------------

def test_view_formats(capsys, root):
    b = ddmq.broker(root)
    for queue in ("alpha", "b-2", "q_3"):
        b.create_queue(queue)
    b.publish("alpha", "one")
    b.publish("alpha", "two")
    b.consume("alpha")
    assert ok(capsys, "view", root).splitlines() == [
        "| *queue* | *msg in queue* | *msg at work* |",
        "| alpha   | 1              | 1             |",
        "| b-2     | 0              | 0             |",
        "| q_3     | 0              | 0             |"]
    assert ok(capsys, "view", "--format", "default", root) == ok(capsys, "view", root)
    assert ok(capsys, "view", root, "--format") == ok(capsys, "view", root)
    expected = {"alpha": [1, 1], "b-2": [0, 0], "q_3": [0, 0]}
    assert json.loads(ok(capsys, "view", "--format", "json", root)) == expected
    assert yaml.safe_load(ok(capsys, "view", "--format", "yaml", root)) == expected
    assert ok(capsys, "view", "-n", root) == "alpha\nb-2\nq_3\n"
    assert json.loads(ok(capsys, "view", "-n", "--format", "json", root)) == ["alpha", "b-2", "q_3"]
    assert yaml.safe_load(ok(capsys, "view", "-n", "--format", "yaml", root)) == ["alpha", "b-2", "q_3"]
    assert json.loads(ok(capsys, "view", "--format", "json", root, "q_3,alpha")) == {"alpha": [1, 1], "q_3": [0, 0]}
    assert ok(capsys, "view", "-n", root, "b-2") == "b-2\n"


def test_view_empty_root_and_f_creates_root(capsys, tmp_path):
    root = tmp_path / "new"
    assert ok(capsys, "view", "-f", root) == "| *queue* | *msg in queue* | *msg at work* |\n"
    assert os.path.isfile(root / "ddmq.yaml")
    assert ok(capsys, "view", "-n", root) == ""
    assert json.loads(ok(capsys, "view", "--format", "json", root)) == {}


def test_create_and_delete_lists(capsys, tmp_path):
    root = tmp_path / "r"
    assert ok(capsys, "create", "-f", root, "a,b,c").splitlines() == [
        "Created new queue: a", "Created new queue: b", "Created new queue: c", "Created 3 new queues"]
    assert ok(capsys, "create", root, "a,d").splitlines() == ["Already existing: a", "Created new queue: d"]
    assert ok(capsys, "create", "-s", root, "e") == ""
    assert ddmq.broker(root).list_queues() == ["a", "b", "c", "d", "e"]
    assert ok(capsys, "delete", root, "a,b").splitlines() == [
        "Deleted queue: a", "Deleted queue: b", "Deleted 2 queues"]
    assert ok(capsys, "delete", "-s", root, "c") == ""
    assert ddmq.broker(root).list_queues() == ["d", "e"]


def test_publish_options_reach_the_message(capsys, b, root):
    out = ok(capsys, "publish", "-p", 5, "-t", 30, "-l", 2, "--requeue_prio", 7, root, "q", "opts")
    assert "priority = 5" in out
    msg = b.consume("q")
    assert (msg.message, msg.priority, msg.timeout, msg.requeue_limit, msg.requeue_prio, msg.requeue) == (
        "opts", 5, 30, 2, 7, True)
    ok(capsys, "publish", "--priority", 1, "--timeout", 9, "--requeue", "--requeue_limit", 0, root, "q", "long")
    msg = b.consume("q")
    assert (msg.priority, msg.timeout, msg.requeue, msg.requeue_limit) == (1, 9, True, 0)
    ok(capsys, "publish", root, "q", "defaults")
    msg = b.consume("q")
    assert (msg.priority, msg.requeue, msg.timeout) == (999, None, None)
    assert ok(capsys, "publish", "-s", root, "q", "quiet") == ""
    out = ok(capsys, "publish", "-C", root, "q", "skip")
    assert out.startswith("Skipping queue cleaning.\nSuccessfully published message:")
    ok(capsys, "publish", "--skip-cleaning", "-s", root, "q", "skip2")
    ok(capsys, "publish", "--skip_cleaning", "-s", root, "q", "--", "-dash")
    assert [m.message for m in b.consume("q", n=10)] == ["quiet", "skip", "skip2", "-dash"]


def test_publish_f_creates_root_and_queue(capsys, tmp_path):
    root = tmp_path / "fresh"
    out = ok(capsys, "publish", "-f", root, "jobs", "first")
    assert out.startswith("Created new queue: jobs\nSuccessfully published message:")
    out = ok(capsys, "publish", "-f", root, "jobs", "second")
    assert out.startswith("Successfully published message:")
    assert [m.message for m in ddmq.broker(root).consume("jobs", n=5)] == ["first", "second"]


def test_priorities_zero_first_and_numeric_order(capsys, b, root):
    for prio in (10, 1000, 9, 0, 999):
        ok(capsys, "publish", "-s", "-p", prio, root, "q", f"p{prio}")
    got = consume_json(capsys, root, "q", "-n", 10)
    assert [m["message"] for m in got] == ["p0", "p9", "p10", "p999", "p1000"]


def test_consume_formats_and_empty_queue(capsys, b, root):
    for text in ("a", "b", "c", "d"):
        b.publish("q", text)
    (first,) = consume_json(capsys, root)
    assert first["message"] == "a" and first["filename"] in work_names(root)
    plain = ok(capsys, "consume", "--format", "plain", root, "q")
    assert "message = b" in plain and "filename = " in plain
    docs = list(yaml.safe_load_all(ok(capsys, "consume", "-n", 2, "--format", "yaml", root, "q")))
    assert [d["message"] for d in docs] == ["c", "d"]
    assert len(work_names(root)) == 4
    # Empty: the note goes to stderr when stdout carries data, to stdout in plain.
    assert run(capsys, "consume", root, "q") == (0, "", "No more messages in q\n")
    assert run(capsys, "consume", "--format", "plain", root, "q") == (0, "No more messages in q\n", "")
    assert run(capsys, "consume", "-s", root, "q") == (0, "", "")
    assert run(capsys, "consume", root, "q", "-n") == (0, "", "No more messages in q\n")


def test_consume_f_creates_queue_without_polluting_json(capsys, tmp_path):
    root = tmp_path / "r"
    assert run(capsys, "consume", "-f", root, "new") == (
        0, "", "Created new queue: new\nNo more messages in new\n")
    assert ddmq.broker(root).list_queues() == ["new"]


def test_consume_wait_gets_a_later_message(capsys, b, root):
    def publish_later():
        time.sleep(0.3)
        ddmq.broker(root).publish("q", "late")
    thread = threading.Thread(target=publish_later)
    thread.start()
    started = time.monotonic()
    (msg,) = consume_json(capsys, root, "q", "-w", 20)
    thread.join()
    assert msg["message"] == "late" and time.monotonic() - started < 15
    started = time.monotonic()
    assert run(capsys, "consume", "--wait", "0.3", root, "q") == (0, "", "No more messages in q\n")
    assert time.monotonic() - started >= 0.25


def test_ack_by_work_file_names(capsys, b, root):
    for text in ("a", "b", "c"):
        b.publish("q", text)
    names = [m["filename"] for m in consume_json(capsys, root, "q", "-n", 3)]
    out = ok(capsys, "ack", root, "q", names[0])
    assert out == f"acked {os.path.join(root, 'q', 'work', names[0])}\n"
    # A comma-separated list; a full path is reduced to its name.
    out = ok(capsys, "ack", "-C", root, "q", f"{names[1]},{os.path.join(root, 'q', 'work', names[2])}")
    assert out.splitlines() == [f"acked {os.path.join(root, 'q', 'work', n)}" for n in names[1:]]
    assert b.get_message_list("q") == ([], [])


def test_ack_r_requeues(capsys, b, root):
    b.publish("q", "again")
    (msg,) = consume_json(capsys, root)
    assert ok(capsys, "ack", "-r", root, "q", msg["filename"]).endswith("(requeued)\n")
    back = b.consume("q")
    assert (back.message, back.requeue_counter, back.priority) == ("again", 1, 0)


def test_nack_requeues_and_r_forces(capsys, b, root):
    b.publish("q", "retry")
    b.publish("q", "no-requeue", requeue=False)
    names = [m["filename"] for m in consume_json(capsys, root, "q", "-n", 2)]
    out = ok(capsys, "nack", root, "q", ",".join(names))
    assert out.splitlines() == [f"nacked {os.path.join(root, 'q', 'work', n)}" for n in names]
    (msg,) = b.consume("q", n=5)  # the one that said requeue=False is dropped
    assert (msg.message, msg.requeue_counter) == ("retry", 1)
    b.publish("q", "forced", requeue=False)
    (forced,) = consume_json(capsys, root, "q", "-n", 1)
    ok(capsys, "nack", "-r", "--skip-cleaning", root, "q", forced["filename"])
    assert b.consume("q").message == "forced"


def test_del_msg_waiting_and_at_work(capsys, b, root):
    waiting = [b.publish("q", t).filename for t in ("a", "b", "c")]
    b.publish("q", "d", priority=0)
    at_work = b.consume("q").filename
    out = ok(capsys, "del_msg", root, "q", waiting[0])
    assert out == f"Deleted {os.path.join(root, 'q', waiting[0])}\n"
    out = ok(capsys, "del_msg", "-C", root, "q", f"{waiting[1]},{at_work}")
    assert out.splitlines() == [f"Deleted {os.path.join(root, 'q', waiting[1])}",
                                f"Deleted {os.path.join(root, 'q', 'work', at_work)}",
                                "Deleted 2 messages"]
    assert ok(capsys, "del_msg", "-s", root, "q", os.path.join(root, "q", waiting[2])) == ""
    assert b.get_message_list("q") == ([], [])


def test_purge_and_clean_lists(capsys, b, root):
    b.create_queue("other")
    b.publish("q", "x")
    b.publish("q", "y")
    b.consume("q")
    out = ok(capsys, "purge", root, "q,other")
    assert out.splitlines() == ["Purged queue: q\t(1 messages in queue, 1 messages in work)",
                                "Purged queue: other\t(0 messages in queue, 0 messages in work)",
                                "Purged 2 queues"]
    assert ok(capsys, "clean", root, "q,other").splitlines() == [
        "Cleaned queue: q", "Cleaned queue: other", "Cleaned 2 queues"]
    assert ok(capsys, "clean", "-s", root, "q") == ""


def test_clean_requeues_expired_leases(capsys, b, root):
    b.publish("q", "slow")
    (msg,) = consume_json(capsys, root, "q", "-C")
    expire(b, "q", msg["filename"])
    assert ok(capsys, "clean", root, "q") == "Cleaned queue: q\n"
    (again,) = consume_json(capsys, root, "q", "-C")
    assert (again["message"], again["requeue_counter"]) == ("slow", 1)


def test_dead_letters_unparseable_list_and_requeue(capsys, b, root):
    with open(os.path.join(root, "q", "999.1.ddmqdeadbeef"), "w") as handle:
        handle.write("{not json")
    status, out, err = run(capsys, "consume", root, "q")
    assert (status, out) == (0, "") and "No more messages in q" in err
    assert ok(capsys, "dead", root, "q") == "unparseable.999.1.ddmqdeadbeef\n"
    assert json.loads(ok(capsys, "dead", "--format", "json", root, "q")) == ["unparseable.999.1.ddmqdeadbeef"]
    assert yaml.safe_load(ok(capsys, "dead", "--format", "yaml", root, "q")) == ["unparseable.999.1.ddmqdeadbeef"]
    assert ok(capsys, "dead", "--requeue", root, "q") == "Requeued dead letter: unparseable.999.1.ddmqdeadbeef\n"
    assert b.get_message_list("q")[0] == ["999.1.ddmqdeadbeef"]
    assert ok(capsys, "dead", root, "q") == "No dead letters in q\n"
    assert ok(capsys, "dead", "-r", root, "q") == "No dead letters in q\n"


def test_dead_letter_by_requeue_limit_then_requeue_named(capsys, b, root):
    ok(capsys, "publish", "-s", "-l", 0, root, "q", "fragile")
    ok(capsys, "publish", "-s", "-l", 0, root, "q", "fragile2")
    for msg in consume_json(capsys, root, "q", "-n", 2):
        expire(b, "q", msg["filename"])
    ok(capsys, "clean", "-s", root, "q")
    dead = ok(capsys, "dead", root, "q").split()
    assert len(dead) == 2 and all(name.startswith("requeue_limit.") for name in dead)
    assert ok(capsys, "dead", "-r", root, "q", dead[1]) == f"Requeued dead letter: {dead[1]}\n"
    assert ok(capsys, "dead", root, "q").split() == dead[:1]
    assert json.loads(ok(capsys, "dead", "--format", "json", "--requeue", root, "q")) == dead[:1]
    assert sorted(m.message for m in b.consume("q", n=5)) == ["fragile", "fragile2"]


def test_json_runs_commands_as_if_typed(capsys, tmp_path):
    root = str(tmp_path / "r")
    def js(**payload):
        return ok(capsys, "json", json.dumps(payload))
    assert js(command="create", root=root, queue=["a", "b"], f=True).splitlines()[-1] == "Created 2 new queues"
    js(cmd="publish", root=root, queue="a", message="-looks like an option", priority=0, s=True)
    js(command="publish", root=root, queue="a", message="later", priority=5, timeout=60,
       requeue=True, requeue_limit=3, requeue_prio=2, skip_cleaning=True, s=True, f=None, d=False)
    assert json.loads(js(command="view", root=root, format="json")) == {"a": [2, 0], "b": [0, 0]}
    assert js(command="view", root=root, n=True, queue="b") == "b\n"
    got = [json.loads(line) for line in js(command="consume", root=root, queue="a", n=2, wait=0).splitlines()]
    assert [m["message"] for m in got] == ["-looks like an option", "later"]
    assert (got[1]["timeout"], got[1]["requeue_limit"], got[1]["requeue_prio"]) == (60, 3, 2)
    out = js(command="ack", root=root, queue="a", msg_files=[m["filename"] for m in got])
    assert out.count("acked ") == 2
    assert js(command="dead", root=root, queue="a", requeue=True) == "No dead letters in a\n"
    assert js(command="dead", root=root, queue="a") == "No dead letters in a\n"
    assert js(command="purge", root=root, queue="a,b").endswith("Purged 2 queues\n")
    assert js(command="delete", root=root, queue="b") == "Deleted queue: b\n"


def test_verbose_logs_to_stderr_and_silent_hides_human_lines(capsys, b, root):
    status, out, err = run(capsys, "create", "-v", root, "new")
    assert status == 0 and out == "Created new queue: new\n"
    assert "ddmq: INFO: creating queue(s): new" in err
    status, out, err = run(capsys, "publish", "-d", root, "q", "m")
    assert status == 0 and "ddmq: DEBUG: published" in err
    assert run(capsys, "view", "-s", "-n", root) == (0, "new\nq\n", "")


# --- bad input: one line, non-zero status, no traceback, nothing changed -----------------------------------

W = "1700000000.999.1700000000000000001.ddmq0123456789abcdef"   # a well-formed but absent work file
M = "999.1700000000000000001.ddmq0123456789abcdef"              # a well-formed but absent waiting file

# (argv with {root}, {fresh} (a folder that does not exist), {plain} (a folder that is no root),
#  {work} (a real work file of q), {dead} (a real dead letter of q); expected status; words in the error)
BAD = [
    # the command line itself
    ([], 2, "a command is required"),
    (["frobnicate", "{root}"], 2, "invalid choice"),
    (["-x"], 2, "unrecognized"),
    # view
    (["view"], 2, "required: root"),
    (["view", "{fresh}"], 1, "does not exist"),
    (["view", "{plain}"], 1, "not initiated"),
    (["view", "{root}", "../x"], 2, "invalid queue name"),
    (["view", "{root}", "a/b"], 2, "invalid queue name"),
    (["view", "{root}", "."], 2, "invalid queue name"),
    (["view", "{root}", ""], 2, "invalid queue name"),
    (["view", "{root}", "q,nope"], 1, "'nope' does not exist"),
    (["view", "--format", "xml", "{root}"], 2, "invalid choice"),
    (["view", "{root}", "q", "extra"], 2, "unrecognized arguments"),
    # create
    (["create", "{root}"], 2, "required: queue"),
    (["create", "{fresh}", "a"], 1, "use -f to create it"),
    (["create", "{plain}", "a"], 1, "use -f to initiate it"),
    (["create", "-f", "{fresh}", "good,../x"], 2, "invalid queue name '../x'"),
    (["create", "-f", "{root}", "a/b"], 2, "invalid queue name"),
    (["create", "{root}", "."], 2, "invalid queue name"),
    (["create", "{root}", ""], 2, "invalid queue name"),
    (["create", "{root}", "new,"], 2, "invalid queue name ''"),
    (["create", "", "q"], 2, "root folder must not be empty"),
    # delete
    (["delete", "{root}", "nope"], 1, "'nope' does not exist"),
    (["delete", "{root}", "q,nope"], 1, "'nope' does not exist"),
    (["delete", "{root}", "../q"], 2, "invalid queue name"),
    (["delete", "{fresh}", "q"], 1, "does not exist"),
    # publish
    (["publish", "{root}", "q"], 2, "required: message"),
    (["publish", "{root}", "nope", "m"], 1, "use -f to create it"),
    (["publish", "-f", "{fresh}", "../x", "m"], 2, "invalid queue name"),
    (["publish", "{root}", "a/b", "m"], 2, "invalid queue name"),
    (["publish", "-p", "-1", "{root}", "q", "m"], 2, "must be >= 0"),
    (["publish", "-p", "high", "{root}", "q", "m"], 2, "not a whole number"),
    (["publish", "-t", "0", "{root}", "q", "m"], 2, "must be >= 1"),
    (["publish", "-l", "-2", "{root}", "q", "m"], 2, "must be >= 0"),
    (["publish", "--requeue_prio", "x", "{root}", "q", "m"], 2, "not a whole number"),
    (["publish", "{fresh}", "q", "m"], 1, "does not exist"),
    # consume
    (["consume", "{root}", "nope"], 1, "use -f to create it"),
    (["consume", "{root}", "."], 2, "invalid queue name"),
    (["consume", "-f", "{fresh}", ".."], 2, "invalid queue name"),
    (["consume", "-n", "0", "{root}", "q"], 2, "must be >= 1"),
    (["consume", "-w", "-1", "{root}", "q"], 2, "must be >= 0"),
    (["consume", "-w", "soon", "{root}", "q"], 2, "not a number of seconds"),
    (["consume", "--format", "xml", "{root}", "q"], 2, "invalid choice"),
    (["consume", "{plain}", "q"], 1, "not initiated"),
    # ack
    (["ack", "{root}", "q"], 2, "required: msg_files"),
    (["ack", "{root}", "q", W], 1, "lease lost"),
    (["ack", "{root}", "q", "{work}," + W], 1, "lease lost"),
    (["ack", "{root}", "q", M], 2, "not the name of a consumed message"),
    (["ack", "{root}", "q", "../../etc/passwd"], 2, "not the name of a consumed message"),
    (["ack", "{root}", "q", ""], 2, "not the name of a consumed message"),
    (["ack", "{root}", "nope", W], 1, "'nope' does not exist"),
    (["ack", "{root}", "../q", "{work}"], 2, "invalid queue name"),
    (["ack", "-f", "{root}", "q", "{work}"], 2, "unrecognized arguments: -f"),
    (["ack", "{fresh}", "q", W], 1, "does not exist"),
    # nack
    (["nack", "{root}", "q", W], 1, "lease lost"),
    (["nack", "-r", "{root}", "q", "{work}," + W], 1, "lease lost"),
    (["nack", "{root}", "q", "junk"], 2, "not the name of a consumed message"),
    (["nack", "{root}", "nope", "{work}"], 1, "'nope' does not exist"),
    (["nack", "{plain}", "q", W], 1, "not initiated"),
    # del_msg
    (["del_msg", "{root}", "q", M], 1, "no message"),
    (["del_msg", "{root}", "q", W], 1, "no message"),
    (["del_msg", "{root}", "q", "{work}," + M], 1, "no message"),
    (["del_msg", "{root}", "q", "ddmq.yaml"], 2, "not the name of a message file"),
    (["del_msg", "{root}", "q", "{work},.."], 2, "not the name of a message file"),
    (["del_msg", "{root}", "a/b", M], 2, "invalid queue name"),
    (["del_msg", "{root}", "nope", M], 1, "'nope' does not exist"),
    # purge
    (["purge", "{root}", "nope"], 1, "'nope' does not exist"),
    (["purge", "{root}", "q,nope"], 1, "'nope' does not exist"),
    (["purge", "{root}", "q,../x"], 2, "invalid queue name"),
    (["purge", "{fresh}", "q"], 1, "does not exist"),
    # clean
    (["clean", "{root}", "nope"], 1, "'nope' does not exist"),
    (["clean", "{root}", "q/"], 2, "invalid queue name"),
    (["clean", "{plain}", "q"], 1, "not initiated"),
    # dead
    (["dead", "{root}", "nope"], 1, "'nope' does not exist"),
    (["dead", "{root}", "."], 2, "invalid queue name"),
    (["dead", "-r", "{root}", "q", "expired." + M], 1, "no dead letter"),
    (["dead", "{root}", "q", "{dead}"], 2, "only taken with -r"),
    (["dead", "-r", "{root}", "q", "{dead},junk"], 1, "no dead letter 'junk'"),
    (["dead", "--format", "csv", "{root}", "q"], 2, "invalid choice"),
    # json
    (["json"], 2, "required: payload"),
    (["json", "{{not json"], 2, "not a valid JSON object"),
    (["json", "[1, 2]"], 2, "expected a JSON object"),
    (["json", '{{"root": "{root}"}}'], 2, "'command' must be one of"),
    (["json", '{{"command": "frobnicate"}}'], 2, "'command' must be one of"),
    (["json", '{{"command": "json", "payload": "{{}}"}}'], 2, "'command' must be one of"),
    (["json", '{{"command": "view", "cmd": "view"}}'], 2, "not both"),
    (["json", '{{"command": "publish", "root": "{root}", "queue": "q", "message": "m", "colour": 1}}'],
     2, "unknown key 'colour'"),
    (["json", '{{"command": "publish", "root": "{root}", "queue": "q", "message": "m", "priority": "1"}}'],
     2, "'priority' must be an integer"),
    (["json", '{{"command": "publish", "root": "{root}", "queue": "q", "message": "m", "priority": true}}'],
     2, "'priority' must be an integer"),
    (["json", '{{"command": "publish", "root": "{root}", "queue": "q", "message": {{"a": 1}}}}'],
     2, "'message' must be a string"),
    (["json", '{{"command": "publish", "root": "{root}", "queue": "q", "message": "m", "f": "yes"}}'],
     2, "'f' must be true or false"),
    (["json", '{{"command": "publish", "root": "{root}", "queue": "q"}}'], 2, "required: message"),
    (["json", '{{"command": "publish", "root": "{root}", "queue": "../x", "message": "m"}}'],
     2, "invalid queue name"),
    (["json", '{{"command": "publish", "root": "{root}", "queue": "q", "message": "m", "priority": -1}}'],
     2, "must be >= 0"),
    (["json", '{{"command": "ack", "root": "{root}", "queue": "q", "msg_files": ["{work}", "{work}.x"]}}'],
     2, "not the name of a consumed message"),
    (["json", '{{"command": "consume", "root": "{root}", "queue": "q", "wait": "1"}}'], 2, "'wait' must be a number"),
]


@pytest.fixture
def populated(tmp_path):
    """A root with queue q holding a waiting message, one at work and a dead letter;
    a folder that is not a root; and the path of one that does not exist."""
    root = tmp_path / "root"
    made = populate(root)
    (tmp_path / "plain").mkdir()
    return {"root": str(root), "fresh": str(tmp_path / "fresh"), "plain": str(tmp_path / "plain"),
            **made}


@pytest.mark.parametrize("argv, status, words", BAD, ids=[" ".join(case[0])[:60] or "<none>" for case in BAD])
def test_bad_input_fails_cleanly_and_changes_nothing(capsys, tmp_path, populated, argv, status, words):
    argv = [arg.format(**populated) for arg in argv]
    before = snapshot(tmp_path)
    got, out, err = run(capsys, *argv)
    assert got == status, err
    assert out == ""
    assert err.startswith("ddmq: error: ") and err.count("\n") == 1, err
    assert words in err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_every_subcommand_has_bad_input_cases():
    covered = {case[0][0] for case in BAD if case[0]}
    assert covered >= {"view", "create", "delete", "publish", "consume", "ack", "nack", "del_msg",
                       "purge", "clean", "dead", "json"}


def test_filesystem_errors_are_one_line(capsys, tmp_path):
    """An OS-level failure inside the library is one line and status 1."""
    root = tmp_path / "r"
    ddmq.broker(root, create=True).create_queue("q")
    assert not os.path.exists(root / "q" / "tmp")  # made by the first publish
    (root / "q" / "tmp").write_text("")  # publishes cannot write their temporary file
    before = snapshot(tmp_path)
    status, out, err = run(capsys, "publish", root, "q", "m")
    assert (status, out) == (1, "")
    assert err.startswith("ddmq: error: ") and err.count("\n") == 1 and "Not a directory" in err
    assert snapshot(tmp_path) == before


def test_workers_lists_live_then_lost(capsys, root):
    from ddmq.executor import DDMQExecutor
    with DDMQExecutor(root, max_workers=1) as ex:
        assert ex.submit(pow, 2, 3).result(timeout=60) == 8
        table = ok(capsys, "workers", root)
        assert "tasks" in table and "1 live, 0 lost" in table
        listed = json.loads(ok(capsys, "workers", "--format", "json", "--queue", "tasks", root))
        assert len(listed["live"]) == 1 and listed["lost"] == []
        (record,) = listed["live"]
        os.kill(record["pid"], 9)
        deadline = time.monotonic() + 30
        while not json.loads(_ok_but_for_the_kill(capsys, record["pid"], root))["lost"]:
            assert time.monotonic() < deadline, "a killed worker is never reported lost"
            time.sleep(0.2)


def _ok_but_for_the_kill(capsys, pid: int, root) -> str:
    """``ddmq workers --format json ROOT``, which must succeed; the only diagnostic allowed is
    the executor's own warning that its local worker ``pid`` was killed, which its pool thread
    may log while the command runs in this process."""
    status, out, err = run(capsys, "workers", "--format", "json", root)
    expected = f"local worker pid {pid} was killed by SIGKILL"
    assert status == 0 and all(expected in line for line in err.splitlines()), err
    return out


@pytest.mark.parametrize("argv", [["workers"], ["workers", "/nonexistent-root"],
                                  ["workers", "--queue", "../x", "ROOT"], ["workers", "--format", "xml", "ROOT"]])
def test_workers_bad_input(capsys, root, argv):
    before = snapshot(root)
    code, out, err = run(capsys, *[root if a == "ROOT" else a for a in argv])
    assert code in (1, 2) and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(root) == before


# --- workers and reply queues, as a map runs (issue 11, section 6) ---------------------------

def _wait_for_gate(value, gate):
    """A task of the map below: waits (at most 2 minutes) until ``gate`` exists."""
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def _workers_json(capsys, root) -> dict:
    return json.loads(ok(capsys, "workers", "--format", "json", root))


def _until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_workers_shows_running_then_idle_during_a_map_and_how_a_lost_worker_died(capsys, tmp_path):
    from ddmq.executor import DDMQExecutor
    root, gate = str(tmp_path / "root"), str(tmp_path / "go")
    with DDMQExecutor(root, max_workers=2) as ex:
        results = ex.map(_wait_for_gate, range(6), [gate] * 6, chunksize=1)

        def both(state):
            live = _workers_json(capsys, root)["live"]
            return len(live) == 2 and all(r["state"] == state for r in live)

        _until(lambda: both("running"), "both workers listed as running")
        live = _workers_json(capsys, root)["live"]
        assert all(r["task"] and r["task"].startswith(ex._token) for r in live)
        table = ok(capsys, "workers", root)
        assert table.count(" running ") == 2 and "2 live, 0 lost" in table
        open(gate, "w").close()
        assert list(results) == list(range(6))
        _until(lambda: both("idle"), "both workers listed as idle after the map")
        assert all(r["task"] is None for r in _workers_json(capsys, root)["live"])
        victim = live[0]["pid"]
        os.kill(victim, 9)

        # From here the executor of this process logs that it reaped the worker
        # (on the ddmq logger, which the CLI in this process sends to stderr):
        # the CLI runs in a process of its own, as a user's would.
        def workers(*args):
            done = run_process("workers", *args, root)
            assert (done.returncode, done.stderr) == (0, ""), done.stderr
            return done.stdout

        _until(lambda: [r["pid"] for r in json.loads(workers("--format", "json"))["lost"]] == [victim],
               "the killed worker listed as lost")
        (lost,) = json.loads(workers("--format", "json"))["lost"]
        assert lost["cause"].startswith("was killed by SIGKILL (the kernel's out-of-memory killer")
        table = workers()
        assert f":{victim} was killed by SIGKILL" in table and " LOST " in table
    status, out, err = run(capsys, "workers", root)
    assert status == 0 and "No live or lost workers" not in out  # the lost one is still listed
    assert f":{victim} was killed by SIGKILL" in out


def test_workers_after_every_worker_stopped_cleanly(capsys, root):
    from ddmq.executor import DDMQExecutor
    with DDMQExecutor(root, max_workers=1) as ex:
        assert ex.submit(pow, 2, 3).result(timeout=60) == 8
    out = ok(capsys, "workers", root)
    assert out.strip() == f"No live or lost workers on {root} (a worker that stops cleanly " \
                          "removes its record)"


def test_view_hides_the_executors_reply_queues_unless_asked(capsys, root):
    from ddmq.executor import DDMQExecutor
    with DDMQExecutor(root, max_workers=0) as ex:
        table = ok(capsys, "view", root)
        assert table.splitlines() == ["| *queue* | *msg in queue* | *msg at work* |",
                                      "| tasks   | 0              | 0             |"]
        assert ok(capsys, "view", "-n", root).split() == ["tasks"]
        assert json.loads(ok(capsys, "view", "--format", "json", root)) == {"tasks": [0, 0]}
        assert ok(capsys, "view", "-n", "--all", root).split() == sorted(["tasks", ex.reply_queue])
        assert ex.reply_queue in ok(capsys, "view", "-a", root)
        assert ex.reply_queue in ok(capsys, "view", root, ex.reply_queue)  # named: shown
