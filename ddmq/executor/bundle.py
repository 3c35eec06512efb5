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
when it must give them back (it is stopping, or they turn out slow) go back
to the queue as a new message carrying just those envelopes, under the
bundle's message id, so that the executor still finds them by that id
(cancel, dead letters, lost workers); the bundle itself is acked once the
answers of the tasks that ran are sent. A crash between the two leaves both
messages: the tasks that had run may run again, and their executor keeps
the first result of each, as after any lost lease.
"""

from __future__ import annotations

from typing import Any

from ..message import Message

__all__ = ["task_envelopes", "Bundle"]


def task_envelopes(body: Any) -> list[Any]:
    """The task envelopes of a task message's body: a list as is, anything
    else as a list of one (the envelopes are checked one by one later)."""
    return body if isinstance(body, list) else [body]


class Bundle:
    """A claimed task message and the worker's progress through its tasks.

    ``envelopes``: the tasks' envelopes, in order; ``next``: the index of the
    first not started. Changed by the worker's main thread, and by its keeper
    under the worker's lock when the grace period ends."""

    __slots__ = ("msg", "envelopes", "next")

    def __init__(self, msg: Message):
        self.msg = msg
        self.envelopes = task_envelopes(msg.message)
        self.next = 0

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
