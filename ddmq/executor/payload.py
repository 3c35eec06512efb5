"""Task and result envelopes: cloudpickled calls, signed with the root's secret.

Unpickling is code execution, so nothing read from a queue is unpickled
before its signature has been checked. The signature is an HMAC-SHA256, keyed
with the secret kept in the root (``ROOT/.ddmq-secret``, mode 0600, in a root
of mode 0700), over the kind of envelope, the task id, the reply queue and the
pickled bytes. Only someone who can read the secret, i.e. the owner of the
root, can make a payload that a worker or an executor will unpickle.

The envelopes are the ``message`` of a ddmq message (plain JSON)::

    task    {"v": 2, "task": ID, "reply": REPLY_QUEUE,
             "payload": base64(pickle((fn, [args, ...], [kwargs, ...] or None))),
             "sig": hex HMAC("task", ID, REPLY_QUEUE, payload bytes)}
    result  {"v": 2, "task": ID, "worker": "HOST:PID",
             "payload": base64(pickle(([value, ...] or None, [(index, exception, traceback_text), ...]))),
             "sig": hex HMAC("result", ID, REPLY_QUEUE, payload bytes)}
    refusal {"v": 2, "task": ID, "worker": "HOST:PID", "rejected": REASON}

One task message may carry several calls of the same function (a chunk of
``Executor.map``, whose calls have no keyword arguments: None); its result
carries one value per call, in order (None where the call raised), and the
calls that raised; values None means the task failed as a whole (index
None). The lists are plain, so a chunk of a hundred calls costs the pickler
a hundred arguments and a hundred values, nothing per call beyond them. A
refusal carries no pickle: it only tells the executor which task a worker
would not run and why. Pickles are made by the standard pickler when that is
right, else by cloudpickle (see :class:`_StandardPickler`); ``pickle.loads``
reads both.

Large payloads (over :data:`INLINE_MAX` bytes) do not travel inside the JSON,
where base64 and JSON escaping would cost more than the data's transfer:
they are pickled straight into a file in the executor's *spill folder*,
``ROOT/.payloads/REPLY_QUEUE/`` (never whole in memory: see :class:`_Sink`),
first under a temporary name, then renamed, and
only then is the message that names them published; the envelope says
``"file": NAME`` instead of ``"payload"``, and the signature is the same. The
executor removes a result's file when it has read it, a task's file when the
task is over, and the whole folder at shutdown::

    executor --write TASK.task.X--> .payloads/REPLY/ --read--> worker
    executor <--read, remove--  .payloads/REPLY/ <--write TASK.result.X-- worker
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import hashlib
import hmac
import logging
import os
import pickle
import re
import secrets
import shutil
import stat
import time
import traceback
import types
from typing import Any, Callable, Optional, Sequence, Tuple

import cloudpickle

from .. import reuse
from ..protocol import remove_quietly
from ..errors import DdmqError, FilesystemError

log = logging.getLogger(__name__)

#: Version of the envelope format; envelopes of another version are refused.
VERSION = 2
#: Pickle protocol of payloads.
PROTOCOL = pickle.HIGHEST_PROTOCOL
#: The secret's file, in the root.
SECRET_FILE = ".ddmq-secret"
#: The folder of the spill folders, in the root.
SPILL_DIR = ".payloads"
#: Payloads larger than this many bytes travel as files (see the module docstring).
INLINE_MAX = 64 * 1024
#: Seconds to wait for a spill file that is not there (yet) on a network filesystem.
SPILL_WAIT = 5.0

_SPILL_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,200}$")


class SignatureError(DdmqError):
    """An envelope is unsigned, its signature does not match the root's
    secret, or it is malformed: it was refused without being unpickled."""


class PayloadMissingError(DdmqError):
    """The file holding a large payload is gone: its task is over (the
    executor has its result, or shut down), or someone removed it."""


class SecretError(DdmqError):
    """The root's secret file cannot be read, created or understood."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text.

    Attached as ``__cause__`` of the exception that ``Future.result()``
    re-raises, so the caller's traceback ends with the worker's (as
    :class:`concurrent.futures.ProcessPoolExecutor` does).
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# --- the secret ------------------------------------------------------------------

def secret_path(root: str | os.PathLike) -> str:
    """Where the secret of ``root`` is kept."""
    return os.path.join(os.fspath(root), SECRET_FILE)


def load_secret(root: str | os.PathLike, create: bool = True, wait: float = 10.0) -> bytes:
    """The secret of ``root`` (32 bytes); made first if missing and ``create``.

    Creation is safe when many processes on many nodes race: the secret is
    written to a private temporary file, which is then hard-linked to its
    final name. ``link`` fails if the name exists, so exactly one secret
    wins and every process reads that one, always complete. Raises
    :class:`SecretError` if the file is missing (and not ``create``),
    unreadable or malformed; logs a warning if others may read it.
    """
    path = secret_path(root)
    deadline = time.monotonic() + wait
    pause = 0.005
    while True:
        try:
            with open(path, "rb") as handle:
                text = handle.read()
                mode = os.fstat(handle.fileno()).st_mode
        except FileNotFoundError:
            if not create:
                raise SecretError(f"{path} is missing: start an executor or a worker on this "
                                  "root first, which creates it") from None
            _create_secret(path)
            continue
        except OSError as err:
            raise SecretError(f"cannot read the secret {path}: {err.strerror or err}") from err
        text = text.strip()
        if len(text) == 64:
            try:
                secret = bytes.fromhex(text.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise SecretError(f"{path} does not hold a secret (64 hex digits)") from None
            if stat.S_IMODE(mode) & 0o077:
                log.warning("%s may be read by others (mode %o): anyone who can read it can make "
                            "workers run code; chmod 600 it", path, stat.S_IMODE(mode))
            return secret
        # Only a creator that could not hard-link writes the final file in
        # place (see _create_secret); give it a moment to finish.
        if time.monotonic() >= deadline:
            raise SecretError(f"{path} does not hold a secret (64 hex digits)")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _create_secret(path: str) -> None:
    """Make the secret file unless it exists (another process won: fine)."""
    data = (secrets.token_hex(32) + "\n").encode("ascii")
    temp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
            log.info("created the root's secret %s", path)
        except FileExistsError:
            pass
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            _create_secret_in_place(path, data)
    except OSError as err:
        raise SecretError(f"cannot create the secret {path}: {FilesystemError(err)}") from err
    finally:
        try:
            os.unlink(temp)
        except OSError:
            pass


def _create_secret_in_place(path: str, data: bytes) -> None:
    """For filesystems without hard links: exclusive create, then write.
    Readers seeing the empty file meanwhile wait (see load_secret)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# --- signing ---------------------------------------------------------------------

def _mac(secret: bytes, kind: str, task: str, reply: str) -> "hmac.HMAC":
    """The HMAC-SHA256 of one envelope, fed its header; the payload bytes follow.
    ``kind`` ("task" or "result") keeps a result from being passed off as a
    task; the task id and the reply queue tie the payload to its envelope."""
    header = f"ddmq-v{VERSION}\0{kind}\0{task}\0{reply}\0".encode("utf-8")
    return hmac.new(secret, header, hashlib.sha256)


def sign(secret: bytes, kind: str, task: str, reply: str, payload: bytes) -> str:
    """Hex HMAC-SHA256 of one envelope whose pickled payload is ``payload``."""
    mac = _mac(secret, kind, task, reply)
    mac.update(payload)
    return mac.hexdigest()


class _Sink:
    """A file-like object the pickler writes one payload to.

    The bytes stay in memory up to :data:`INLINE_MAX`; past that, if a spill
    folder is given, they go to a temporary file there, signed as they go, so
    a large payload is never copied whole in memory: the C pickler hands a
    large ``bytes`` object (or buffer) straight to :meth:`write`.
    :meth:`seal` completes the envelope.
    """

    def __init__(self, secret: bytes, kind: str, doc: dict[str, Any], reply: str,
                 spill: str | None):
        self._secret, self._kind, self._doc, self._reply = secret, kind, doc, reply
        self._spill = spill
        self._buffer = bytearray()
        self._mac: Any = None  # made when the payload moves to a file, else by seal()
        self._fd: int | None = None
        self._size = 0  # bytes written to the file
        self._name = ""
        self._temp = ""

    def write(self, data: Any) -> int:
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        if self._fd is None and (self._spill is None or len(self._buffer) + size <= INLINE_MAX
                                 or not self._open()):
            self._buffer += data
        else:
            self._to_file(data)
        return size

    def _open(self) -> bool:
        """Move the payload so far to a new temporary spill file; False if it
        cannot be made (e.g. the folder is gone): the payload stays inline."""
        name = f"{self._doc['task']}.{self._kind}.{secrets.token_hex(6)}"
        temp = os.path.join(self._spill, f".tmp-{name}")
        # A spare (a payload file read and done with) is rewritten in place:
        # its pages and blocks are there already, a new file's are not.
        flags = os.O_WRONLY if _take_spare(self._spill, temp) else os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            self._fd = os.open(temp, flags, 0o600)
        except OSError as err:
            log.debug("cannot write %s into %s (%s): sending it inline", name, self._spill, err)
            remove_quietly(temp)  # a spare claimed under that name, if any
            self._spill = None
            return False
        self._name, self._temp = name, temp
        self._mac = _mac(self._secret, self._kind, self._doc["task"], self._reply)
        buffered, self._buffer = self._buffer, bytearray()
        self._to_file(buffered)
        return True

    def _to_file(self, data: Any) -> None:
        self._mac.update(data)
        view = memoryview(data).cast("B")
        self._size += len(view)
        while view:
            view = view[os.write(self._fd, view):]

    def seal(self) -> dict[str, Any]:
        """The signed envelope: the payload inline (base64), or the name of
        its spill file, renamed to that name only now that it is whole."""
        if self._fd is None:
            self._doc["sig"] = sign(self._secret, self._kind, self._doc["task"], self._reply,
                                    self._buffer)
            self._doc["payload"] = base64.b64encode(self._buffer).decode("ascii")
            return self._doc
        self._doc["sig"] = self._mac.hexdigest()
        fd, self._fd = self._fd, None
        try:
            try:
                os.ftruncate(fd, self._size)  # a rewritten spare may have been longer
            finally:
                os.close(fd)
            os.rename(self._temp, os.path.join(self._spill, self._name))
        except BaseException:
            remove_quietly(self._temp)
            raise
        self._doc["file"] = self._name
        return self._doc

    def abandon(self) -> bool:
        """Drop what was written (the payload is being made again another
        way); True if part of it had gone to a spill file."""
        if self._fd is None:
            return False
        fd, self._fd = self._fd, None
        try:
            os.close(fd)
        except OSError:
            pass
        remove_quietly(self._temp)
        return True


def _spill_file(doc: dict[str, Any], spill: str | None) -> str | None:
    """The path of an envelope's spill file, if it names a valid one."""
    name = doc.get("file")
    if spill is None or not isinstance(name, str) or not _SPILL_NAME.match(name):
        return None
    return os.path.join(spill, name)


def _read_spill(path: str, task: str) -> bytes:
    deadline = time.monotonic() + SPILL_WAIT
    pause = 0.005
    while True:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            # Another node's new file can take a moment to be seen here.
            if time.monotonic() >= deadline:
                raise PayloadMissingError(f"the payload file of task {task} is gone: {path}") from None
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _open_envelope(secret: bytes, kind: str, doc: Any, reply: str | None,
                   spill_of: Callable[[str], str | None]) -> tuple[str, str, bytes]:
    """Check an envelope's form and signature; (task, reply, payload bytes).

    ``spill_of(reply)`` gives the spill folder of the envelope's reply queue.
    Raises SignatureError or PayloadMissingError; nothing is unpickled here.
    """
    if not isinstance(doc, dict):
        raise SignatureError(f"a {kind} envelope is a JSON object, not {type(doc).__name__}")
    if doc.get("v") != VERSION:
        raise SignatureError(f"unknown {kind} envelope version {doc.get('v')!r}")
    task = doc.get("task")
    if reply is None:
        reply = doc.get("reply")
    for name, value in (("task", task), ("reply", reply)):
        if not isinstance(value, str) or not value or "\0" in value:
            raise SignatureError(f"{kind} envelope has no valid {name!r}")
    sig = doc.get("sig")
    if not isinstance(sig, str) or not sig:
        raise SignatureError(f"{kind} {task} is not signed")
    if "file" in doc:
        path = _spill_file(doc, spill_of(reply))
        if path is None:
            raise SignatureError(f"{kind} {task}: invalid payload file name {doc.get('file')!r}")
        payload = _read_spill(path, task)
    else:
        text = doc.get("payload")
        if not isinstance(text, str):
            raise SignatureError(f"{kind} envelope has no valid 'payload'")
        try:
            payload = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise SignatureError(f"{kind} {task}: payload is not base64") from None
    if not hmac.compare_digest(sign(secret, kind, task, reply, payload), sig):
        raise SignatureError(f"{kind} {task}: signature does not match the root's secret")
    return task, reply, payload


# --- spill folders -------------------------------------------------------------------

def spill_folder(root: str | os.PathLike, reply: str) -> str:
    """The spill folder of the executor whose reply queue is ``reply``."""
    return os.path.join(os.fspath(root), SPILL_DIR, reply)


def make_spill_folder(root: str | os.PathLike, reply: str) -> str:
    """Create the spill folder of ``reply`` (private to the owner); its path."""
    path = spill_folder(root, reply)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def remove_spill_folder(root: str | os.PathLike, reply: str) -> None:
    """Delete the spill folder of ``reply`` with whatever is left in it."""
    shutil.rmtree(spill_folder(root, reply), ignore_errors=True)


def prune_spill_folders(root: str | os.PathLike, queues: Sequence[str],
                        older_than: float = 3600.0) -> list[str]:
    """Delete the spill folders whose reply queue is not in ``queues`` (their
    executor died) and that did not change for ``older_than`` seconds."""
    base = os.path.join(os.fspath(root), SPILL_DIR)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        path = os.path.join(base, name)
        try:
            stale = name not in queues and time.time() - os.stat(path).st_mtime > older_than
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def discard(doc: Any, spill: str | None) -> None:
    """Remove the spill file of an envelope (loaded, or not to be loaded)."""
    path = _spill_file(doc, spill) if isinstance(doc, dict) else None
    if path is not None:
        release(path)


def release(path: str) -> None:
    """Remove a spill file that is done with; on a local filesystem keep it
    as a spare for the next payload written to its folder (see
    :mod:`ddmq.reuse`), if it is not too large to keep."""
    folder = os.path.dirname(path)
    try:
        keep = _reuse_files_in(folder) and os.stat(path).st_size <= SPARE_SIZE_MAX
    except OSError:
        keep = False
    if not keep or not _SPARES.retire(path, folder):
        remove_quietly(path)


def _take_spare(folder: str, private: str) -> bool:
    return _reuse_files_in(folder) and _SPARES.take(folder, 1.0, private) is not None


@functools.lru_cache(maxsize=64)
def _reuse_files_in(folder: str) -> bool:
    return reuse.filesystem_type(folder) in reuse.REUSE_FILESYSTEMS


#: Spill files of this process kept for reuse, per spill folder, and the
#: largest file kept (they hold their disk space until reused or removed).
SPARES_MAX = 8
SPARE_SIZE_MAX = 16 << 20
_SPARES = reuse.SparePool(SPARES_MAX)


def spill_path(doc: dict[str, Any], spill: str | None) -> str | None:
    """The spill file of an envelope made here (to remove when its task is over)."""
    return _spill_file(doc, spill)


# --- pickling --------------------------------------------------------------------

class _ByValue(Exception):
    """The standard pickler met something that cloudpickle must send by value."""


class _StandardPickler(pickle.Pickler):
    """The standard (C) pickler, several times faster than cloudpickle on many
    small objects, refusing (with :class:`_ByValue`) what it would pickle
    wrongly: it refers to functions and classes by module and name, which is
    wrong for those of ``__main__`` (another process has another ``__main__``).
    It fails by itself on lambdas and closures. ``reducer_override`` is not
    called for ints, strings, bytes, lists, tuples, dicts and the like, so
    plain data costs nothing extra.
    """

    def reducer_override(self, obj: Any) -> Any:
        owner = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        if getattr(owner, "__module__", None) == "__main__":
            raise _ByValue
        return NotImplemented


def _pickle_into(secret: bytes, kind: str, doc: dict[str, Any], reply: str, value: Any,
                 spill: str | None) -> dict[str, Any]:
    """Pickle ``value`` as the payload of envelope ``doc``; the sealed envelope.

    The standard pickler first when that is safe, else cloudpickle (by
    value: lambdas, closures, ``__main__``, modules registered with
    ``cloudpickle.register_pickle_by_value``). Either way ``pickle.loads``
    reads it. A spill file that cannot be written makes the payload inline.
    Raises what cloudpickle raises for what cannot be pickled.
    """
    picklers = _BY_VALUE if _by_value_modules() else _FAST_FIRST
    for pickler in picklers:
        sink = _Sink(secret, kind, dict(doc), reply, spill)
        try:
            pickler(sink, protocol=PROTOCOL).dump(value)
            return sink.seal()
        except Exception as err:
            if sink.abandon() and isinstance(err, OSError):  # writing the file failed (disk full?)
                log.debug("cannot write a spill file (%s): sending the payload inline", err)
                return _pickle_into(secret, kind, doc, reply, value, None)
            if pickler is picklers[-1]:
                raise
    raise AssertionError("unreachable")


_FAST_FIRST = (_StandardPickler, cloudpickle.CloudPickler)
_BY_VALUE = (cloudpickle.CloudPickler,)


def _by_value_modules() -> Any:
    try:
        return cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES
    except AttributeError:  # an older or newer cloudpickle: always use it
        return True


# --- tasks -------------------------------------------------------------------------

def dump_task(secret: bytes, task: str, reply: str, fn: Callable[..., Any],
              arglists: Sequence[tuple[Any, ...]], kwargs: Sequence[dict[str, Any]] | None = None,
              spill: str | None = None) -> dict[str, Any]:
    """The signed envelope of calls ``fn(*arglists[i], **kwargs[i])`` (no
    keyword arguments when ``kwargs`` is None); a large payload goes to a file
    in ``spill``. Raises ``pickle.PicklingError`` (with the reason) if the
    function or an argument cannot be pickled."""
    doc = {"v": VERSION, "task": task, "reply": reply}
    try:
        return _pickle_into(secret, "task", doc, reply,
                            (fn, list(arglists), None if kwargs is None else list(kwargs)), spill)
    except Exception as err:
        raise _pickling_error(f"cannot send the call to {_name(fn)} to a worker: its function "
                              "or an argument cannot be pickled", err) from err


def check_task(secret: bytes, doc: Any, root: str | os.PathLike) -> tuple[str, str, bytes]:
    """Verify a task envelope of ``root``: (task id, reply queue, payload
    bytes). Raises SignatureError if it is malformed or not signed with
    ``secret``, PayloadMissingError if its payload file is gone."""
    def spill_of(reply: str) -> str | None:
        return spill_folder(root, reply) if _SPILL_NAME.match(reply) else None
    return _open_envelope(secret, "task", doc, None, spill_of)


def load_task(payload: bytes
              ) -> tuple[Callable[..., Any], list[tuple[Any, ...]], list[dict[str, Any]] | None]:
    """Unpickle a *verified* task payload: (fn, arglists, kwargs or None)."""
    fn, arglists, kwargs = cloudpickle.loads(payload)
    return fn, arglists, kwargs


# --- results -------------------------------------------------------------------------

#: What a failed call leaves: (index of the call, or None for the whole task;
#: the exception; the traceback's text).
Failure = Tuple[Optional[int], BaseException, Optional[str]]


def failure(index: int | None, exc: BaseException, where: str = "") -> Failure:
    """The failure of call ``index`` (None: of the whole task) that raised
    ``exc`` (inside an ``except``), its traceback headed with ``where``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # frames hold references to everything of the call
    head = f"\n\"\"\"\n{where}\n" if where else "\n\"\"\"\n"
    return index, exc, f"{head}{text}\"\"\""


def dump_result(secret: bytes, task: str, reply: str, worker: str, values: list[Any] | None,
                failures: list[Failure], spill: str | None = None) -> dict[str, Any]:
    """The signed envelope of a task's outcome: ``values`` has one entry per
    call (None where the call failed), or is None when the task failed as a
    whole; ``failures`` lists the calls that raised, in order. A large
    payload goes to a file in ``spill``, if given and present.

    A value that cannot be pickled, or an exception that would not survive
    unpickling, becomes a failure saying so, so the executor always gets an
    outcome for every call.
    """
    doc = {"v": VERSION, "task": task, "worker": worker}
    if failures:
        failures = [_sendable_failure(item, worker) for item in failures]
    try:
        return _pickle_into(secret, "result", doc, reply, (values, failures), spill)
    except Exception:  # noqa: BLE001 (a value cannot be pickled: find which)
        values, failures = _sendable_values(values, failures, worker)
        return _pickle_into(secret, "result", doc, reply, (values, failures), spill)


def _sendable_values(values: list[Any] | None, failures: list[Failure], worker: str
                     ) -> tuple[list[Any] | None, list[Failure]]:
    """``values`` with those that cannot be pickled replaced by failures."""
    if values is None:
        return values, failures
    values, failures = list(values), list(failures)
    for index, value in enumerate(values):
        try:
            cloudpickle.dumps(value, protocol=PROTOCOL)
        except Exception as err:  # noqa: BLE001 (whatever pickling raises)
            values[index] = None
            failures.append((index, _pickling_error(
                f"on worker {worker}, the result ({type(value).__qualname__}) cannot be pickled to "
                "send it back", err), None))
    failures.sort(key=lambda item: -1 if item[0] is None else item[0])
    return values, failures


def _sendable_failure(item: Failure, worker: str) -> Failure:
    """``item``, or a failure saying its exception cannot be sent back."""
    index, exc, tb = item
    try:
        cloudpickle.loads(cloudpickle.dumps(exc, protocol=PROTOCOL))
        return item
    except Exception as err:  # noqa: BLE001 (whatever pickling raises)
        return index, _pickling_error(f"on worker {worker}, the task raised {type(exc).__qualname__}: "
                                      f"{exc}, but that exception cannot be pickled to send it back",
                                      err), tb


def refusal(task: str, worker: str, reason: str) -> dict[str, Any]:
    """The envelope telling an executor that task ``task`` was refused."""
    return {"v": VERSION, "task": task, "worker": worker, "rejected": reason}


def load_result(secret: bytes, reply: str, doc: Any, spill: str | None = None
                ) -> tuple[str, list[Any] | None, list[Failure]]:
    """Verify, then unpickle, a result envelope sent to ``reply`` (whose
    spill folder is ``spill``): (task id, values, failures), as given to
    :func:`dump_result`. Raises SignatureError before unpickling anything
    unsigned or tampered with; the unpickling's own errors propagate. The
    result's spill file is removed in any case."""
    try:
        task, _, payload = _open_envelope(secret, "result", doc, reply, lambda _: spill)
    finally:
        discard(doc, spill)
    values, failures = cloudpickle.loads(payload)
    return task, values, failures


def rebuild(value: BaseException, tb: str | None) -> BaseException:
    """Attach a worker's traceback text to its exception, as ``__cause__``."""
    if tb:
        value.__cause__ = RemoteTraceback(tb)
    return value


def _pickling_error(text: str, err: BaseException) -> Exception:
    return pickle.PicklingError(f"{text}: {type(err).__name__}: {err}")


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
