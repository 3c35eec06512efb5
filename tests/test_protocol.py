"""The protocol contract suite: every transition of ddmq.protocol and its crash windows, run
against every backend (as huey runs one storage suite against every storage).

:class:`ProtocolContract` holds the tests; each backend is a subclass that provides the
``backend`` fixture (a :class:`protocol_backends.Backend`): local disk and tmpfs here, the
GlusterFS testbed in tests/cluster/test_protocol_cluster.py.

Everything is real: real folders, real processes racing (:func:`protocol_backends.race`),
real SIGKILLs between two steps of a transition (:func:`protocol_backends.crash_at`). Nothing
waits on a duration: children answer when they are done, with generous time-outs.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

import ddmq
from ddmq import layout, protocol
from ddmq.errors import FilesystemError
from ddmq.layout import DEAD, TMP, WORK, DeadName, RequeueName, WaitingName, WorkName
from ddmq.reuse import SparePool

from protocol_backends import (Backend, children, crash_at, disk_backend, fill,
                               tmpfs_backend, race)

R = 30.0  # retry_timeout of every call


# --- helpers ------------------------------------------------------------------------------------

def listing(folder: str) -> list[str]:
    """Sorted names in ``folder``; [] if it is missing."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def new_waiting(priority: int = 5) -> WaitingName:
    return WaitingName(priority, time.time_ns(), uuid.uuid4().hex)


def publish_one(queue_dir: str, data: bytes, priority: int = 5) -> str:
    waiting = new_waiting(priority).format()
    protocol.publish(queue_dir, waiting, data, fsync=False, retry_timeout=R)
    return waiting


def claim_one(queue_dir: str, data: bytes, expiry: int | None = None) -> tuple[str, str]:
    """A message published and claimed: (waiting name, work name)."""
    waiting = publish_one(queue_dir, data)
    work = WorkName(int(time.time()) + 600 if expiry is None else expiry, waiting,
                    layout.claimer_tag()).format()
    assert protocol.claim(queue_dir, waiting, work, R)
    return waiting, work


def waiting_in(queue_dir: str) -> list[str]:
    return [n for n in listing(queue_dir) if WaitingName.parse(n)]


def requeues_in(queue_dir: str) -> list[str]:
    return [n for n in listing(os.path.join(queue_dir, TMP)) if RequeueName.parse(n)]


def copies(queue_dir: str, message: str) -> dict[str, list[str]]:
    """Where the message with id ``message`` is: {"waiting": [...], "work": [...],
    "requeue": [...], "dead": [...]}."""
    def of(names: list[str]) -> list[str]:
        return [n for n in names if layout.message_id(n) == message]
    return {"waiting": of(waiting_in(queue_dir)),
            "work": of([n for n in listing(os.path.join(queue_dir, WORK)) if WorkName.parse(n)]),
            "requeue": of(requeues_in(queue_dir)),
            "dead": of([n for n in listing(os.path.join(queue_dir, DEAD)) if DeadName.parse(n)])}


def make_stale(queue_dir: str, private_name: str) -> str:
    """Rename the requeue-in-progress ``tmp/PRIVATE`` as if it had been taken an hour ago."""
    parsed = RequeueName.parse(private_name)
    assert parsed is not None, private_name
    old = parsed._replace(taken=int(time.time()) - 3600).format()
    tmp = os.path.join(queue_dir, TMP)
    os.rename(os.path.join(tmp, private_name), os.path.join(tmp, old))
    return old


def call(name: str, *args, **kwargs) -> list:
    """One call for a child (see protocol_backends)."""
    return [name, list(args), kwargs]


def as_bytes(data: bytes) -> dict[str, str]:
    return {"bytes": data.hex()}


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class BrokerQueue:
    """A queue ``q`` of a real ddmq root, holding one message claimed through the broker."""

    def __init__(self, root: str, body: str):
        self.root = root
        self.broker = ddmq.broker(root, create=True)
        self.broker.publish("q", body)
        msg = self.broker.consume("q")
        assert msg is not None
        self.body = body
        self.id = msg.id
        self.queue_dir = os.path.join(root, "q")
        (self.work,) = [n for n in listing(os.path.join(self.queue_dir, WORK))
                        if WorkName.parse(n)]
        self.waiting = WorkName.parse(self.work).waiting
        self.data = read(self.work_path)

    @property
    def work_path(self) -> str:
        return os.path.join(self.queue_dir, WORK, self.work)

    def expire(self) -> None:
        """End the lease in the past (one rename, as a late clock would see it)."""
        old = WorkName.parse(self.work)
        new = old.with_expiry(int(time.time()) - 3600).format()
        assert protocol.extend(self.queue_dir, self.work, new, R)
        self.work = new

    def requeued_copy(self) -> tuple[str, bytes]:
        """The waiting name and bytes a requeue of the message publishes (counter + 1)."""
        fields = json.loads(self.data)
        fields["requeue_counter"] += 1
        fields["queue_number"] = time.time_ns()
        name = WaitingName(fields["priority"], fields["queue_number"], fields["id"]).format()
        fields["filename"] = name
        return name, json.dumps(fields).encode()

    def clean(self) -> None:
        """Housekeeping by another process's broker (a fresh one: no caches)."""
        other = ddmq.broker(self.root)
        try:
            assert other.clean("q", force=True)
        finally:
            other.close()

    def consume_all(self) -> list:
        """Every message of the queue, consumed and acked by a fresh broker."""
        other = ddmq.broker(self.root)
        got = []
        try:
            while True:
                msg = other.consume("q")
                if msg is None:
                    return got
                got.append(msg)
                other.ack(msg)
        finally:
            other.close()


# --- the suite ----------------------------------------------------------------------------------

class ProtocolContract:
    """The contract every filesystem ddmq runs on must meet. Subclasses define the
    ``backend`` fixture."""

    #: Racing processes, and rounds of each race.
    RACERS = 4
    ROUNDS = 6

    @pytest.fixture
    def queue_dir(self, backend: Backend) -> str:
        """A queue folder with ``tmp/`` and ``work/`` (no ``dead/`` yet, as ddmq makes them)."""
        path = os.path.join(backend.base, f"root-{uuid.uuid4().hex[:8]}", "q")
        os.makedirs(os.path.join(path, TMP))
        os.makedirs(os.path.join(path, WORK))
        return path

    @pytest.fixture
    def root(self, backend: Backend) -> str:
        """Path of a ddmq root to be (made by the broker)."""
        return os.path.join(backend.base, f"root-{uuid.uuid4().hex[:8]}")

    @pytest.fixture
    def gates(self, tmp_path) -> str:
        """A local folder for the FIFOs that start races."""
        path = tmp_path / "gates"
        path.mkdir()
        return str(path)

    # --- publish --------------------------------------------------------------------------------

    @pytest.mark.parametrize("fsync", [False, True])
    @pytest.mark.parametrize("size", [0, 1, 100_000])
    def test_publish_makes_the_whole_file_appear(self, queue_dir, fsync, size):
        data = fill("pub", size) if size else b""
        waiting = new_waiting().format()
        assert protocol.publish(queue_dir, waiting, data, fsync=fsync, retry_timeout=R) is None
        assert read(os.path.join(queue_dir, waiting)) == data
        assert listing(queue_dir) == sorted([waiting, TMP, WORK])
        assert listing(os.path.join(queue_dir, TMP)) == []

    @pytest.mark.parametrize("old_size", [10, 50_000])
    def test_publish_rewrites_a_spare_in_place(self, queue_dir, old_size):
        spare = os.path.join(queue_dir, TMP, layout.spare_name())
        write(spare, fill("old", old_size))
        inode = os.stat(spare).st_ino
        data = fill("new", 3000)
        waiting = new_waiting().format()
        protocol.publish(queue_dir, waiting, data, fsync=False, retry_timeout=R, spare=spare)
        final = os.path.join(queue_dir, waiting)
        assert read(final) == data, "nothing of the spare's old content may remain"
        assert os.stat(final).st_ino == inode, "the spare itself became the message"
        assert listing(os.path.join(queue_dir, TMP)) == []

    def test_publish_with_a_vanished_spare_writes_a_new_file(self, queue_dir):
        gone = os.path.join(queue_dir, TMP, layout.spare_name())
        data = fill("new", 3000)
        waiting = new_waiting().format()
        protocol.publish(queue_dir, waiting, data, fsync=True, retry_timeout=R, spare=gone)
        assert read(os.path.join(queue_dir, waiting)) == data
        assert listing(os.path.join(queue_dir, TMP)) == []

    def test_publish_into_a_missing_queue_raises_and_leaves_nothing(self, queue_dir):
        missing = os.path.join(os.path.dirname(queue_dir), "missing")
        with pytest.raises(FileNotFoundError):
            protocol.publish(missing, new_waiting().format(), b"x", fsync=False, retry_timeout=R)
        assert not os.path.lexists(missing)
        assert listing(os.path.dirname(queue_dir)) == ["q"]

    def test_publish_without_tmp_raises_and_leaves_nothing(self, queue_dir):
        os.rmdir(os.path.join(queue_dir, TMP))
        with pytest.raises(FileNotFoundError):
            protocol.publish(queue_dir, new_waiting().format(), b"x", fsync=False, retry_timeout=R)
        assert listing(queue_dir) == [WORK]

    def test_failed_rename_into_a_missing_folder_leaves_no_temporary_file(self, queue_dir):
        with pytest.raises(FileNotFoundError):
            protocol.publish(queue_dir, f"gone{os.sep}{new_waiting().format()}", b"x",
                             fsync=False, retry_timeout=R)
        assert listing(os.path.join(queue_dir, TMP)) == []
        assert listing(queue_dir) == [TMP, WORK]

    def test_failed_rename_onto_a_folder_leaves_no_temporary_file(self, queue_dir):
        waiting = new_waiting().format()
        os.mkdir(os.path.join(queue_dir, waiting))
        with pytest.raises(FilesystemError):
            protocol.publish(queue_dir, waiting, fill("x", 500), fsync=False, retry_timeout=R)
        assert listing(os.path.join(queue_dir, TMP)) == []
        assert os.path.isdir(os.path.join(queue_dir, waiting))

    def test_failed_publish_with_a_spare_leaves_no_temporary_file(self, queue_dir):
        spare = os.path.join(queue_dir, TMP, layout.spare_name())
        write(spare, fill("old", 100))
        with pytest.raises(FileNotFoundError):
            protocol.publish(queue_dir, f"gone{os.sep}{new_waiting().format()}", b"x",
                             fsync=False, retry_timeout=R, spare=spare)
        assert listing(os.path.join(queue_dir, TMP)) == []

    # --- claim ----------------------------------------------------------------------------------

    def test_claim_moves_the_message_to_work(self, queue_dir):
        data = fill("claim", 2000)
        waiting = publish_one(queue_dir, data)
        work = WorkName(int(time.time()) + 60, waiting, layout.claimer_tag()).format()
        assert protocol.claim(queue_dir, waiting, work, R) is True
        assert listing(os.path.join(queue_dir, WORK)) == [work]
        assert read(os.path.join(queue_dir, WORK, work)) == data
        assert waiting_in(queue_dir) == []

    def test_claim_of_a_message_gone_is_false(self, queue_dir):
        waiting = publish_one(queue_dir, b"m")
        first = WorkName(1, waiting, "first").format()
        assert protocol.claim(queue_dir, waiting, first, R)
        assert protocol.claim(queue_dir, waiting, WorkName(1, waiting, "second").format(), R) is False
        assert listing(os.path.join(queue_dir, WORK)) == [first]
        never = new_waiting().format()
        assert protocol.claim(queue_dir, never, WorkName(1, never, "x").format(), R) is False
        assert listing(os.path.join(queue_dir, WORK)) == [first]

    def test_claim_race_has_exactly_one_winner(self, backend, queue_dir, gates):
        with children(self.RACERS) as kids:
            for _ in range(self.ROUNDS):
                data = fill(f"c{uuid.uuid4().hex[:6]}", 5000)
                waiting = publish_one(queue_dir, data)
                works = [WorkName(int(time.time()) + 60, waiting, f"racer{i}").format()
                         for i in range(len(kids))]
                answers = race(kids, [[call("claim", backend.view(i, queue_dir), waiting,
                                            works[i], R)] for i in range(len(kids))], gates)
                won = [i for i, a in enumerate(answers) if a.get("results") == [True]]
                assert len(won) == 1, answers
                assert all(a.get("results") == [False] for i, a in enumerate(answers)
                           if i not in won), answers
                assert listing(os.path.join(queue_dir, WORK)) == [works[won[0]]]
                assert read(os.path.join(queue_dir, WORK, works[won[0]])) == data
                assert waiting_in(queue_dir) == []
                os.unlink(os.path.join(queue_dir, WORK, works[won[0]]))

    # --- extend ---------------------------------------------------------------------------------

    def test_extend_renames_the_work_file_to_its_new_expiry(self, queue_dir):
        data = fill("ext", 700)
        _, work = claim_one(queue_dir, data, expiry=1000)
        later = WorkName.parse(work).with_expiry(2000).format()
        assert protocol.extend(queue_dir, work, later, R) is True
        assert listing(os.path.join(queue_dir, WORK)) == [later]
        assert read(os.path.join(queue_dir, WORK, later)) == data

    def test_extend_of_a_lost_lease_is_false(self, queue_dir):
        _, work = claim_one(queue_dir, b"m", expiry=1000)
        os.unlink(os.path.join(queue_dir, WORK, work))
        later = WorkName.parse(work).with_expiry(2000).format()
        assert protocol.extend(queue_dir, work, later, R) is False
        assert listing(os.path.join(queue_dir, WORK)) == []

    def test_extend_to_the_same_name_only_looks(self, queue_dir):
        data = fill("same", 100)
        _, work = claim_one(queue_dir, data, expiry=1000)
        before = os.stat(os.path.join(queue_dir, WORK, work))
        assert protocol.extend(queue_dir, work, work, R) is True
        after = os.stat(os.path.join(queue_dir, WORK, work))
        assert (after.st_ino, after.st_ctime_ns) == (before.st_ino, before.st_ctime_ns)
        assert listing(os.path.join(queue_dir, WORK)) == [work]
        os.unlink(os.path.join(queue_dir, WORK, work))
        assert protocol.extend(queue_dir, work, work, R) is False
        assert listing(os.path.join(queue_dir, WORK)) == []

    def test_extend_to_the_same_name_without_work_folder_is_false(self, queue_dir):
        os.rmdir(os.path.join(queue_dir, WORK))
        work = WorkName(5, new_waiting().format(), "x").format()
        assert protocol.extend(queue_dir, work, work, R) is False
        assert not os.path.lexists(os.path.join(queue_dir, WORK))

    def test_extend_racing_takes_has_exactly_one_winner(self, backend, queue_dir, gates):
        with children(self.RACERS) as kids:
            for _ in range(self.ROUNDS):
                data = fill("x", 300)
                waiting, work = claim_one(queue_dir, data, expiry=1000)
                later = WorkName.parse(work).with_expiry(2000).format()
                calls_of = [[call("extend", backend.view(0, queue_dir), work, later, R)]]
                calls_of += [[call("take", backend.view(i, queue_dir),
                                   backend.view(i, os.path.join(queue_dir, WORK, work)),
                                   waiting, 1500.0, R)] for i in range(1, len(kids))]
                answers = race(kids, calls_of, gates)
                results = [a["results"][0] for a in answers]
                winners = [r for r in results if r]
                assert len(winners) == 1, answers
                assert all(r in (False, None) for r in results if not r), answers
                work_files = listing(os.path.join(queue_dir, WORK))
                taken = listing(os.path.join(queue_dir, TMP))
                if results[0] is True:  # the extension won: still ours, under the new name
                    assert (work_files, taken) == ([later], [])
                    os.unlink(os.path.join(queue_dir, WORK, later))
                else:  # a housekeeper took it: no longer at work
                    assert work_files == [] and len(taken) == 1
                    assert os.path.join(queue_dir, TMP, taken[0]) == \
                        os.path.join(queue_dir, TMP, os.path.basename(winners[0]))
                    assert read(os.path.join(queue_dir, TMP, taken[0])) == data
                    os.unlink(os.path.join(queue_dir, TMP, taken[0]))

    # --- take -----------------------------------------------------------------------------------

    def test_take_moves_a_work_file_to_a_private_requeue_name(self, queue_dir):
        data = fill("take", 900)
        waiting, work = claim_one(queue_dir, data)
        now = time.time()
        private = protocol.take(queue_dir, os.path.join(queue_dir, WORK, work), waiting, now, R)
        assert private is not None
        assert os.path.dirname(private) == os.path.join(queue_dir, TMP)
        parsed = RequeueName.parse(os.path.basename(private))
        assert parsed is not None and (parsed.taken, parsed.waiting) == (int(now), waiting)
        assert read(private) == data
        assert listing(os.path.join(queue_dir, WORK)) == []
        assert listing(os.path.join(queue_dir, TMP)) == [os.path.basename(private)]

    def test_take_of_a_file_gone_is_none(self, queue_dir):
        waiting, work = claim_one(queue_dir, b"m")
        os.unlink(os.path.join(queue_dir, WORK, work))
        assert protocol.take(queue_dir, os.path.join(queue_dir, WORK, work), waiting,
                             time.time(), R) is None
        assert listing(os.path.join(queue_dir, TMP)) == []

    def test_take_creates_tmp_when_missing(self, queue_dir):
        """Queues made by ddmq 0.9 have no tmp/."""
        data = fill("old-queue", 400)
        waiting, work = claim_one(queue_dir, data)
        os.rmdir(os.path.join(queue_dir, TMP))
        private = protocol.take(queue_dir, os.path.join(queue_dir, WORK, work), waiting,
                                time.time(), R)
        assert private is not None and read(private) == data
        assert listing(os.path.join(queue_dir, TMP)) == [os.path.basename(private)]

    def test_take_of_an_abandoned_requeue_stamps_it_anew(self, queue_dir):
        data = fill("again", 400)
        waiting, work = claim_one(queue_dir, data)
        first = protocol.take(queue_dir, os.path.join(queue_dir, WORK, work), waiting, 1000.0, R)
        second = protocol.take(queue_dir, first, waiting, 5000.0, R)
        assert second is not None and second != first
        assert RequeueName.parse(os.path.basename(second)).taken == 5000
        assert listing(os.path.join(queue_dir, TMP)) == [os.path.basename(second)]
        assert read(second) == data
        assert protocol.take(queue_dir, first, waiting, 6000.0, R) is None

    def test_take_race_has_exactly_one_winner(self, backend, queue_dir, gates):
        with children(self.RACERS) as kids:
            for _ in range(self.ROUNDS):
                data = fill("t", 3000)
                waiting, work = claim_one(queue_dir, data)
                answers = race(kids, [[call("take", backend.view(i, queue_dir),
                                            backend.view(i, os.path.join(queue_dir, WORK, work)),
                                            waiting, time.time(), R)]
                                      for i in range(len(kids))], gates)
                results = [a["results"][0] for a in answers]
                won = [r for r in results if r is not None]
                assert len(won) == 1, answers
                assert listing(os.path.join(queue_dir, WORK)) == []
                assert listing(os.path.join(queue_dir, TMP)) == [os.path.basename(won[0])]
                assert read(os.path.join(queue_dir, TMP, os.path.basename(won[0]))) == data
                os.unlink(os.path.join(queue_dir, TMP, os.path.basename(won[0])))

    # --- requeue --------------------------------------------------------------------------------

    @pytest.mark.parametrize("with_spare", [False, True])
    def test_requeue_publishes_the_copy_then_removes_the_private_file(self, queue_dir,
                                                                      with_spare):
        waiting, work = claim_one(queue_dir, fill("first", 800))
        private = protocol.take(queue_dir, os.path.join(queue_dir, WORK, work), waiting,
                                time.time(), R)
        spare = None
        if with_spare:
            spare = os.path.join(queue_dir, TMP, layout.spare_name())
            write(spare, fill("spare", 5000))
        copy = WaitingName(0, time.time_ns(), WaitingName.parse(waiting).id).format()
        data = fill("second", 900)
        assert protocol.requeue(queue_dir, private, copy, data, fsync=True, retry_timeout=R,
                                spare=spare) is None
        assert waiting_in(queue_dir) == [copy]
        assert read(os.path.join(queue_dir, copy)) == data
        assert listing(os.path.join(queue_dir, TMP)) == []
        assert listing(os.path.join(queue_dir, WORK)) == []

    # --- dead letters ---------------------------------------------------------------------------

    @pytest.mark.parametrize("reason", layout.DEAD_REASONS)
    def test_dead_letter_creates_dead_when_missing(self, queue_dir, reason):
        data = fill("poison", 600)
        waiting, work = claim_one(queue_dir, data)
        assert not os.path.lexists(os.path.join(queue_dir, DEAD))
        assert protocol.dead_letter(queue_dir, os.path.join(queue_dir, WORK, work), reason,
                                    waiting, R) is True
        dead = DeadName(reason, waiting).format()
        assert listing(os.path.join(queue_dir, DEAD)) == [dead]
        assert read(os.path.join(queue_dir, DEAD, dead)) == data
        assert listing(os.path.join(queue_dir, WORK)) == []

    def test_dead_letter_of_a_taken_message(self, queue_dir):
        data = fill("taken-poison", 600)
        waiting, work = claim_one(queue_dir, data)
        os.mkdir(os.path.join(queue_dir, DEAD))
        private = protocol.take(queue_dir, os.path.join(queue_dir, WORK, work), waiting,
                                time.time(), R)
        assert protocol.dead_letter(queue_dir, private, "requeue_limit", waiting, R) is True
        dead = DeadName("requeue_limit", waiting).format()
        assert listing(os.path.join(queue_dir, DEAD)) == [dead]
        assert read(os.path.join(queue_dir, DEAD, dead)) == data
        assert listing(os.path.join(queue_dir, TMP)) == []

    def test_dead_letter_of_a_file_gone_is_false(self, queue_dir):
        waiting, work = claim_one(queue_dir, b"m")
        os.unlink(os.path.join(queue_dir, WORK, work))
        assert protocol.dead_letter(queue_dir, os.path.join(queue_dir, WORK, work), "expired",
                                    waiting, R) is False
        assert listing(os.path.join(queue_dir, DEAD)) == []

    def test_undead_puts_a_dead_letter_back(self, queue_dir):
        data = fill("lazarus", 600)
        waiting, work = claim_one(queue_dir, data)
        protocol.dead_letter(queue_dir, os.path.join(queue_dir, WORK, work), "rejected",
                             waiting, R)
        dead = DeadName("rejected", waiting).format()
        assert protocol.undead(queue_dir, dead, waiting, R) is True
        assert waiting_in(queue_dir) == [waiting]
        assert read(os.path.join(queue_dir, waiting)) == data
        assert listing(os.path.join(queue_dir, DEAD)) == []
        assert protocol.undead(queue_dir, dead, waiting, R) is False
        assert waiting_in(queue_dir) == [waiting]

    # --- retire ---------------------------------------------------------------------------------

    def test_retire_unlinks_the_work_file(self, queue_dir):
        _, work = claim_one(queue_dir, b"done")
        assert protocol.retire(queue_dir, work, R) is True
        assert listing(os.path.join(queue_dir, WORK)) == []
        assert listing(os.path.join(queue_dir, TMP)) == []
        assert protocol.retire(queue_dir, work, R) is False, "a lost lease says so"

    def test_retire_to_a_spare_that_the_next_publish_rewrites(self, queue_dir):
        pool = SparePool(limit=4)
        try:
            _, work = claim_one(queue_dir, fill("acked", 4000))
            inode = os.stat(os.path.join(queue_dir, WORK, work)).st_ino
            assert protocol.retire(queue_dir, work, R, make_spare=pool.retire) is True
            assert listing(os.path.join(queue_dir, WORK)) == []
            (spare,) = listing(os.path.join(queue_dir, TMP))
            assert layout.is_spare(spare)
            assert protocol.retire(queue_dir, work, R, make_spare=pool.retire) is False
            # the next publish to the queue claims the spare and rewrites it
            claimed = pool.take(os.path.join(queue_dir, TMP), R)
            assert claimed is not None
            data = fill("reused", 100)
            waiting = new_waiting().format()
            protocol.publish(queue_dir, waiting, data, fsync=False, retry_timeout=R,
                             spare=claimed)
            assert read(os.path.join(queue_dir, waiting)) == data
            assert os.stat(os.path.join(queue_dir, waiting)).st_ino == inode
            assert listing(os.path.join(queue_dir, TMP)) == []
        finally:
            pool.close()

    def test_retire_unlinks_when_no_spare_is_made(self, queue_dir):
        _, work = claim_one(queue_dir, b"done")
        asked = []

        def no_room(path: str, tmp: str) -> None:
            asked.append((path, tmp))
            return None

        assert protocol.retire(queue_dir, work, R, make_spare=no_room) is True
        assert asked == [(os.path.join(queue_dir, WORK, work), os.path.join(queue_dir, TMP))]
        assert listing(os.path.join(queue_dir, WORK)) == []
        assert listing(os.path.join(queue_dir, TMP)) == []

    # --- atomic writes --------------------------------------------------------------------------

    @pytest.mark.parametrize("fsync", [False, True])
    def test_atomic_write_replaces(self, backend, fsync):
        path = os.path.join(backend.base, "settings.yaml")
        write(path, fill("old", 5000))
        protocol.atomic_write(path, b"new: 1\n", fsync=fsync)
        assert read(path) == b"new: 1\n"
        assert listing(backend.base) == ["settings.yaml"]

    def test_atomic_write_makes_a_new_file_with_its_mode(self, backend):
        path = os.path.join(backend.base, "secret")
        protocol.atomic_write(path, b"k" * 64, mode=0o600)
        assert read(path) == b"k" * 64
        assert os.stat(path).st_mode & 0o777 == 0o600 & ~current_umask()
        assert listing(backend.base) == ["secret"]

    def test_atomic_write_exclusive_creates_only_once(self, backend):
        path = os.path.join(backend.base, "once")
        protocol.atomic_write(path, b"first", exclusive=True)
        assert read(path) == b"first"
        protocol.atomic_write(path, b"second", exclusive=True)
        assert read(path) == b"first", "an exclusive write never replaces"
        assert listing(backend.base) == ["once"]

    @pytest.mark.parametrize("exclusive", [False, True])
    @pytest.mark.parametrize("existing", [None, b"old"])
    def test_atomic_file_failing_inside_leaves_the_file_as_it_was(self, backend, exclusive,
                                                                  existing):
        path = os.path.join(backend.base, "file")
        if existing is not None:
            write(path, existing)
        with pytest.raises(KeyError):
            with protocol.atomic_file(path, exclusive=exclusive) as fd:
                protocol.write_all(fd, fill("half", 10_000))
                raise KeyError("the writer fails half-way")
        if existing is None:
            assert listing(backend.base) == []
        else:
            assert listing(backend.base) == ["file"] and read(path) == existing

    def test_atomic_write_into_a_missing_folder_raises(self, backend):
        with pytest.raises(FileNotFoundError):
            protocol.atomic_write(os.path.join(backend.base, "missing", "f"), b"x")
        assert listing(backend.base) == []

    def test_atomic_exclusive_race_has_one_winner_and_a_whole_file(self, backend, gates):
        with children(self.RACERS) as kids:
            for round_ in range(self.ROUNDS):
                path = os.path.join(backend.base, f"secret-{round_}")
                datas = [fill(f"w{i}r{round_}", 1 << 20) for i in range(len(kids))]
                answers = race(kids, [[call("atomic_exclusive_report", backend.view(i, path),
                                            {"fill": [f"w{i}r{round_}", 1 << 20]})]
                                      for i in range(len(kids))], gates)
                won = [i for i, a in enumerate(answers) if a["results"][0]["won"]]
                assert len(won) == 1, answers
                assert read(path) == datas[won[0]]
            assert listing(backend.base) == sorted(f"secret-{r}" for r in range(self.ROUNDS))

    def test_atomic_write_race_leaves_one_whole_file(self, backend, gates):
        path = os.path.join(backend.base, "settings.yaml")
        write(path, b"old")
        with children(self.RACERS) as kids:
            for round_ in range(self.ROUNDS):
                tags = [f"w{i}r{round_}" for i in range(len(kids))]
                answers = race(kids, [[call("atomic_write", backend.view(i, path),
                                            {"fill": [tags[i], 300_000]})]
                                      for i in range(len(kids))], gates)
                assert all(a.get("results") == [None] for a in answers), answers
                assert read(path) in [fill(tag, 300_000) for tag in tags]
        assert listing(backend.base) == ["settings.yaml"]

    # --- crash windows: a real SIGKILL between two steps ------------------------------------------

    def test_publisher_killed_before_the_rename_leaves_only_a_temporary_file(self, root):
        b = ddmq.broker(root, create=True)
        b.publish("q", "makes the queue")
        b.ack(b.consume("q"))
        queue_dir = os.path.join(root, "q")
        tmp = os.path.join(queue_dir, TMP)
        for name in listing(tmp):  # a spare the ack may have left (local filesystems)
            os.unlink(os.path.join(tmp, name))
        data = fill("lost-publisher", 20_000)
        waiting = new_waiting().format()
        answer = crash_at([call("publish", queue_dir, waiting, as_bytes(data), fsync=True,
                                retry_timeout=R)], {"call": "rename", "nth": 1})
        assert answer.get("at") == "rename", answer
        assert waiting_in(queue_dir) == [], "nothing visible in the queue"
        (temp,) = listing(tmp)
        assert read(os.path.join(tmp, temp)) == data
        assert b.get_message_list("q") == ([], [])
        assert b.consume("q") is None
        # housekeeping leaves a young temporary file alone, and removes it once old
        other = ddmq.broker(root)
        other.clean("q", force=True)
        assert listing(tmp) == [temp]
        old = time.time() - 2 * 24 * 3600
        os.utime(os.path.join(tmp, temp), (old, old))
        other.clean("q", force=True)
        assert listing(tmp) == []
        other.close()
        b.close()

    def test_killed_after_take_leaves_a_requeue_that_clean_finishes_once_stale(self, root):
        q = BrokerQueue(root, "taken and abandoned")
        answer = crash_at([call("take", q.queue_dir, q.work_path, q.waiting, time.time(), R),
                           call("stop_here")], None)
        assert answer.get("paused") == "stop_here", answer
        (private,) = requeues_in(q.queue_dir)
        assert RequeueName.parse(private).waiting == q.waiting
        assert read(os.path.join(q.queue_dir, TMP, private)) == q.data
        assert copies(q.queue_dir, q.id) == {"waiting": [], "work": [], "requeue": [private],
                                             "dead": []}
        q.clean()  # not stale yet: a live process may still be finishing it
        assert requeues_in(q.queue_dir) == [private]
        make_stale(q.queue_dir, private)
        q.clean()
        where = copies(q.queue_dir, q.id)
        assert (len(where["waiting"]), where["requeue"], where["work"]) == (1, [], []), where
        (msg,) = q.consume_all()
        assert (msg.id, msg.message) == (q.id, q.body)

    def test_killed_between_requeue_publish_and_unlink_leaves_two_copies(self, root):
        q = BrokerQueue(root, "requeued twice at most")
        copy, data = q.requeued_copy()
        answer = crash_at([call("take", q.queue_dir, q.work_path, q.waiting, time.time(), R),
                           call("requeue", q.queue_dir, "$0", copy, as_bytes(data), fsync=False,
                                retry_timeout=R)], {"call": "unlink", "nth": 1})
        assert answer.get("at") == "unlink", answer
        where = copies(q.queue_dir, q.id)
        assert where["waiting"] == [copy] and len(where["requeue"]) == 1, where
        assert read(os.path.join(q.queue_dir, copy)) == data
        make_stale(q.queue_dir, where["requeue"][0])
        q.clean()
        where = copies(q.queue_dir, q.id)
        assert len(where["waiting"]) == 2 and where["requeue"] == [], where
        got = q.consume_all()
        assert [(m.id, m.message) for m in got] == [(q.id, q.body)] * 2

    @pytest.mark.parametrize("fsync", [False, True])
    def test_publish_killed_at_any_step_shows_all_or_nothing(self, backend, fsync):
        data = fill("any-step", 50_000)
        seen = []
        for step in range(1, 100):
            queue_dir = os.path.join(backend.base, f"q{step}")
            os.makedirs(os.path.join(queue_dir, TMP))
            waiting = new_waiting().format()
            answer = crash_at([call("publish", queue_dir, waiting, as_bytes(data), fsync=fsync,
                                    retry_timeout=R)], step)
            temps = listing(os.path.join(queue_dir, TMP))
            if "results" in answer:  # finished before that step: the sweep is complete
                assert waiting_in(queue_dir) == [waiting] and temps == []
                break
            seen.append(answer["at"])
            visible = waiting_in(queue_dir)
            if visible:
                assert visible == [waiting] and temps == []
                assert read(os.path.join(queue_dir, waiting)) == data
            else:
                assert len(temps) <= 1, temps
        else:
            pytest.fail(f"publish did not finish in 100 steps: {seen}")
        assert "rename" in seen and seen.index("rename") > seen.index("write"), seen

    def test_requeue_killed_at_any_step_loses_nothing(self, backend):
        seen = []
        for step in range(1, 100):
            q = BrokerQueue(os.path.join(backend.base, f"root{step}"), f"message {step}")
            q.expire()
            copy, data = q.requeued_copy()
            answer = crash_at([call("take", q.queue_dir, q.work_path, q.waiting, time.time(), R),
                               call("requeue", q.queue_dir, "$0", copy, as_bytes(data),
                                    fsync=True, retry_timeout=R)], step)
            where = copies(q.queue_dir, q.id)
            found = sum(len(names) for names in where.values())
            assert 1 <= found <= 2, (step, answer, where)
            assert where["dead"] == []
            for private in where["requeue"]:
                make_stale(q.queue_dir, private)
            q.clean()  # finishes an abandoned requeue, requeues an expired lease
            where = copies(q.queue_dir, q.id)
            assert where["requeue"] == [] and where["work"] == [], (step, answer, where)
            assert 1 <= len(where["waiting"]) <= 2, (step, answer, where)
            got = q.consume_all()
            assert {(m.id, m.message) for m in got} == {(q.id, q.body)}
            if "results" in answer:
                assert len(got) == 1
                break
            seen.append(answer["at"])
        else:
            pytest.fail(f"take + requeue did not finish in 100 steps: {seen}")
        assert seen[0] == "rename" and "unlink" in seen, seen

    def test_atomic_write_killed_at_any_step_leaves_old_or_new(self, backend):
        path = os.path.join(backend.base, "ddmq.yaml")
        old, new = fill("old", 30_000), fill("new", 70_000)
        write(path, old)
        seen = []
        for step in range(1, 100):
            answer = crash_at([call("atomic_write", path, as_bytes(new), fsync=True)], step)
            content = read(path)
            if "results" in answer:
                assert content == new
                break
            seen.append(answer["at"])
            assert content in (old, new), f"step {step} ({answer['at']}): a torn file"
            if content == new:
                write(path, old)
            leftovers = [n for n in listing(backend.base) if n != "ddmq.yaml"]
            assert all(n.startswith("ddmq.yaml.tmp-") for n in leftovers), leftovers
            for name in leftovers:
                os.unlink(os.path.join(backend.base, name))
        else:
            pytest.fail(f"atomic_write did not finish in 100 steps: {seen}")
        assert "replace" in seen, seen
        assert listing(backend.base) == ["ddmq.yaml"]


# --- the local backends ---------------------------------------------------------------------------

class TestLocalDisk(ProtocolContract):
    @pytest.fixture
    def backend(self, tmp_path):
        with disk_backend(tmp_path) as backend:
            yield backend


class TestTmpfs(ProtocolContract):
    @pytest.fixture
    def backend(self):
        with tmpfs_backend() as backend:
            yield backend
