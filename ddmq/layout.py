"""The names of every file and folder the protocol uses, each with one ``format`` and one ``parse``.

Nothing else in the package builds or splits a message file name: the
protocol (:mod:`ddmq.protocol`), the broker, housekeeping, the executor and
the CLI all go through the types below. A root looks like this::

    ROOT/ddmq.yaml                                    root settings
    ROOT/QUEUE/ddmq.yaml                              queue settings ({} when it follows the root)
    ROOT/QUEUE/PRIO.QNUM.ddmqID                       WaitingName: a message waiting
    ROOT/QUEUE/work/EXPIRY.PRIO.QNUM.ddmqID[ZCLAIMER] WorkName: claimed, leased until EXPIRY
    ROOT/QUEUE/dead/REASON.PRIO.QNUM.ddmqID           DeadName: a dead letter, for a person
    ROOT/QUEUE/tmp/requeue.TAKEN.TOKEN.PRIO.QNUM.ddmqID RequeueName: a requeue in progress
    ROOT/QUEUE/tmp/spare.TOKEN                        a spare, to be rewritten (see ddmq.reuse)
    ROOT/QUEUE/tmp/TOKEN                              a publish being written (temporary_name)

All numbers are decimal integers (PRIO the priority, QNUM the publisher's
clock in ns, EXPIRY and TAKEN epoch seconds on the file server's clock) and
are compared as numbers, never as text. ID is the message id (hex). TOKEN is
:func:`unique_token`; CLAIMER is :func:`claimer_tag`. Names written by ddmq
0.9 (no CLAIMER, no ``tmp/`` or ``dead/``, a QNUM of 15-17 digits: see
:func:`queue_time_ns`) parse the same way. ``tmp/`` and ``dead/`` are made
when first needed and removed by housekeeping when empty, so that ddmq 0.9's
``delete_queue``, which removes only what it knows, can remove an idle queue.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import uuid
from typing import Any, NamedTuple

from .errors import InvalidNameError

#: Sub-folders of a queue folder.
WORK = "work"
TMP = "tmp"
DEAD = "dead"
#: The settings file of the root and of each queue (see ddmq.settings).
SETTINGS_FILE = "ddmq.yaml"

REQUEUE_PREFIX = "requeue."
#: Between a work name's message id and its claimer's tag (see WorkName).
CLAIMER_MARK = "Z"
SPARE_PREFIX = "spare."

#: Longest queue name: its folder and the names of its files must fit NAME_MAX (255).
MAX_QUEUE_NAME = 128

#: Why a message was dead-lettered; the first field of its name in ``dead/``.
DEAD_REASONS = ("unparseable", "requeue_limit", "expired", "rejected")

#: This node's name as it appears in file names (no dots, no slashes).
HOST = socket.gethostname().split(".")[0].replace("/", "_") or "host"


def check_queue_name(queue: Any) -> str:
    """Return ``queue`` if it is a valid queue name, else raise InvalidNameError."""
    if (not isinstance(queue, str) or not queue or not queue.isascii()
            or not all(c.isalnum() or c in "_-" for c in queue)):
        raise InvalidNameError(f"invalid queue name {queue!r}: use letters, digits, '_' and '-'")
    if len(queue) > MAX_QUEUE_NAME:
        raise InvalidNameError(f"invalid queue name {queue[:20]!r}...: longer than "
                               f"{MAX_QUEUE_NAME} characters")
    return queue


class WaitingName(NamedTuple):
    """``PRIO.QNUM.ddmqID``: a message waiting in its queue folder. ID is
    letters and digits without ``Z`` (ddmq's and ddmq 0.9's are lower-case
    hex), which marks the claimer's tag in a work name."""

    priority: int
    queue_number: int
    id: str

    def format(self) -> str:
        return f"{self.priority}.{self.queue_number}.ddmq{self.id}"

    @staticmethod
    def parse(name: str) -> WaitingName | None:
        """The fields of a waiting name, or None for any other name."""
        parts = name.split(".")
        if (len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and name.isascii()
                and parts[2].startswith("ddmq") and parts[2][4:].isalnum()
                and CLAIMER_MARK not in parts[2]):
            return WaitingName(int(parts[0]), int(parts[1]), parts[2][4:])
        return None


def queue_time_ns(queue_number: int) -> int:
    """The time of publishing that a queue number says, in ns since the epoch.

    ddmq 1.x writes the publisher's clock in ns (19 digits); ddmq 0.9 wrote
    ``str(time.time())`` without its dot (15-17 digits, 10 of them before
    the dot). Compared by this, the messages of both keep FIFO order within a
    priority, whichever wrote them."""
    if queue_number >= 10**18:
        return queue_number
    digits = str(queue_number)
    if len(digits) <= 10:
        return queue_number * 10**9
    return int(digits[:10]) * 10**9 + int(digits[10:19].ljust(9, "0"))


class WorkName(NamedTuple):
    """``EXPIRY.WAITING[ZCLAIMER]``: a claimed message, leased until EXPIRY.

    ddmq appends its claimer's tag so that no two processes ever rename a
    message to the same work name (see :func:`claimer_tag`), right after
    the id behind the letter ``Z`` (ids are lower-case hex): the name stays
    one that ddmq 0.9's ``delete_message`` accepts (``...ddmq[a-zA-Z0-9]+``).
    Names written by ddmq 0.9 have no tag (``claimer`` empty); ddmq 1.0 wrote
    it behind a dot (``mark`` ".")."""

    expiry: int
    waiting: str
    claimer: str = ""
    mark: str = "Z"

    def format(self) -> str:
        tail = f"{self.mark}{self.claimer}" if self.claimer else ""
        return f"{self.expiry}.{self.waiting}{tail}"

    def with_expiry(self, expiry: int) -> WorkName:
        return self._replace(expiry=expiry)

    @staticmethod
    def parse(name: str) -> WorkName | None:
        """The fields of a work name, or None for any other name."""
        expiry_text, _, rest = name.partition(".")
        if not (expiry_text.isascii() and expiry_text.isdigit()):
            return None
        expiry = int(expiry_text)
        for mark in (CLAIMER_MARK, "."):
            waiting, found, claimer = rest.rpartition(mark)
            if (found and claimer.isascii() and claimer.isalnum()
                    and WaitingName.parse(waiting) is not None):
                return WorkName(expiry, waiting, claimer, mark)
        if WaitingName.parse(rest) is not None:
            return WorkName(expiry, rest)
        return None


class DeadName(NamedTuple):
    """``REASON.WAITING``: a dead letter in ``dead/``."""

    reason: str
    waiting: str

    def format(self) -> str:
        return f"{self.reason}.{self.waiting}"

    @staticmethod
    def parse(name: str) -> DeadName | None:
        """The fields of a dead letter's name, or None for any other name."""
        reason, _, waiting = name.partition(".")
        if (reason and all("a" <= c <= "z" or c == "_" for c in reason)
                and WaitingName.parse(waiting) is not None):
            return DeadName(reason, waiting)
        return None


class RequeueName(NamedTuple):
    """``requeue.TAKEN.TOKEN.WAITING`` in ``tmp/``: a message taken for a
    requeue (or dead-lettering) at TAKEN, not finished yet."""

    taken: int
    token: str
    waiting: str

    def format(self) -> str:
        return f"{REQUEUE_PREFIX}{self.taken}.{self.token}.{self.waiting}"

    @staticmethod
    def parse(name: str) -> RequeueName | None:
        if not name.startswith(REQUEUE_PREFIX):
            return None
        parts = name.split(".")
        if len(parts) < 6 or not (parts[1].isascii() and parts[1].isdigit()):
            return None
        waiting = ".".join(parts[-3:])
        if WaitingName.parse(waiting) is None:
            return None
        return RequeueName(int(parts[1]), ".".join(parts[2:-3]), waiting)


def message_id(name: str) -> str | None:
    """The message id a waiting, work, dead-letter or requeue name (or a
    path ending in one) says; None for any other name."""
    name = name.rpartition(os.sep)[2]
    parsed = WorkName.parse(name) or DeadName.parse(name) or RequeueName.parse(name)
    waiting = WaitingName.parse(parsed.waiting if parsed else name)
    return waiting.id if waiting else None


def spare_name() -> str:
    """A new spare's name (in a ``tmp/`` or spill folder)."""
    return f"{SPARE_PREFIX}{unique_token()}"


def is_spare(name: str) -> bool:
    return name.startswith(SPARE_PREFIX)


def temporary_name() -> str:
    """A name no other process will produce, for a file being written."""
    return unique_token()


# --- tokens --------------------------------------------------------------------

_token_lock = threading.Lock()
_token = ""
_token_count = 0
_claimer = ""


_ids = random.Random()  # seeded from os.urandom (again in a forked child)


def new_message_id() -> str:
    """A new random message id (32 lower-case hex digits, as ddmq 0.9's),
    drawn without a system call: ``os.urandom`` lets the process's other
    threads in, which costs an executor a thread switch per message."""
    return f"{_ids.getrandbits(128):032x}"


def unique_token() -> str:
    """A name part no other process on any node will produce: host.pid.random.count."""
    global _token_count
    with _token_lock:
        if not _token:
            _new_token()
        _token_count += 1
        return f"{_token}.{_token_count}"


def claimer_tag() -> str:
    """This process's tag for the work names of the messages it claims.

    A claim must never rename onto a name that may exist: a node that still
    has a claimed message's old name in its cache (NFS attribute cache, FUSE
    entry timeout) would rename it onto the work file another node made, and
    a rename of a file onto itself succeeds without asking the server.
    With the claimer's tag in the work name the two names differ, so the
    server is asked, and answers ENOENT."""
    if _claimer:  # set once per process (again in a forked child)
        return _claimer
    with _token_lock:
        if not _token:
            _new_token()
        return _claimer


def _new_token() -> None:
    global _token, _token_count, _claimer
    random = uuid.uuid4().hex
    _token, _token_count = f"{HOST}.{os.getpid()}.{random[:8]}", 0
    _claimer = random[8:16]


if hasattr(os, "register_at_fork"):  # a forked child must not reuse its parent's names
    os.register_at_fork(after_in_child=_new_token)
    os.register_at_fork(after_in_child=_ids.seed)
