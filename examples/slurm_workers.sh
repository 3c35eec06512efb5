#!/bin/bash
# Start ddmq workers on every node of a Slurm allocation: one worker per Slurm task.
#
#   sbatch --nodes=4 examples/slurm_workers.sh /shared/$USER/ddmq-root [worker options]
#
# Then run the main job anywhere that sees the same filesystem (the login
# node, a workstation, another job), with no local workers:
#
#   with DDMQExecutor("/shared/$USER/ddmq-root", max_workers=0) as ex:
#       results = list(ex.map(f, items))
#
# Workers and executor may start in any order; whichever comes first creates
# the root (mode 0700) and its secret (mode 0600). `ddmq workers ROOT` lists
# the live and lost workers from their heartbeat records.
#
# The environment rule: workers unpickle and run the submitted functions, so
# they must be able to import everything the tasks import, with the same
# versions. Activate the same virtualenv / conda env / modules as the main job,
# and put the main job's own code on PYTHONPATH (functions defined in the main
# script itself travel with the task; modules it imports do not).
#
# Stopping: workers finish or give back their running task on SIGTERM. With
# --signal below, Slurm sends SIGTERM 120 s before the time limit, so workers
# stop taking tasks, let the running one finish within --grace seconds, else
# hand it back to the queue for a worker of another allocation; `scancel`
# does the same (Slurm waits KillWait, often 30 s, before SIGKILL). A worker
# that is killed anyway, or whose node dies, loses its lease: the task is run
# again elsewhere once the lease (the executor's lease=, 60 s by default)
# expires. --idle-timeout ends the workers, and so the allocation, when the
# queue has been empty for that long.

#SBATCH --job-name=ddmq-workers
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=16        # one worker per core
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --signal=TERM@120           # SIGTERM to every worker 2 minutes before the end
#SBATCH --output=ddmq-workers-%j.out

set -euo pipefail

ROOT=${1:?usage: sbatch slurm_workers.sh ROOT [ddmq.worker options]}
shift

# The same environment as the main job (edit to match yours):
# module load python/3.11
# source "$HOME/venvs/myproject/bin/activate"
# export PYTHONPATH="$HOME/myproject${PYTHONPATH:+:$PYTHONPATH}"

echo "ddmq workers for $ROOT on $SLURM_JOB_NUM_NODES node(s): $SLURM_JOB_NODELIST"

# srun starts one worker per task on every node; each exits 0 when stopped by
# a signal or by --idle-timeout. --kill-on-bad-exit=0: one failing worker does
# not take the others down.
srun --kill-on-bad-exit=0 \
    python -m ddmq.worker "$ROOT" --queue tasks --idle-timeout 900 --grace 90 -v "$@"
