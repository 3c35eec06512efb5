"""The main job, end to end: map a real function over a few hundred inputs.

    python examples/map_example.py [--root DIR] [--workers N] [--blocks 300]

For each of ``--blocks`` blocks of 2,000 consecutive integers it finds the
number with the longest Collatz chain (a few milliseconds of pure Python per
block), on local ddmq workers that the executor starts and stops. It prints
progress as results arrive, in order, then a summary: the overall winner,
the wall time, how much work each worker did, and the speed-up over running
the same calls one after another.

Nothing else has to be running. Without ``--root`` the queue lives in a
temporary folder that is removed at the end. To use workers on other nodes
instead, give a ``--root`` on the shared filesystem, ``--workers 0``, and
start ``python -m ddmq.worker ROOT`` there (see examples/slurm_workers.sh).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import sys
import tempfile
import time

try:
    from ddmq import DDMQExecutor
except ImportError:  # running from a checkout without installing: use it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ddmq import DDMQExecutor

BLOCK = 2000


def longest_collatz(block: int) -> tuple[int, int, float, str]:
    """(start, chain length, seconds, worker) of the longest Collatz chain
    among the integers of ``block``. Defined in ``__main__``: cloudpickle
    sends the function itself to the workers."""
    began = time.perf_counter()
    best_start, best_length = 0, 0
    for start in range(max(1, block * BLOCK), (block + 1) * BLOCK):
        n, length = start, 1
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            length += 1
        if length > best_length:
            best_start, best_length = start, length
    worker = f"{socket.gethostname().split('.')[0]}:{os.getpid()}"
    return best_start, best_length, time.perf_counter() - began, worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="ddmq root folder (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local workers to start (default: one per CPU; 0: use workers "
                             "started elsewhere on the same root)")
    parser.add_argument("--blocks", type=int, default=300, help="inputs to map over (default: 300)")
    args = parser.parse_args(argv)

    root = args.root or tempfile.mkdtemp(prefix="ddmq-example-")
    blocks = range(args.blocks)
    print(f"ddmq root: {root}")
    began = time.perf_counter()
    try:
        with DDMQExecutor(root, max_workers=args.workers) as ex:
            started = time.perf_counter() - began
            print(f"{ex.max_workers} local worker(s) ready in {started:.2f} s; "
                  f"mapping longest_collatz over {len(blocks)} blocks of {BLOCK:,} numbers")
            results = []
            step = max(1, len(blocks) // 10)
            for done, result in enumerate(ex.map(longest_collatz, blocks, chunksize=4), 1):
                results.append(result)  # map yields in input order, as soon as each is ready
                if done % step == 0 or done == len(blocks):
                    elapsed = time.perf_counter() - began
                    print(f"  [{done:4d}/{len(blocks)}] {100 * done / len(blocks):3.0f}%  "
                          f"{elapsed:6.2f} s  best so far: {max(r[1] for r in results)} steps")
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - began

    start, length, _, _ = max(results, key=lambda r: r[1])
    busy = sum(r[2] for r in results)
    per_worker = collections.Counter(r[3] for r in results)
    print()
    print(f"longest chain below {len(blocks) * BLOCK:,}: {start:,} ({length} steps)")
    print(f"wall time {wall:.2f} s (including start-up and shutdown); "
          f"the calls themselves took {busy:.2f} s in all: speed-up {busy / wall:.2f}x")
    for worker, count in sorted(per_worker.items()):
        print(f"  worker {worker}: {count} blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
