"""The ``slurm`` command: worker jobs on a Slurm cluster, apart from any driver.

``ddmq slurm submit ROOT --jobs N`` submits one job array of ``N`` jobs, each
running ``--workers-per-job`` workers of the root's queue
(:class:`ddmq.slurm.SlurmJobs`); ``status`` lists the root's ddmq jobs from
one ``squeue`` call, with why those that ended badly ended
(:func:`ddmq.slurm.find_jobs`, :func:`ddmq.slurm.jobs.explain`); ``cancel``
cancels them, and no other job (:func:`ddmq.slurm.cancel_jobs`). Any sbatch
option goes after ``--``. Jobs are found by their name and comment (see
:mod:`ddmq.slurm.tag`), so ``status`` and ``cancel`` work from any shell of
the same user, even once the root is gone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Sequence

from ddmq.layout import check_queue_name

from .common import aligned, dump, open_root, say
from .options import Command, CommandParser, UsageError, add_format, positive_int, seconds

log = logging.getLogger(__name__)

_ACTIONS = ("submit", "status", "cancel")


class _ActionParser(CommandParser):
    """The parser of an action: everything after ``--`` is sbatch's, wherever
    the options before it stand (argparse alone would not take
    ``submit ROOT --jobs 2 -- --exclusive``: it fills a list of positionals
    only once, at the first of them)."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        tail: list[str] = []
        if "--" in words:
            at = words.index("--")
            words, tail = words[:at], words[at + 1:]
        parsed, extras = super().parse_known_args(words, namespace)
        if tail and not hasattr(parsed, "sbatch_args"):
            extras += ["--", *tail]  # not an action that takes them: argparse reports them
        elif hasattr(parsed, "sbatch_args"):
            parsed.sbatch_args = list(parsed.sbatch_args) + tail
        return parsed, extras


def _action(actions: argparse._SubParsersAction[_ActionParser], name: str, help: str, usage: str,
            description: str, queue_help: str, format_help: str) -> argparse.ArgumentParser:
    """The parser of one action: root, ``--queue``, ``--format`` and the quiet
    options, with those the caller adds."""
    sub = actions.add_parser(name, prog=f"ddmq slurm {name}", help=help,
                             usage=f"ddmq slurm {name} {usage}", description=description)
    sub.add_argument("root", help="the message queue's root folder")
    sub.add_argument("--queue", "-q", help=queue_help)
    add_format(sub, format_help)
    # Also taken before the action ("ddmq slurm -v status ROOT"): SUPPRESS keeps
    # the value given there when the action's parser does not see the option.
    sub.add_argument("-v", action="store_true", default=argparse.SUPPRESS,
                     help="verbose mode (progress on stderr)")
    sub.add_argument("-d", action="store_true", default=argparse.SUPPRESS, help="debug mode")
    sub.add_argument("-s", action="store_true", default=argparse.SUPPRESS,
                     help="silent mode (only data and errors)")
    return sub


def _slurm_arguments(sub: argparse.ArgumentParser) -> None:
    actions = sub.add_subparsers(dest="action", metavar="<submit|status|cancel>",
                                 title="actions", parser_class=_ActionParser)
    submit = _action(
        actions, "submit", "submit a job array of workers",
        "[-hfvds] --jobs N [options] <root> [-- <sbatch options>]",
        "Submit one Slurm job array of N jobs, each running --workers-per-job workers "
        "(python -m ddmq.worker) of the root's queue, with this Python and its PYTHONPATH. "
        "Options after -- go to sbatch as they are.",
        "the task queue the workers serve (default: tasks)",
        "output format: plain (default), json or yaml")
    submit.add_argument("-f", action="store_true", help="create the root folder if needed")
    submit.add_argument("--jobs", type=positive_int, required=True,
                        help="number of jobs (array tasks) to submit")
    submit.add_argument("--workers-per-job", type=positive_int, default=1, metavar="K",
                        help="worker processes in each job (default: 1)")
    submit.add_argument("--cpus-per-worker", type=positive_int, default=1, metavar="C",
                        help="CPUs of each worker (default: 1)")
    submit.add_argument("--time", "-t", help="time limit of each job, as sbatch --time takes it "
                                             "('30' minutes, '2:00:00')")
    submit.add_argument("--mem", help="memory of each job, as sbatch --mem takes it ('4G')")
    submit.add_argument("--partition", "-p", help="Slurm partition")
    submit.add_argument("--account", "-A", help="Slurm account")
    submit.add_argument("--gpus", help="GPUs of each job: a count, or type:count")
    submit.add_argument("--python", help="the workers' interpreter (default: this one)")
    submit.add_argument("--idle-timeout", type=seconds, metavar="S",
                        help="workers (and so jobs) end after S seconds without a task "
                             "(default: never)")
    submit.add_argument("--drain-margin", type=seconds, metavar="S",
                        help="seconds before the time limit at which workers drain "
                             "(default: 120, at most a quarter of the limit)")
    submit.add_argument("--max-array-size", type=positive_int, metavar="N",
                        help="largest job array to submit (default: the cluster's MaxArraySize); "
                             "more jobs go in several arrays")
    submit.add_argument("--dry-run", action="store_true",
                        help="print the sbatch commands and the script, submit nothing")
    submit.set_defaults(sbatch_args=[])
    _action(actions, "status", "list the root's worker jobs",
            "[-hvds] [--queue <name>] [--format <plain|json|yaml>] <root>",
            "List this user's ddmq worker jobs on the root: pending, running and finished in "
            "the last few minutes (Slurm's MinJobAge), with why those that ended badly ended.",
            "only the jobs of this task queue", "output format: plain (default, a table), json or yaml")
    _action(actions, "cancel", "cancel the root's worker jobs",
            "[-hvds] [--queue <name>] [--format <plain|json|yaml>] <root>",
            "Cancel this user's pending and running ddmq worker jobs on the root (scancel), and "
            "no other job. Workers give their running tasks back.",
            "only the jobs of this task queue", "output format: plain (default), json or yaml")


def _root_and_queue(args: argparse.Namespace) -> tuple[str, str | None]:
    if not args.root:
        raise UsageError(f"slurm {args.action}: the root folder must not be empty")
    if args.queue is not None:
        check_queue_name(args.queue)
    return os.path.abspath(args.root), args.queue


def cmd_slurm(args: argparse.Namespace) -> None:
    """Run the action of ``ddmq slurm``."""
    if args.action is None:
        raise UsageError(f"slurm: an action is required: {', '.join(_ACTIONS)} (see 'ddmq slurm -h')")
    {"submit": _submit, "status": _status, "cancel": _cancel}[args.action](args)


def _submit(args: argparse.Namespace) -> None:
    from ddmq.slurm import JobTag, SlurmJobs, SlurmNotFoundError, SlurmWorkers
    from ddmq.slurm.commands import ClusterConfig, cluster_config
    from ddmq.slurm.script import LOG_DIR

    queue = args.queue or "tasks"
    try:
        workers = SlurmWorkers(args.jobs, workers_per_job=args.workers_per_job,
                               cpus_per_worker=args.cpus_per_worker, time=args.time, mem=args.mem,
                               partition=args.partition, account=args.account,
                               gpus=int(args.gpus) if args.gpus and args.gpus.isdigit() else args.gpus,
                               python=args.python, sbatch_args=args.sbatch_args)
        jobs = SlurmJobs(workers, max_array_size=args.max_array_size,
                         idle_timeout=args.idle_timeout or None, drain_margin=args.drain_margin)
    except ValueError as err:
        raise UsageError(f"slurm submit: {err}") from None
    machine = args.format != "plain"
    if args.dry_run:
        root, _ = _root_and_queue(args)
        check_queue_name(queue)
        try:
            config = cluster_config()
        except SlurmNotFoundError:
            config = ClusterConfig()
            log.warning("scontrol is not here: planning with Slurm's default limits")
        plans = jobs.plan(args.jobs, idle_timeout=jobs.idle_timeout, config=config,
                          tag=JobTag(root, queue))  # nothing made, nothing submitted
        if machine:
            print(dump([{"command": p.command, "script": p.script, "jobs": p.size} for p in plans],
                       args.format))
            return
        for plan in plans:
            print(shlex.join(plan.command) + " <<'EOF'\n" + plan.script + "EOF")
        return
    cluster_config()  # no Slurm here: say so before the root is made
    broker = open_root(args, [queue])
    ids = jobs.start(broker.root, queue)
    log_dir = os.path.join(broker.root, LOG_DIR)
    if machine:
        print(dump({"arrays": ids, "jobs": args.jobs, "workers_per_job": args.workers_per_job,
                    "root": broker.root, "queue": queue, "output": log_dir}, args.format))
        return
    say(args, f"Submitted Slurm job array{'s' if len(ids) > 1 else ''} {', '.join(ids)}: "
              f"{args.jobs} job(s) of {args.workers_per_job} worker(s) for queue {queue} of "
              f"{broker.root} (output in {log_dir})")


def _duration(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _status(args: argparse.Namespace) -> None:
    from ddmq.slurm import describe, find_jobs
    from ddmq.slurm.jobs import explain
    from ddmq.slurm.tag import parse_comment

    root, queue = _root_and_queue(args)
    rows = find_jobs(root, queue)
    ends = explain(rows)
    if args.format != "plain":
        data = []
        for row in rows:
            item = row.to_dict()
            item["queue"] = (parse_comment(row.comment) or ("", ""))[0]
            item["cause"] = describe(ends[row.id]) if row.id in ends else None
            item["exit_status"] = ends[row.id].exit_status if row.id in ends else None
            data.append(item)
        print(dump(data, args.format))
        return
    if not rows:
        say(args, f"No ddmq Slurm jobs on {root}" + (f" for queue {queue}" if queue else ""))
        return
    table = [("job", "state", "node", "elapsed", "limit", "queue", "reason")]
    for row in rows:
        why = describe(ends[row.id]) if row.id in ends else (row.reason or "-")
        table.append((row.id, row.state, row.node or "-", _duration(row.elapsed),
                      _duration(row.time_limit), (parse_comment(row.comment) or ("?", ""))[0], why))
    for cells in aligned(table):
        print("  ".join(cells).rstrip())
    active = sum(1 for r in rows if r.active)
    say(args, f"{len(rows)} job(s): {sum(1 for r in rows if r.pending)} pending, "
              f"{active - sum(1 for r in rows if r.pending)} running, {len(rows) - active} ended")


def _cancel(args: argparse.Namespace) -> None:
    from ddmq.slurm import cancel_jobs

    root, queue = _root_and_queue(args)
    ids = cancel_jobs(root, queue)
    if args.format != "plain":
        print(dump(ids, args.format))
    elif ids:
        say(args, f"Cancelled Slurm job{'s' if len(ids) > 1 else ''} {', '.join(ids)} of {root}")
    else:
        say(args, f"No pending or running ddmq Slurm jobs on {root}"
                  + (f" for queue {queue}" if queue else ""))


SLURM = Command("slurm", "Submit, list or cancel worker jobs on Slurm",
                "<submit|status|cancel> [-hvds] [options] <root>", cmd_slurm, _slurm_arguments)
