"""``python -m ddmq``: the ``ddmq`` command line (see :mod:`ddmq.cli`)."""

from ddmq.cli import main

raise SystemExit(main())
