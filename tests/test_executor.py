"""DDMQExecutor against the concurrent.futures contract, with real worker processes.

Most tests share one executor with two local workers (starting workers costs
a few tenths of a second each); tests that shut an executor down, or need
tasks to stay waiting (``max_workers=0``), make their own.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
import pickle
import stat
import subprocess
import sys
import threading
import time

import pytest

import ddmq
from ddmq.executor import (BrokenDDMQExecutor, DDMQExecutor, RemoteTraceback, SecretError,
                           SignatureError, TaskRejectedError, list_workers)
from ddmq.executor.envelope import INLINE_MAX, VERSION, dump_result, load_result
from ddmq.executor.secret import load_secret, secret_path
from ddmq.executor.spill import SpillStore, spill_folder

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LONG = 120  # seconds: only reached when something is broken


# --- tasks (module level: the workers import this module) ------------------------------

def square(x):
    return x * x


def add(x, y=0, *, z=0):
    return x + y + z


class CustomError(Exception):
    pass


def fail_with(text):
    raise CustomError(text)


def square_or_fail(x):
    if x == 5:
        raise CustomError("five")
    return x * x


def pid_of_worker(_=None):
    return os.getpid()


def wait_for(path, timeout=LONG):
    """Block until ``path`` exists (the test's gate); return its name."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return os.path.basename(path)


def gated(value, gate):
    if gate:
        wait_for(gate)
    return value


def reverse(data):
    return data[::-1]


def make_lock():
    return threading.Lock()


class PicklesAfterGate:
    """Pickles as ``int(value)``, once ``gate`` exists: holds ``map`` up while it publishes."""

    def __init__(self, value, gate):
        self.value, self.gate = value, gate

    def __reduce__(self):
        if self.gate:
            wait_for(self.gate)
        return (int, (self.value,))


class Unrebuildable(Exception):
    """Pickles, but cannot be unpickled: its __init__ wants two arguments."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def raise_unrebuildable():
    raise Unrebuildable(1, 2)


class Evil:
    """Unpickling this creates a file: proof that a payload was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_payload(marker) -> str:
    return base64.b64encode(pickle.dumps(Evil(str(marker)))).decode("ascii")


# --- fixtures and helpers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    executor = DDMQExecutor(tmp_path_factory.mktemp("shared") / "root", max_workers=2)
    yield executor
    executor.shutdown()


def waiting_and_work(executor):
    return ddmq.broker(executor.root).get_message_list(executor.queue)


def published(executor, count: int) -> list:
    """The waiting messages of ``executor``'s queue once there are ``count`` of them: ``submit``
    returns before its publisher thread has written the task's file."""
    deadline = time.monotonic() + LONG
    while len(waiting_and_work(executor)[0]) != count:
        assert time.monotonic() < deadline, f"never {count} waiting messages"
        time.sleep(0.01)
    return waiting_and_work(executor)[0]


def worker_env():
    """The environment of a worker process started by a test: it imports this
    repository's ddmq and the tests' modules (the tasks' functions)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))


def start_worker(root, *args, log=None):
    return subprocess.Popen([sys.executable, "-m", "ddmq.worker", str(root), "--heartbeat", "0.5", *args],
                            env=worker_env(), stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab") if log else subprocess.DEVNULL)


# --- submit, result, map -------------------------------------------------------------------

def test_submit_returns_a_real_future(ex):
    future = ex.submit(add, 1, 2, z=3)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=LONG) == 6
    assert future.done() and not future.cancelled() and future.exception() is None
    assert isinstance(ex, cf.Executor)


def test_lambdas_and_closures(ex):
    offset = 10

    def closure(x):
        return x + offset

    assert ex.submit(lambda x: x * 3, 7).result(timeout=LONG) == 21
    assert ex.submit(closure, 5).result(timeout=LONG) == 15
    assert list(ex.map(lambda a, b: a - b, [5, 6], [1, 2], timeout=LONG)) == [4, 4]


def test_map_in_order_and_lazy(ex, tmp_path):
    gate = str(tmp_path / "go")
    values = [0, 1, 2, 3]
    gates = ["", "", "", gate]  # the last call waits until the test has seen the first results
    results = ex.map(gated, values, gates, chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    open(gate, "w").close()
    assert list(results) == [3]


def test_map_timeout_raises_timeout_error(ex, tmp_path):
    gate = str(tmp_path / "go")
    try:
        results = ex.map(gated, [1, 2], [gate, ""], timeout=0.5, chunksize=1)
        with pytest.raises(cf.TimeoutError):
            next(results)
        with pytest.raises(TimeoutError):  # the builtin, as concurrent.futures raises since 3.11
            list(ex.map(gated, [1], [gate], timeout=0.2))
    finally:
        open(gate, "w").close()


def test_map_chunksize_batches_calls_into_fewer_tasks(ex, monkeypatch):
    sent = []  # one entry per task (a bundle message carries several, see publisher)
    original = ex._broker.publish

    def counting(queue, body=None, *args, **kwargs):
        if queue == ex.queue:
            sent.extend(body if isinstance(body, list) else [body])
        return original(queue, body, *args, **kwargs)

    monkeypatch.setattr(ex._broker, "publish", counting)
    assert list(ex.map(square, range(10), chunksize=4)) == [x * x for x in range(10)]
    assert len(sent) == 3
    sent.clear()
    assert list(ex.map(square, range(100))) == [x * x for x in range(100)]  # chunksize chosen
    assert 1 < len(sent) < 100
    sent.clear()
    assert list(ex.map(add, range(7), range(7), chunksize=1)) == [2 * x for x in range(7)]
    assert len(sent) == 7
    with pytest.raises(ValueError):
        ex.map(square, range(3), chunksize=0)


def test_map_raises_where_the_failing_call_is(ex):
    results = ex.map(square_or_fail, range(8), chunksize=3)  # 5 is in the middle of a chunk
    assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
    with pytest.raises(CustomError, match="five"):
        next(results)


def test_results_keep_coming_while_a_map_is_still_publishing(ex, tmp_path):
    # The collector pauses while map publishes its chunks, but never for long.
    gate = str(tmp_path / "go")
    items = [PicklesAfterGate(2, ""), PicklesAfterGate(3, gate), PicklesAfterGate(4, "")]
    mapped = []
    mapping = threading.Thread(target=lambda: mapped.append(list(ex.map(square, items, chunksize=1))))
    mapping.start()
    try:
        # The first result wakes the collector from its wait; it must then
        # come back from its pause for the others.
        assert [ex.submit(square, x).result(timeout=LONG) for x in (6, 7, 8)] == [36, 49, 64]
        assert not os.path.exists(gate) and mapping.is_alive()  # map still publishing
    finally:
        open(gate, "w").close()
        mapping.join(LONG)
    assert mapped == [[4, 9, 16]]


def test_as_completed_wait_and_callbacks(ex):
    futures = [ex.submit(square, x) for x in range(6)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=LONG)) == [x * x for x in range(6)]
    done, not_done = cf.wait([ex.submit(square, 3), ex.submit(square, 4)], timeout=LONG)
    assert not not_done and {f.result() for f in done} == {9, 16}
    called = threading.Event()
    seen = []
    future = ex.submit(square, 9)
    future.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
    assert called.wait(LONG) and seen == [81]
    first = cf.wait([ex.submit(square, 2)], timeout=LONG, return_when=cf.FIRST_COMPLETED)
    assert len(first.done) == 1


def test_exception_keeps_type_message_and_remote_traceback(ex):
    future = ex.submit(fail_with, "bad input 42")
    with pytest.raises(CustomError, match="bad input 42") as info:
        future.result(timeout=LONG)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "Traceback" in str(cause) and "fail_with" in str(cause) and "CustomError" in str(cause)
    assert isinstance(future.exception(), CustomError)
    with pytest.raises(ZeroDivisionError):
        ex.submit(lambda: 1 / 0).result(timeout=LONG)


def test_large_payloads_travel_as_files_and_are_cleaned_up(ex):
    big = os.urandom(300_000)  # over INLINE_MAX both ways
    assert ex.submit(reverse, big).result(timeout=LONG) == big[::-1]
    assert list(ex.map(reverse, [big, b"small", big], chunksize=2)) == [big[::-1], b"llams", big[::-1]]
    left = os.listdir(spill_folder(ex.root, ex.reply_queue))
    assert [n for n in left if not n.startswith("spare.")] == []  # spares: files kept for reuse


def test_large_payloads_are_pickled_into_their_file_or_inline_if_it_cannot_be_made(tmp_path):
    secret = os.urandom(32)
    spills = SpillStore(tmp_path)
    spill = spills.create("reply-1")
    big = os.urandom(3 * INLINE_MAX)
    doc = dump_result(secret, "t.1", "reply-1", "w:1", [big, b"small"], [], spills)
    assert "payload" not in doc and os.listdir(spill) == [doc["file"]]  # whole, under its name
    first = os.stat(os.path.join(spill, doc["file"])).st_ino
    assert load_result(secret, "reply-1", doc, spills) == ("t.1", [big, b"small"], [])
    assert [n for n in os.listdir(spill) if not n.startswith("spare.")] == []  # read once, done with
    smaller = big[: 2 * INLINE_MAX]
    doc = dump_result(secret, "t.3", "reply-1", "w:1", [smaller], [], spills)
    assert os.stat(os.path.join(spill, doc["file"])).st_ino == first  # rewritten, not made anew
    assert load_result(secret, "reply-1", doc, spills) == ("t.3", [smaller], [])  # and cut to size
    # The executor of reply-2 shut down meanwhile (no folder): the payload goes inline.
    doc = dump_result(secret, "t.2", "reply-2", "w:1", [big], [], spills)
    assert "file" not in doc and load_result(secret, "reply-2", doc, spills) == ("t.2", [big], [])


def test_unpicklable_argument_fails_that_future_at_once(ex):
    future = ex.submit(square, threading.Lock())
    assert future.done()
    with pytest.raises(pickle.PicklingError, match="cannot be pickled"):
        future.result()
    assert ex.submit(square, 4).result(timeout=LONG) == 16  # the executor is fine


def test_unpicklable_result_and_exception_are_reported(ex):
    with pytest.raises(pickle.PicklingError, match="result .* cannot be pickled"):
        ex.submit(make_lock).result(timeout=LONG)
    with pytest.raises(pickle.PicklingError, match="Unrebuildable"):
        ex.submit(raise_unrebuildable).result(timeout=LONG)


def test_functions_of_main_scripts_work(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        "from ddmq.executor import DDMQExecutor\n"
        "import functools, operator\n"
        "def triple(x):\n"
        "    return 3 * x\n"
        "class Box:\n"
        "    def __init__(self, v):\n"
        "        self.v = v\n"
        "if __name__ == '__main__':\n"
        "    with DDMQExecutor(sys.argv[1], max_workers=1) as ex:\n"
        "        print(list(ex.map(triple, range(5))), ex.submit(lambda: 'ok').result(),\n"
        "              # __main__ functions and classes inside the arguments travel by value too\n"
        "              ex.submit(functools.partial(triple, 2)).result(),\n"
        "              ex.submit(operator.attrgetter('v'), Box(7)).result(),\n"
        "              ex.submit(type, Box(1)).result().__name__,\n"
        "              ex.submit(Box, 8).result().v)  # an instance of a __main__ class comes back\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "root")], env=env,
                         capture_output=True, text=True, timeout=LONG)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 3, 6, 9, 12] ok 6 7 Box 8"


# --- cancel and shutdown -------------------------------------------------------------------

def test_cancel_of_a_waiting_task_removes_its_message(tmp_path):
    root = tmp_path / "root"
    ex = DDMQExecutor(root, max_workers=0)
    try:
        future = ex.submit(square, 3)
        published(ex, 1)
        assert future.cancel() is True
        assert future.cancelled() and future.done()
        assert waiting_and_work(ex) == ([], [])
        with pytest.raises(cf.CancelledError):
            future.result()
        assert future.cancel() is True  # cancelling again is fine

        taken = ex.submit(square, 4)  # a "worker" takes it: it cannot be cancelled now
        published(ex, 1)
        b = ddmq.broker(root)
        msg = b.consume(ex.queue)
        assert taken.cancel() is False and not taken.done()
        b.nack(msg, requeue=True)  # the worker gives it back: it waits again, under a new name
        assert taken.cancel() is True and taken.cancelled()
        assert waiting_and_work(ex) == ([], [])

        ran = ex.submit(square, 5)
        worker = start_worker(root, "--max-tasks", "1")
        assert ran.result(timeout=LONG) == 25
        assert ran.cancel() is False
        assert worker.wait(LONG) == 0
    finally:
        ex.shutdown(cancel_futures=True)


def test_shutdown_cancel_futures_and_submit_after_shutdown(tmp_path):
    ex = DDMQExecutor(tmp_path / "root", max_workers=0)
    futures = [ex.submit(square, x) for x in range(5)]
    results = ex.map(square, range(4), chunksize=2)
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    with pytest.raises(cf.CancelledError):
        list(results)
    assert waiting_and_work(ex) == ([], [])
    assert ex.reply_queue not in ddmq.broker(ex.root).list_queues()
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError):
        ex.map(square, [1])
    ex.shutdown()  # again: nothing happens


def test_shutdown_waits_for_running_tasks_and_stops_local_workers(tmp_path):
    ex = DDMQExecutor(tmp_path / "root", max_workers=1)
    pids = [w.proc.pid for w in ex._pool.workers]
    future = ex.submit(gated, "done", "")
    with ex:
        pass  # __exit__: shutdown(wait=True)
    assert future.result(timeout=0) == "done"
    assert all(w.proc.poll() == 0 for w in ex._pool.workers), "local workers exit 0 on SIGTERM"
    assert list_workers(ex.root) == ([], [])
    assert pids


# --- workers elsewhere, security -------------------------------------------------------------

def test_external_workers_serve_an_executor_without_local_workers(tmp_path):
    root = tmp_path / "root"
    with DDMQExecutor(root, max_workers=0) as ex:
        workers = [start_worker(root, log=tmp_path / "w.log") for _ in range(2)]
        try:
            assert list(ex.map(square, range(40), chunksize=1)) == [x * x for x in range(40)]
            assert ex.submit(pid_of_worker).result(timeout=LONG) in {w.pid for w in workers}
            deadline = time.monotonic() + LONG  # one may have started after the other did all
            while len(ex.workers()[0]) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            live, lost = ex.workers()
            assert {r.pid for r in live} == {w.pid for w in workers} and not lost
            assert {r.queue for r in live} == {"tasks"}
        finally:
            for w in workers:
                w.terminate()
            assert [w.wait(LONG) for w in workers] == [0, 0]
    assert list_workers(root) == ([], [])


def test_root_is_private_and_secret_is_shared_race_free(tmp_path):
    root = tmp_path / "root"
    ddmq.broker(root, create=True)
    code = ("import sys; from ddmq.executor.secret import load_secret;"
            "print(load_secret(sys.argv[1]).hex())")
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    secrets_seen = {p.communicate(timeout=LONG)[0].strip() for p in procs}
    assert len(secrets_seen) == 1 and len(secrets_seen.pop()) == 64
    assert stat.S_IMODE(os.stat(secret_path(root)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert not [n for n in os.listdir(root) if ".tmp-" in n]
    fresh = tmp_path / "fresh"
    DDMQExecutor(fresh, max_workers=0).shutdown()
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
    assert len(load_secret(fresh)) == 32


def test_a_secret_that_is_a_link_is_not_used(tmp_path):
    root = tmp_path / "root"
    ddmq.broker(root, create=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("ab" * 32 + "\n")
    os.symlink(elsewhere, secret_path(root))
    with pytest.raises(SecretError, match="link"):
        load_secret(root)


def test_tampered_task_is_refused_before_unpickling(tmp_path):
    root = tmp_path / "root"
    marker = tmp_path / "unpickled"
    with DDMQExecutor(root, max_workers=0) as ex:
        future = ex.submit(square, 2)
        (name,) = published(ex, 1)
        path = os.path.join(ex.root, ex.queue, name)
        with open(path) as handle:
            data = json.load(handle)
        data["message"]["payload"] = evil_payload(marker)  # the old signature no longer matches
        with open(path, "w") as handle:
            json.dump(data, handle)
        b = ddmq.broker(root)
        b.publish(ex.queue, {"v": VERSION, "task": "x.1", "reply": ex.reply_queue,
                             "payload": evil_payload(marker)})  # unsigned
        big = ex.submit(len, os.urandom(2 * INLINE_MAX))  # its payload is a file: tamper with that
        (spilled,) = os.listdir(spill_folder(ex.root, ex.reply_queue))
        with open(os.path.join(spill_folder(ex.root, ex.reply_queue), spilled), "wb") as handle:
            pickle.dump(Evil(str(marker)), handle)
        worker = start_worker(root, log=tmp_path / "w.log")
        try:
            for refused in (future, big):
                with pytest.raises(TaskRejectedError, match="signature"):
                    refused.result(timeout=LONG)
            deadline = time.monotonic() + LONG
            while len(b.list_dead(ex.queue)) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            dead = b.list_dead(ex.queue)
            assert len(dead) == 3 and all(n.startswith("rejected.") for n in dead)
            assert ex.submit(square, 5).result(timeout=LONG) == 25  # the worker carries on
        finally:
            worker.terminate()
            assert worker.wait(LONG) == 0
    assert not marker.exists()
    assert "refused task" in (tmp_path / "w.log").read_text()


def test_tampered_result_is_refused_before_unpickling(tmp_path):
    root = tmp_path / "root"
    marker = tmp_path / "unpickled"
    with DDMQExecutor(root, max_workers=0) as ex:
        future = ex.submit(square, 2)
        forged = {"v": VERSION, "task": future._task_id, "worker": "mallory:1",
                  "payload": evil_payload(marker), "sig": "0" * 64}
        ddmq.broker(root).publish(ex.reply_queue, forged)
        with pytest.raises(SignatureError, match="refused"):
            future.result(timeout=LONG)
        ex.shutdown(cancel_futures=True)
    assert not marker.exists()


def test_late_duplicate_results_are_dropped(tmp_path):
    with DDMQExecutor(tmp_path / "root", max_workers=0) as ex:
        future = ex.submit(square, 3)
        secret = load_secret(ex.root)
        b = ddmq.broker(ex.root)
        for value in (9, 10):  # a worker that lost its lease answers too, later
            b.publish(ex.reply_queue, dump_result(secret, future._task_id, ex.reply_queue, "w:1",
                                                  [value], []))
        assert future.result(timeout=LONG) == 9
        assert ex.submit(square, 1).cancel()
        ex.shutdown(cancel_futures=True)
    assert future.result() == 9


def test_workers_that_cannot_start_break_the_executor_at_once(tmp_path):
    with pytest.raises(BrokenDDMQExecutor, match="exited with status 2"):
        DDMQExecutor(tmp_path / "root", max_workers=1, worker_args=["--no-such-option"])
    assert [q for q in ddmq.broker(tmp_path / "root").list_queues() if q.startswith("reply-")] == []


def test_a_task_the_workers_cannot_import_fails_clearly(tmp_path):
    module = tmp_path / "only_here"
    module.mkdir()
    (module / "only_here_mod.py").write_text("def f(x):\n    return x + 1\n")
    sys.path.insert(0, str(module))
    try:
        import only_here_mod
        root = tmp_path / "root"
        with DDMQExecutor(root, max_workers=0) as ex:
            worker = start_worker(root)  # its PYTHONPATH lacks the module's folder
            try:
                with pytest.raises(ModuleNotFoundError, match="only_here_mod") as info:
                    ex.submit(only_here_mod.f, 1).result(timeout=LONG)
                assert "must be able to import" in str(info.value.__cause__)
                with pytest.raises(ModuleNotFoundError):
                    list(ex.map(only_here_mod.f, range(5), chunksize=5))
            finally:
                worker.terminate()
                assert worker.wait(LONG) == 0
        with DDMQExecutor(tmp_path / "root", max_workers=1) as ex:  # local workers get sys.path
            assert ex.submit(only_here_mod.f, 1).result(timeout=LONG) == 2
    finally:
        sys.path.remove(str(module))


def test_the_executors_threads_shadow_nothing_of_threading_thread():
    """Python 3.13 gave ``threading.Thread`` a ``_handle``, which a method of
    the collector once shadowed: no attribute of our threads may have the
    name of one of Thread's, on the Python running the tests."""
    import ast
    import inspect
    import threading
    from ddmq.executor.collector import Collector
    from ddmq.executor.keeper import Keeper
    thread = threading.Thread()
    theirs = set(dir(thread)) | set(vars(thread))
    for cls in (Collector, Keeper):
        tree = ast.parse(inspect.getsource(cls))
        ours = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name) and node.value.id == "self"}
        ours |= {name for name in vars(cls) if not name.startswith("__")}
        public = {"run", "start", "join", "name", "daemon", "is_alive"}  # overridden on purpose
        assert not (ours & theirs) - public, (cls.__name__, sorted((ours & theirs) - public))


def test_a_map_of_several_chunks_sends_the_function_pickled_once(ex):
    """The chunks of one map are sent at once: a closure (by value) is pickled
    once for all, and each chunk still carries it whole."""
    from ddmq.executor.pickling import PickledOnce
    offset = 1000

    def shifted(x):
        return x + offset

    assert list(ex.map(shifted, range(50), chunksize=7)) == [x + 1000 for x in range(50)]
    again = PickledOnce(shifted)
    assert pickle.loads(pickle.dumps(again))(1) == 1001
    lock = threading.Lock()
    with pytest.raises(pickle.PicklingError, match="cannot be pickled"):
        list(ex.map(lambda x: (lock, x), range(10), chunksize=2))
