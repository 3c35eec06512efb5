"""Taking tasks back from the task queue before any worker has them.

A task message no worker has claimed is withdrawn by deleting it; a worker
that claims it first wins (the delete then finds nothing), so a task is
either withdrawn or run, never both. A task given back by a lost worker, or
requeued, keeps its message id under another name: it is found by that id
in a listing of the queue. The caller forgets the tasks withdrawn (see
:class:`~.tasks.TaskTable`) and cancels their futures.
"""

from __future__ import annotations

import logging
import os

from ..broker import Broker
from ..errors import DdmqError, MessageNotFoundError
from ..layout import message_id
from .tasks import TaskRecord, TaskTable

log = logging.getLogger(__name__)


def withdraw_task(broker: Broker, queue: str, tasks: TaskTable, task_id: str) -> bool:
    """Delete the message of one task no worker has claimed, and forget the
    task; True if done (``Future.cancel`` of a task)."""
    task = tasks.get(task_id)
    if task is None or task.msg is None:
        return False
    try:
        broker.delete_message(task.msg)
    except MessageNotFoundError:
        # Claimed by a worker; or requeued since (lost worker, given back),
        # which keeps the message id under a new name.
        if not task.msg.id or not _delete_by_id(broker, queue, task.msg.id):
            return False
    except DdmqError as err:
        log.warning("cannot cancel task %s: %s", task_id, err)
        return False
    tasks.forget(task)
    log.debug("cancelled task %s", task_id)
    return True


def withdraw_all(broker: Broker, queue: str, tasks: TaskTable, listing: bool) -> list[TaskRecord]:
    """Delete the waiting messages of every task of ``tasks``; the tasks
    withdrawn (not forgotten: the caller does it). Without ``listing``, each
    message by the name it was published under (no listing: quick); with
    it, by its id in one listing of the queue. Errors are logged."""
    by_id = {task.msg.id: task for task in tasks.tasks() if task.msg is not None and task.msg.id}
    withdrawn: list[TaskRecord] = []
    try:
        if listing:
            waiting, _ = broker.get_message_list(queue)
            names = [(name, by_id.get(message_id(name) or "")) for name in waiting]
        else:
            names = [(task.msg.filename or "", task) for task in by_id.values()
                     if task.msg is not None]
        for name, task in names:
            if task is None or not name:
                continue
            try:
                broker.delete_message(os.path.join(queue, name))
            except MessageNotFoundError:
                continue  # claimed by a worker
            withdrawn.append(task)
    except (OSError, DdmqError) as err:
        log.warning("cannot withdraw tasks from %s: %s", queue, err)
    return withdrawn


def _delete_by_id(broker: Broker, queue: str, msg_id: str) -> bool:
    """Delete the waiting message with id ``msg_id``, whatever its name now."""
    try:
        waiting, _ = broker.get_message_list(queue)
    except DdmqError:
        return False
    for name in waiting:
        if message_id(name) == msg_id:
            try:
                return broker.delete_message(os.path.join(queue, name))
            except DdmqError:
                return False
    return False
