"""The protocol contract suite (tests/test_protocol.py) on the GlusterFS testbed.

Each test gets a fresh folder on the shared volume. The parent process works through node a's
mount; racing children use the mounts of nodes a, b and c in turn (``Backend.views``), so each
race is also a race between client mounts with their own caches. Skips, with the reason, where
the testbed cannot be brought up (see conftest.py; ``CI=true`` makes that a failure).
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from protocol_backends import Backend
from test_protocol import ProtocolContract


class TestGlusterFS(ProtocolContract):
    @pytest.fixture
    def backend(self, cluster):
        rel = f"protocol-{uuid.uuid4().hex[:8]}"
        os.makedirs(cluster.path("a", rel))
        yield Backend("glusterfs", [cluster.path(node, rel) for node in cluster.nodes])
        shutil.rmtree(cluster.path("a", rel), ignore_errors=True)
