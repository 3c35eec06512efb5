"""Which message to claim next: each queue's cached, sorted listing.

Two things keep consuming cheap when queues are deep:

* A queue's folder is listed once, the names sorted by their numbers, and
  that list is walked, claiming as it goes; it is listed again when the list
  runs out, when it is older than a bound that grows with the cost of
  listing (so a deep queue is not re-sorted for every message) or after a
  run of lost races. A message published by another process is therefore
  seen at this consumer's next listing, at most about a second later for
  queues of up to tens of thousands of messages.
* Competing consumers that keep colliding on the head of the list pick at
  random among the first few messages of the best priority, so they spread
  out instead of all renaming the same file. A lost race also drops from
  the cached list the messages of that priority older than the one lost:
  others took the head of the queue since the listing, so those are most
  likely gone too (with 64 consumers on one queue, trying them one by one
  cost each task about 20 failed renames); one still there is found at the
  next listing. When that leaves none of the best priority, the whole cached
  list is dropped, and the queue listed again. Priority order always holds;
  FIFO order within a priority holds exactly for a consumer that is not
  competing.

An empty queue whose folder has not changed is not listed again: one
``stat`` of the folder tells (:func:`quiet_signature`), which spares the
file server while consumers wait.

On a local filesystem a folder that a consumer waits on is watched with
inotify (:class:`ddmq.watch.FolderWatcher`), which names every file that
appears in it. A listing taken while the watch was on is then *complete*
with the names the watch reports later: those are added to the cached list
(:meth:`Listings.next_candidate`), and the folder is not listed again
while the list and the watch account for it, up to IDLE_RELIST_SECONDS
after the last listing. A message published into a waiting queue is thus
claimed without a listing, and a consumer that lost the race for it goes
back to waiting without one. Names that leave the folder are not reported:
a cached name may be gone, which a claim finds (a lost race). The list
stops being complete when a lost race drops untried names from it (see
above) or the watch missed events; the next look lists.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from typing import Any

from . import protocol
from .clock import ServerClock
from .layout import WaitingName, queue_time_ns
from .watch import FolderWatcher

#: After this many lost races in a row, the cached listing is stale: list again.
RELIST_AFTER_LOST = 32
#: A folder unchanged for this long (server clock) can be watched by its mtime.
QUIET_SECONDS = 2.0
#: An empty queue whose folder did not change is listed again after this long anyway
#: (a safety net for attribute caches of network filesystems).
IDLE_RELIST_SECONDS = 10.0


def quiet_signature(folder: str, clock: ServerClock, retry: float) -> tuple[int, int] | None:
    """(mtime, inode) of ``folder`` if it has not changed for QUIET_SECONDS
    by the file server's clock; else (or if it is missing) None.

    A listing taken before this signature is still right while the
    signature stays the same: adding or removing a name sets the folder's
    mtime to the server's "now", which differs from a time QUIET_SECONDS
    old whatever the timestamps' granularity."""
    st = protocol.stat(folder, retry)
    if st is None or clock.now() - st.st_mtime < QUIET_SECONDS:
        return None
    return st.st_mtime_ns, st.st_ino


class _Candidates:
    """One queue's cached, sorted listing, best message last (popped first)."""

    __slots__ = ("entries", "listed_at", "synced_at", "relist_after", "streak", "lost_in_row",
                 "empty_signature", "last_index", "complete", "sync")

    def __init__(self) -> None:
        # (-priority, -publish time in ns, name): see layout.queue_time_ns
        self.entries: list[tuple[int, int, str]] = []
        self.listed_at = -1e18
        self.synced_at = -1e18  # last listing, or last time the watch's news were added
        self.relist_after = 0.5
        self.streak = 0.0
        self.lost_in_row = 0
        # the folder's signature after a listing found it empty (see quiet_signature)
        self.empty_signature: tuple[int, int] | None = None
        self.last_index = 0  # where the last pick was (see Listings.outcome)
        # entries and the folder watch's news account for every waiting file
        self.complete = False
        self.sync = threading.Lock()  # one listing or adding of news at a time

    def add(self, names: list[str]) -> None:
        """Add waiting names (the watch's news) not in the list yet."""
        entries = self.entries
        for name in names:
            parsed = WaitingName.parse(name)
            if parsed is None:
                continue
            key = (-parsed.priority, -queue_time_ns(parsed.queue_number), name)
            at = bisect.bisect_left(entries, key)
            if at == len(entries) or entries[at] != key:
                entries.insert(at, key)

    def pick(self) -> str | None:
        """Take the next name to try, or None when the listing is used up."""
        entries = self.entries
        if not entries:
            return None
        window = min(len(entries), 1 << int(self.streak))
        index = len(entries) - 1
        if window > 1:
            best = entries[-1][0]
            same = 1
            while same < window and entries[-1 - same][0] == best:
                same += 1
            index -= random.randrange(same)
        self.last_index = index
        return entries.pop(index)[2]


class Listings:
    """The cached listings of the queues one broker consumes. Thread-safe.

    ``watcher``: the broker's folder watches, where they see every change of
    a folder (a local filesystem); None elsewhere."""

    def __init__(self, clock: ServerClock, watcher: FolderWatcher | None = None):
        self._clock = clock
        self._watcher = watcher
        self._lock = threading.Lock()
        self._queues: dict[str, _Candidates] = {}

    def next_candidate(self, queue: str, folder: str, settings: dict[str, Any],
                       may_list: bool) -> tuple[str | None, bool]:
        """The next waiting name to try, from the cached listing or (if
        ``may_list``) a new one; and whether a new listing was taken.
        Raises FileNotFoundError if the queue folder is missing."""
        with self._lock:
            cands = self._queues.setdefault(queue, _Candidates())
            fresh = time.monotonic() - cands.synced_at < cands.relist_after
            if cands.entries and (not may_list or (fresh and cands.lost_in_row < RELIST_AFTER_LOST)):
                return cands.pick(), False
            if not may_list:
                return None, False
        with cands.sync:
            watcher = self._watcher
            if (watcher is not None and cands.complete
                    and time.monotonic() - cands.listed_at < IDLE_RELIST_SECONDS):
                news = watcher.news(folder)
                if news is not None:
                    with self._lock:
                        if cands.complete:  # the list plus the news: every waiting file
                            cands.add(news)
                            cands.synced_at = time.monotonic()
                            return (cands.pick() if cands.entries else None), False
            return self._list(queue, folder, settings, cands)

    def _list(self, queue: str, folder: str, settings: dict[str, Any],
              cands: _Candidates) -> tuple[str | None, bool]:
        """List the folder into ``cands`` (its ``sync`` held); the first pick."""
        started = time.monotonic()
        retry = settings["retry_timeout"]
        empty_signature = cands.empty_signature
        if (empty_signature is not None and started - cands.listed_at < IDLE_RELIST_SECONDS
                and quiet_signature(folder, self._clock, retry) == empty_signature):
            return None, False  # still empty: one stat instead of a listing (spares the server)
        # What the watch saw so far is in the listing; what it sees from now on
        # is news to add to it (None: the folder is not watched).
        watched = self._watcher is not None and self._watcher.watching(folder)
        if watched:
            self._watcher.news(folder)  # type: ignore[union-attr]
        names = protocol.list_folder(folder, retry)
        entries = []
        for name in names:
            parsed = WaitingName.parse(name)
            if parsed is not None:
                entries.append((-parsed.priority, -queue_time_ns(parsed.queue_number), name))
        entries.sort()
        took = time.monotonic() - started
        # Taken after the listing: a name added in between makes the folder
        # "not quiet", so the next call lists again.
        signature = None if entries or watched else quiet_signature(folder, self._clock, retry)
        with self._lock:
            cands.empty_signature = signature
            cands.entries = entries
            cands.complete = watched
            cands.listed_at = cands.synced_at = time.monotonic()
            # List again after a pause 20x what listing cost: under 5% of the time
            # goes to listing, however deep the queue.
            cands.relist_after = max(0.5, 20 * took)
            cands.lost_in_row = 0
            return cands.pick(), True

    def outcome(self, queue: str, won: bool) -> None:
        """Record whether the claim of the last candidate won its race."""
        if won:  # the usual case, uncontended: nothing to record (a racy look is harmless)
            quiet = self._queues.get(queue)
            if quiet is not None and not quiet.streak and not quiet.lost_in_row:
                return
        with self._lock:
            cands = self._queues.get(queue)
            if cands is None:
                return
            if won:
                cands.streak = max(cands.streak - 0.25, 0.0)
                cands.lost_in_row = 0
            else:
                cands.streak = min(cands.streak + 1.0, 6.0)
                cands.lost_in_row += 1
                # Those after the lost one are of its priority and older: likely taken too.
                entries = cands.entries
                if cands.last_index < len(entries):
                    priority = entries[-1][0]
                    del entries[cands.last_index:]
                    cands.complete = False  # names dropped untried: list again
                    if entries and entries[-1][0] != priority:
                        entries.clear()  # none of that priority left: never a worse one before a relisting

    def remember(self, queue: str, waiting: WaitingName, name: str) -> None:
        """Add our own publish to the cached listing, so we need not list again."""
        with self._lock:
            cands = self._queues.get(queue)
            if cands is not None and cands.entries:
                cands.add([name])

    def forget(self, queue: str) -> None:
        """Drop the listing of ``queue`` (it changed behind our back)."""
        with self._lock:
            self._queues.pop(queue, None)
