"""Bundles: a burst of ``submit`` calls travels as few messages of several tasks each.

Real executors, real worker processes, real signals: each task runs exactly
once (a killed worker's bundle aside), a cancelled call of a bundle never
runs while its siblings do, a worker stopped in the middle of a bundle gives
back only the tasks it has not started, messages claimed with a slow one are
given back while it runs, a cancel finds the calls of a bundle given back
and only those, and a bundle with one forged task is refused whole, every
one of its futures told why.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

import ddmq
from ddmq.executor import DDMQExecutor, TaskRejectedError
from ddmq.executor.publisher import BUNDLE_MAX, BUNDLE_SECONDS
from ddmq.layout import message_id

from test_executor import (LONG, evil_payload, published, start_worker, waiting_and_work,
                           worker_env)


def record_call(i: int, calls: str, gate: str = "") -> int:
    """A quick task that leaves one file per call in ``calls``; call ``i``
    of a gated run waits (at most ``LONG``) for the file ``gate``."""
    with open(os.path.join(calls, f"{i}.{os.getpid()}.{uuid.uuid4().hex}"), "x"):
        pass
    deadline = time.monotonic() + LONG
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return i * i


def calls_per_item(calls) -> dict[int, int]:
    """How many times each call ran (by the files it left), learn_pace's aside."""
    counts: dict[int, int] = {}
    for name in os.listdir(calls):
        i = int(name.split(".")[0])
        if i >= 0:  # -1: the calls of learn_pace
            counts[i] = counts.get(i, 0) + 1
    return counts


@contextlib.contextmanager
def executor(root, **options):
    """A DDMQExecutor with no local workers that, when the test fails inside
    it, cancels what is left instead of waiting for workers that are gone."""
    ex = DDMQExecutor(root, max_workers=0, **options)
    try:
        yield ex
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def count_messages(ex, monkeypatch, slow: float = 0.0) -> list[int]:
    """Patch ``ex``'s broker to note the number of tasks of each task message
    it publishes (the messages still go out as usual), each publication
    taking at least ``slow`` seconds (as on a network filesystem, where a
    file costs milliseconds: how many submits a publication gathers is then
    up to the filesystem, not to the load of the machine that runs the test)."""
    sizes: list[int] = []
    original = ex._broker.publish

    def counting(queue, body=None, *args, **kwargs):
        if queue == ex.queue:
            sizes.append(len(body) if isinstance(body, list) else 1)
            time.sleep(slow)
        return original(queue, body, *args, **kwargs)

    monkeypatch.setattr(ex._broker, "publish", counting)
    return sizes


def learn_pace(ex, calls) -> None:
    """Calls of :func:`record_call` run and answered (each leaves a file
    named -1.*) until the executor knows it is quick and bundles its calls
    (a worker's first call of it includes the import of this module)."""
    for _ in range(100):
        assert ex.submit(record_call, -1, str(calls)).result(timeout=LONG) == 1
        per_call = [seconds for fn, seconds in ex._publisher.pace._per_call.items()
                    if "record_call" in fn]
        if per_call and per_call[0] < BUNDLE_SECONDS / 10:
            return
    raise AssertionError(f"record_call never looked quick: {ex._publisher.pace._per_call}")


def burst_of_bundles(ex, root, calls, monkeypatch, count: int, gate=lambda i: "") -> list:
    """The futures of ``count`` calls of :func:`record_call` (call ``i``
    gated by ``gate(i)``) submitted in a burst, and published as bundles
    while no worker runs (one learns their pace first)."""
    worker = start_worker(root)
    learn_pace(ex, calls)
    stop([worker])
    sizes = count_messages(ex, monkeypatch, slow=0.005)
    futures = [ex.submit(record_call, i, str(calls), gate(i)) for i in range(count)]
    wait_until(lambda: sum(sizes) == count, "the burst to be published")
    assert max(sizes) > 1, f"a burst of {count} quick submits made no bundle"
    return futures


def wait_until(condition, what: str, timeout: float = LONG) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stop(workers) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        worker.wait(LONG)


def test_a_burst_of_submits_runs_each_task_once_across_competing_workers(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    calls.mkdir()
    workers = [start_worker(tmp_path / "root") for _ in range(3)]
    try:
        with executor(tmp_path / "root") as ex:
            learn_pace(ex, calls)
            sizes = count_messages(ex, monkeypatch, slow=0.005)
            futures = [ex.submit(record_call, i, str(calls)) for i in range(3000)]
            assert [f.result(timeout=LONG) for f in futures] == [i * i for i in range(3000)]
    finally:
        stop(workers)
    assert sum(sizes) == 3000 and max(sizes) <= BUNDLE_MAX
    assert len(sizes) < 500, f"{len(sizes)} messages for a burst of 3000 quick submits"
    counts = calls_per_item(calls)
    assert counts == {i: 1 for i in range(3000)}
    ran_in = {name.split(".")[1] for name in os.listdir(calls) if not name.startswith("-1.")}
    assert len(ran_in) >= 2, "one worker took every bundle"


def test_killing_workers_in_the_middle_of_bundles_loses_no_task(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    root = tmp_path / "root"
    gate = str(tmp_path / "gate")
    workers = [start_worker(root) for _ in range(3)]
    killed = 0
    try:
        with executor(root, retries=10) as ex:
            learn_pace(ex, calls)
            # The last thousand wait for the gate, opened after the fourth
            # kill: however quick the workers, the kills come mid-run.
            futures = [ex.submit(record_call, i, str(calls), gate if i >= 2000 else "")
                       for i in range(3000)]
            while not all(f.done() for f in futures):
                time.sleep(0.05)
                if killed < 4 and len(os.listdir(calls)) > 300 * (killed + 1):
                    workers[killed % 3].send_signal(signal.SIGKILL)
                    workers[killed % 3].wait(LONG)
                    workers[killed % 3] = start_worker(root)
                    killed += 1
                    if killed == 4:
                        open(gate, "x").close()
            assert [f.result(timeout=LONG) for f in futures] == [i * i for i in range(3000)]
    finally:
        stop(workers)
    assert killed == 4
    counts = calls_per_item(calls)
    assert set(counts) == set(range(3000))  # nothing lost
    # Doubles only where a kill explains them: the tasks of a bundle a killed
    # worker held run again elsewhere.
    assert sum(n - 1 for n in counts.values()) <= 4 * BUNDLE_MAX


def test_cancel_of_one_call_of_a_bundle_leaves_the_others_to_run(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    calls.mkdir()
    root = tmp_path / "root"
    with executor(root) as ex:
        futures = burst_of_bundles(ex, root, calls, monkeypatch, 400)
        b = ddmq.broker(root)
        waiting, _ = b.get_message_list(ex.queue)
        bodies = {name: json.load(open(os.path.join(ex.root, ex.queue, name)))["message"]
                  for name in waiting}
        name, body = max(bodies.items(), key=lambda item: len(item[1]) if isinstance(item[1], list) else 1)
        index_of = {f._task_id: i for i, f in enumerate(futures)}
        victims = [index_of[envelope["task"]] for envelope in body][1::2]
        assert victims, "the biggest bundle has one task"
        for i in victims:
            assert futures[i].cancel() is True and futures[i].cancelled()
        # The bundle went back under its own id without the cancelled calls.
        msg_id = name.split(".")[-1]
        remaining = [n for n in b.get_message_list(ex.queue)[0] if n.endswith(msg_id)]
        assert len(remaining) == 1
        again = json.load(open(os.path.join(ex.root, ex.queue, remaining[0])))["message"]
        left = again if isinstance(again, list) else [again]
        assert len(left) == len(body) - len(victims)
        worker = start_worker(root, "--idle-timeout", "2")
        try:
            for i, future in enumerate(futures):
                if i not in victims:
                    assert future.result(timeout=LONG) == i * i
        finally:
            stop([worker])
    counts = calls_per_item(calls)
    assert counts == {i: 1 for i in range(400) if i not in victims}


def test_cancel_right_after_submit_never_runs_the_call_whether_published_or_not(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    root = tmp_path / "root"
    worker = start_worker(root)
    try:
        with executor(root) as ex:
            learn_pace(ex, calls)
            futures = []
            cancelled = set()
            for i in range(1000):
                futures.append(ex.submit(record_call, i, str(calls)))
                if i % 2 == 0 and futures[i].cancel():
                    cancelled.add(i)
            for i, future in enumerate(futures):
                if i in cancelled:
                    assert future.cancelled()
                else:
                    assert future.result(timeout=LONG) == i * i
    finally:
        stop([worker])
    assert len(cancelled) > 400, "cancel() of a task just submitted failed too often"
    assert calls_per_item(calls) == {i: 1 for i in range(1000) if i not in cancelled}


def test_a_worker_stopped_in_the_middle_of_a_bundle_gives_back_only_what_it_has_not_started(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    gate = tmp_path / "gate"
    root = tmp_path / "root"
    worker = start_worker(root, "--grace", "0.5")
    with executor(root) as ex:
        learn_pace(ex, calls)
        futures = [ex.submit(record_call, i, str(calls), str(gate) if i == 150 else "")
                   for i in range(300)]
        wait_until(lambda: any(n.startswith("150.") for n in os.listdir(calls)),
                   "call 150 to start")
        worker.send_signal(signal.SIGTERM)  # call 150 outlives the grace period
        assert worker.wait(LONG) == 0
        gate.touch()
        before = calls_per_item(calls)
        assert 150 in before and all(n == 1 for n in before.values())
        worker = start_worker(root)
        try:
            assert [f.result(timeout=LONG) for f in futures] == [i * i for i in range(300)]
        finally:
            stop([worker])
    counts = calls_per_item(calls)
    # Call 150 ran twice (given back while it ran); every other once, the ones
    # answered before the signal included.
    assert counts == {i: 2 if i == 150 else 1 for i in range(300)}


#: A worker as one that just ran quick tasks: it claims up to MAX_BATCH task
#: messages at once (a new worker claims one, and more only after quick tasks).
EAGER_WORKER = ("import sys; from ddmq.executor.worker import MAX_BATCH, Worker; "
                "w = Worker(sys.argv[1], heartbeat=0.5); w._batch = MAX_BATCH; sys.exit(w.run())")


def ran_where(calls) -> dict[int, str]:
    """The pid each call ran in (by the files it left; each call once)."""
    return {int(name.split(".")[0]): name.split(".")[1] for name in os.listdir(calls)
            if not name.startswith("-1.")}


def test_messages_claimed_with_a_slow_task_are_given_back_while_it_runs(tmp_path):
    """A worker that claimed several task messages gives back those it has
    not started once they would wait over HOARD_SECONDS behind a slow one,
    while that one runs. Here call 0 waits until every other call has run,
    which only another worker can do: held behind it, they would wait for it
    as it waits for them. Each call runs once."""
    calls = tmp_path / "calls"
    calls.mkdir()
    gate = tmp_path / "gate"
    root = tmp_path / "root"
    count = 8  # claimed in one batch
    workers = []
    try:
        with executor(root) as ex:
            # Calls of a function not seen yet: one message each.
            futures = [ex.submit(record_call, i, str(calls), str(gate) if i == 0 else "")
                       for i in range(count)]
            published(ex, count)
            workers.append(subprocess.Popen([sys.executable, "-c", EAGER_WORKER, str(root)],
                                            env=worker_env()))
            wait_until(lambda: not waiting_and_work(ex)[0], "the worker to claim every task")
            wait_until(lambda: any(n.startswith("0.") for n in os.listdir(calls)),
                       "call 0 to start")
            workers.append(start_worker(root))
            # (sooner than call 0 gives up waiting for its gate, after LONG s)
            wait_until(lambda: len(ran_where(calls)) == count, "the other calls to run", LONG / 2)
            gate.touch()
            assert [f.result(timeout=LONG) for f in futures] == [i * i for i in range(count)]
    finally:
        stop(workers)
    assert calls_per_item(calls) == {i: 1 for i in range(count)}
    where = ran_where(calls)
    assert where[0] == str(workers[0].pid)
    assert str(workers[1].pid) in set(where.values()), where


def test_cancel_finds_the_rest_of_a_bundle_given_back_not_the_calls_that_ran(
        tmp_path, monkeypatch):
    """A worker gives back the rest of a bundle (a new message under the
    bundle's id) before it acks the bundle. In between, a cancel finds that
    message by the id: it withdraws a call that is in it, and refuses one
    that is not (it ran, or runs: concurrent.futures says cancel() is then
    False), leaving the message as it was. Here the test is the worker: it
    claims a bundle, gives back all but its first call, then the first call
    too, and acks the bundle, as a worker does when its grace period ends."""
    calls = tmp_path / "calls"
    calls.mkdir()
    root = tmp_path / "root"
    with executor(root) as ex:
        futures = burst_of_bundles(ex, root, calls, monkeypatch, 200)
        index_of = {f._task_id: i for i, f in enumerate(futures)}
        b = ddmq.broker(root)
        for name in b.get_message_list(ex.queue)[0]:  # the lone tasks withdrawn: a bundle is first
            body = json.load(open(os.path.join(ex.root, ex.queue, name)))["message"]
            if not isinstance(body, list):
                assert futures[index_of[body["task"]]].cancel() is True
        claimed = b.consume(ex.queue)
        first, *rest = claimed.message
        b.publish(ex.queue, rest if len(rest) > 1 else rest[0], msg_id=claimed.id)
        running = index_of[first["task"]]
        assert futures[running].cancel() is False and not futures[running].cancelled()
        victim = index_of[rest[0]["task"]]
        assert futures[victim].cancel() is True and futures[victim].cancelled()
        b.publish(ex.queue, first, msg_id=claimed.id)
        b.ack(claimed)
        worker = start_worker(root)
        try:
            for i, future in enumerate(futures):
                if not future.cancelled():
                    assert future.result(timeout=LONG) == i * i
        finally:
            stop([worker])
    cancelled = {i for i, future in enumerate(futures) if future.cancelled()}
    assert victim in cancelled and running not in cancelled
    assert calls_per_item(calls) == {i: 1 for i in range(200) if i not in cancelled}


def test_a_bundle_with_one_forged_task_is_refused_whole(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    root = tmp_path / "root"
    marker = tmp_path / "unpickled"
    with executor(root) as ex:
        first = ex.submit(record_call, 1, str(calls))
        second = ex.submit(record_call, 2, str(calls))
        names = published(ex, 2)
        b = ddmq.broker(root)
        envelopes = []
        for name in names:
            path = os.path.join(ex.root, ex.queue, name)
            envelopes.append(json.load(open(path))["message"])
            os.unlink(path)
        envelopes[1]["payload"] = evil_payload(marker)  # its signature no longer matches
        msg = b.publish(ex.queue, envelopes)
        ex._tasks.published(ex._tasks.get(first._task_id), msg)
        ex._tasks.published(ex._tasks.get(second._task_id), msg)
        worker = start_worker(root)
        try:
            for future in (first, second):
                with pytest.raises(TaskRejectedError, match="signature"):
                    future.result(timeout=LONG)
        finally:
            stop([worker])
        wait_until(lambda: len(b.list_dead(ex.queue)) == 1, "the bundle to be dead-lettered")
    assert not marker.exists() and os.listdir(calls) == []


def test_tasks_of_unknown_pace_and_spilled_payloads_go_alone(tmp_path, monkeypatch):
    from ddmq.executor.envelope import INLINE_MAX
    root = tmp_path / "root"
    with executor(root) as ex:
        sizes = count_messages(ex, monkeypatch)
        futures = [ex.submit(len, b"x" * (2 * INLINE_MAX)) for _ in range(20)]
        futures += [ex.submit(pow, 2, i) for i in range(50)]  # never seen: pace unknown
        wait_until(lambda: len(sizes) == 70, "70 messages")
        assert set(sizes) == {1}
        worker = start_worker(root, "--idle-timeout", "2")
        try:
            assert [f.result(timeout=LONG) for f in futures[:20]] == [2 * INLINE_MAX] * 20
            assert [f.result(timeout=LONG) for f in futures[20:]] == [2 ** i for i in range(50)]
        finally:
            stop([worker])
        sizes.clear()
        # len and pow are known now: the same burst bundles the small ones only
        futures = [ex.submit(len, b"x" * (2 * INLINE_MAX)) for _ in range(20)]
        futures += [ex.submit(pow, 2, i) for i in range(500)]
        wait_until(lambda: sum(sizes) == 520, "520 tasks")
        assert len(sizes) < 520 and sizes.count(1) >= 20
        ex.shutdown(cancel_futures=True)
    with pytest.raises(cf.CancelledError):
        futures[-1].result()


@pytest.mark.parametrize("workers, tasks, most", [(1, 100, 100), (4, 100, 25), (3, 10, 4), (8, 3, 1)])
def test_the_quick_tasks_of_one_publication_are_shared_out_among_the_workers(tmp_path, workers, tasks, most):
    from ddmq.broker import Broker
    from ddmq.executor.publisher import Publisher
    from ddmq.executor.spill import SpillStore
    from ddmq.executor.tasks import TaskFuture, TaskRecord, TaskTable
    table = TaskTable(SpillStore(tmp_path))
    publisher = Publisher("t", Broker(tmp_path / "root", create=True), "tasks", table, {},
                          lambda: workers)
    publisher.pace.record("quick", 0.0001, 1)
    batch = []
    for i in range(tasks):
        task = TaskRecord(f"task{i}", TaskFuture(f"task{i}", lambda _: False), 1, True, "quick", None)
        table.add(task)
        batch.append((task, {"task": task.id, "payload": "x"}))
    groups = publisher._groups(batch)
    assert [item for group in groups for item in group] == batch  # all, in order
    assert max(len(group) for group in groups) == most
    assert len(groups) >= min(workers, tasks)


def test_a_map_of_quick_calls_is_published_by_map_itself_one_bundle_per_worker(tmp_path, monkeypatch):
    """map hands its chunks over together: with the publisher idle, map's
    caller publishes them before map returns, spread over the workers as one
    bundle each (not one chunk alone and the rest after it)."""
    root, calls = tmp_path / "root", tmp_path / "calls"
    calls.mkdir()
    with executor(root) as ex:
        workers = [start_worker(root, "--idle-timeout", "5") for _ in range(2)]
        try:
            wait_until(lambda: len(ex.workers()[0]) == 2, "2 workers' heartbeats")
            learn_pace(ex, calls)
            sizes = count_messages(ex, monkeypatch)
            results = ex.map(record_call, range(120), [str(calls)] * 120, chunksize=10)
            assert sum(sizes) == 12, "not all published by map itself"
            assert len(sizes) >= 2 and max(sizes) <= 6, sizes
            assert list(results) == [i * i for i in range(120)]
            assert calls_per_item(calls) == {i: 1 for i in range(120)}
        finally:
            stop(workers)


def test_a_lone_submit_is_published_before_submit_returns(tmp_path):
    """No burst: the caller publishes its own task, sparing the round trip
    through the publisher thread (a burst's later tasks still coalesce)."""
    root = tmp_path / "root"
    with executor(root) as ex:
        b = ddmq.broker(root)
        for i in range(3):
            time.sleep(0.05)  # the last submit is long past: each is alone
            future = ex.submit(pow, 2, i)
            assert len(b.get_message_list(ex.queue)[0]) == i + 1, "not published by submit"
            assert ex._tasks.get(future._task_id).msg is not None
        ex.shutdown(cancel_futures=True)


def test_a_task_published_again_under_its_message_id_is_found_once_and_forgotten_whole(tmp_path):
    """Cancelling one call of a bundle publishes the others again under the
    same message id: each must still be found once by that id, and nothing
    must stay behind once they are resolved."""
    from ddmq.executor.spill import SpillStore
    from ddmq.executor.tasks import TaskFuture, TaskRecord, TaskTable
    from ddmq.message import Message
    table = TaskTable(SpillStore(tmp_path))
    first, again = Message(id="a" * 32), Message(id="a" * 32)
    tasks = [TaskRecord(f"t{i}", TaskFuture(f"t{i}", lambda _: False), 1, True, "f", None)
             for i in range(2)]
    for task in tasks:
        table.add(task)
        table.published(task, first)
    for task in tasks:
        table.published(task, again)
    assert table.of_message("a" * 32) == tasks
    for task in tasks:
        table.settle(task, 1, None)
    assert table.of_message("a" * 32) == [] and not table.has_messages()
