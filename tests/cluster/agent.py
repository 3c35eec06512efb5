"""A ddmq client process of the cluster tests: one role per run, on one node's mount.

    python agent.py ROLE '{"root": "<node mount>/<root>", "queue": "q", "log": "...", ...}'

Each role opens its own broker on the root it is given (a path through one node's mount),
does its job through ddmq's public API, and writes what it did to its log, one event per
line, each line written with a single ``os.write`` (a process killed mid-way leaves at most a
torn last line)::

    P ID SECONDS                publish of ID returned (SECONDS: how long the call took)
    D ID COUNTER SERVER_TIME    got ID with that requeue_counter (before ack), server clock
    A ID COUNTER                ack succeeded
    L ID COUNTER                ack raised LeaseLostError
    H ID COUNTER SERVER_TIME EXPIRY   claimed and now holds ID (server clock; lease end)
    R WORK_NAME OUTCOME SERVER_TIME   housekeeping found an expired lease and did OUTCOME
    W ERRNO TIME ACTION         the core retried a transient error (logger ddmq.protocol)
    T TIME SECONDS CALL         a call (publish, consume, ack, clean) that took over a second
    S {json}                    summary, the last line: retries by errno, the longest single
                                call, the server clock offset learnt, time.time() of this
                                process (to prove a clock skew was applied)

An exception is written to ``LOG.err`` and the process exits 1.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import sys
import time
import traceback

import ddmq


class _Recorder(logging.Handler):
    """Writes the core's own reports to the log: retried transient errors (W) and expired
    leases found by housekeeping (R)."""

    def __init__(self, out: "Log") -> None:
        super().__init__(logging.INFO)
        self.out = out
        self.retries: dict[str, int] = {}
        self.housekeeping_failed = 0
        self.broker = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if "retrying for up to" in msg and len(record.args or ()) >= 2:
            err = record.args[1]
            number = getattr(err, "errno", None)
            code = errno.errorcode.get(number, str(number))
            self.retries[code] = self.retries.get(code, 0) + 1
            self.out.line(f"W {code} {time.time():.3f} {str(record.args[0]).replace(' ', '_')}")
        elif msg.startswith("lease of") and len(record.args or ()) == 3:
            now = self.broker.clock.now() if self.broker is not None else time.time()
            self.out.line(f"R {record.args[0]} {record.args[2]} {now:.3f}")
        elif msg.startswith("housekeeping of"):
            self.housekeeping_failed += 1


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())


class Agent:
    def __init__(self, args: dict) -> None:
        self.args = args
        self.log = Log(args["log"])
        self.recorder = _Recorder(self.log)
        logger = logging.getLogger("ddmq")  # the core's modules all log below it
        logger.addHandler(self.recorder)
        logger.setLevel(logging.INFO)
        self.b = ddmq.broker(args["root"])
        self.recorder.broker = self.b
        self.b.clock.now()  # learn the server's clock before the work starts
        self.max_call = 0.0
        self.calls = 0

    def timed(self, fn, *a, **k):
        """Call fn; a call that takes over a second is logged (T)."""
        started, wall = time.monotonic(), time.time()
        try:
            return fn(*a, **k)
        finally:
            took = time.monotonic() - started
            self.calls += 1
            self.max_call = max(self.max_call, took)
            if took > 1.0:
                self.log.line(f"T {wall:.3f} {took:.3f} {fn.__name__}")

    def summary(self, **extra) -> None:
        self.b.clock.now()
        out = {"retries": self.recorder.retries, "max_call_s": round(self.max_call, 3),
               "calls": self.calls, "offset": self.b.clock.now() - time.time(), "time": time.time(),
               "housekeeping_failed": self.recorder.housekeeping_failed, **extra}
        self.log.line("S " + json.dumps(out))

    # --- roles ------------------------------------------------------------------------------

    def publish(self) -> None:
        """Publish PREFIX-0, PREFIX-1, ... (``count`` of them, or until ``stop`` exists),
        pausing up to ``pace`` seconds between two."""
        a, rng = self.args, random.Random()
        count, stop, pace = a.get("count", 10**9), a.get("stop"), a.get("pace", 0.0)
        kwargs = a.get("publish", {})
        seq = 0
        while seq < count and not (stop and os.path.exists(stop)):
            msg_id = f"{a['prefix']}-{seq}"
            started = time.monotonic()
            self.timed(self.b.publish, a["queue"], msg_id, **kwargs)
            self.log.line(f"P {msg_id} {time.monotonic() - started:.3f}")
            seq += 1
            if pace:
                time.sleep(rng.uniform(0, pace))
        if a.get("done"):
            open(a["done"], "w").close()
        self.summary(published=seq)

    def consume(self) -> None:
        """consume(wait=``wait``) and ack, until the first empty consume() that began after
        every path in ``until`` existed (so nothing published before that is missed); or,
        with ``count``, until that many messages were taken (or ``deadline`` seconds passed)."""
        a, rng = self.args, random.Random()
        until, hold, count = a.get("until", []), a.get("hold", 0.0), a.get("count")
        got = 0
        done_seen = False
        deadline = time.monotonic() + a.get("deadline", 600)
        while (count is None or got < count) and time.monotonic() < deadline:
            msg = self.timed(self.b.consume, a["queue"], wait=a.get("wait", 0.5))
            if msg is None:
                if count is not None:
                    continue
                if done_seen:
                    break
                done_seen = all(os.path.exists(p) for p in until)
                continue
            got += 1
            tag = f"{msg.message} {msg.requeue_counter}"
            self.log.line(f"D {tag} {self.b.clock.now():.3f}")
            if hold:
                time.sleep(rng.uniform(0, hold))
            try:
                self.timed(self.b.ack, msg)
                self.log.line(f"A {tag}")
            except ddmq.LeaseLostError:
                self.log.line(f"L {tag}")
        self.summary(consumed=got)

    def hold(self) -> None:
        """Claim ``count`` messages (waiting up to 60 s), hold them ``seconds``, then ack each
        (``ack: false``: leave them, as a worker that died would)."""
        a = self.args
        held = []
        deadline = time.monotonic() + 60
        while len(held) < a["count"] and time.monotonic() < deadline:
            msg = self.b.consume(a["queue"], wait=1.0)
            if msg is not None:
                held.append(msg)
                self.log.line(f"H {msg.message} {msg.requeue_counter} {self.b.clock.now():.3f} {msg.expiry}")
        assert len(held) == a["count"], f"got only {len(held)} of {a['count']} messages"
        time.sleep(a.get("seconds", 0.0))
        if a.get("ack", True):
            for msg in held:
                try:
                    self.b.ack(msg)
                    self.log.line(f"A {msg.message} {msg.requeue_counter}")
                except ddmq.LeaseLostError:
                    self.log.line(f"L {msg.message} {msg.requeue_counter}")
        self.summary(held=len(held))

    def housekeep(self) -> None:
        """clean(queue, force=True) of ``queue`` (or of each of ``queues``) every ``every``
        seconds until ``stop`` exists."""
        a = self.args
        queues = a.get("queues") or [a["queue"]]
        runs = 0
        while not os.path.exists(a["stop"]):
            for queue in queues:
                self.timed(self.b.clean, queue, force=True)
            runs += 1
            time.sleep(a.get("every", 0.3))
        self.summary(runs=runs)

    def idle(self) -> None:
        """Say "ready" on stdout, then wait on an (empty) queue: consume(wait=None)."""
        print("ready", flush=True)
        msg = self.b.consume(self.args["queue"], wait=None)
        self.log.line(f"D {msg.message} {msg.requeue_counter} {self.b.clock.now():.3f}")
        self.summary()

    def cycle(self) -> None:
        """Say "ready", wait for a line on stdin, then publish ``count`` messages and consume +
        ack them all; say "done" and wait for stdin to close (so a tracer can detach first)."""
        a = self.args
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(a["count"]):
            self.b.publish(a["queue"], f"m{i}")
        got = 0
        while True:
            msg = self.b.consume(a["queue"])
            if msg is None:
                break
            self.b.ack(msg)
            got += 1
        print("done", flush=True)
        sys.stdin.readline()
        self.summary(cycled=got)

    def clock(self) -> None:
        """Create a file on the mount and report its mtime, time.time() and the learnt offset."""
        a = self.args
        path = os.path.join(self.b.root, f"clock-probe-{os.getpid()}")
        with open(path, "w") as handle:
            handle.write("x")
        mtime = os.stat(path).st_mtime
        os.unlink(path)
        self.summary(probe_mtime=mtime, probe_at=time.time(), queue=a.get("queue"))


def main() -> int:
    role, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        agent = Agent(args)
        getattr(agent, role)()
    except BaseException:
        with open(args["log"] + ".err", "w", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
