"""Claims across nodes: while a lease holds, exactly one consumer has the message.

On a network filesystem a node keeps names it has seen in its kernel's dentry cache for a while
(FUSE entry_timeout here, NFS attribute caching there). When node b still believes a waiting
file exists after node a has renamed it into ``work/``, b's own claim of it is a rename of a
stale name; the server refuses it (ENOENT) - unless the destination is the very file a's claim
created (same lease second, same name): then the kernel sees source and target as one inode
and returns success without asking the server (POSIX: renaming a file onto itself is a no-op).
Both consumers then hold "the" lease. This test publishes pairs of messages and lets b claim
from a listing taken just before a claims, with equal leases, as competing workers do.
"""

from __future__ import annotations

import time

import ddmq

from .harness import Cluster, new_root, record

Q = "cq"


def test_two_nodes_never_both_claim_one_message(cluster: Cluster):
    rel, on_a = new_root(cluster, "claims", node="a", cq={"message_timeout": 600})
    on_b = ddmq.broker(cluster.path("b", rel))
    doubles, rounds = [], 40
    for i in range(rounds):
        on_a.publish(Q, f"{i}-1")
        on_a.publish(Q, f"{i}-2")
        first = on_b.consume(Q)             # b lists the queue (both names) and claims one
        second = on_a.consume(Q)            # a claims the other one
        third = on_b.consume(Q)             # b tries the name it listed: must find it gone
        held = [m for m in (first, second, third) if m is not None]
        ids = [m.message for m in held]
        if len(ids) != len(set(ids)):
            doubles.append(ids)
        for m in held:
            try:
                (on_a if m is second else on_b).ack(m)
            except ddmq.LeaseLostError:
                pass
        time.sleep(0.01)
    record("claims across nodes", rounds=rounds, double_claims=len(doubles))
    assert not doubles, (f"{len(doubles)} of {rounds} messages were claimed by both nodes at once "
                         f"(e.g. {doubles[0]}): a stale name renamed onto the same work file "
                         "'succeeds' (protocol.move / Broker._claim_one)")
