"""A bundle: one task message that carries several tasks, and a worker's progress through it.

The body of a task message is one task envelope (a JSON object) or a list
of them, a *bundle*: the executor's publisher puts the tasks submitted in a
burst in one message (see :mod:`.publisher`). Each envelope keeps its own
task id, reply queue and signature, and gets its own result, so the bundle
is only a way to pay a file's costs (write, rename, claim, ack) once for
several tasks. The tasks of a bundle come from one executor and share its
reply queue.

A worker runs the tasks of a bundle one after the other (:class:`Bundle`)
and acks the message when every one is answered. Tasks it has not started
when it must give them back (it is stopping, or they would wait behind a
slow one: see :data:`HOARD_SECONDS`) go back to the queue as a new message
carrying just those envelopes, under the bundle's message id, so that the
executor still finds them by that id (cancel, dead letters, lost workers);
the bundle itself is acked once the answers of the tasks that ran are sent.
A crash between the two leaves both messages: the tasks that had run may run
again, and their executor keeps the first result of each, as after any lost
lease. That is why the rest of a bundle goes back between two of its tasks
and not while a slow one runs (the grace period's end aside, when the worker
acks the bundle and exits right after): the bundle, still claimed for the
running task, would hold the rest too for as long as it runs.
"""

from __future__ import annotations

from typing import Any

from ..message import Message

__all__ = ["task_envelopes", "Bundle", "HOARD_SECONDS"]

#: A worker gives back the tasks it claimed and has not started (whole
#: messages by a nack, the rest of a bundle as a new message) once they would
#: take longer than this (s) at the pace of the task before them: before the
#: next one starts, at the pace of the last; the whole messages also while
#: one runs, at its pace so far (the worker's keeper looks). A give-back is
#: a requeue each, which costs tens of milliseconds on a network filesystem:
#: worth it only to spread that much work over idle workers.
HOARD_SECONDS = 1.0


def task_envelopes(body: Any) -> list[Any]:
    """The task envelopes of a task message's body: a list as is, anything
    else as a list of one (the envelopes are checked one by one later)."""
    return body if isinstance(body, list) else [body]


class Bundle:
    """A claimed task message and the worker's progress through its tasks.

    ``envelopes``: the tasks' envelopes, in order; ``next``: the index of the
    first not started; ``given_back``: the whole message went back to the
    queue before any of its tasks started. Changed by the worker's main
    thread, and by its keeper under the worker's lock while a task runs (it
    gives back the messages that wait behind a slow one, and what is left
    when the grace period ends)."""

    __slots__ = ("msg", "envelopes", "next", "given_back")

    def __init__(self, msg: Message):
        self.msg = msg
        self.envelopes = task_envelopes(msg.message)
        self.next = 0
        self.given_back = False

    def __len__(self) -> int:
        return len(self.envelopes)

    def __repr__(self) -> str:
        return f"<Bundle {self.msg.filename} {self.next}/{len(self.envelopes)}>"

    @property
    def started(self) -> bool:
        return self.next > 0

    def take(self) -> Any:
        """The envelope of the next task (and count it as started)."""
        doc = self.envelopes[self.next]
        self.next += 1
        return doc

    def rest(self, from_index: int | None = None) -> list[Any]:
        """The envelopes from ``from_index`` (default: the first not started) on."""
        return self.envelopes[self.next if from_index is None else from_index:]

    def done(self) -> bool:
        """True when no task of the bundle is left to start."""
        return self.next >= len(self.envelopes)
