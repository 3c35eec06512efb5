"""The files of a named run: segments of signed frames of outcomes.

Each driver of a run appends the outcomes it records to a segment of its
own, ``ROOT/.runs/NAME/seg.TOKEN.ddmqrun``, one *frame* per batch of replies
with one ``write`` (see :mod:`ddmq.executor.runs`).

**A frame** is two lengths and an HMAC-SHA256, then two parts: the *index*
(for each task: its function key, the keys of its calls, the positions of
those that raised; ``marshal`` of strings, bytes and ints, so ``ddmq runs``
counts a run without unpickling a single result) and the *body* (a pickle:
the values, and each exception with its worker's traceback text). A reader
stops at the first frame that is cut short (its writer was killed in the
middle of the ``write``) or whose signature does not match: a frame is
unpickled when a run is loaded, so, like a task, it carries an HMAC-SHA256
of the root's secret over the run's name and its bytes, checked before
anything is unpickled.
"""

from __future__ import annotations

import hmac
import logging
import marshal
import os
import pickle
import struct
from typing import Any, Iterator, Sequence, Tuple

from .. import protocol, reading
from ..errors import DdmqError
from . import pickling
from .callkeys import Key, pack_keys, unpack_keys
from .errors import RemoteTraceback

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".ddmqrun"
MAGIC = b"DDMQRUN3\n"
FRAME_HEAD = struct.Struct(">QQ32s")  # index size, body size, HMAC-SHA256
#: One task's outcomes as recorded: its function key, the keys of its calls,
#: their values (None where a call raised) and the calls that raised.
Chunk = Tuple[str, Sequence[Key], Sequence[Any], Sequence[Tuple[int, BaseException]]]


def frame(name: str, secret: bytes, chunks: list[Chunk]) -> bytes:
    """One signed frame of ``chunks``: its index and its body (see the module
    docstring). A chunk whose values cannot be pickled is left out (its calls
    will run again)."""
    def body_of(chunk: Chunk) -> tuple[Sequence[Any], list[tuple[int, BaseException, str | None]]]:
        _, _, values, errors = chunk
        return values, [(at, exc, _traceback_of(exc)) for at, exc in errors] if errors else []

    try:
        body = _dumps([body_of(chunk) for chunk in chunks])
    except Exception:  # noqa: BLE001 (one value cannot be pickled: find which)
        kept = []
        for chunk in chunks:
            try:
                _dumps(body_of(chunk))
                kept.append(chunk)
            except Exception as err:  # noqa: BLE001
                log.warning("run %s: the outcomes of %d call(s) of %s cannot be pickled, so they "
                            "are not kept (%s: %s)", name, len(chunk[1]), chunk[0], type(err).__name__, err)
        chunks = kept
        body = _dumps([body_of(chunk) for chunk in chunks])
    index = marshal.dumps([(function, pack_keys(keys), [at for at, _ in errors])
                           for function, keys, _, errors in chunks], 2)
    return FRAME_HEAD.pack(len(index), len(body), _sign(secret, name, index, body)) + index + body


def _traceback_of(exc: BaseException) -> str | None:
    cause = exc.__cause__
    return cause.tb if isinstance(cause, RemoteTraceback) else None


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 (what the standard pickler refuses, cloudpickle may take)
        return pickling.dumps(value)


def _sign(secret: bytes, name: str, index: bytes, body: bytes) -> bytes:
    return hmac.digest(secret, b"".join((b"run-frame\0", name.encode(), b"\0", index, b"\0", body)),
                       "sha256")


class _Frames(list):
    """The frames of a segment whose signatures matched, as (index, body
    bytes); ``raw``: the bytes of each, to merge segments without unpickling."""

    raw: list[bytes]


def _read_segment(folder: str, file: str, name: str, secret: bytes) -> _Frames:
    """The frames of one segment whose signatures match, up to the first
    that does not (a driver killed while writing it, or bytes not signed
    with ``secret``: logged) or the end."""
    frames = _Frames()
    frames.raw = []
    try:
        raw = reading.read(os.path.join(folder, file), 30.0)
    except DdmqError as err:
        log.warning("run %s: segment %s skipped: %s", name, file, err)
        return frames
    if raw is None:
        return frames
    if not raw.startswith(MAGIC):
        log.warning("run %s: %s is not a segment of a run: ignored", name, file)
        return frames
    view = memoryview(raw)
    at = len(MAGIC)
    while at < len(view):
        if at + FRAME_HEAD.size > len(view):
            break
        index_size, body_size, sig = FRAME_HEAD.unpack_from(view, at)
        end = at + FRAME_HEAD.size + index_size + body_size
        if end > len(view):
            break
        index = bytes(view[at + FRAME_HEAD.size:at + FRAME_HEAD.size + index_size])
        body = bytes(view[end - body_size:end])
        if not hmac.compare_digest(sig, _sign(secret, name, index, body)):
            log.warning("run %s: a frame of segment %s is not signed with this root's secret: "
                        "it and what follows are ignored", name, file)
            return frames
        try:
            frames.append(([(function, unpack_keys(keys), raised)
                            for function, keys, raised in marshal.loads(index)], body))
        except (EOFError, TypeError, ValueError):
            break
        frames.raw.append(bytes(view[at:end]))
        at = end
    if at < len(view):
        log.info("run %s: segment %s ends with a frame cut short (its driver was killed while "
                 "writing it): the outcomes in it are still in the run's reply queue", name, file)
    return frames


def segments(folder: str, name: str, secret: bytes) -> Iterator[tuple[str, _Frames]]:
    for file in sorted(protocol.list_if_there(folder, 30.0, follow=False)):
        if file.endswith(SEGMENT_SUFFIX):
            yield file, _read_segment(folder, file, name, secret)
