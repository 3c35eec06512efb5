"""Scenario 4: clocks. Processes on node a run 300 s ahead, on node b 300 s behind (PyPI's
libfaketime, LD_PRELOAD; the GlusterFS daemons keep the real time). Leases must be judged by
the file server's clock, which every node can read from the mtime the brick stamps on a new
file (ddmq's ServerClock), not by each node's own clock:

* a +300 s housekeeper judging by its own clock would requeue every lease at once (early);
* a -300 s claimer would write an expiry 300 s in the past (requeued at once by anyone);
* a -300 s housekeeper would requeue an expired lease 300 s late;
* a +300 s claimer would write an expiry 300 s too late.

Each test checks that the skew was really applied (the processes' own time.time()).
"""

from __future__ import annotations

import time

from .harness import Agents, Cluster, new_root, record, touch

SKEW = {"a": "+300s", "b": "-300s", "c": None}
OFFSET = {"a": 300.0, "b": -300.0, "c": 0.0}


def _env(cluster: Cluster, node: str):
    return cluster.skewed_env(SKEW[node]) if SKEW[node] else None


def _check_skew(agents: Agents, name: str, node: str) -> dict:
    """The agent's clock was off by its node's skew, and ServerClock learnt the opposite."""
    summary = agents.summary(name)
    own = summary["time"] - time.time()
    assert abs(own - OFFSET[node]) < 30, f"{name}: clock {own:+.0f} s, expected {OFFSET[node]:+.0f} s"
    assert abs(summary["offset"] + OFFSET[node]) < 2, \
        f"{name} on node {node} learnt a server offset of {summary['offset']:+.1f} s"
    return summary


def test_server_clock_is_the_bricks_on_skewed_nodes(cluster: Cluster, agents: Agents):
    """A new file's mtime is the brick's (real) time whatever the writer's clock, and each
    node's ServerClock learns its own offset from it."""
    rel, _ = new_root(cluster, "clock", node="c")
    before = time.time()
    for node in cluster.nodes:
        agents.start(f"clock-{node}", "clock", env=_env(cluster, node), root=cluster.path(node, rel))
    agents.wait(timeout=60)
    after = time.time()
    figures = {}
    for node in cluster.nodes:
        summary = _check_skew(agents, f"clock-{node}", node)
        assert before - 1 <= summary["probe_mtime"] <= after + 1, \
            f"node {node}: a new file's mtime is not the server's time"
        figures[node] = {"own_clock_s": round(summary["probe_at"] - summary["probe_mtime"], 2),
                         "learnt_offset_s": round(summary["offset"], 2)}
    record("clocks: server clock learnt", **figures)


def test_no_lease_is_judged_expired_early_on_skewed_nodes(cluster: Cluster, agents: Agents, tmp_path):
    """Holders on a (+300 s) and b (-300 s) keep 20 s leases for 12 s while housekeepers on
    all three nodes clean every 0.3 s: no lease is requeued, every ack succeeds."""
    lease, hold = 20, 12
    rel, b = new_root(cluster, "held", node="c", ha={"message_timeout": lease},
                      hb={"message_timeout": lease})
    for queue in ("ha", "hb"):
        for i in range(3):
            b.publish(queue, f"{queue}-{i}")
    stop = str(tmp_path / "stop")
    for node in cluster.nodes:
        agents.start(f"hk-{node}", "housekeep", env=_env(cluster, node), root=cluster.path(node, rel),
                     queues=["ha", "hb"], stop=stop, every=0.3)
    for node in ("a", "b"):
        agents.start(f"hold-{node}", "hold", env=_env(cluster, node), root=cluster.path(node, rel),
                     queue=f"h{node}", count=3, seconds=hold)
    agents.wait(["hold-a", "hold-b"], timeout=90)
    touch(stop)
    agents.wait(timeout=60)

    requeues = [f for name in agents.procs for f in agents.events(name) if f[0] == "R"]
    figures = {}
    for node in ("a", "b"):
        name = f"hold-{node}"
        _check_skew(agents, name, node)
        events = agents.events(name)
        held = [f for f in events if f[0] == "H"]
        # The expiry written into the work file's name is server time + lease.
        for _, _, _, server_now, expiry in held:
            assert abs(int(expiry) - (float(server_now) + lease)) <= 2, \
                f"{name} wrote expiry {expiry} for a lease taken at server time {server_now}"
        assert sorted(f[0] for f in events if f[0] in "AL") == ["A"] * 3, f"{name}: {events}"
        figures[f"holder_{node}_acks"] = sum(1 for f in events if f[0] == "A")
    for node in cluster.nodes:
        _check_skew(agents, f"hk-{node}", node)
    assert not requeues, f"leases judged expired early: {requeues}"
    record("clocks: no early expiry", lease_s=lease, held_s=hold, early_requeues=len(requeues),
           **figures)


def test_expired_leases_are_requeued_on_time_by_skewed_housekeepers(cluster: Cluster, agents: Agents,
                                                                    tmp_path):
    """Leases of 8 s abandoned by a node, judged only by a node skewed the other way: each is
    requeued no earlier than its end and within a few seconds after it.

    queue e1: claimed on b (-300 s), housekept and consumed again on a (+300 s)
    queue e2: claimed on a (+300 s), housekept and consumed again on b (-300 s)"""
    lease, count = 8, 3
    rel, b = new_root(cluster, "expiry", node="c", e1={"message_timeout": lease, "clean_interval": 1},
                      e2={"message_timeout": lease, "clean_interval": 1})
    for queue in ("e1", "e2"):
        for i in range(count):
            b.publish(queue, f"{queue}-{i}")
    stop = str(tmp_path / "stop")
    for queue, claimer in (("e1", "b"), ("e2", "a")):
        agents.start(f"claim-{queue}", "hold", env=_env(cluster, claimer),
                     root=cluster.path(claimer, rel), queue=queue, count=count, ack=False)
    agents.wait(timeout=60)
    for queue, judge in (("e1", "a"), ("e2", "b")):
        agents.start(f"hk-{queue}", "housekeep", env=_env(cluster, judge), root=cluster.path(judge, rel),
                     queue=queue, stop=stop, every=0.3)
        agents.start(f"again-{queue}", "consume", env=_env(cluster, judge), root=cluster.path(judge, rel),
                     queue=queue, count=count, wait=1.0)
    agents.wait([f"again-{q}" for q in ("e1", "e2")], timeout=lease + 60)
    touch(stop)
    agents.wait(timeout=60)

    figures = {}
    for queue, claimer, judge in (("e1", "b", "a"), ("e2", "a", "b")):
        _check_skew(agents, f"claim-{queue}", claimer)
        _check_skew(agents, f"hk-{queue}", judge)
        claimed = {f[1]: float(f[3]) for f in agents.events(f"claim-{queue}") if f[0] == "H"}
        again = {f[1]: (int(f[2]), float(f[3])) for f in agents.events(f"again-{queue}") if f[0] == "D"}
        requeued = [float(f[3]) for name in (f"hk-{queue}", f"again-{queue}")
                    for f in agents.events(name) if f[0] == "R" and f[2] == "requeued"]
        assert sorted(again) == sorted(claimed) and all(c == 1 for c, _ in again.values()), again
        assert len(requeued) == count, f"{queue}: {len(requeued)} requeues for {count} leases"
        delays = [again[m][1] - claimed[m] for m in claimed]
        # The lease ends at ceil(claim + lease); housekeeping runs every 0.3 s, the consumer
        # looks at least every second: on a quiet machine it is back about lease + 1-2 s.
        earliest = min(requeued) - max(claimed.values())
        assert earliest >= lease - 1, f"{queue}: a lease was requeued {earliest:.1f} s after its claim"
        assert all(lease - 1 <= d <= lease + 10 for d in delays), \
            f"{queue}: redelivered {sorted(round(d, 1) for d in delays)} s after the claim (lease {lease} s)"
        figures[queue] = {"claimer": f"{claimer} ({SKEW[claimer]})", "judge": f"{judge} ({SKEW[judge]})",
                          "redelivered_after_s": sorted(round(d, 1) for d in delays)}
    record("clocks: expired leases on time", lease_s=lease, **figures)
