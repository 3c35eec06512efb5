"""Layered settings: defaults < root ``ddmq.yaml`` < queue ``ddmq.yaml`` < message.

The root's ``ddmq.yaml`` applies to every queue; a queue's own ``ddmq.yaml``
overrides it for that queue; a message published with explicit values
overrides both for that message. A queue's file holds only what was set for
that queue on purpose (a new queue gets ``{}``), so a later change of the
root's file reaches every queue that did not override the key.

Files are re-read when another process changes them: each is ``stat``-ed at
most once per :data:`RECHECK_SECONDS`, and parsed again only when its
modification time, size or inode changed. Writes replace the file atomically
(temporary file in the same folder, then ``rename``), so a reader sees the old
or the new file, never a mix.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import yaml

from . import protocol, reading
from .errors import SettingsError
from .layout import SETTINGS_FILE
from .message import MAX_NUMBER, MAX_TIMEOUT

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0
#: A settings file larger than this is not read (it is not one).
SETTINGS_MAX_BYTES = 1 << 20
_EMPTY: dict[str, Any] = {}

#: Every key ddmq understands, with its default. The first five are the
#: original ddmq's keys; the rest are ddmq 1.x additions.
DEFAULTS: dict[str, Any] = {
    "message_timeout": 600,   # seconds a consumed message is leased before it expires
    "priority": 999,          # priority of published messages; lower number = consumed first
    "requeue": True,          # nack and lease expiry requeue the message (False: drop / dead-letter)
    "requeue_prio": 0,        # priority a requeued message gets (0 = highest)
    "cleaned": 0,             # kept for compatibility with ddmq 0.9; no longer written
    "requeue_limit": None,    # times a message may be requeued before it is dead-lettered (None = no limit)
    "fsync": False,           # fsync message files and folders on publish (survive a machine crash)
    "clean_interval": 5,      # seconds between automatic housekeeping runs of one client on one queue
    "retry_timeout": 30,      # seconds transient filesystem errors (ESTALE, EIO, ENOTCONN) are retried
    "poll_max": 1.0,          # longest pause (s) between two looks at an empty queue while waiting
    "max_message_bytes": 16 << 20,  # largest message file published or read; larger ones are dead-lettered
}

_INT_KEYS = ("message_timeout", "priority", "requeue_prio", "cleaned", "max_message_bytes")
_NUMBER_KEYS = ("clean_interval", "retry_timeout", "poll_max")
_BOOL_KEYS = ("requeue", "fsync")


def validate(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Return ``values`` after checking the type and range of every known key.

    Raises :class:`SettingsError` naming ``source`` and the offending key.
    Unknown keys are kept (another ddmq version may use them) and logged.
    """
    for key, value in values.items():
        if key in _INT_KEYS:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_NUMBER
            ok = ok and (key != "message_timeout" or 0 < value <= MAX_TIMEOUT)
            ok = ok and (key != "max_message_bytes" or value > 0)
        elif key in _NUMBER_KEYS:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and 0 <= value <= MAX_TIMEOUT)  # also refuses NaN and infinity
            ok = ok and (key != "poll_max" or value > 0)
        elif key in _BOOL_KEYS:
            ok = isinstance(value, bool)
        elif key == "requeue_limit":
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool)
                                   and 0 <= value <= MAX_NUMBER)
        else:
            log.debug("%s: unknown setting %r kept as it is", source, key)
            continue
        if not ok:
            raise SettingsError(f"{source}: invalid value for {key!r}: {value!r}")
    return values


def parse(text: str, source: str) -> dict[str, Any]:
    """Parse the YAML text of a settings file; empty text means no settings."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SettingsError(f"{source}: not valid YAML: {err}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    return validate(data, source)


def write_file(path: str, values: dict[str, Any]) -> None:
    """Replace the settings file at ``path`` atomically with ``values``."""
    validate(values, path)
    text = yaml.safe_dump(values, default_flow_style=False) if values else "{}\n"
    protocol.atomic_write(path, text.encode("utf-8"))


class SettingsCache:
    """Reads settings files and keeps them until they change on disk.

    ``get(folder)`` returns the parsed file of one folder (``{}`` if it has
    none); ``effective(queue)`` merges defaults, the root's file and the
    queue's. Thread-safe; each cached file is re-``stat``-ed at most once per
    :data:`RECHECK_SECONDS`.
    """

    def __init__(self, root: str):
        self.root = root
        self._lock = threading.Lock()
        # folder -> (next check time, stat signature, parsed values)
        self._files: dict[str, tuple[float, tuple | None, dict[str, Any]]] = {}
        # queue -> (next check, root values, queue values, merged)
        self._merged: dict[str, tuple[float, dict, dict, dict[str, Any]]] = {}

    def file_values(self, folder: str) -> dict[str, Any]:
        """Settings written in ``folder``'s ``ddmq.yaml`` (re-read if changed)."""
        now = time.monotonic()
        with self._lock:
            cached = self._files.get(folder)
            if cached is not None and now < cached[0]:
                return cached[2]
        path = os.path.join(folder, SETTINGS_FILE)
        # Settings are read before a queue's own retry_timeout is known.
        retry = DEFAULTS["retry_timeout"]
        for _ in range(3):  # the file may be replaced between stat and read: look again
            st = protocol.stat(path, retry)
            signature = None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino)
            if cached is not None and cached[1] == signature:
                values = cached[2]
                break
            if signature is None:
                values = _EMPTY
                break
            data = reading.read(path, retry, SETTINGS_MAX_BYTES)
            if data is not None:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise SettingsError(f"{path}: not a text file") from None
                values = parse(text, path)
                break
        else:
            values, signature = _EMPTY, None
        with self._lock:
            self._files[folder] = (now + RECHECK_SECONDS, signature, values)
        return values

    def effective(self, queue: str = "") -> dict[str, Any]:
        """Defaults, overridden by the root's file, then by ``queue``'s file.

        The merged dict is shared until a file changes: do not modify it."""
        now = time.monotonic()
        cached = self._merged.get(queue)
        if cached is not None and now < cached[0]:
            return cached[3]
        root_values = self.file_values(self.root)
        queue_values = self.file_values(os.path.join(self.root, queue)) if queue else _EMPTY
        if cached is not None and cached[1] is root_values and cached[2] is queue_values:
            merged = cached[3]
        else:
            merged = dict(DEFAULTS)
            merged.update(root_values)
            merged.update(queue_values)
        self._merged[queue] = (now + RECHECK_SECONDS, root_values, queue_values, merged)
        return merged

    def forget(self, folder: str | None = None) -> None:
        """Drop cached values so the next read goes to disk (after our own writes)."""
        with self._lock:
            if folder is None:
                self._files.clear()
            else:
                self._files.pop(folder, None)
            self._merged.clear()
