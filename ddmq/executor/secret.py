"""The root's secret: the key that signs every task and result envelope.

One file, ``ROOT/.ddmq-secret`` (64 hex digits and a newline, mode 0600, in
a root of mode 0700), made by the first executor or worker that finds it
missing. Only who can read it (the owner of the root) can make a payload
that a worker or an executor will unpickle (see :mod:`ddmq.executor.envelope`).

Creation is safe when many processes on many nodes race:
:func:`ddmq.protocol.atomic_write` with ``exclusive=True`` writes a private
temporary file and hard-links it to the final name, which fails if the name
exists, so exactly one secret wins and every process reads that one, always
complete. Where the filesystem has no hard links the winner creates the file
with ``O_EXCL`` and writes it in place; readers that find it still empty
wait for it (:func:`load_secret`).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat

from .. import protocol, reading
from ..backoff import wait_until
from ..errors import FilesystemError, UnsafeFileError
from .errors import SecretError

log = logging.getLogger(__name__)

#: The secret's file, in the root.
SECRET_FILE = ".ddmq-secret"
#: Largest secret file read (it holds 65 bytes).
_SECRET_MAX = 4096


def secret_path(root: str | os.PathLike) -> str:
    """Where the secret of ``root`` is kept."""
    return os.path.join(os.fspath(root), SECRET_FILE)


def load_secret(root: str | os.PathLike, create: bool = True, wait: float = 10.0) -> bytes:
    """The secret of ``root`` (32 bytes); made first if missing and ``create``.

    Raises :class:`SecretError` if the file is missing (and not ``create``),
    unreadable, or still not a secret after ``wait`` seconds (a creator
    writing it in place gets that long); logs a warning if others may read it.
    """
    path = secret_path(root)

    def attempt() -> bytes | None:
        found = _read(path)
        if found is None:
            if not create:
                raise SecretError(f"{path} is missing: start an executor or a worker on this "
                                  "root first, which creates it")
            _create(path)
            found = _read(path)
        return None if found is None else _parse(path, *found)

    secret = wait_until(attempt, wait, first=0.005, most=0.5)
    if secret is None:
        raise SecretError(f"{path} does not hold a secret (64 hex digits)")
    return secret


def _read(path: str) -> tuple[bytes, int] | None:
    """(text, mode) of the secret file; None if it is missing. Like every
    read of ddmq, a link is not followed and only a regular file is read."""
    try:
        fd, st = reading.open_regular(path, _SECRET_MAX)
    except FileNotFoundError:
        return None
    except UnsafeFileError as err:
        raise SecretError(f"cannot read the secret: {err}") from None
    except OSError as err:
        raise SecretError(f"cannot read the secret {path}: {err.strerror or err}") from err
    try:
        return os.read(fd, _SECRET_MAX + 1), st.st_mode
    except OSError as err:
        raise SecretError(f"cannot read the secret {path}: {err.strerror or err}") from err
    finally:
        os.close(fd)


def _parse(path: str, text: bytes, mode: int) -> bytes | None:
    """The secret in ``text``; None while it is incomplete (being written in place)."""
    text = text.strip()
    if len(text) != 64:
        return None
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise SecretError(f"{path} does not hold a secret (64 hex digits)") from None
    if stat.S_IMODE(mode) & 0o077:
        log.warning("%s may be read by others (mode %o): anyone who can read it can make "
                    "workers run code; chmod 600 it", path, stat.S_IMODE(mode))
    return secret


def _create(path: str) -> None:
    """Make the secret file unless it exists (another process won: fine)."""
    data = (secrets.token_hex(32) + "\n").encode("ascii")
    try:
        protocol.atomic_write(path, data, mode=0o600, fsync=True, exclusive=True)
    except OSError as err:
        raise SecretError(f"cannot create the secret {path}: {FilesystemError(err)}") from err
    log.debug("wrote a secret for %s (of racing creators, the first one's stays)", path)
