"""The ``status`` command: a root at a glance, from its files alone (no server).

``ddmq status ROOT`` prints three tables; ``--watch [S]`` reprints them every
S seconds (2 by default) until Ctrl-C, ``--format json|yaml`` gives the same
as data (one document per refresh)::

    queues     per queue: task messages waiting, running (claimed), done in
               the last minute, dead letters; workers live and lost
                 waiting, running, dead    Broker.get_message_list, list_dead
                 done in the last minute   the workers' heartbeat records
                                           (ddmq.executor.activity: each record
                                           counts what its worker finished per
                                           clock minute)
    workers    per worker: host or Slurm node, Slurm job, state, the task it
               runs and since when            ddmq.executor.list_workers
    failures   the latest: dead letters (reason, name), workers
               found dead (how they ended), Slurm jobs that ended badly
               (ddmq.slurm.find_jobs: one squeue call; explain: scontrol)

Reply queues (``reply-*``) are the executors' own and are left out, unless
named with ``--queue``. Slurm is asked only where its commands are found
(``--no-slurm``: never).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from typing import Any, Sequence

import ddmq
from ddmq.layout import DEAD, DeadName, WaitingName

from .common import aligned, dump, open_root, say
from .options import Command, add_format, add_root

log = logging.getLogger(__name__)

#: Dead letters shown per queue, and failures in all.
LAST_DEAD = 5
LAST_FAILURES = 10


def _status_arguments(sub: argparse.ArgumentParser) -> None:
    add_root(sub)
    sub.add_argument("--queue", help="only this queue (and its workers)")
    sub.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="S",
                     help="refresh every S seconds (default 2) until Ctrl-C")
    sub.add_argument("--no-slurm", action="store_true", help="do not ask Slurm about its jobs")
    add_format(sub, "output format: plain (default, tables), json or yaml")


# --- gathering ------------------------------------------------------------------------

def _dead_letters(b: ddmq.Broker, queue: str) -> list[dict[str, Any]]:
    """The latest dead letters of ``queue``, by the time they were published
    (their names say no more: ``ddmq dead`` lists them all)."""
    found = []
    for name in b.list_dead(queue):
        parsed = DeadName.parse(name)
        waiting = WaitingName.parse(parsed.waiting) if parsed else None
        if parsed is None or waiting is None:
            continue
        found.append((waiting.queue_number, parsed.reason, name))
    found.sort(reverse=True)
    return [{"queue": queue, "reason": reason, "name": name, "published": number / 1e9}
            for number, reason, name in found[:LAST_DEAD]]


def _slurm_jobs(root: str, queue: str | None) -> tuple[list[Any], dict[str, Any], str | None]:
    """(rows, {job id: JobEnd of those that ended badly}, why Slurm was not asked)."""
    from ddmq.slurm import SlurmError, SlurmNotFoundError, find_jobs
    from ddmq.slurm.jobs import explain

    try:
        rows = find_jobs(root, queue)
        return rows, explain(rows), None
    except SlurmNotFoundError:
        return [], {}, "no Slurm here"
    except SlurmError as err:
        said = [line for line in getattr(err, "stderr", "").splitlines() if line.strip()]
        return [], {}, f"unavailable: {said[-1] if said else err}"[:160]


def gather(b: ddmq.Broker, queue: str | None, slurm: bool) -> dict[str, Any]:
    """Everything ``status`` shows, as data."""
    from ddmq.executor import list_workers
    from ddmq.executor.activity import done_last_minute
    from ddmq.executor.deaths import record_cause

    now = time.time()
    queues = [queue] if queue else [q for q in b.list_queues() if not q.startswith("reply-")]
    live, lost = list_workers(b.root, queue)
    rows, ends, slurm_note = _slurm_jobs(b.root, queue) if slurm else ([], {}, "not asked")
    data: dict[str, Any] = {"root": b.root, "time": now, "queues": [], "workers": [],
                            "failures": [], "slurm": slurm_note or f"{len(rows)} job(s)"}
    dead_letters = []
    for name in queues:
        try:
            waiting, work = b.get_message_list(name)
            dead = b.list_dead(name)
            dead_letters += _dead_letters(b, name)
        except ddmq.QueueNotFoundError:
            continue
        mine = [w for w in live + lost if w.queue == name]
        data["queues"].append({
            "queue": name, "waiting": len(waiting), "running": len(work),
            "done_last_minute": round(sum(done_last_minute(w, now) for w in mine)),
            "dead": len(dead), "live_workers": sum(1 for w in mine if not w.lost),
            "lost_workers": sum(1 for w in mine if w.lost)})
    from ddmq.slurm import describe
    for w in live + lost:
        end = ends.get(w.slurm_job) if w.slurm_job else None
        cause = record_cause(w) if w.lost else None
        if end is not None and w.lost:
            cause = f"{cause}; its {describe(end)}" if cause else f"its {describe(end)}"
        data["workers"].append({
            "worker": f"{w.host}:{w.pid}", "queue": w.queue, "where": w.node or w.host,
            "slurm_job": w.slurm_job or None, "state": "lost" if w.lost else w.state,
            "task": w.task, "for_seconds": None if w.since is None or w.lost else max(0.0, now - w.since),
            "tasks_done": w.tasks_done, "last_seen": w.last_seen, "cause": cause,
            "python": w.python or None})
        if w.lost:
            data["failures"].append({"when": w.last_seen, "kind": "worker",
                                     "what": f"worker {w.host}:{w.pid} ({w.queue}) "
                                             f"{cause or 'was lost'}"})
    for item in dead_letters:
        what = (f"dead letter ({item['reason']}) in {item['queue']}: {item['queue']}/{DEAD}/"
                f"{item['name']}")
        data["failures"].append({"when": item["published"], "kind": "dead letter", "what": what})
    for row in rows:
        end = ends.get(row.id)
        if end is not None:
            data["failures"].append({"when": end.end or row.end or now, "kind": "slurm job",
                                     "what": describe(end)})
    data["failures"].sort(key=lambda f: -(f["when"] or 0))
    del data["failures"][LAST_FAILURES:]
    return data


# --- printing -------------------------------------------------------------------------

def _clock(epoch: float | None) -> str:
    return "-" if not epoch else datetime.datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _table(rows: "Sequence[tuple[str, ...]]") -> list[str]:
    return ["  ".join(cells).rstrip() for cells in aligned(rows)]


def render(data: dict[str, Any]) -> str:
    """The plain-text tables of :func:`gather`'s data."""
    lines = [f"ddmq status of {data['root']} at {_clock(data['time'])} (Slurm: {data['slurm']})", ""]
    queues = [("queue", "waiting", "running", "done/min", "dead", "workers")]
    for q in data["queues"]:
        queues.append((q["queue"], str(q["waiting"]), str(q["running"]), str(q["done_last_minute"]),
                       str(q["dead"]), f"{q['live_workers']} live, {q['lost_workers']} lost"))
    lines += _table(queues) if len(queues) > 1 else ["no queues"]
    lines.append("")
    workers = [("worker", "queue", "where", "slurm job", "state", "task", "for", "done")]
    for w in data["workers"]:
        workers.append((w["worker"], w["queue"], w["where"], w["slurm_job"] or "-", w["state"],
                        w["task"] or "-", _seconds(w["for_seconds"]), str(w["tasks_done"])))
    lines += _table(workers) if len(workers) > 1 else ["no workers"]
    lines.append("")
    if data["failures"]:
        lines.append("latest failures:")
        lines += [f"  {_clock(f['when'])}  {f['what']}" for f in data["failures"]]
    else:
        lines.append("no failures")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> None:
    """Print the status of the root (see the module docstring)."""
    b = open_root(args, [args.queue] if args.queue is not None else [])
    if args.watch is not None and not args.watch > 0:
        from .options import UsageError
        raise UsageError(f"status: --watch takes a number of seconds above 0, not {args.watch}")
    while True:
        data = gather(b, args.queue, slurm=not args.no_slurm)
        if args.format != "plain":
            print(dump(data, args.format), flush=True)
        else:
            if args.watch is not None and sys.stdout.isatty():
                print("\033[H\033[2J", end="")  # clear the screen for the next picture
            print(render(data), flush=True)
        if args.watch is None:
            return
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            say(args, "")
            return
        if args.format == "plain" and not sys.stdout.isatty():
            print()


STATUS = Command("status", "Show queues, workers and latest failures (from the files)",
                 "[-hvds] [--queue <name>] [--watch [S]] [--no-slurm] [--format <plain|json|yaml>] <root>",
                 cmd_status, _status_arguments)
