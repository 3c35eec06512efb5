"""The floor of a file round trip: raw os calls and inotify, no ddmq at all.

One process writes a file and renames it into a queue folder; another,
woken by inotify, renames it into ``work/``, reads it, writes a reply and
renames it into a reply folder, and unlinks its work file; the first,
woken by inotify, reads and unlinks the reply. That is the least a
file-based round trip (W6 of executor_throughput.py) can cost, timed with
the caller waiting itself and with a collector thread that wakes it (as
DDMQExecutor's does). Medians of 480 round trips, each way twice::

    python benchmarks/file_round_trip_floor.py [FOLDER]   # default: /var/tmp
"""
import ctypes
import ctypes.util
import multiprocessing as mp
import os
import select
import statistics
import sys
import threading
import time
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
IN_MOVED_TO = 0x80
def watch(folder):
    fd = libc.inotify_init1(os.O_NONBLOCK)
    libc.inotify_add_watch(fd, folder.encode(), IN_MOVED_TO)
    return fd
def wait(fd):
    while True:
        try:
            return os.read(fd, 4096)
        except BlockingIOError:
            select.select([fd], [], [])
def write_rename(tmp, final, data):
    f = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(f, data); os.close(f); os.rename(tmp, final)
def read(path):
    f = os.open(path, os.O_RDONLY); d = os.read(f, 65536); os.close(f); return d
def worker(root, n):
    q = f"{root}/q"; fd = watch(q); data = b"x" * 200
    for i in range(n):
        wait(fd)
        name = f"m{i}"
        os.rename(f"{q}/{name}", f"{q}/work/{name}")
        read(f"{q}/work/{name}")
        write_rename(f"{root}/r/tmp/{name}", f"{root}/r/{name}", data)
        os.unlink(f"{q}/work/{name}")
def main(root, n, thread):
    for d in ("q", "q/work", "q/tmp", "r", "r/tmp"): os.makedirs(f"{root}/{d}", exist_ok=True)
    p = mp.get_context("spawn").Process(target=worker, args=(root, n)); p.start()
    fd = watch(f"{root}/r"); data = b"y" * 300; took = []
    ev = threading.Event(); box = {}
    def collector():
        for i in range(n):
            wait(fd); name = f"m{i}"
            box["d"] = read(f"{root}/r/{name}"); os.unlink(f"{root}/r/{name}"); ev.set()
    if thread: threading.Thread(target=collector, daemon=True).start()
    time.sleep(0.5)
    for i in range(n):
        t = time.perf_counter()
        write_rename(f"{root}/q/tmp/m{i}", f"{root}/q/m{i}", data)
        if thread:
            ev.wait(); ev.clear()
        else:
            wait(fd); read(f"{root}/r/m{i}"); os.unlink(f"{root}/r/m{i}")
        took.append(time.perf_counter() - t)
    p.join()
    took = took[20:]
    print(f"{'with collector thread' if thread else 'caller waits itself '}: median {statistics.median(took)*1e6:.0f} us  p90 {sorted(took)[int(len(took)*.9)]*1e6:.0f} us")
if __name__ == "__main__":
    import tempfile
    base = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    for thread in (False, True, False, True):
        main(tempfile.mkdtemp(dir=base), 500, thread)
