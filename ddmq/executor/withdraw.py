"""Taking tasks back from the task queue before any worker has them.

A task the publisher still holds is taken from it (:mod:`.publisher`). A
task message no worker has claimed is withdrawn by deleting it; a worker
that claims it first wins (the delete then finds nothing), so a task is
either withdrawn or run, never both. A task given back by a lost worker, or
requeued, keeps its message id under another name: it is found by that id
in a listing of the queue. Withdrawing one task of a bundle (several tasks
in one message, :mod:`.bundle`) reads the message, deletes it, and
publishes the other tasks' envelopes again under the same message id. The
caller forgets the tasks withdrawn (see :class:`~.tasks.TaskTable`) and
cancels their futures.
"""

from __future__ import annotations

import logging
import os

from typing import TYPE_CHECKING

from ..broker import Broker
from ..errors import DdmqError, MessageNotFoundError
from ..layout import message_id
from ..message import Message
from .bundle import task_envelopes
from .tasks import TaskRecord, TaskTable

if TYPE_CHECKING:
    from .publisher import Publisher

log = logging.getLogger(__name__)


def withdraw_task(broker: Broker, queue: str, tasks: TaskTable, publisher: Publisher,
                  task_id: str) -> bool:
    """Withdraw one task no worker has claimed, and forget it; True if done
    (``Future.cancel`` of a task)."""
    task = tasks.get(task_id)
    if task is None:
        return False
    taken = publisher.withdraw(task)
    if taken is None and task.msg is not None and task.msg.id \
            and len(tasks.of_message(task.msg.id)) > 1:
        taken = _withdraw_from_bundle(broker, queue, tasks, publisher, task, task.msg)
    elif taken is None and task.msg is not None:
        taken = _delete(broker, queue, task.msg)
    if not taken:
        return False
    tasks.forget(task)
    log.debug("cancelled task %s", task_id)
    return True


def _delete(broker: Broker, queue: str, msg: Message) -> bool:
    """Delete task message ``msg`` if no worker has claimed it."""
    try:
        broker.delete_message(msg)
    except MessageNotFoundError:
        # Claimed by a worker; or requeued since (lost worker, given back),
        # which keeps the message id under a new name.
        return bool(msg.id) and _delete_by_id(broker, queue, msg.id or "") is not None
    except DdmqError as err:
        log.warning("cannot withdraw message %s: %s", msg.filename, err)
        return False
    return True


def _withdraw_from_bundle(broker: Broker, queue: str, tasks: TaskTable, publisher: Publisher,
                          task: TaskRecord, msg: Message) -> bool:
    """Withdraw ``task`` from the bundle ``msg`` it shares with other tasks:
    read the message, delete it if no worker has claimed it, and publish the
    envelopes of its other unresolved tasks again, under the same id.

    The waiting message found by the bundle's id may be the rest of it that
    a worker gave back and has not yet acked the bundle (see :mod:`.bundle`):
    if ``task`` is not in it, it ran or runs, and is not withdrawn (the
    message goes back as it was)."""
    read: Message | None
    try:
        read = broker.get_message(os.path.join(queue, msg.filename or ""))
        broker.delete_message(msg)
    except MessageNotFoundError:  # claimed; or requeued under another name
        read = _delete_by_id(broker, queue, msg.id or "")
        if read is None:
            return False
    except DdmqError as err:
        log.warning("cannot withdraw task %s from message %s: %s", task.id, msg.filename, err)
        return False
    envelopes = [doc for doc in task_envelopes(read.message) if isinstance(doc, dict)]
    others = [doc for doc in envelopes
              if doc.get("task") != task.id and tasks.get(doc.get("task")) is not None]
    if others:
        publisher.republish(others, msg.id or "")
    return any(doc.get("task") == task.id for doc in envelopes)


def withdraw_all(broker: Broker, queue: str, tasks: TaskTable, listing: bool) -> list[TaskRecord]:
    """Delete the waiting messages of every task of ``tasks``; the tasks
    withdrawn (not forgotten: the caller does it). Without ``listing``, each
    message by the name it was published under (no listing: quick); with
    it, by its id in one listing of the queue. Errors are logged."""
    by_id: dict[str, list[TaskRecord]] = {}
    for task in tasks.tasks():
        if task.msg is not None and task.msg.id:
            by_id.setdefault(task.msg.id, []).append(task)
    withdrawn: list[TaskRecord] = []
    try:
        if listing:
            waiting, _ = broker.get_message_list(queue)
            names = [(name, by_id.get(message_id(name) or "")) for name in waiting]
        else:
            names = [(group[0].msg.filename or "", group) for group in by_id.values()
                     if group[0].msg is not None]
        for name, group in names:
            if group is None or not name:
                continue
            try:
                broker.delete_message(os.path.join(queue, name))
            except MessageNotFoundError:
                continue  # claimed by a worker
            withdrawn.extend(group)
    except (OSError, DdmqError) as err:
        log.warning("cannot withdraw tasks from %s: %s", queue, err)
    return withdrawn


def _delete_by_id(broker: Broker, queue: str, msg_id: str) -> Message | None:
    """Read and delete the waiting message with id ``msg_id``, whatever its
    name now; the message read, or None if there is none (or it was claimed)."""
    try:
        waiting, _ = broker.get_message_list(queue)
    except DdmqError:
        return None
    for name in waiting:
        if message_id(name) == msg_id:
            path = os.path.join(queue, name)
            try:
                read = broker.get_message(path)
                broker.delete_message(path)
                return read
            except DdmqError:
                return None
    return None
