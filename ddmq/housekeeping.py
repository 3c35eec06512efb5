"""Housekeeping: what no single process is responsible for, done by whichever client comes by.

For one queue, housekeeping

* requeues messages whose lease expired (or dead-letters them: past
  ``requeue_limit``, or ``requeue`` false), judged by the file server's clock
  against the expiry in the work file's name;
* finishes requeues that a dead process took privately but did not finish
  (``tmp/requeue.*`` older than :data:`REQUEUE_STALE_SECONDS`);
* removes temporary files of dead publishers (older than
  :data:`TMP_MAX_AGE_SECONDS`) and spares nobody took (older than
  :data:`SPARE_MAX_AGE_SECONDS`), and ``tmp/`` and ``dead/`` when they are
  empty (so that ddmq 0.9's ``delete_queue`` can remove an idle queue).

It runs inside publish/consume/ack/nack at most once per ``clean_interval``
seconds per queue and client (:meth:`Housekeeper.maybe_clean`), and on
``Broker.clean``. Every step is a protocol transition that only one process
can win, so any number of clients may clean one queue at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator

from . import protocol
from .delivery import Delivery
from .errors import DdmqError, FilesystemError, QueueNotFoundError
from .layout import DEAD, REQUEUE_PREFIX, TMP, WORK, RequeueName, WorkName, is_spare
from .listing import quiet_signature
from .root import Root

log = logging.getLogger(__name__)

#: A requeue taken privately but not finished after this many seconds is
#: assumed abandoned (its process died) and is finished by housekeeping.
REQUEUE_STALE_SECONDS = 60
#: Temporary files of publishes older than this are remains of dead publishers.
TMP_MAX_AGE_SECONDS = 3600
#: Automatic housekeeping looks into tmp/ at most this often (what it seeks there
#: is at least REQUEUE_STALE_SECONDS old).
TMP_SCAN_SECONDS = 30.0
#: An empty tmp/ unchanged for this long is removed (the queue is idle).
TMP_IDLE_SECONDS = 60
#: Spares older than this (by their ctime, set when they were retired) are
#: remains of dead processes or of a queue nobody publishes to: housekeeping removes them.
SPARE_MAX_AGE_SECONDS = 60


@contextlib.contextmanager
def _one_file(queue: str, name: str, failures: list[FilesystemError]) -> Iterator[None]:
    """A failure with one file is logged and kept, and the round goes on
    with the others (a thorough round raises the first at its end)."""
    try:
        yield
    except FilesystemError as err:
        log.warning("housekeeping of %s: %s: %s", queue, name, err)
        failures.append(err)


class Housekeeper:
    """Housekeeping of the queues one broker uses."""

    def __init__(self, root: Root, delivery: Delivery):
        self.root = root
        self.delivery = delivery
        self._next_clean: dict[str, float] = {}
        self._next_tmp_scan: dict[str, float] = {}
        self._work_listing: dict[str, tuple[tuple[int, int] | None, list[str]]] = {}

    def due(self, queue: str) -> bool:
        """Whether this client's last cleaning of ``queue`` is ``clean_interval`` old."""
        return time.monotonic() >= self._next_clean.get(queue, 0.0)

    def maybe_clean(self, queue: str) -> None:
        """Housekeeping as a side effect of publish, consume and ack: at most
        once per ``clean_interval``; its errors are logged, not raised."""
        if not self.due(queue):
            return
        try:
            self.clean(queue, thorough=False)
        except QueueNotFoundError:
            pass
        except DdmqError as err:
            log.warning("housekeeping of %s failed: %s", queue, err)

    def clean(self, queue: str, thorough: bool) -> None:
        """One round of housekeeping of ``queue``. Unless ``thorough``, it
        spares the file server: work/ is listed again only when it changed
        (the names hold the expiries), tmp/ at most every TMP_SCAN_SECONDS."""
        root = self.root
        folder = root.queue_dir(queue)
        settings = root.effective(queue)
        now_mono = time.monotonic()
        self._next_clean[queue] = now_mono + float(settings["clean_interval"])
        retry = settings["retry_timeout"]
        now = root.clock.now()
        work = os.path.join(folder, WORK)
        failures: list[FilesystemError] = []
        self._requeue_expired(queue, folder, work, now, retry, thorough, failures)
        if thorough or now_mono >= self._next_tmp_scan.get(queue, 0.0):
            self._next_tmp_scan[queue] = now_mono + TMP_SCAN_SECONDS
            self._scan_tmp(queue, folder, now, retry, failures)
        if failures and thorough:
            raise failures[0]

    def _requeue_expired(self, queue: str, folder: str, work: str, now: float, retry: float,
                         thorough: bool, failures: list[FilesystemError]) -> None:
        for name in self._work_names(queue, work, retry, thorough):
            parsed = WorkName.parse(name)
            if parsed is None or parsed.expiry >= now:
                continue
            with _one_file(queue, name, failures):
                private = self.delivery.take(queue, os.path.join(work, name), parsed.waiting)
                if private is not None:
                    outcome = self.delivery.finish_requeue(queue, private, None,
                                                           drop_when_not_requeued=False)
                    log.info("lease of %s in %s expired: %s", name, queue, outcome)

    def _scan_tmp(self, queue: str, folder: str, now: float, retry: float,
                  failures: list[FilesystemError]) -> None:
        tmp = os.path.join(folder, TMP)
        names = protocol.list_if_there(tmp, retry, follow=False)
        if not names:  # idle: made again by the next publish (see ddmq.layout)
            st = protocol.lstat(tmp, retry)
            if st is not None and now - st.st_mtime > TMP_IDLE_SECONDS:
                protocol.remove_folder_if_empty(tmp)
        protocol.remove_folder_if_empty(os.path.join(folder, DEAD))
        for name in names:
            path = os.path.join(tmp, name)
            if name.startswith(REQUEUE_PREFIX):  # never removed as a temporary: it holds a message
                requeue = RequeueName.parse(name)
                if requeue is None or now - requeue.taken < REQUEUE_STALE_SECONDS:
                    continue
                with _one_file(queue, name, failures):
                    private = self.delivery.take(queue, path, requeue.waiting)
                    if private is not None:
                        log.warning("finishing a requeue abandoned by a dead process: %s", name)
                        self.delivery.finish_requeue(queue, private, None, drop_when_not_requeued=False)
                continue
            st = protocol.lstat(path, retry)
            if st is None:
                continue
            if is_spare(name):
                # A spare keeps the mtime of its last message; retiring it (a rename) set its ctime.
                if now - st.st_ctime > SPARE_MAX_AGE_SECONDS:
                    log.debug("removing unused spare %s", name)
                    protocol.remove(path, retry)
            elif now - st.st_mtime > TMP_MAX_AGE_SECONDS:
                log.info("removing temporary file of a dead publisher: %s", name)
                protocol.remove(path, retry)

    def requeue_claims(self, queue: str, claimer: str, count: bool = True) -> list[str]:
        """Requeue now, as if their leases had expired, the messages of
        ``queue`` claimed by the process whose claimer tag is ``claimer``
        (see :func:`ddmq.layout.claimer_tag`); the waiting names requeued.
        ``count=False``: given back untouched (see ``Delivery.finish_requeue``)."""
        folder = self.root.queue_dir(queue)
        retry = self.root.retry_timeout(queue)
        work = os.path.join(folder, WORK)
        done = []
        for name in protocol.list_if_there(work, retry, follow=False):
            parsed = WorkName.parse(name)
            if parsed is None or not parsed.claimer.startswith(claimer):
                continue
            private = self.delivery.take(queue, os.path.join(work, name), parsed.waiting)
            if private is not None:
                outcome = self.delivery.finish_requeue(queue, private, None, drop_when_not_requeued=False,
                                                       count=count)
                log.info("%s of %s: its consumer is gone: %s", parsed.waiting, queue, outcome)
                done.append(parsed.waiting)
        return done

    def _work_names(self, queue: str, work: str, retry: float, fresh: bool) -> list[str]:
        """The names in ``work``, from the last listing if the folder has not
        changed since (and ``fresh`` is false)."""
        clock = self.root.clock
        cached = self._work_listing.get(queue)
        if not fresh and cached is not None and cached[0] is not None:
            if quiet_signature(work, clock, retry) == cached[0]:
                return cached[1]
        names = protocol.list_if_there(work, retry, follow=False)
        self._work_listing[queue] = (quiet_signature(work, clock, retry), names)
        return names
