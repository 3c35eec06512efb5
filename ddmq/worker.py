"""``python -m ddmq.worker ROOT ...``: runs a worker of the executor.

The worker lives in :mod:`ddmq.executor.worker` (it is the executor's other
half); this module is its command-line entry point, and keeps
``from ddmq.worker import Worker`` working.
"""

import sys

from .executor.worker import Worker
from .executor.worker_cli import build_parser, main

__all__ = ["Worker", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
