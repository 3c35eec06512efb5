"""The envelope format: round trips, and every envelope not signed with the root's secret refused before unpickling.

The payloads carry a :class:`Canary`: unpickling one creates a file, so a
test sees whether anything was unpickled. Real folders under ``tmp_path``
for spill files; no mocks.
"""

from __future__ import annotations

import base64
import copy
import os
import pickle

import pytest

from ddmq.executor import envelope, spill
from ddmq.executor.envelope import (INLINE_MAX, VERSION, Calls, Result, Refusal, check_task,
                                    dump_result, dump_task, failure, load_refusal, load_result,
                                    load_task, rebuild, reply_envelopes, sign_payload)
from ddmq.executor.errors import PayloadMissingError, RemoteTraceback, SignatureError
from ddmq.executor.spill import SpillStore
from ddmq.layout import SPARE_PREFIX

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))
REPLY = "reply-host-1-abcd"


def _touch(path: str) -> None:
    with open(path, "w", encoding="utf-8"):
        pass


class Canary:
    """Unpickling it creates a file: proof that a payload was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return _touch, (self.path,)


def add(x, y=0):
    return x + y


@pytest.fixture
def canary(tmp_path):
    return str(tmp_path / "unpickled")


# --- round trips ---------------------------------------------------------------------------

def test_a_task_round_trips(tmp_path):
    doc = dump_task(SECRET, "t.1", REPLY, add, [(1, 2)], [{"y": 5}])
    assert doc["v"] == VERSION and doc["task"] == "t.1" and doc["reply"] == REPLY and "payload" in doc
    task = check_task(SECRET, doc, tmp_path)
    assert (task.id, task.reply) == ("t.1", REPLY)
    calls = load_task(task.payload)
    assert calls == Calls(add, [(1, 2)], [{"y": 5}])
    chunk = load_task(check_task(SECRET, dump_task(SECRET, "t.2", REPLY, add, [(1,), (2,)]),
                                 tmp_path).payload)
    assert chunk.kwargs is None and chunk.arglists == [(1,), (2,)]  # map's chunks: no kwargs


def test_a_result_round_trips_with_its_failures():
    try:
        raise ValueError("bad")
    except ValueError as err:
        failed = failure(1, err, "in task t.1")
    doc = dump_result(SECRET, "t.1", REPLY, "host:1", [4, None], [failed])
    assert doc["worker"] == "host:1" and "reply" not in doc
    result = load_result(SECRET, REPLY, doc)
    assert isinstance(result, Result) and result.task == "t.1" and result.values == [4, None]
    ((index, exc, tb),) = result.failures
    assert index == 1 and isinstance(exc, ValueError) and "in task t.1" in tb
    assert isinstance(rebuild(exc, tb).__cause__, RemoteTraceback)


def test_large_payloads_travel_in_spill_files(tmp_path):
    store = SpillStore(tmp_path)
    folder = store.create(REPLY)
    big = os.urandom(2 * INLINE_MAX)
    doc = dump_task(SECRET, "t.1", REPLY, len, [(big,)], None, store)
    assert "payload" not in doc and os.listdir(folder) == [doc["file"]]
    assert load_task(check_task(SECRET, doc, tmp_path).payload).arglists == [(big,)]
    doc = dump_result(SECRET, "t.1", REPLY, "host:1", [big], [], store)
    assert load_result(SECRET, REPLY, doc, store).values == [big]
    assert not os.path.exists(os.path.join(folder, doc["file"]))  # released once read


def test_spilled_payloads_are_signed_with_poly1305_each_under_its_own_key(tmp_path):
    # Poly1305 must never see two messages under one key: a task's result
    # sent twice (a rerun after a lost lease) gets two nonces, two keys.
    store = SpillStore(tmp_path)
    store.create(REPLY)
    big = os.urandom(2 * INLINE_MAX)
    first = dump_result(SECRET, "t.1", REPLY, "host:1", [big], [], store)
    again = dump_result(SECRET, "t.1", REPLY, "host:2", [big[::-1]], [], store)
    assert first["mac"] == again["mac"] == envelope.PAYLOAD_MAC == "poly1305"
    assert first["n"] != again["n"] and first["sig"] != again["sig"]
    assert load_result(SECRET, REPLY, first, store).values == [big]
    assert load_result(SECRET, REPLY, again, store).values == [big[::-1]]
    small = dump_result(SECRET, "t.1", REPLY, "host:1", [1], [], store)
    assert "payload" in small and small["mac"] == "hmac-sha256" and len(small["sig"]) == 64


def test_without_poly1305_payloads_are_signed_with_hmac_and_poly1305_ones_refused_clearly(
        tmp_path, canary, monkeypatch):
    """An OpenSSL in FIPS mode has no Poly1305: such a process signs with
    HMAC-SHA256 (which every process checks), and refuses, saying why, the
    Poly1305 payloads it cannot check."""
    store = SpillStore(tmp_path)
    store.create(REPLY)
    padding = bytes(2 * INLINE_MAX)
    signed_with_poly1305 = dump_result(SECRET, "t.1", REPLY, "host:1", [Canary(canary), padding],
                                       [], store)
    assert signed_with_poly1305["mac"] == "poly1305"
    monkeypatch.setattr(envelope, "Poly1305", None)
    monkeypatch.setattr(envelope, "PAYLOAD_MAC", "hmac-sha256")
    with pytest.raises(SignatureError, match="Poly1305, which this process cannot check"):
        load_result(SECRET, REPLY, signed_with_poly1305, store)
    assert not os.path.exists(canary)
    doc = dump_task(SECRET, "t.2", REPLY, add, [(padding,)], None, store)
    assert "file" in doc and doc["mac"] == "hmac-sha256" and len(doc["sig"]) == 64
    monkeypatch.undo()  # a process with Poly1305 checks it too
    assert load_task(check_task(SECRET, doc, tmp_path).payload) == Calls(add, [(padding,)], None)


class Unrebuildable(Exception):
    """Pickles, but cannot be unpickled: its __init__ wants two arguments."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def test_values_and_exceptions_that_cannot_travel_become_failures():
    doc = dump_result(SECRET, "t.1", REPLY, "host:1", [1, lambda: 0, (x for x in ())],
                      [(None, Unrebuildable(1, 2), None)])
    result = load_result(SECRET, REPLY, doc)
    assert result.values[0] == 1 and result.values[1]() == 0 and result.values[2] is None
    assert [index for index, _, _ in result.failures] == [None, 2]  # the task's own first
    assert all(isinstance(exc, pickle.PicklingError) for _, exc, _ in result.failures)
    assert "Unrebuildable" in str(result.failures[0][1])


def test_unpicklable_calls_raise_pickling_error():
    with pytest.raises(pickle.PicklingError, match="add"):
        dump_task(SECRET, "t.1", REPLY, add, [((x for x in ()),)])


def test_refusals_and_reply_bodies():
    refusal = Refusal("t.1", "host:1", "bad signature")
    doc = refusal.to_doc(SECRET, REPLY)
    assert {k: v for k, v in doc.items() if k != "sig"} == {
        "v": VERSION, "task": "t.1", "worker": "host:1", "rejected": "bad signature"}
    assert Refusal.from_doc(doc) == refusal
    assert load_refusal(SECRET, REPLY, doc) == refusal
    assert Refusal.from_doc(dump_result(SECRET, "t.1", REPLY, "host:1", [1], [])) is None
    assert load_refusal(SECRET, REPLY, dump_result(SECRET, "t.1", REPLY, "host:1", [1], [])) is None
    # Unsigned, signed with another secret, for another reply queue, or altered: refused.
    forged = [{k: v for k, v in doc.items() if k != "sig"}, refusal.to_doc(OTHER, REPLY),
              refusal.to_doc(SECRET, "reply-other"), dict(doc, rejected="forged reason"),
              dict(doc, worker="evil:1"), dict(doc, sig=None)]
    for bad in forged:
        with pytest.raises(SignatureError):
            load_refusal(SECRET, REPLY, bad)
    assert reply_envelopes([doc, doc]) == [doc, doc]
    assert reply_envelopes([]) == []
    assert reply_envelopes(doc) == [doc]  # a lone envelope, as workers before lists sent
    assert reply_envelopes("junk") == ["junk"]  # refused one by one by the reader


# --- refused before unpickling --------------------------------------------------------------

def _flip_payload(doc):
    data = bytearray(base64.b64decode(doc["payload"]))
    data[len(data) // 2] ^= 1
    doc["payload"] = base64.b64encode(bytes(data)).decode()


def _resign(secret):
    def tamper(doc):
        reply = doc.get("reply", REPLY)
        doc["sig"] = sign_payload(secret, "task" if "reply" in doc else "result", doc["task"],
                                  reply, doc["n"], base64.b64decode(doc["payload"]), doc["mac"])
    return tamper


TAMPERINGS = {
    "flipped payload byte": _flip_payload,
    "other secret": _resign(OTHER),
    "unsigned": lambda doc: doc.pop("sig"),
    "other nonce": lambda doc: doc.update(n="0" * 32),
    "no nonce": lambda doc: doc.pop("n"),
    "MAC named otherwise": lambda doc: doc.update(mac="hmac-sha256" if doc["mac"] == "poly1305"
                                                  else "poly1305"),
    "unknown MAC": lambda doc: doc.update(mac="none"),
    "empty signature": lambda doc: doc.update(sig=""),
    "other version": lambda doc: doc.update(v=1),
    "other task id": lambda doc: doc.update(task="t.2"),
    "payload not base64": lambda doc: doc.update(payload="%%%"),
    "file outside the folder": lambda doc: doc.update(file="../../etc/passwd"),
    "not a dict": lambda doc: doc.clear(),
}


@pytest.mark.parametrize("how", sorted(TAMPERINGS))
@pytest.mark.parametrize("kind", ["task", "result"])
def test_tampered_envelopes_are_refused_before_unpickling(tmp_path, canary, kind, how):
    if kind == "task":
        doc = dump_task(SECRET, "t.1", REPLY, print, [(Canary(canary),)])
    else:
        doc = dump_result(SECRET, "t.1", REPLY, "host:1", [Canary(canary)], [])
    TAMPERINGS[how](doc)
    with pytest.raises(SignatureError):
        if kind == "task":
            load_task(check_task(SECRET, doc, tmp_path).payload)
        else:
            load_result(SECRET, REPLY, doc)
    assert not os.path.exists(canary)


def test_a_result_is_not_accepted_as_a_task_nor_for_another_reply_queue(tmp_path, canary):
    result = dump_result(SECRET, "t.1", REPLY, "host:1", [Canary(canary)], [])
    as_task = dict(copy.deepcopy(result), reply=REPLY)
    with pytest.raises(SignatureError):
        check_task(SECRET, as_task, tmp_path)
    with pytest.raises(SignatureError):
        load_result(SECRET, "reply-other", result)
    task = dump_task(SECRET, "t.1", REPLY, print, [(Canary(canary),)])
    with pytest.raises(SignatureError):
        load_result(SECRET, REPLY, task)
    assert not os.path.exists(canary)
    load_result(SECRET, REPLY, result)  # untouched: accepted, and unpickled
    assert os.path.exists(canary)


def test_a_tampered_or_missing_spill_file_is_refused(tmp_path, canary, monkeypatch):
    store = SpillStore(tmp_path)
    folder = store.create(REPLY)
    doc = dump_task(SECRET, "t.1", REPLY, print, [(Canary(canary), os.urandom(2 * INLINE_MAX))],
                    None, store)
    path = os.path.join(folder, doc["file"])
    with open(path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\0")
    with pytest.raises(SignatureError):
        check_task(SECRET, doc, tmp_path)
    os.unlink(path)
    monkeypatch.setattr(spill, "SPILL_WAIT", 0.1)  # not seen yet: waited for that long
    with pytest.raises(PayloadMissingError):
        check_task(SECRET, doc, tmp_path)
    assert not os.path.exists(canary)


def test_a_payload_file_that_is_a_link_is_refused(tmp_path, canary):
    store = SpillStore(tmp_path)
    folder = store.create(REPLY)
    doc = dump_task(SECRET, "t.1", REPLY, print, [(Canary(canary), os.urandom(2 * INLINE_MAX))],
                    None, store)
    path = os.path.join(folder, doc["file"])
    os.rename(path, path + ".real")
    os.symlink(path + ".real", path)  # the same bytes, through a link: not followed
    with pytest.raises(SignatureError, match="link"):
        check_task(SECRET, doc, tmp_path)
    assert not os.path.exists(canary)


@pytest.mark.parametrize("version", [VERSION - 1, VERSION + 1, str(VERSION), None])
def test_another_envelope_version_is_refused_naming_both_versions(tmp_path, canary, version):
    task = dump_task(SECRET, "t.1", REPLY, print, [(Canary(canary),)])
    result = dump_result(SECRET, "t.1", REPLY, "host:1", [Canary(canary)], [])
    for doc in (task, result):
        doc["v"] = version
    with pytest.raises(SignatureError, match=rf"task envelope version {version!r} \(this ddmq "
                                             rf"reads version {VERSION}\b"):
        check_task(SECRET, task, tmp_path)
    with pytest.raises(SignatureError, match=rf"result envelope version {version!r} .*"
                                             rf"version {VERSION}\b"):
        load_result(SECRET, REPLY, result)
    assert not os.path.exists(canary)


def _spilled_result(store, canary, task="t.1", secret=SECRET):
    """A result envelope whose payload (a Canary, 2 * INLINE_MAX bytes) is in a
    spill file, and that file's path."""
    doc = dump_result(secret, task, REPLY, "host:1", [(Canary(canary), os.urandom(2 * INLINE_MAX))],
                      [], store)
    return doc, os.path.join(store.folder(REPLY), doc["file"])


def test_a_spill_file_cut_short_or_grown_is_refused_before_unpickling(tmp_path, canary):
    store = SpillStore(tmp_path)
    store.create(REPLY)
    doc, path = _spilled_result(store, canary)
    os.truncate(path, os.path.getsize(path) - 1)
    with pytest.raises(SignatureError, match="does not match"):
        load_result(SECRET, REPLY, doc, store)
    doc, path = _spilled_result(store, canary, "t.2")
    with open(path, "ab") as handle:
        handle.write(b".")  # pickle.loads would ignore what follows the STOP opcode
    with pytest.raises(SignatureError, match="does not match"):
        load_result(SECRET, REPLY, doc, store)
    doc, path = _spilled_result(store, canary, "t.3")
    os.truncate(path, 0)
    with pytest.raises(SignatureError, match="does not match"):
        load_result(SECRET, REPLY, doc, store)
    assert not os.path.exists(canary)
    doc, path = _spilled_result(store, canary, "t.4")
    values = load_result(SECRET, REPLY, doc, store).values  # untouched: accepted
    assert os.path.exists(canary) and len(values[0][1]) == 2 * INLINE_MAX
    assert not os.path.exists(path)  # released once read


def test_spill_files_swapped_between_results_or_signed_with_another_secret_are_refused(
        tmp_path, canary):
    store = SpillStore(tmp_path)
    store.create(REPLY)
    first, _ = _spilled_result(store, canary, "t.1")
    second, _ = _spilled_result(store, canary, "t.2")
    first["file"], second["file"] = second["file"], first["file"]  # each signed for its own task
    for doc in (first, second):
        with pytest.raises(SignatureError, match="does not match"):
            load_result(SECRET, REPLY, doc, store)
    forged, path = _spilled_result(store, canary, "t.3", secret=OTHER)
    with pytest.raises(SignatureError, match="does not match"):
        load_result(SECRET, REPLY, forged, store)
    assert not os.path.exists(canary)
    left = os.listdir(store.folder(REPLY))
    assert all(name.startswith(SPARE_PREFIX) for name in left)  # each released once read
