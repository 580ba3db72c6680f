"""How many waiting clients one web process holds, and what they cost everyone else.

    .venv/bin/python bench/waits.py [--waits 0,1000,5000,10000] [--replies 60]     # about 5 minutes

Starts its own processes on a `chatq_bench` database (as bench/matrix.py does): ONE gunicorn process
(WEB_CONCURRENCY=1) and one Celery worker. For each row it opens that many waiting requests — half
event streams, half long-polls that are sent again as soon as they are answered, five per user —
and, while they are all held, measures on the same process:

- memory per wait: the web process's RSS with them held, minus its RSS before, per wait;
- `/livez` p50/p99 over 300 sequential requests;
- another user's post -> reply p50 (POST, then a long-poll of the message until answered);
- reply commit -> waiting client answered p50/p99 (the reply's created_at to the long-poll's answer);
- the web process's CPU per message of that user (POST + long-poll + wake-up + read), and its CPU
  per second while nothing happens but the waits (heartbeats, re-checks).

The row with 0 waits is the baseline of the same run; ratios are against it. Not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import selectors
import signal
import socket
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import requests

from bench.environment import bench_environment
from bench.load import percentile, token
from tests.support import Web, Worker, wait_until

SECRET = "bench-secret-waits-0123456789abcdefghijklmnop"  # noqa: S105 - a bench database's
WAITS_PER_USER = 5


class Holder:
    """Holds waiting requests on plain sockets, in one thread: streams are read and discarded; a
    long-poll that is answered is sent again on the same connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.requests: dict[socket.socket, bytes] = {}
        self.lock = threading.Lock()
        self.stopped = False
        self.answered = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def open(self, path: str, user: str, stream: bool) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        request = (f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token(SECRET, user)}\r\n\r\n"
                   ).encode()
        sock.sendall(request)
        sock.setblocking(False)
        with self.lock:
            self.requests[sock] = b"" if stream else request
            self.selector.register(sock, selectors.EVENT_READ, bytearray())

    def _run(self) -> None:
        while not self.stopped:
            with self.lock:
                ready = self.selector.select(timeout=0.2) if self.requests else []
            if not ready:
                time.sleep(0.05)
            for key, _ in ready:
                sock, buffer = key.fileobj, key.data
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    with self.lock:
                        self.selector.unregister(sock)
                        self.requests.pop(sock, None)
                    sock.close()
                    continue
                request = self.requests.get(sock)
                if not request:  # a stream: discard what it sends
                    continue
                buffer.extend(chunk)
                head, found, body = bytes(buffer).partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: (\d+)", head)
                if found and length and len(body) >= int(length.group(1)):
                    buffer.clear()
                    self.answered += 1
                    sock.setblocking(True)
                    sock.sendall(request)
                    sock.setblocking(False)

    def close(self) -> None:
        self.stopped = True
        self.thread.join(timeout=5)
        for sock in list(self.requests):
            sock.close()
        self.requests.clear()


def waiting_now(url: str) -> float:
    found = re.search(r"^chatq_waiting_requests (\S+)$", requests.get(url + "/metrics", timeout=30).text, re.M)
    return float(found.group(1)) if found else 0.0


def open_waits(url: str, holder: Holder, count: int) -> None:
    session = requests.Session()
    opened = 0
    while opened < count:
        batch = min(500, count - opened)
        for _ in range(0, batch, WAITS_PER_USER):
            user = f"bench-waiter-{uuid.uuid4().hex[:10]}"
            session.headers["Authorization"] = f"Bearer {token(SECRET, user)}"
            cid = session.post(url + "/api/v1/conversations", json={}).json()["id"]
            for k in range(min(WAITS_PER_USER, count - opened)):
                stream = k % 2 == 0 if (opened // WAITS_PER_USER) % 2 else k % 2 == 1
                path = (f"/api/v1/conversations/{cid}/events" if stream else
                        f"/api/v1/conversations/{cid}/messages?after=1000&wait=30")
                holder.open(path, user, stream)
                opened += 1
        # Long-polls being answered and sent again are not counted for a moment: 98% is "all held".
        wait_until(lambda target=opened: waiting_now(url) >= 0.98 * target, timeout=300, interval=0.5,
                   what=f"{opened} waits to be held")


def livez_ms(url: str, count: int = 300) -> list[float]:
    session, times = requests.Session(), []
    for _ in range(count):
        started = time.perf_counter()
        session.get(url + "/livez", timeout=30).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


def replies(url: str, count: int, web: psutil.Process) -> tuple[list[float], list[float], float]:
    """Post -> reply ms, reply commit -> long-poll answer ms, and the web process's CPU ms per message."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token(SECRET, 'bench-poster-' + uuid.uuid4().hex[:6])}"
    cid = session.post(url + "/api/v1/conversations", json={}).json()["id"]
    round_trip, wake = [], []
    cpu_before = sum(web.cpu_times()[:2])
    for n in range(count):
        started = time.perf_counter()
        accepted = session.post(f"{url}/api/v1/conversations/{cid}/messages", json={"content": f"add bench {n}"}).json()
        message = session.get(url + accepted["poll_url"], params={"wait": 30}).json()
        while message["status"] not in ("answered", "failed"):
            message = session.get(url + accepted["poll_url"], params={"wait": 30}).json()
        received = time.time()
        round_trip.append((time.perf_counter() - started) * 1000)
        committed = datetime.fromisoformat(message["reply"]["created_at"].replace("Z", "+00:00")).timestamp()
        wake.append((received - committed) * 1000)
    cpu_ms = (sum(web.cpu_times()[:2]) - cpu_before) * 1000 / count
    return round_trip, wake, cpu_ms


def web_process(web: Web) -> psutil.Process:
    assert web.popen is not None
    return psutil.Process(web.popen.pid).children()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waits", default="0,1000,5000,10000")
    parser.add_argument("--replies", type=int, default=60)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    counts = [int(n) for n in args.waits.split(",")]
    env = bench_environment("waits", "chatq_bench", SECRET, MAX_WAITS=str(max(counts) + 100),
                            MAX_WAITS_PER_USER=str(WAITS_PER_USER))
    worker = Worker("bench-waits-worker", env, concurrency=2).start()
    rows = []
    try:
        for count in counts:
            web = Web("bench-waits-web", env, workers=1).start()
            holder = Holder(web.port)
            try:
                process = web_process(web)
                livez_ms(web.url, 50)  # warm up
                replies(web.url, 5, process)
                rss_before = process.memory_info().rss
                started = time.monotonic()
                open_waits(web.url, holder, count)
                ramp = time.monotonic() - started
                time.sleep(2)
                rss = process.memory_info().rss
                cpu0 = sum(process.cpu_times()[:2])
                time.sleep(10)
                idle_cpu = (sum(process.cpu_times()[:2]) - cpu0) / 10 * 1000
                live = livez_ms(web.url)
                round_trip, wake, cpu_ms = replies(web.url, args.replies, process)
                held = waiting_now(web.url)
                row = {"waits": count, "held": held, "ramp_s": ramp,
                       "kib_per_wait": (rss - rss_before) / 1024 / count if count else 0.0,
                       "livez_p50": statistics.median(live), "livez_p99": percentile(live, .99),
                       "reply_p50": statistics.median(round_trip), "wake_p50": statistics.median(wake),
                       "wake_p99": percentile(wake, .99), "cpu_ms": cpu_ms, "idle_cpu_ms_s": idle_cpu,
                       "rss_mib": rss / 2**20}
                rows.append(row)
                print(row, flush=True)
            finally:
                holder.close()
                web.kill(signal.SIGKILL)
    finally:
        worker.kill(signal.SIGKILL)
    base_row = rows[0]
    print("\n| waits held (one process) | RSS MiB | KiB / wait | /livez p50 / p99 ms (x idle p99) | post -> reply "
          "p50 ms (x idle) | commit -> waiter p50 / p99 ms | web CPU ms / message (x idle) | web CPU ms/s holding |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['held']:.0f} of {row['waits']} | {row['rss_mib']:.0f} | {row['kib_per_wait']:.1f} | "
              f"{row['livez_p50']:.2f} / {row['livez_p99']:.2f} ({row['livez_p99'] / base_row['livez_p99']:.2f}x) | "
              f"{row['reply_p50']:.1f} ({row['reply_p50'] / base_row['reply_p50']:.2f}x) | "
              f"{row['wake_p50']:.1f} / {row['wake_p99']:.1f} | "
              f"{row['cpu_ms']:.2f} ({row['cpu_ms'] / base_row['cpu_ms']:.2f}x) | {row['idle_cpu_ms_s']:.1f} |")
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


if __name__ == "__main__":
    main()
