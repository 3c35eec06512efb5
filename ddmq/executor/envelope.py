"""Task and result envelopes: what the executor and its workers say to each other, signed.

Unpickling is code execution, so nothing read from a queue is unpickled
before its signature has been checked. A signature is keyed with the root's
secret (:mod:`ddmq.executor.secret`) and covers the kind of envelope, the
task id, the reply queue, a nonce no other envelope has (a
:func:`~ddmq.layout.unique_token`) and the
pickled bytes: only who can read the secret can make a payload that a worker
or an executor will unpickle. An inline payload (at most :data:`INLINE_MAX`
bytes, mostly a few hundred) is signed with HMAC-SHA256. A payload in a spill
file is signed with Poly1305 (from ``cryptography``) under a one-time key,
the HMAC-SHA256 of the rest: Poly1305 checks a megabyte in a fifth of
HMAC-SHA256's time, which was most of what a large result cost, and the
nonce gives every payload its own key, as Poly1305 requires. For a few
hundred bytes HMAC is as quick and spares a call into ``cryptography``.
Where ``cryptography`` has no Poly1305 (an OpenSSL in FIPS mode), spilled
payloads are signed with HMAC-SHA256 too. The envelope names its MAC
(``"mac"``), and both are checked wherever Poly1305 is available.

An envelope is plain JSON: a task is the ``message`` of a task message; the
``message`` of a reply message (a *reply body*) is a list of result and
refusal envelopes, so that a worker that ran several quick tasks answers
them in one message (a lone envelope, as workers before this list sent,
reads as a list of one)::

    task    {"v": 3, "task": ID, "reply": REPLY_QUEUE,
             "payload": base64(pickle((fn, [args, ...], [kwargs, ...] or None))),
             "mac": "hmac-sha256", "n": NONCE, "sig": hex MAC("task", ID, REPLY_QUEUE, NONCE; payload bytes)}
    result  {"v": 3, "task": ID, "worker": "HOST:PID",
             "payload": base64(pickle(([value, ...] or None, [(index, exception, traceback_text), ...]))),
             "mac": "hmac-sha256", "n": NONCE, "sig": hex MAC("result", ID, REPLY_QUEUE, NONCE; payload bytes)}
    refusal {"v": 3, "task": ID, "worker": "HOST:PID", "rejected": REASON,
             "sig": hex HMAC("refusal", ID, REPLY_QUEUE, "HOST:PID\0REASON")}

A task of a named run (:mod:`ddmq.executor.runs`) also carries the keys of
its calls, which its result echoes (the worker copies both fields), so that
a restarted driver of the run knows which calls a task or a result is for
(optional fields: envelopes without them read as before)::

    "keys": base64(marshal((function key, [call key, ...]))),
    "ksig": hex HMAC("keys", ID, REPLY_QUEUE, keys text)

One task may carry several calls of the same function (a chunk of
``Executor.map``, whose calls have no keyword arguments: None); its result
carries one value per call, in order (None where the call raised), and the
calls that raised; values None means the task failed as a whole (index
None). The lists are plain, so a chunk of a hundred calls costs the pickler
a hundred arguments and a hundred values, nothing per call beyond them. A
refusal carries no pickle: it only tells the executor which task a worker
would not run and why; it is signed all the same, since it fails a future,
and an executor ignores (and logs) a refusal whose signature does not match.

A payload over :data:`INLINE_MAX` bytes is pickled straight into a spill
file (:mod:`ddmq.executor.spill`), never whole in memory (see
:class:`_Sink`); its envelope says ``"file": NAME`` instead of
``"payload"``, and ``"mac": "poly1305"``.

What the envelopes carry, once checked and unpickled, is a :class:`Task`,
:class:`Calls`, :class:`Result` or :class:`Refusal` (small typed records;
NamedTuples, so that they unpack like the plain tuples they replace).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import traceback
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence, Tuple

from ..errors import UnsafeFileError
from ..layout import unique_token
from . import pickling
from .errors import PayloadMissingError, RemoteTraceback, SignatureError
from .spill import SpillStore, SpillWriter, payload_path, read_payload, spill_folder, valid_name

__all__ = ["VERSION", "INLINE_MAX", "Task", "Calls", "Result", "Refusal", "Failure",
           "SignatureError", "PayloadMissingError", "sign", "sign_payload", "PAYLOAD_MAC",
           "PAYLOAD_MACS", "dump_task", "check_task",
           "load_task", "dump_result", "load_result", "load_refusal", "failure", "rebuild",
           "reply_envelopes", "check_keys", "echo_keys"]

log = logging.getLogger(__name__)

try:
    from cryptography.hazmat.primitives.poly1305 import Poly1305
    Poly1305(bytes(32))  # raises UnsupportedAlgorithm where OpenSSL has none (FIPS mode)
except Exception as err:  # noqa: BLE001 (ImportError, UnsupportedAlgorithm: sign with HMAC)
    log.debug("no Poly1305 (%s): payloads are signed with HMAC-SHA256", err)
    Poly1305 = None  # type: ignore[assignment,misc]

#: The MAC this process signs spilled payloads with (see the module docstring).
PAYLOAD_MAC = "hmac-sha256" if Poly1305 is None else "poly1305"
#: The MAC of inline payloads (see the module docstring).
INLINE_MAC = "hmac-sha256"
#: The MACs a payload may be signed with.
PAYLOAD_MACS = ("poly1305", "hmac-sha256")

#: Version of the envelope format; envelopes of another version are refused.
VERSION = 3
#: Payloads larger than this many bytes travel as spill files.
INLINE_MAX = 64 * 1024

#: What a failed call leaves: (index of the call, or None for the whole task;
#: the exception; the traceback's text).
Failure = Tuple[Optional[int], BaseException, Optional[str]]


class Task(NamedTuple):
    """A task envelope whose signature was checked; ``payload`` is not unpickled yet."""

    id: str
    reply: str
    payload: bytes


class Calls(NamedTuple):
    """What a task asks: ``fn(*arglists[i], **kwargs[i])`` for each i (no keyword arguments when ``kwargs`` is None)."""

    fn: Callable[..., Any]
    arglists: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]] | None


class Result(NamedTuple):
    """What a result says: one value per call (None where it raised; ``values``
    None when the task failed as a whole), and the calls that raised, in order."""

    task: str
    values: list[Any] | None
    failures: list[Failure]


class Refusal(NamedTuple):
    """A worker would not run task ``task``, for ``reason``."""

    task: str
    worker: str
    reason: str

    def to_doc(self, secret: bytes, reply: str) -> dict[str, Any]:
        """The refusal envelope, signed for the reply queue ``reply`` (see :func:`load_refusal`)."""
        return {"v": VERSION, "task": self.task, "worker": self.worker, "rejected": self.reason,
                "sig": sign(secret, "refusal", self.task, reply, self._signed_bytes())}

    def _signed_bytes(self) -> bytes:
        return f"{self.worker}\0{self.reason}".encode("utf-8", "surrogatepass")

    @staticmethod
    def from_doc(doc: dict[str, Any]) -> Refusal | None:
        """The refusal ``doc`` is, or None if it is another envelope. Not
        checked: an executor reads refusals with :func:`load_refusal`."""
        if "rejected" not in doc:
            return None
        return Refusal(str(doc.get("task")), str(doc.get("worker")), str(doc.get("rejected")))


def load_refusal(secret: bytes, reply: str, doc: dict[str, Any]) -> Refusal | None:
    """The refusal envelope ``doc`` sent to ``reply``, checked; None if ``doc``
    is another envelope. Raises SignatureError if it is unsigned or its
    signature does not match: anyone can publish to a reply queue, so a
    refusal that is not a worker's must not fail a task."""
    refusal = Refusal.from_doc(doc)
    if refusal is None:
        return None
    sig = doc.get("sig")
    if doc.get("v") != VERSION or not isinstance(sig, str) or not isinstance(doc.get("task"), str):
        raise SignatureError(f"refusal of task {refusal.task} is not signed")
    if not hmac.compare_digest(sign(secret, "refusal", refusal.task, reply,
                                    refusal._signed_bytes()), sig):
        raise SignatureError(f"refusal of task {refusal.task}: signature does not match the "
                             "root's secret")
    return refusal


# --- reply bodies ---------------------------------------------------------------

def reply_envelopes(body: Any) -> list[Any]:
    """The envelopes of a reply message's body (a list; a lone envelope from
    a worker of an earlier ddmq counts as a list of one). Not checked yet."""
    return body if isinstance(body, list) else [body]


# --- signing ------------------------------------------------------------------------

class _Mac(Protocol):
    def update(self, data: Any) -> None: ...

    def hexdigest(self) -> str: ...


class _Poly1305Mac:
    """Poly1305 with the hexdigest of an HMAC object."""

    __slots__ = ("_poly",)

    def __init__(self, key: bytes):
        assert Poly1305 is not None
        self._poly = Poly1305(key)

    def update(self, data: Any) -> None:
        self._poly.update(data)

    def hexdigest(self) -> str:
        return self._poly.finalize().hex()


def _header(kind: str, task: str, reply: str) -> bytes:
    """What a signature is over besides the signed bytes. ``kind`` ("task",
    "result", "refusal", "keys") keeps a result from being passed off as a
    task; the task id and the reply queue tie the bytes to their envelope."""
    return f"ddmq-v{VERSION}\0{kind}\0{task}\0{reply}\0".encode("utf-8")


def _payload_mac(secret: bytes, kind: str, task: str, reply: str, nonce: str,
                 mac: str) -> _Mac:
    """The MAC ``mac`` of one payload, fed its header; the payload bytes
    follow. Poly1305's one-time key is the HMAC-SHA256 of the header and the
    envelope's ``nonce`` (no two envelopes share one: one key per payload)."""
    header = _header(kind, task, reply) + nonce.encode("ascii")
    if mac == "poly1305":
        return _Poly1305Mac(hmac.digest(secret, header, "sha256"))
    return hmac.new(secret, header, hashlib.sha256)


def sign_payload(secret: bytes, kind: str, task: str, reply: str, nonce: str,
                 payload: bytes | bytearray, mac: str) -> str:
    """Hex MAC (``mac``: one of :data:`PAYLOAD_MACS`) of one envelope whose
    pickled payload is ``payload``."""
    signer = _payload_mac(secret, kind, task, reply, nonce, mac)
    signer.update(payload)
    return signer.hexdigest()


def sign(secret: bytes, kind: str, task: str, reply: str, data: bytes) -> str:
    """Hex HMAC-SHA256 of the short ``data`` of an envelope (a refusal)."""
    return hmac.digest(secret, _header(kind, task, reply) + data, "sha256").hex()


class _Sink:
    """A file-like object the pickler writes one payload to.

    The bytes stay in memory up to :data:`INLINE_MAX`; past that, if a spill
    store is given, they go to a spill file, signed as they go, so a large
    payload is never copied whole in memory: the C pickler hands a large
    ``bytes`` object (or buffer) straight to :meth:`write`. :meth:`seal`
    completes the envelope.
    """

    def __init__(self, secret: bytes, kind: str, doc: dict[str, Any], reply: str,
                 spills: SpillStore | None):
        self._doc, self._reply, self._spills = doc, reply, spills
        self._kind, self._secret = kind, secret
        self._mac: _Mac | None = None  # chosen once it is known where the payload goes
        self._buffer = bytearray()
        self._file: SpillWriter | None = None
        self._name = ""

    def write(self, data: Any) -> int:
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        file = self._file
        if file is None:
            if self._spills is not None and len(self._buffer) + size > INLINE_MAX:
                file = self._open(self._spills)
            if file is None:
                self._buffer += data
                return size
        assert self._mac is not None
        self._mac.update(data)
        file.write(data)
        return size

    def _start_mac(self, mac: str) -> _Mac:
        doc = self._doc
        # unique_token, not os.urandom: no system call (it lets the other threads in)
        doc["mac"], doc["n"] = mac, unique_token()
        self._mac = _payload_mac(self._secret, self._kind, doc["task"], self._reply, doc["n"], mac)
        return self._mac

    def _open(self, spills: SpillStore) -> SpillWriter | None:
        """Move the payload so far to a new spill file; None if it cannot be
        made (e.g. the folder is gone): the payload stays inline."""
        name = f"{self._doc['task']}.{self._kind}.{secrets.token_hex(6)}"
        try:
            file = spills.writer(self._reply, name)
        except OSError as err:
            log.debug("cannot write %s for %s (%s): sending it inline", name, self._reply, err)
            self._spills = None
            return None
        self._file, self._name = file, name
        buffered, self._buffer = self._buffer, bytearray()
        self._start_mac(PAYLOAD_MAC).update(buffered)
        file.write(buffered)
        return file

    def seal(self) -> dict[str, Any]:
        """The signed envelope: the payload inline (base64), or the name of
        its spill file, which appears under that name only now that it is whole."""
        if self._file is None:
            mac = self._start_mac(INLINE_MAC)
            mac.update(self._buffer)
            self._doc["sig"] = mac.hexdigest()
            self._doc["payload"] = base64.b64encode(self._buffer).decode("ascii")
            return self._doc
        assert self._mac is not None
        self._doc["sig"] = self._mac.hexdigest()
        self._file.commit()
        self._file = None
        self._doc["file"] = self._name
        return self._doc

    def abandon(self) -> bool:
        """Drop what was written (the payload is being made again another
        way); True if part of it had gone to a spill file."""
        if self._file is None:
            return False
        self._file.discard()
        self._file = None
        return True


def _pickle_into(secret: bytes, kind: str, doc: dict[str, Any], reply: str, value: Any,
                 spills: SpillStore | None) -> dict[str, Any]:
    """Pickle ``value`` as the payload of envelope ``doc``; the sealed envelope.

    Tries :func:`ddmq.executor.pickling.picklers` in order. A spill file that
    cannot be written makes the payload inline. Raises what cloudpickle
    raises for what cannot be pickled.
    """
    picklers = pickling.picklers()
    for pickler in picklers:
        sink = _Sink(secret, kind, dict(doc), reply, spills)
        try:
            pickler(sink, protocol=pickling.PROTOCOL).dump(value)
            return sink.seal()
        except Exception as err:
            if sink.abandon() and isinstance(err, OSError):  # writing the file failed (disk full?)
                log.debug("cannot write a spill file (%s): sending the payload inline", err)
                return _pickle_into(secret, kind, doc, reply, value, None)
            if pickler is picklers[-1]:
                raise
    raise AssertionError("unreachable")


def _open_envelope(secret: bytes, kind: str, doc: Any, reply: str | None,
                   folder_of: Callable[[str], str | None]) -> Task:
    """Check an envelope's form and signature. ``reply``: the reply queue
    it was sent to (None: the one it names); ``folder_of(reply)``: the spill
    folder of its reply queue. Raises SignatureError or PayloadMissingError;
    nothing is unpickled here."""
    if not isinstance(doc, dict):
        raise SignatureError(f"a {kind} envelope is a JSON object, not {type(doc).__name__}")
    if doc.get("v") != VERSION:
        raise SignatureError(f"unknown {kind} envelope version {doc.get('v')!r} (this ddmq "
                             f"reads version {VERSION}: upgrade workers and executors together)")
    task = doc.get("task")
    if reply is None:
        reply = doc.get("reply")
    if not isinstance(task, str) or not task or "\0" in task:
        raise SignatureError(f"{kind} envelope has no valid 'task'")
    if not isinstance(reply, str) or not reply or "\0" in reply:
        raise SignatureError(f"{kind} envelope has no valid 'reply'")
    sig, mac, nonce = doc.get("sig"), doc.get("mac"), doc.get("n")
    if not isinstance(sig, str) or not sig or not isinstance(nonce, str) or not nonce.isascii():
        raise SignatureError(f"{kind} {task} is not signed")
    if mac not in PAYLOAD_MACS:
        raise SignatureError(f"{kind} {task} is signed with an unknown MAC {mac!r}")
    if mac == "poly1305" and Poly1305 is None:
        raise SignatureError(f"{kind} {task} is signed with Poly1305, which this process cannot "
                             "check: its 'cryptography' is missing or has no Poly1305 (FIPS mode?)")
    if "file" in doc:
        path = payload_path(folder_of(reply), doc.get("file"))
        if path is None:
            raise SignatureError(f"{kind} {task}: invalid payload file name {doc.get('file')!r}")
        try:
            payload = read_payload(path, task)
        except UnsafeFileError as err:  # a planted link, FIFO, ...: not ours
            raise SignatureError(f"{kind} {task}: {err}") from None
    else:
        text = doc.get("payload")
        if not isinstance(text, str):
            raise SignatureError(f"{kind} envelope has no valid 'payload'")
        try:
            payload = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise SignatureError(f"{kind} {task}: payload is not base64") from None
    if not hmac.compare_digest(sign_payload(secret, kind, task, reply, nonce, payload, mac), sig):
        raise SignatureError(f"{kind} {task}: signature does not match the root's secret")
    return Task(task, reply, payload)


# --- tasks --------------------------------------------------------------------------

def dump_task(secret: bytes, task: str, reply: str, fn: Callable[..., Any],
              arglists: Sequence[tuple[Any, ...]], kwargs: Sequence[dict[str, Any]] | None = None,
              spills: SpillStore | None = None, keys: str | None = None) -> dict[str, Any]:
    """The signed envelope of calls ``fn(*arglists[i], **kwargs[i])`` (no
    keyword arguments when ``kwargs`` is None); a large payload goes to a
    spill file of ``reply`` in ``spills``; ``keys``: the run keys of the
    calls (see :func:`check_keys`). Raises ``pickle.PicklingError``
    (with the reason) if the function or an argument cannot be pickled."""
    doc = {"v": VERSION, "task": task, "reply": reply}
    if keys is not None:
        doc["keys"] = keys
        doc["ksig"] = _keys_sig(secret, task, reply, keys)
    try:
        return _pickle_into(secret, "task", doc, reply,
                            (fn, list(arglists), None if kwargs is None else list(kwargs)), spills)
    except Exception as err:
        raise pickling.pickling_error(f"cannot send the call to {pickling.callable_name(fn)} to a "
                                      "worker: its function or an argument cannot be pickled",
                                      err) from err


def check_task(secret: bytes, doc: Any, root: str | os.PathLike) -> Task:
    """Verify a task envelope of ``root``; its payload is not unpickled.
    Raises SignatureError if it is malformed or not signed with ``secret``,
    PayloadMissingError if its spill file is gone."""
    def folder_of(reply: str) -> str | None:
        return spill_folder(root, reply) if valid_name(reply) else None
    return _open_envelope(secret, "task", doc, None, folder_of)


def check_keys(secret: bytes, doc: dict[str, Any], reply: str | None = None) -> str | None:
    """The run keys a task envelope, or the result that echoes them, carries
    (the text :func:`dump_task` was given); None if it carries none. Raises
    SignatureError if they are not signed with ``secret`` for the envelope's
    task and reply queue (``reply``: the queue the result came from)."""
    keys = doc.get("keys")
    if keys is None:
        return None
    task, sig = doc.get("task"), doc.get("ksig")
    reply = doc.get("reply") if reply is None else reply
    if not (isinstance(keys, str) and keys.isascii() and isinstance(sig, str)
            and isinstance(task, str) and isinstance(reply, str)):
        raise SignatureError(f"the call keys of task {task!r} are malformed or not signed")
    if not hmac.compare_digest(_keys_sig(secret, task, reply, keys), sig):
        raise SignatureError(f"the call keys of task {task}: signature does not match the "
                             "root's secret")
    return keys


def _keys_sig(secret: bytes, task: str, reply: str, keys: str) -> str:
    """``sign(secret, "keys", task, reply, keys)``."""
    return sign(secret, "keys", task, reply, keys.encode("ascii"))


def echo_keys(task_doc: Any, result_doc: dict[str, Any]) -> None:
    """Copy the run keys of a task envelope, with their signature, into its
    result envelope: the executor that reads the result may not be the one
    that sent the task (a run's driver restarted)."""
    if isinstance(task_doc, dict) and "keys" in task_doc:
        result_doc["keys"], result_doc["ksig"] = task_doc["keys"], task_doc.get("ksig")


def load_task(payload: bytes) -> Calls:
    """Unpickle a *verified* task payload."""
    fn, arglists, kwargs = pickling.loads(payload)
    return Calls(fn, arglists, kwargs)


# --- results ------------------------------------------------------------------------

def failure(index: int | None, exc: BaseException, where: str = "") -> Failure:
    """The failure of call ``index`` (None: of the whole task) that raised
    ``exc`` (inside an ``except``), its traceback headed with ``where``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # frames hold references to everything of the call
    head = f"\n\"\"\"\n{where}\n" if where else "\n\"\"\"\n"
    return index, exc, f"{head}{text}\"\"\""


def dump_result(secret: bytes, task: str, reply: str, worker: str, values: list[Any] | None,
                failures: list[Failure], spills: SpillStore | None = None) -> dict[str, Any]:
    """The signed envelope of a task's outcome (see :class:`Result`). A large
    payload goes to a spill file of ``reply`` in ``spills``, if given and there.

    A value that cannot be pickled, or an exception that would not survive
    unpickling, becomes a failure saying so, so the executor always gets an
    outcome for every call.
    """
    doc = {"v": VERSION, "task": task, "worker": worker}
    if failures:
        failures = [_sendable_failure(item, worker) for item in failures]
    try:
        return _pickle_into(secret, "result", doc, reply, (values, failures), spills)
    except Exception:  # noqa: BLE001 (a value cannot be pickled: find which)
        values, failures = _sendable_values(values, failures, worker)
        return _pickle_into(secret, "result", doc, reply, (values, failures), spills)


def _sendable_values(values: list[Any] | None, failures: list[Failure], worker: str
                     ) -> tuple[list[Any] | None, list[Failure]]:
    """``values`` with those that cannot be pickled replaced by failures."""
    if values is None:
        return values, failures
    values, failures = list(values), list(failures)
    for index, value in enumerate(values):
        try:
            pickling.dumps(value)
        except Exception as err:  # noqa: BLE001 (whatever pickling raises)
            values[index] = None
            failures.append((index, pickling.pickling_error(
                f"on worker {worker}, the result ({type(value).__qualname__}) cannot be pickled to "
                "send it back", err), None))
    failures.sort(key=lambda item: -1 if item[0] is None else item[0])
    return values, failures


def _sendable_failure(item: Failure, worker: str) -> Failure:
    """``item``, or a failure saying its exception cannot be sent back."""
    index, exc, tb = item
    try:
        pickling.loads(pickling.dumps(exc))
        return item
    except Exception as err:  # noqa: BLE001 (whatever pickling raises)
        return index, pickling.pickling_error(
            f"on worker {worker}, the task raised {type(exc).__qualname__}: {exc}, but that "
            "exception cannot be pickled to send it back", err), tb


def load_result(secret: bytes, reply: str, doc: Any, spills: SpillStore | None = None) -> Result:
    """Verify, then unpickle, a result envelope sent to ``reply`` (whose
    spill files are in ``spills``). Raises SignatureError before unpickling
    anything unsigned or tampered with; the unpickling's own errors
    propagate. The result's spill file is released in any case."""
    def folder_of(_: str) -> str | None:
        return None if spills is None else spills.folder(reply)
    try:
        task = _open_envelope(secret, "result", doc, reply, folder_of)
    finally:
        if spills is not None:
            spills.discard(doc, reply)
    values, failures = pickling.loads(task.payload)
    return Result(task.id, values, failures)


def rebuild(value: BaseException, tb: str | None) -> BaseException:
    """Attach a worker's traceback text to its exception, as ``__cause__``."""
    if tb:
        value.__cause__ = RemoteTraceback(tb)
    return value
