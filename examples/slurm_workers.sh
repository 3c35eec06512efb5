#!/bin/bash
# ddmq workers as a Slurm job array: each array task runs DDMQ_WORKERS_PER_JOB
# workers (default: one per CPU of the task) of a ddmq root.
#
#   sbatch examples/slurm_workers.sh /shared/$USER/ddmq-root [ddmq.worker options]
#   sbatch --array=0-15 --time=8:00:00 examples/slurm_workers.sh ROOT --queue tasks
#
# (`ddmq slurm submit ROOT --jobs N` writes and submits a script like this one
# for you, tagged so that `ddmq slurm status ROOT` and `ddmq slurm cancel ROOT`
# find the jobs; this one is for those who want their own.)
#
# Then run the main program anywhere that sees the same filesystem (the login
# node, a workstation, another job), with no local workers:
#
#   with DDMQExecutor("/shared/$USER/ddmq-root", max_workers=0) as ex:
#       results = list(ex.map(f, items))
#
# Workers and executor may start in any order; whichever comes first creates
# the root (mode 0700) and its secret (mode 0600). `ddmq workers ROOT` lists
# the live and lost workers from their heartbeat records.
#
# The environment: workers unpickle and run the submitted functions, so they
# must import everything the tasks import, with the same versions. sbatch
# passes your environment to the job (unless you or your site set --export),
# so submit from a shell where the main program's environment is active (the
# same virtualenv, conda env or modules, its code on PYTHONPATH), or set it up
# below. DDMQ_PYTHON names the interpreter (default: python3 on PATH).
#
# Stopping:
# - each worker knows when the job ends (DDMQ_JOB_END_TIME, which this script
#   asks squeue for once) and starts only the tasks that fit before then
#   (judged by its last calls of the same function, or the executor's
#   task_duration hint);
# - about 2 minutes before the time limit (--signal below, and the workers'
#   own --drain-margin, default the same) Slurm sends SIGUSR1 to this script,
#   which passes it on to its workers: they drain, i.e. take no new task and
#   let the running one finish if it fits; what does not is given back to the
#   queue 10 s before the limit (--idle-margin) for a worker of another job,
#   no retry used up, and the workers exit 0;
# - `scancel` (and the time limit itself) sends SIGTERM, which reaches every
#   worker once (see the trap below), and SIGKILL KillWait seconds later
#   (`scontrol show config | grep KillWait`, often 30): keep --grace below it;
# - a worker killed anyway, or whose node dies, loses its task's lease: the
#   task runs again elsewhere once the lease (the executor's lease=, 60 s by
#   default) expires;
# - --idle-timeout ends the workers, and so the job, when the queue has had
#   nothing for them that long.
# The job then ends COMPLETED if every worker ended cleanly, else FAILED with
# the status of the last one that did not.

#SBATCH --job-name=ddmq-workers
#SBATCH --array=0-3                 # 4 jobs; `sbatch --array=0-N` for more
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1           # and one worker per CPU
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120         # SIGUSR1 to this script 2 minutes before the limit
#SBATCH --output=ddmq-workers-%A_%a.out

ROOT=${1:?usage: sbatch slurm_workers.sh ROOT [ddmq.worker options]}
shift

# The same environment as the main program (edit to match yours):
# module load python/3.11
# source "$HOME/venvs/myproject/bin/activate"
# export PYTHONPATH="$HOME/myproject${PYTHONPATH:+:$PYTHONPATH}"

PYTHON=${DDMQ_PYTHON:-python3}
WORKERS=${DDMQ_WORKERS_PER_JOB:-${SLURM_CPUS_PER_TASK:-1}}
where="job $SLURM_JOB_ID (array task ${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-}) on $SLURMD_NODENAME"
echo "ddmq: $where: $WORKERS worker(s) for $ROOT"
# When the time limit falls, asked once for all the workers of the job.
end=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null) && end=$(date -d "$end" +%s 2>/dev/null) \
    && export DDMQ_JOB_END_TIME="$end"

# SIGUSR1: the time limit is near. SIGTERM (scancel, the limit itself): with
# proctrack/cgroup (most clusters) Slurm sends it to this script alone, which
# passes it on; with proctrack/linuxproc or pgid the workers get it too, and
# a second one would make them give their tasks back at once. (Set
# DDMQ_FORWARD_TERM=1 or 0 to spare each job this question to the controller.)
forward_term=${DDMQ_FORWARD_TERM:-}
if [ -z "$forward_term" ]; then
    case "$(scontrol show config 2>/dev/null | awk '/^ProctrackType/ {print $3}')" in
        proctrack/linuxproc|proctrack/pgid) forward_term=0 ;;
        *) forward_term=1 ;;
    esac
fi
trap 'echo "ddmq: $where: SIGUSR1: workers drain"; kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'echo "ddmq: $where: SIGTERM: workers stop"
      [ "$forward_term" = 0 ] || kill -TERM "${pids[@]}" 2>/dev/null' TERM

pids=()
for _ in $(seq "$WORKERS"); do
    "$PYTHON" -m ddmq.worker "$ROOT" --idle-timeout 600 --grace 20 -v "$@" &
    pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
    # wait returns early when a trapped signal arrives: wait again while the worker lives
    while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
    [ "$rc" -eq 0 ] || status=$rc
done
echo "ddmq: $where: workers ended, exit status $status"
exit "$status"
