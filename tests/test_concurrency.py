"""Nothing lost, nothing doubled: the queue under real concurrent processes.

Every test starts real processes (multiprocessing, 'spawn' context) whose
entry points are in ``helpers_procs.py``; each writes what it did to its own
log file, and the assertions are made on those logs and on the files left in
the queue. Random moments are fine, but every assertion holds for every
interleaving the protocol allows; none is about timing. Run with ``-s`` to see
the numbers of each run.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import random
import time

import pytest

import ddmq
from conftest import expire
from ddmq import reuse
from ddmq.root import SPARES_MAX
from helpers_procs import (batch_consumer, cleaner, consumer, dead_letterer, die_at, extender,
                           housekeeper, publisher, read_log, relay)

CTX = multiprocessing.get_context("spawn")
Q = "q"
JOIN_TIMEOUT = 90  # a child still alive after this is hung: the test fails


# --- helpers ---------------------------------------------------------------------

class Procs:
    """Child processes of one test, each with a name and a log file; kills
    whatever is still running when the test ends, pass or fail."""

    def __init__(self, logs: str):
        self.logs = logs
        os.makedirs(logs, exist_ok=True)
        self.procs: dict[str, multiprocessing.Process] = {}
        self.killed: set[str] = set()

    def log(self, name: str) -> str:
        return os.path.join(self.logs, f"{name}.log")

    def start(self, name: str, target, *args, **kwargs) -> multiprocessing.Process:
        proc = CTX.Process(target=target, name=name, args=args, kwargs=kwargs, daemon=True)
        proc.start()
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()  # SIGKILL
        proc.join(JOIN_TIMEOUT)
        self.killed.add(name)

    def join(self, names=None) -> None:
        """Wait for the named (default: all not killed) children; each must exit 0."""
        names = [n for n in self.procs if n not in self.killed] if names is None else names
        deadline = time.monotonic() + JOIN_TIMEOUT
        for name in names:
            self.procs[name].join(max(0.1, deadline - time.monotonic()))
        hung = [n for n in names if self.procs[n].is_alive()]
        assert not hung, f"children still running after {JOIN_TIMEOUT}s: {hung}"
        errors = {n: self.error(n) for n in names if self.procs[n].exitcode != 0}
        assert not errors, f"children failed: {errors}"

    def error(self, name: str) -> str:
        try:
            with open(self.log(name) + ".err", encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return f"exit code {self.procs[name].exitcode}, no traceback"

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.is_alive():
                proc.kill()
                proc.join(10)


@pytest.fixture
def procs(tmp_path):
    group = Procs(str(tmp_path / "logs"))
    yield group
    group.close()


def new_root(tmp_path, **queue_settings) -> tuple[str, ddmq.Broker]:
    root = str(tmp_path / "root")
    b = ddmq.broker(root, create=True)
    b.create_queue(Q)
    if queue_settings:
        b.update_settings_file(Q, queue_settings)
    return root, b


def folder_state(b: ddmq.Broker) -> dict[str, list[str]]:
    """What is left in the queue: waiting, work, dead letters, unfinished requeues."""
    waiting, work = b.get_message_list(Q)
    tmp = os.path.join(b.root, Q, "tmp")
    requeues = [n for n in os.listdir(tmp) if n.startswith("requeue.")] if os.path.isdir(tmp) else []
    return {"waiting": waiting, "work": work, "dead": b.list_dead(Q), "requeues": requeues}


def assert_empty(b: ddmq.Broker) -> None:
    state = folder_state(b)
    assert state == {"waiting": [], "work": [], "dead": [], "requeues": []}, state


def waiting_messages(b: ddmq.Broker) -> list[ddmq.Message]:
    waiting, _ = b.get_message_list(Q)
    return [b.get_message(os.path.join(Q, name)) for name in waiting]


def consumer_events(group: Procs, names) -> list[tuple[str, str, str, int]]:
    """(consumer, kind, id, requeue_counter) of every complete consumer log line."""
    events = []
    for name in names:
        for fields in read_log(group.log(name)):
            assert fields[0] in {"D", "A", "N", "L"} and len(fields) == 3, (name, fields)
            events.append((name, fields[0], fields[1], int(fields[2])))
    return events


def publisher_ids(group: Procs, name: str) -> list[str]:
    lines = read_log(group.log(name))
    assert all(f[0] == "P" and len(f) == 2 for f in lines), name
    return [f[1] for f in lines]


def report(title: str, **numbers) -> None:
    print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


# --- 1. stress: publishers and consumers at once ---------------------------------

def test_stress_publishers_and_consumers_exactly_once(tmp_path, procs):
    n_pub, per_pub, n_con = 2, 5000, 4
    root, b = new_root(tmp_path)
    start = CTX.Event()
    done = [str(tmp_path / f"done-p{i}") for i in range(n_pub)]
    pubs = [f"p{i}" for i in range(n_pub)]
    cons = [f"c{i}" for i in range(n_con)]
    for i, name in enumerate(pubs):
        procs.start(name, publisher, root, Q, name, per_pub, procs.log(name), start, None, done[i])
    for name in cons:
        procs.start(name, consumer, root, Q, procs.log(name), done, start, "ack", 0.5)
    began = time.monotonic()
    start.set()
    procs.join()
    took = time.monotonic() - began

    published = [i for name in pubs for i in publisher_ids(procs, name)]
    assert len(published) == len(set(published)) == n_pub * per_pub
    events = consumer_events(procs, cons)
    delivered = collections.Counter(e[2] for e in events if e[1] == "D")
    acked = collections.Counter(e[2] for e in events if e[1] == "A")
    doubled = {i: c for i, c in delivered.items() if c > 1}
    assert not doubled, f"{len(doubled)} ids delivered more than once, e.g. {list(doubled.items())[:5]}"
    assert set(delivered) == set(published), (
        f"lost: {sorted(set(published) - set(delivered))[:10]}, "
        f"unknown: {sorted(set(delivered) - set(published))[:10]}")
    assert acked == delivered, "every delivery was acked exactly once"
    assert all(e[3] == 0 for e in events), "nothing was requeued"
    assert not [e for e in events if e[1] == "L"]
    share = {name: sum(1 for e in events if e[0] == name and e[1] == "D") for name in cons}
    assert all(n > 0 for n in share.values()), share
    assert_empty(b)
    report("stress", messages=len(published), seconds=round(took, 1),
           per_second=round(len(published) / took), share=share)


def test_reused_files_deliver_each_message_once_with_its_own_content(tmp_path, procs):
    # Relays ack messages and publish follow-ups to the same queue: every such
    # publish rewrites a file some process acked (a spare), while the others
    # claim, read and ack around it. Each message must arrive once, as itself.
    root, b = new_root(tmp_path)
    assert reuse.filesystem_type(root) in reuse.REUSE_FILESYSTEMS, (
        "this test needs tmp_path on a local filesystem, where acked files are reused")
    chains, hops, n_relays = 300, 6, 4
    start = CTX.Event()
    seeded = str(tmp_path / "seeded")
    relays = [f"r{i}" for i in range(n_relays)]
    for name in relays:
        procs.start(name, relay, root, Q, procs.log(name), [seeded], start)
    start.set()
    for chain in range(chains):
        b.publish(Q, f"c{chain}.{hops}")
    open(seeded, "w").close()
    procs.join()
    got = [(fields[1], int(fields[2])) for name in relays for fields in read_log(procs.log(name))
           if fields[0] == "R"]
    follow_ups = [fields[1] for name in relays for fields in read_log(procs.log(name)) if fields[0] == "F"]
    while True:  # a follow-up published as the last relays stopped
        msg = b.consume(Q)
        if msg is None:
            break
        got.append((msg.message, 0))
        b.ack(msg)
    expected = [f"c{chain}.{hop}" for chain in range(chains) for hop in range(hops + 1)]
    received = collections.Counter(message for message, _ in got)
    assert sorted(follow_ups) == sorted(m for m in expected if not m.endswith(f".{hops}"))
    assert not {m: n for m, n in received.items() if n > 1}, "delivered twice"
    assert set(received) == set(expected), f"lost: {sorted(set(expected) - set(received))[:10]}"
    inodes = {inode for _, inode in got if inode}
    assert len(inodes) < len(got) / 2, f"files were not reused: {len(inodes)} inodes for {len(got)} messages"
    assert_empty(b)
    b.close()
    tmp = os.path.join(root, Q, "tmp")  # close() removes it if it left it empty
    spares = [n for n in os.listdir(tmp) if n.startswith("spare.")] if os.path.isdir(tmp) else []
    assert len(spares) <= SPARES_MAX * n_relays
    report("reuse", messages=len(got), inodes=len(inodes), spares_left=len(spares))


# --- 2. kill -9 chaos --------------------------------------------------------------

def final_drain(b: ddmq.Broker, log_path: str, deadline_s: float = 60) -> int:
    """Everyone else is dead or gone: wait out the leases of the dead, finish
    the requeues they abandoned, and consume and ack whatever is left, logging
    like a consumer. Returns how many abandoned requeues had to be finished."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    tmp = os.path.join(b.root, Q, "tmp")
    aged = 0
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            assert time.monotonic() < deadline, f"queue not drained: {folder_state(b)}"
            state = folder_state(b)
            if not state["waiting"] and not state["work"] and not state["requeues"]:
                return aged
            # A process killed in the middle of a requeue leaves its private
            # copy in tmp/, finished by housekeeping after REQUEUE_STALE_SECONDS
            # (60 s): make them look that old instead of waiting.
            for name in state["requeues"]:
                parts = name.split(".")
                parts[1] = str(int(b.clock.now()) - 10_000)
                os.rename(os.path.join(tmp, name), os.path.join(tmp, ".".join(parts)))
                aged += 1
            if state["work"]:  # leases of killed consumers: wait until they end
                last = max(int(n.split(".")[0]) for n in state["work"])
                while b.clock.now() <= last:
                    time.sleep(0.1)
            b.clean(Q, force=True)
            while (msg := b.consume(Q, wait=0)) is not None:
                tag = f"{msg.message} {msg.requeue_counter}"
                os.write(fd, f"D {tag}\n".encode())
                try:
                    b.ack(msg)
                    os.write(fd, f"A {tag}\n".encode())
                except ddmq.LeaseLostError:
                    os.write(fd, f"L {tag}\n".encode())
    finally:
        os.close(fd)


def test_kill9_chaos_loses_nothing_and_doubles_only_what_a_kill_explains(tmp_path, procs):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    root, b = new_root(tmp_path, message_timeout=2, clean_interval=0.5)
    stop = str(tmp_path / "stop")
    live = {"pub": [], "con": []}
    names = {"pub": [], "con": []}

    def spawn(role: str) -> None:
        name = f"{role[0]}{len(names[role])}"
        names[role].append(name)
        live[role].append(name)
        if role == "pub":
            procs.start(name, publisher, root, Q, name, 1_000_000, procs.log(name), None, stop,
                        pace_s=0.01)
        else:
            procs.start(name, consumer, root, Q, procs.log(name), [stop], None, "ack", 0.3,
                        work_s=0.01)

    for _ in range(2):
        spawn("pub")
    for _ in range(3):
        spawn("con")
    plan = ["pub"] * 6 + ["con"] * 10
    rng.shuffle(plan)
    began = time.monotonic()
    for role in plan:
        time.sleep(rng.uniform(0.2, 1.0))
        victim = rng.choice(live[role])
        live[role].remove(victim)
        procs.kill(victim)
        spawn(role)
    time.sleep(rng.uniform(0.5, 1.5))
    with open(stop, "w"):
        pass
    procs.join()
    aged = final_drain(b, procs.log("final"))
    took = time.monotonic() - began
    killed = procs.killed

    # Publishers: what each logged, and which ids it may have published unlogged.
    logged = {name: publisher_ids(procs, name) for name in names["pub"]}
    published = {i for ids in logged.values() for i in ids}
    events = consumer_events(procs, names["con"] + ["final"])
    deliveries = collections.defaultdict(list)  # (id, counter) -> consumers
    for who, kind, msg_id, counter in events:
        if kind == "D":
            deliveries[(msg_id, counter)].append(who)
    done = {(kind, i, c, who) for who, kind, i, c in events if kind in "AL"}
    delivered = collections.Counter()
    for (msg_id, _), whos in deliveries.items():
        delivered[msg_id] += len(whos)

    # Nothing lost: every id a publisher logged was delivered.
    lost = published - set(delivered)
    assert not lost, f"{len(lost)} published ids never delivered, e.g. {sorted(lost)[:10]} (seed {seed})"
    # Ids delivered but never logged: the one publish in flight when its publisher was killed.
    for msg_id in set(delivered) - published:
        pub, _, seq = msg_id.rpartition("-")
        assert pub in killed and int(seq) == len(logged[pub]), (msg_id, seed)
    # Nothing doubled but what a kill explains.
    assert all(len(deliveries.get((i, 0), [])) <= 1 for i in delivered), "a new message was claimed twice"
    doubled_pairs = {k: v for k, v in deliveries.items() if len(v) > 1}
    assert len(doubled_pairs) <= aged, (
        f"the same copy of a message was delivered twice {len(doubled_pairs)} times; only "
        f"{aged} abandoned requeues could explain that: {list(doubled_pairs.items())[:5]} (seed {seed})")
    for (msg_id, counter), whos in deliveries.items():
        if counter == 0 or len(whos) > 1:
            continue
        before = deliveries.get((msg_id, counter - 1), [])
        if len(before) == 1:  # the copy before this one was held by one consumer; it lost its lease
            (holder,) = before
            assert ("A", msg_id, counter - 1, holder) not in done, (
                f"{msg_id} was acked by {holder} and yet delivered again (seed {seed})")
            assert holder in killed or ("L", msg_id, counter - 1, holder) in done, (msg_id, holder, seed)
    for who, kind, msg_id, counter in events:
        if kind == "L":  # a lost lease means the message was requeued, and so delivered again
            assert (msg_id, counter + 1) in deliveries, (msg_id, counter, who, seed)
    # Survivors finish what they start: every delivery is acked or found lost.
    for who in [n for n in names["con"] if n not in killed] + ["final"]:
        mine = [(i, c) for w, k, i, c in events if w == who and k == "D"]
        assert all(("A", i, c, who) in done or ("L", i, c, who) in done for i, c in mine), who
    # Nothing left behind, and never a half-written message (no "unparseable" dead letter).
    assert_empty(b)
    report("kill -9", seed=seed, seconds=round(took, 1), published_logged=len(published),
           delivered_ids=len(delivered), deliveries=sum(delivered.values()),
           doubled_ids=sum(1 for c in delivered.values() if c > 1),
           requeued_deliveries=sum(len(v) for (i, c), v in deliveries.items() if c > 0),
           lease_lost=sum(1 for e in events if e[1] == "L"),
           unlogged_publishes=len(set(delivered) - published),
           killed=sorted(killed), abandoned_requeues=aged, doubled_copies=len(doubled_pairs),
           final_drain=sum(1 for e in events if e[0] == "final" and e[1] == "D"))


# --- 3. concurrent housekeepers ------------------------------------------------------

def test_concurrent_housekeepers_requeue_each_expired_message_once(tmp_path, procs):
    n_msgs, n_keepers, rounds = 600, 4, 3
    root, b = new_root(tmp_path)
    ids = [f"m{i}" for i in range(n_msgs)]
    for msg_id in ids:
        b.publish(Q, msg_id)
    barrier = CTX.Barrier(n_keepers + 1)
    keepers = [f"h{i}" for i in range(n_keepers)]
    for name in keepers:
        procs.start(name, housekeeper, root, Q, procs.log(name), barrier, rounds)
    for round_ in range(1, rounds + 1):
        held = b.consume(Q, n=n_msgs)
        assert sorted(m.message for m in held) == sorted(ids)
        for msg in held:
            expire(b, Q, msg.filename)
        barrier.wait(timeout=120)  # go: every housekeeper cleans at once
        barrier.wait(timeout=120)  # all of them are done
        msgs = waiting_messages(b)
        assert collections.Counter(m.message for m in msgs) == collections.Counter(ids)
        assert {m.requeue_counter for m in msgs} == {round_}
        state = folder_state(b)
        assert state["work"] == state["dead"] == state["requeues"] == [], state
    procs.join()
    share = [[int(f[2]) for f in read_log(procs.log(n))] for n in keepers]
    assert all(len(s) == rounds for s in share)  # every housekeeper cleaned every round
    # Each round, every expired message was requeued by exactly one of them.
    assert [sum(s[r] for s in share) for r in range(rounds)] == [n_msgs] * rounds, share
    for msg in b.consume(Q, n=n_msgs):
        b.ack(msg)
    assert_empty(b)
    report("housekeepers", messages=n_msgs, housekeepers=n_keepers, rounds=rounds,
           requeued_by_each=share)


# --- 4. competing consumers on a full queue --------------------------------------------

def test_competing_consumers_drain_a_full_queue_exactly_once(tmp_path, procs):
    n_msgs, n_con = 3000, 4
    root, b = new_root(tmp_path)
    ids = [f"m{i}" for i in range(n_msgs)]
    for msg_id in ids:
        b.publish(Q, msg_id)
    start = CTX.Event()
    cons = [f"c{i}" for i in range(n_con)]
    for name in cons:
        procs.start(name, consumer, root, Q, procs.log(name), (), start, "ack", 0.2)
    time.sleep(0.5)  # let them start up, so that they race from the first message
    began = time.monotonic()
    start.set()
    procs.join()
    took = time.monotonic() - began
    events = consumer_events(procs, cons)
    delivered = collections.Counter(e[2] for e in events if e[1] == "D")
    assert delivered == collections.Counter(ids), "each message delivered exactly once"
    assert collections.Counter(e[2] for e in events if e[1] == "A") == delivered
    share = {name: sum(1 for e in events if e[0] == name and e[1] == "D") for name in cons}
    assert all(n > 0 for n in share.values()), share
    assert_empty(b)
    report("competing consumers", messages=n_msgs, seconds=round(took, 1), share=share)


@pytest.mark.parametrize("reuse_files", [True, False], ids=["spares", "no-spares"])
def test_receivers_and_consumers_get_each_message_once(tmp_path, procs, monkeypatch, reuse_files):
    """consume(auto_ack=True) (read where it waits, then one rename takes it
    out of the queue) competing with itself and with ordinary claims, while
    publishers write (rewriting the spares the receivers leave), each waiting
    on the queue's folder watch: every message is delivered exactly once."""
    if not reuse_files:  # the children see it too: the spawn context copies the environment
        monkeypatch.setattr(reuse, "REUSE_FILESYSTEMS", frozenset())
        monkeypatch.setenv("DDMQ_TEST_NO_REUSE", "1")
    n_pub, per_pub = 2, 1500
    root, b = new_root(tmp_path)
    start = CTX.Event()
    done = [str(tmp_path / f"done-p{i}") for i in range(n_pub)]
    pubs = [f"p{i}" for i in range(n_pub)]
    receivers, claimers = ["r0", "r1", "r2"], ["c0"]
    for i, name in enumerate(pubs):
        procs.start(name, publisher, root, Q, name, per_pub, procs.log(name), start, None, done[i])
    for name in receivers:
        procs.start(name, consumer, root, Q, procs.log(name), done, start, "receive", 0.5)
    for name in claimers:
        procs.start(name, consumer, root, Q, procs.log(name), done, start, "ack", 0.5)
    time.sleep(0.5)
    start.set()
    procs.join()
    published = [i for name in pubs for i in publisher_ids(procs, name)]
    events = consumer_events(procs, receivers + claimers)
    delivered = collections.Counter(e[2] for e in events if e[1] == "D")
    doubled = {i: c for i, c in delivered.items() if c > 1}
    assert not doubled, f"{len(doubled)} ids delivered more than once, e.g. {list(doubled.items())[:5]}"
    assert set(delivered) == set(published), f"lost: {sorted(set(published) - set(delivered))[:10]}"
    assert collections.Counter(e[2] for e in events if e[1] == "A") == delivered
    share = {name: sum(1 for e in events if e[0] == name and e[1] == "D") for name in receivers + claimers}
    assert sum(share[name] for name in receivers) > 0, share
    assert_empty(b)
    report("receivers and consumers", messages=len(published), share=share)


def test_competing_batch_consumers_get_each_message_once_and_each_batch_best_first(tmp_path, procs):
    """consume(n) returns its messages best first (priority, then publish order) even
    when lost races made its listing skip ahead and come back; a worker runs its
    batch in that order, so a slow task claimed last does not hold up the others."""
    n_msgs, n_con = 1200, 4
    root, b = new_root(tmp_path)
    rank = {}
    for i in range(n_msgs):
        priority = (0, 5, 9)[i % 3]
        b.publish(Q, f"m{i}", priority=priority)
        rank[f"m{i}"] = (priority, i)
    start = CTX.Event()
    cons = [f"c{i}" for i in range(n_con)]
    for name in cons:
        procs.start(name, batch_consumer, root, Q, procs.log(name), start, 8)
    time.sleep(0.5)  # let them start up, so that they race from the first message
    start.set()
    procs.join()
    batches = [fields[1].split(",") for name in cons for fields in read_log(procs.log(name))
               if fields[0] == "B"]
    delivered = collections.Counter(m for batch in batches for m in batch)
    assert delivered == collections.Counter(list(rank)), "each message delivered exactly once"
    unordered = [batch for batch in batches if batch != sorted(batch, key=rank.__getitem__)]
    assert not unordered, unordered[:3]
    assert_empty(b)
    report("competing batch consumers", messages=n_msgs, batches=len(batches),
           largest_batch=max(map(len, batches)))


# --- 5. lease extension against housekeeping -------------------------------------------

def test_lease_extension_races_housekeeping_never_both(tmp_path, procs):
    n_msgs = 150
    root, b = new_root(tmp_path)
    ids = [f"m{i}" for i in range(n_msgs)]
    for msg_id in ids:
        b.publish(Q, msg_id)
    stop = str(tmp_path / "stop")
    procs.start("x", extender, root, Q, procs.log("x"), n_msgs, 6.0, random.randrange(1 << 30))
    for name in ("k0", "k1"):
        procs.start(name, cleaner, root, Q, procs.log(name), stop)
    procs.join(["x"])
    with open(stop, "w"):
        pass
    procs.join()
    lines = read_log(procs.log("x"))
    extended = collections.Counter(f[1] for f in lines if f[0] == "E")
    acked = [f[1] for f in lines if f[0] == "A"]
    lost = [f[1] for f in lines if f[0] == "L"]
    assert len(set(acked)) == len(acked) and len(set(lost)) == len(lost)
    assert not set(acked) & set(lost) and sorted(acked + lost) == sorted(ids)
    # Lost leases were requeued exactly once each; kept leases never.
    msgs = waiting_messages(b)
    assert sorted(m.message for m in msgs) == sorted(lost)
    assert all(m.requeue_counter == 1 for m in msgs)
    state = folder_state(b)
    assert state["work"] == state["dead"] == state["requeues"] == [], state
    runs = [int(f[1]) for n in ("k0", "k1") for f in read_log(procs.log(n))]
    report("extend vs clean", messages=n_msgs, kept_and_acked=len(acked), lost=len(lost),
           extensions=sum(extended.values()), clean_runs=sum(runs))


# --- 6. requeue_limit under concurrency -------------------------------------------------

def test_requeue_limit_dead_letters_each_message_once_under_concurrency(tmp_path, procs):
    n_msgs, n_con = 600, 3
    root, b = new_root(tmp_path)
    ids = [f"m{i}" for i in range(n_msgs)]
    for msg_id in ids:
        b.publish(Q, msg_id, requeue_limit=1)
    stop = str(tmp_path / "stop")
    cons = [f"c{i}" for i in range(n_con)]
    for name in cons:
        procs.start(name, consumer, root, Q, procs.log(name), [stop], None, "nack", 0.2)
    deadline = time.monotonic() + 60
    while len(b.list_dead(Q)) < n_msgs and time.monotonic() < deadline:
        if any(not procs.procs[n].is_alive() for n in cons):
            break
        time.sleep(0.2)
    with open(stop, "w"):
        pass
    procs.join()
    events = consumer_events(procs, cons)
    deliveries = collections.Counter((e[2], e[3]) for e in events if e[1] == "D")
    assert deliveries == collections.Counter({(i, c): 1 for i in ids for c in (0, 1)}), (
        "each message delivered once new and once requeued")
    assert collections.Counter((e[2], e[3]) for e in events if e[1] == "N") == deliveries
    dead = b.list_dead(Q)
    assert len(dead) == n_msgs and all(name.startswith("requeue_limit.") for name in dead)
    letters = []
    for name in dead:
        with open(os.path.join(root, Q, "dead", name), encoding="utf-8") as handle:
            letters.append(json.load(handle))
    assert sorted(d["message"] for d in letters) == sorted(ids)
    assert all(d["requeue_counter"] == 1 for d in letters)
    state = folder_state(b)
    assert state["waiting"] == state["work"] == state["requeues"] == [], state
    report("requeue_limit", messages=n_msgs, deliveries=sum(deliveries.values()), dead=len(dead))


def test_first_dead_letters_of_many_processes_all_reach_dead(tmp_path, procs):
    # dead/ is made by the first dead letter: processes dead-lettering at
    # once race to create it (and housekeeping removes it when empty).
    n_con, rounds = 4, 40
    root, b = new_root(tmp_path)
    barrier = CTX.Barrier(n_con + 1)
    cons = [f"d{i}" for i in range(n_con)]
    for name in cons:
        procs.start(name, dead_letterer, root, Q, procs.log(name), barrier, rounds)
    dead_dir = os.path.join(root, Q, "dead")
    for round_ in range(rounds):
        ids = [f"r{round_}m{i}" for i in range(n_con)]
        for msg_id in ids:
            b.publish(Q, msg_id, requeue_limit=0)
        for _ in range(3):  # consume; nack all at once; done
            barrier.wait(timeout=120)
        dead = b.list_dead(Q)
        state = folder_state(b)
        assert len(dead) == n_con and state["waiting"] == state["work"] == state["requeues"] == [], (
            round_, dead, state)
        for name in dead:
            os.unlink(os.path.join(dead_dir, name))
        os.rmdir(dead_dir)  # as housekeeping does with an empty dead/
    procs.join()
    nacked = [f[1] for n in cons for f in read_log(procs.log(n))]
    assert len(nacked) == n_con * rounds == len(set(nacked))
    report("first dead letters at once", processes=n_con, rounds=rounds)


# --- 7. kill -9 at each step of the protocol ------------------------------------------

@pytest.mark.parametrize("action, op, target, when, expected", [
    # (what the process was doing, the step it died at) -> deliveries of k0 afterwards:
    # (least, most, requeue_counter of each)
    ("publish", "rename", "queue", "before", (0, 0, None)),   # never published: publish() never returned
    ("publish", "rename", "queue", "after", (1, 1, 0)),
    ("publish-spare", "rename", "queue", "before", (0, 0, None)),
    ("publish-spare", "rename", "queue", "after", (1, 1, 0)),
    ("consume", "rename", "work", "before", (1, 1, 0)),
    ("consume", "rename", "work", "after", (1, 1, 1)),       # back when its lease ends
    ("ack", "unlink", "work", "before", (1, 1, 1)),        # files not reused (network filesystem)
    ("ack", "unlink", "work", "after", (0, 0, None)),
    ("ack", "rename", "spare", "before", (1, 1, 1)),        # files reused (local filesystem)
    ("ack", "rename", "spare", "after", (0, 0, None)),
    ("nack", "rename", "requeue", "after", (1, 1, 1)),      # the abandoned requeue is finished
    ("nack", "rename", "queue", "before", (1, 1, 1)),
    ("nack", "rename", "queue", "after", (1, 2, 1)),        # at-least-once: maybe finished twice
    ("clean", "rename", "requeue", "after", (1, 1, 1)),
    ("clean", "rename", "queue", "after", (1, 2, 1)),
])
def test_kill9_at_each_protocol_step_loses_nothing(tmp_path, procs, action, op, target, when, expected):
    root, b = new_root(tmp_path)
    if not action.startswith("publish"):
        b.publish(Q, "k0")
    if action == "clean":
        expire(b, Q, b.consume(Q).filename)
    procs.start("d", die_at, root, Q, action, op, target, when, procs.log("d"))
    procs.procs["d"].join(JOIN_TIMEOUT)
    assert procs.procs["d"].exitcode == -9, procs.error("d")
    procs.killed.add("d")
    for name in b.get_message_list(Q)[1]:  # the dead process's leases: let them end now
        expire(b, Q, name)
    final_drain(b, procs.log("final"))
    got = [(e[2], e[3]) for e in consumer_events(procs, ["final"]) if e[1] == "D"]
    least, most, counter = expected
    assert least <= len(got) <= most and all(g == ("k0", counter) for g in got), got
    assert_empty(b)
    report("kill at step", step=f"{action}:{when}-{op}-{target}", deliveries=len(got))


# --- 8. core bugs found by these tests ---------------------------------------------------

def test_server_clock_ignores_a_probe_that_stalled(tmp_path, monkeypatch):
    """On a loaded machine a process can be descheduled while it measures the
    file server's clock. The probe's uncertainty is half its round trip, but
    ServerClock keeps any offset >= 1 s for 60 s: a 3 s stall makes this
    process's clock 1.5 s wrong, so as a housekeeper it requeues leases that
    have not ended (duplicate deliveries), and as a consumer its leases end
    early. A probe whose round trip is too long to bound the offset below a
    second should not be trusted."""
    from ddmq.clock import ServerClock

    real_fstat = os.fstat

    def stalled_fstat(fd):
        time.sleep(3)  # descheduled right after the probe file was stamped
        return real_fstat(fd)

    clock = ServerClock(str(tmp_path))
    monkeypatch.setattr(os, "fstat", stalled_fstat)
    clock.now()
    monkeypatch.setattr(os, "fstat", real_fstat)
    assert abs(clock.now() - time.time()) < 1.0, f"clock off by {clock.now() - time.time():+.1f} s"
