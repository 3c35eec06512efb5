"""``python -m ddmq.cli``: the same as ``ddmq`` and ``python -m ddmq``."""

from ddmq.cli import main

raise SystemExit(main())
