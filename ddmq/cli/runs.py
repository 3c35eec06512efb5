"""The ``runs`` command: the named runs of a root (``DDMQExecutor(root, run="NAME")``).

``ddmq runs ROOT`` lists them: calls done and failed (from the run's
outcomes, :func:`ddmq.executor.runs.list_runs`; no result is unpickled),
calls waiting and running (its tasks in the task queue,
:func:`ddmq.executor.attach.run_tasks`), size on disk, last activity and
its driver if one is alive. ``ddmq runs show ROOT NAME`` says the same of
one run, and more; ``ddmq runs rm ROOT NAME`` removes a run that no live
driver holds, with its waiting tasks, reply queue and spill folder
(:func:`ddmq.executor.attach.discard_run`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import ddmq

from .common import aligned, dump, open_root, say
from .options import Command, UsageError, add_format

_ACTIONS = ("show", "rm")


def _runs_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("root", nargs="?", metavar="<root>", help="the message queue's root folder "
                     "(after 'show' or 'rm')")
    sub.add_argument("name", nargs="*", metavar="<name>", help="with show or rm: the name of the run")
    add_format(sub, "output format: plain (default, a table), json or yaml")


def cmd_runs(args: argparse.Namespace) -> None:
    """List the named runs of a root, show one, or remove one."""
    from ddmq.executor import attach, runs  # the executor only when asked for

    words = [word for word in (args.root, *args.name) if word is not None]
    action = words.pop(0) if words and words[0] in _ACTIONS and len(words) > 1 else "list"
    if len(words) != (1 if action == "list" else 2):
        raise UsageError("runs: give a root, or 'show' or 'rm' with a root and a run name "
                         "(see 'ddmq runs -h')")
    args.root = words[0]
    try:
        name = None if action == "list" else runs.check_run_name(words[1])
    except runs.RunError as err:
        raise UsageError(f"runs: {err}") from None
    b = open_root(args)
    secret = _secret(b)
    if name is not None and action == "rm":
        info, withdrawn = attach.discard_run(b, secret, name)
        if args.format != "plain":
            print(dump({"removed": info.name, "tasks_withdrawn": withdrawn}, args.format))
        else:
            say(args, f"Removed run {info.name} ({info.done + info.failed} outcome(s), "
                      f"{_size(info.size)}); {withdrawn} waiting task(s) withdrawn")
        return
    found = ([runs.run_info(b.root, name, secret)] if name is not None
             else runs.list_runs(b.root, secret))
    rows = [_row(info, counts) for info, counts in zip(found, _task_counts(b, secret, found))]
    if args.format != "plain":
        print(dump(rows[0] if name is not None else rows, args.format))
    elif name is not None:
        for key, value in rows[0].items():
            print(f"{key + ':':<16}{_plain(key, value)}")
    elif not rows:
        say(args, f"No runs in {b.root}")
    else:
        table = [("run", "done", "failed", "waiting", "running", "size", "last activity", "driver")]
        for row in rows:
            table.append((row["run"], str(row["done"]), str(row["failed"]), str(row["waiting"]),
                          str(row["running"]), _size(row["size"]), _ago(row["last_activity"]),
                          row["driver"] or "-"))
        for cells in aligned(table):
            print("  ".join(cells).rstrip())


def _secret(b: ddmq.Broker) -> bytes | None:
    """The root's secret; None if it has none yet (then it has no runs either)."""
    from ddmq.executor.errors import SecretError
    from ddmq.executor.secret import load_secret

    try:
        return load_secret(b.root, create=False)
    except SecretError:
        return None


def _task_counts(b: ddmq.Broker, secret: bytes | None, found: list[Any]) -> list[tuple[int, int]]:
    """(calls waiting, calls running) of each run, one scan per task queue."""
    from ddmq.executor.attach import run_tasks

    counts = {info.reply_queue: [0, 0] for info in found}
    for queue in sorted({info.queue for info in found if info.queue is not None}):
        if secret is None or not b.queue_exists(queue):
            continue
        for task in run_tasks(b, queue, secret, counts):
            counts[task.reply][1 if task.running else 0] += len(task.keys.keys)
    return [(counts[info.reply_queue][0], counts[info.reply_queue][1]) for info in found]


def _row(info: Any, counts: tuple[int, int]) -> dict[str, Any]:
    from ddmq.executor.runs import driver_alive

    driver = info.driver
    alive = driver is not None and driver_alive(driver)
    return {"run": info.name, "done": info.done, "failed": info.failed, "waiting": counts[0],
            "running": counts[1], "size": info.size, "files": info.files,
            "last_activity": info.last_activity,
            "driver": f"{driver.get('host')}:{driver.get('pid')}" if alive else None,
            "queue": info.queue, "reply_queue": info.reply_queue}


def _plain(key: str, value: Any) -> str:
    if key == "size":
        return _size(value)
    if key == "last_activity":
        return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(value))} ({_ago(value)})"
    return "-" if value is None else str(value)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def _ago(when: float) -> str:
    if not when:
        return "-"
    seconds = max(0.0, time.time() - when)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


RUNS = Command("runs", "List (show, remove) the named runs of the executor",
               "[-hvds] [--format <plain|json|yaml>] [show|rm] <root> [name]",
               cmd_runs, _runs_arguments)
