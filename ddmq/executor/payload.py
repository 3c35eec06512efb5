"""Task and result envelopes: cloudpickled calls, signed with the root's secret.

Unpickling is code execution, so nothing read from a queue is unpickled
before its signature has been checked. The signature is an HMAC-SHA256, keyed
with the secret kept in the root (``ROOT/.ddmq-secret``, mode 0600, in a root
of mode 0700), over the kind of envelope, the task id, the reply queue and the
pickled bytes. Only someone who can read the secret, i.e. the owner of the
root, can make a payload that a worker or an executor will unpickle.

The envelopes are the ``message`` of a ddmq message (plain JSON)::

    task    {"v": 1, "task": ID, "reply": REPLY_QUEUE,
             "payload": base64(cloudpickle((fn, [(args, kwargs), ...]))),
             "sig": hex HMAC("task", ID, REPLY_QUEUE, payload bytes)}
    result  {"v": 1, "task": ID, "worker": "HOST:PID",
             "payload": base64(cloudpickle([(ok, value_or_exception, traceback_text), ...])),
             "sig": hex HMAC("result", ID, REPLY_QUEUE, payload bytes)}
    refusal {"v": 1, "task": ID, "worker": "HOST:PID", "rejected": REASON}

One task message may carry several calls of the same function (a chunk of
``Executor.map``); its result carries one outcome per call, in order. A
refusal carries no pickle: it only tells the executor which task a worker
would not run and why.

Large payloads (over :data:`INLINE_MAX` bytes) do not travel inside the JSON,
where base64 and JSON escaping would cost more than the data's transfer:
they are written as raw bytes to a file in the executor's *spill folder*,
``ROOT/.payloads/REPLY_QUEUE/``, first to a temporary name, then renamed, and
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
from typing import Any, Callable, Sequence

import cloudpickle

from ..errors import DdmqError, FilesystemError

log = logging.getLogger(__name__)

#: Version of the envelope format; envelopes of another version are refused.
VERSION = 1
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

def sign(secret: bytes, kind: str, task: str, reply: str, payload: bytes) -> str:
    """Hex HMAC-SHA256 of one envelope. ``kind`` ("task" or "result") keeps
    a result from being passed off as a task; the task id and the reply
    queue tie the payload to its envelope."""
    header = f"ddmq-v{VERSION}\0{kind}\0{task}\0{reply}\0".encode("utf-8")
    mac = hmac.new(secret, header, hashlib.sha256)
    mac.update(payload)
    return mac.hexdigest()


def _seal(secret: bytes, kind: str, doc: dict[str, Any], reply: str, payload: bytes,
          spill: str | None) -> dict[str, Any]:
    """Sign ``payload`` into ``doc``, inline or as a file in ``spill``."""
    doc["sig"] = sign(secret, kind, doc["task"], reply, payload)
    if spill is not None and len(payload) > INLINE_MAX:
        name = f"{doc['task']}.{kind}.{secrets.token_hex(6)}"
        try:
            _write_spill(spill, name, payload)
            doc["file"] = name
            return doc
        except OSError as err:  # e.g. the folder is gone: the payload goes inline
            log.debug("cannot write %s into %s (%s): sending it inline", name, spill, err)
    doc["payload"] = base64.b64encode(payload).decode("ascii")
    return doc


def _write_spill(folder: str, name: str, data: bytes) -> None:
    """Make ``folder/name`` appear with ``data``, whole (temporary file, then rename)."""
    temp = os.path.join(folder, f".tmp-{name}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _unlink(temp)
        raise
    os.close(fd)
    try:
        os.rename(temp, os.path.join(folder, name))
    except BaseException:
        _unlink(temp)
        raise


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
    """Remove the spill file of an envelope that will not be loaded."""
    path = _spill_file(doc, spill) if isinstance(doc, dict) else None
    if path is not None:
        _unlink(path)


def spill_path(doc: dict[str, Any], spill: str | None) -> str | None:
    """The spill file of an envelope made here (to remove when its task is over)."""
    return _spill_file(doc, spill)


# --- tasks -------------------------------------------------------------------------

def dump_task(secret: bytes, task: str, reply: str, fn: Callable[..., Any],
              calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
              spill: str | None = None) -> dict[str, Any]:
    """The signed envelope of calls of ``fn`` (a large payload goes to a file
    in ``spill``). Raises ``pickle.PicklingError`` (with the reason) if the
    function or an argument cannot be pickled."""
    try:
        payload = _dumps((fn, list(calls)))
    except Exception as err:
        raise _pickling_error(f"cannot send the call to {_name(fn)} to a worker: its function "
                              "or an argument cannot be pickled", err) from err
    return _seal(secret, "task", {"v": VERSION, "task": task, "reply": reply}, reply, payload, spill)


def check_task(secret: bytes, doc: Any, root: str | os.PathLike) -> tuple[str, str, bytes]:
    """Verify a task envelope of ``root``: (task id, reply queue, payload
    bytes). Raises SignatureError if it is malformed or not signed with
    ``secret``, PayloadMissingError if its payload file is gone."""
    def spill_of(reply: str) -> str | None:
        return spill_folder(root, reply) if _SPILL_NAME.match(reply) else None
    return _open_envelope(secret, "task", doc, None, spill_of)


def load_task(payload: bytes) -> tuple[Callable[..., Any], list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    """Unpickle a *verified* task payload: (fn, [(args, kwargs), ...])."""
    fn, calls = cloudpickle.loads(payload)
    return fn, [(tuple(args), dict(kwargs)) for args, kwargs in calls]


# --- results -------------------------------------------------------------------------

def failure(exc: BaseException, where: str = "") -> tuple[bool, Any, str]:
    """The outcome of a call that raised ``exc`` (inside an ``except``):
    (False, exc, traceback text), the traceback headed with ``where``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # frames hold references to everything of the call
    head = f"\n\"\"\"\n{where}\n" if where else "\n\"\"\"\n"
    return False, exc, f"{head}{text}\"\"\""


def dump_result(secret: bytes, task: str, reply: str, worker: str,
                outcomes: list[tuple[bool, Any, str | None]], spill: str | None = None) -> dict[str, Any]:
    """The signed envelope of a task's outcomes (a large payload goes to a
    file in ``spill``, if given and present).

    A value that cannot be pickled, or an exception that would not survive
    unpickling, is replaced by an outcome saying so, so the executor always
    gets one outcome per call.
    """
    try:
        payload = _dumps(outcomes)
    except Exception:
        payload = cloudpickle.dumps([_picklable(outcome, worker) for outcome in outcomes])
    else:
        if any(not ok for ok, _, _ in outcomes):  # exceptions: check they unpickle too
            safe = [_picklable(outcome, worker) for outcome in outcomes]
            if any(a is not b for a, b in zip(safe, outcomes)):
                payload = cloudpickle.dumps(safe)
    doc = {"v": VERSION, "task": task, "worker": worker}
    return _seal(secret, "result", doc, reply, payload, spill)


def _dumps(value: Any) -> bytes:
    """Pickle ``value`` for another process: with the standard (C) pickler
    when that is safe, as it is several times faster than cloudpickle on many
    small objects; else with cloudpickle. Either way ``pickle.loads`` reads it.

    The standard pickler refers to functions and classes by module and name.
    That fails for lambdas and closures (it raises), and would be wrong for
    what lives in ``__main__`` (another process has another ``__main__``) or
    in modules registered with ``cloudpickle.register_pickle_by_value``:
    cloudpickle sends those by value. A pickle that so much as mentions
    ``__main__`` is therefore redone with cloudpickle.
    """
    if not _by_value_modules():
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 (PicklingError, AttributeError, TypeError, ...)
            pass
        else:
            if b"__main__" not in data:
                return data
    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _by_value_modules() -> Any:
    try:
        return cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES
    except AttributeError:  # an older or newer cloudpickle: always use it
        return True


def _picklable(outcome: tuple[bool, Any, str | None], worker: str) -> tuple[bool, Any, str | None]:
    ok, value, tb = outcome
    try:
        data = cloudpickle.dumps(value)
        if not ok:
            cloudpickle.loads(data)
        return outcome
    except Exception as err:
        if ok:
            what = f"the result ({type(value).__qualname__}) cannot be pickled to send it back"
        else:
            what = (f"the task raised {type(value).__qualname__}: {value}, but that exception "
                    "cannot be pickled to send it back")
        error = _pickling_error(f"on worker {worker}, {what}", err)
        return False, error, tb


def refusal(task: str, worker: str, reason: str) -> dict[str, Any]:
    """The envelope telling an executor that task ``task`` was refused."""
    return {"v": VERSION, "task": task, "worker": worker, "rejected": reason}


def load_result(secret: bytes, reply: str, doc: Any, spill: str | None = None
                ) -> tuple[str, list[tuple[bool, Any, str | None]]]:
    """Verify, then unpickle, a result envelope sent to ``reply`` (whose
    spill folder is ``spill``): (task id, outcomes). Raises SignatureError
    before unpickling anything unsigned or tampered with; the unpickling's
    own errors propagate. The result's spill file is removed in any case."""
    try:
        task, _, payload = _open_envelope(secret, "result", doc, reply, lambda _: spill)
    finally:
        discard(doc, spill)
    outcomes = cloudpickle.loads(payload)
    return task, [(bool(ok), value, tb) for ok, value, tb in outcomes]


def rebuild(value: BaseException, tb: str | None) -> BaseException:
    """Attach a worker's traceback text to its exception, as ``__cause__``."""
    if tb:
        value.__cause__ = RemoteTraceback(tb)
    return value


def _pickling_error(text: str, err: BaseException) -> Exception:
    return pickle.PicklingError(f"{text}: {type(err).__name__}: {err}")


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
