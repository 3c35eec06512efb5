"""Slow tasks right after quick ones: do they spread over the workers at once?

Three workers (``python -m ddmq.worker``) serve one executor. A ``map`` of
600 quick calls makes each worker claim batches of up to 16 task messages;
then 5 calls of 3 s each are submitted in a loop (one message each: their
function is not known to be quick). A worker whose batch holds several of them runs the
first and must give the others back for the idle workers: when each call
starts, relative to the first, shows whether it did. Ideal: three start at
once, two 3 s later, 6 s in all::

    python benchmarks/slow_after_quick.py [ROUNDS] [FOLDER]   # default: 5, /var/tmp

For an A/B run (``PYTHONPATH=OTHER_CHECKOUT``), start it from a folder that
holds no ``ddmq``: ``python -m ddmq.worker`` looks in the current folder first.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # bench_tasks; ddmq as installed (or from PYTHONPATH, for A/B runs)

from bench_tasks import noop, slow_noting_start  # noqa: E402
from ddmq.executor import DDMQExecutor  # noqa: E402

SLOW_SECONDS = 3.0
QUICK = 600


def one_round(base: str) -> dict:
    scratch = tempfile.mkdtemp(dir=base)
    root, starts = os.path.join(scratch, "root"), os.path.join(scratch, "starts")
    os.mkdir(starts)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"), HERE) if p))
    workers = [subprocess.Popen([sys.executable, "-m", "ddmq.worker", root], env=env)
               for _ in range(3)]
    try:
        with DDMQExecutor(root, max_workers=0) as ex:
            ex.submit(noop, 1).result(timeout=60)
            time.sleep(1)  # the workers idle a moment, as between two steps of a program
            assert len(list(ex.map(noop, range(QUICK), chunksize=1))) == QUICK
            futures = [ex.submit(slow_noting_start, x, SLOW_SECONDS, starts) for x in range(5)]
            assert [f.result(timeout=120) for f in futures] == list(range(5))
        at = [float(open(os.path.join(starts, name)).read()) for name in os.listdir(starts)]
        at = sorted(t - min(at) for t in at)
        total = max(at) + SLOW_SECONDS
        return {"starts_s": [round(t, 2) for t in at], "total_s": round(total, 2),
                "started_in_first_second": sum(t < 1 for t in at)}
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    base = sys.argv[2] if len(sys.argv) > 2 else "/var/tmp"
    results = [one_round(base) for _ in range(rounds)]
    for result in results:
        print(json.dumps(result))
    print(json.dumps({"rounds": rounds,
                      "rounds_with_3_started_in_first_second":
                          sum(r["started_in_first_second"] == 3 for r in results),
                      "median_third_start_s": statistics.median(r["starts_s"][2] for r in results),
                      "median_total_s": statistics.median(r["total_s"] for r in results)}))


if __name__ == "__main__":
    main()
