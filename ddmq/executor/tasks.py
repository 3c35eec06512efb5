"""The executor's record of its tasks: each task message and the future it resolves.

A :class:`TaskRecord` is made by ``submit``/``map`` for each task (one call,
or a chunk of ``map``), is added to the executor's :class:`TaskTable` before
its message is published (so that even the quickest reply finds it); tasks
submitted in a burst share one message (:mod:`.publisher`), so a message id
names one or more tasks. A record leaves the table exactly
once: when the collector resolves its future, when it is cancelled, or when
the executor breaks. Whoever takes it out (:meth:`TaskTable.forget`) settles
its future; everyone else finds it gone and does nothing.
"""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FuturesTimeoutError  # builtin TimeoutError since 3.11
from typing import Any, Callable

from ..message import Message
from .envelope import dump_task
from .errors import BrokenDDMQExecutor
from .pickling import callable_name
from .callkeys import TaskKeys
from .spill import SpillStore


class TaskFuture(Future):
    """A Future whose ``cancel()`` withdraws its task message from the queue.

    ``cancel()`` returns True if the task was waiting (its message is
    deleted and no worker will run it), False if a worker has it or it is
    done. A task a lost worker gave back is waiting again, and can be
    cancelled again. ``running()`` stays False: the executor is not told
    when a worker starts a task.

    ``result(timeout)`` and ``exception(timeout)`` raise what ``timed_out(timeout)``
    returns when the time is up (the executor's: a
    :class:`~ddmq.executor.errors.ResultTimeoutError`, which is a
    ``concurrent.futures.TimeoutError`` that says where the tasks stand).
    """

    def __init__(self, task_id: str, withdraw: Callable[[str], bool],
                 timed_out: Callable[[float | None], BaseException] | None = None):
        super().__init__()
        self._task_id = task_id
        self._withdraw = withdraw  # the executor's: deletes the task's message if still waiting
        self._timed_out = timed_out

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except FuturesTimeoutError as err:
            if self._timed_out is None or (self.done() and self._exception is err):
                raise  # no time-out: the task itself raised a TimeoutError
            raise self._timed_out(timeout) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except FuturesTimeoutError:
            if self._timed_out is None:
                raise
            raise self._timed_out(timeout) from None

    def cancel(self) -> bool:
        if self.cancelled():
            return True
        if self.done() or self.running():
            return False
        if not self._withdraw(self._task_id):
            return False
        return super().cancel()


class TaskRecord:
    """One task: the calls it carries, the future they resolve, and the
    message it went out in (shared with the other tasks of a burst)."""

    __slots__ = ("id", "future", "ncalls", "single", "fn_name", "msg", "payload_file", "deaths",
                 "keys", "pace")

    def __init__(self, task_id: str, future: TaskFuture, ncalls: int, single: bool, fn_name: str,
                 payload_file: str | None):
        self.id = task_id
        self.future = future
        self.ncalls = ncalls
        self.single = single  # submit(): the future's result is the value; map(): (values, errors)
        self.fn_name = fn_name
        self.payload_file = payload_file  # the spill file of a large task payload
        self.msg: Message | None = None   # the task message, once published
        # How each worker that died holding it ended, in the order found
        # ("worker HOST:PID was killed by SIGKILL ..."; see ddmq.executor.deaths).
        self.deaths: list[str] = []
        self.keys: TaskKeys | None = None  # in a named run: the keys of its calls (ddmq.executor.runs)
        self.pace = fn_name  # the function, for its seconds per call (see ddmq.executor.publisher)


class TaskTable:
    """The tasks whose futures are not resolved yet, by task id and by
    message id. Safe to share between threads."""

    def __init__(self, spills: SpillStore):
        self._spills = spills
        self._lock = threading.Lock()
        self._by_id: dict[str, TaskRecord] = {}
        self._by_msg_id: dict[str, list[str]] = {}  # message id -> its tasks' ids
        self.settled = 0  # tasks whose futures this table resolved (with a value or an error)

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, task: TaskRecord) -> None:
        with self._lock:
            self._by_id[task.id] = task

    def published(self, task: TaskRecord, msg: Message) -> None:
        """``task`` went out as ``msg`` (first, or again after its message
        was withdrawn): it can be found by its message id (if still unresolved)."""
        with self._lock:
            if task.msg is not None:
                self._unlink(task.id, task.msg)
            task.msg = msg
            if task.id in self._by_id and msg.id:
                self._by_msg_id.setdefault(msg.id, []).append(task.id)

    def _unlink(self, task_id: str, msg: Message) -> None:
        """``task_id`` is no longer found by the id of ``msg`` (the caller holds the lock)."""
        siblings = self._by_msg_id.get(msg.id or "")
        if siblings is not None and task_id in siblings:
            siblings.remove(task_id)
            if not siblings:
                del self._by_msg_id[msg.id or ""]

    def get(self, task_id: Any) -> TaskRecord | None:
        """The unresolved task ``task_id`` (any value: it may come from a reply)."""
        with self._lock:
            return self._by_id.get(task_id) if isinstance(task_id, str) else None

    def of_message(self, msg_id: str) -> list[TaskRecord]:
        """The unresolved tasks whose message has id ``msg_id``."""
        with self._lock:
            return [self._by_id[task_id] for task_id in self._by_msg_id.get(msg_id, ())
                    if task_id in self._by_id]

    def has_messages(self) -> bool:
        """True if a published task is unresolved."""
        with self._lock:
            return bool(self._by_msg_id)

    def tasks(self) -> list[TaskRecord]:
        with self._lock:
            return list(self._by_id.values())

    def forget(self, task: TaskRecord) -> bool:
        """Take ``task`` out of the table and release its spill file; False
        if someone else did first."""
        with self._lock:
            if self._by_id.pop(task.id, None) is None:
                return False
            if task.msg is not None:
                self._unlink(task.id, task.msg)
        if task.payload_file is not None:
            self._spills.release(task.payload_file)
        return True

    def settle(self, task: TaskRecord, value: Any, error: BaseException | None) -> None:
        """Forget ``task`` and resolve its future, unless someone else did first."""
        if self.forget(task):
            with self._lock:
                self.settled += 1
            settle(task.future, value, error)

    def break_all(self, reason: str) -> None:
        """Fail every unresolved future with BrokenDDMQExecutor(``reason``)."""
        with self._lock:
            tasks = list(self._by_id.values())
            self._by_id.clear()
            self._by_msg_id.clear()
        for task in tasks:
            settle(task.future, None, BrokenDDMQExecutor(reason))


def settle(future: Future, value: Any, error: BaseException | None) -> None:
    """Resolve ``future`` unless it was cancelled (or resolved) meanwhile."""
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


def new_task(future: TaskFuture, fn: Callable[..., Any], arglists: list[tuple[Any, ...]],
             kwargs: list[dict[str, Any]] | None, single: bool, keys: TaskKeys | None,
             sent: Any, secret: bytes, reply: str, spills: SpillStore,
             advice: dict[str, Any]) -> tuple[TaskRecord, dict[str, Any]] | TaskFuture:
    """The task of the calls ``fn(*arglists[i], **kwargs[i])`` (its id is
    ``future``'s) and its signed envelope, for the reply queue ``reply``; or,
    if they cannot be pickled, ``future``, failed. ``sent``: what to pickle
    for ``fn`` (a :class:`~.pickling.PickledOnce` of it), if not ``fn`` itself;
    ``advice``: fields every envelope of the executor carries."""
    try:
        doc = dump_task(secret, future._task_id, reply, fn if sent is None else sent, arglists,
                        kwargs, spills, None if keys is None else keys.encode())
    except pickle.PicklingError as err:
        future.set_exception(err)
        return future
    task = TaskRecord(future._task_id, future, len(arglists), single, callable_name(fn),
                      spills.file_of(doc, reply))
    task.keys = keys
    code = getattr(fn, "__code__", None)  # two lambdas share a name, not a code object
    task.pace = task.fn_name if code is None else f"{task.fn_name}@{id(code):x}"
    doc.update(advice, fn=task.fn_name, calls=len(arglists))
    return task, doc
