"""Tests on a real shared filesystem (a GlusterFS testbed of three nodes), under faults and
hostile input: issue 4. See conftest.py and harness.py; figures in the README,
"Running on a cluster"."""
