"""How well one web process waits: concurrent idle long-polls held, its memory while holding them,
and the time from a reply's commit to the waiting client's answer.

    python bench/waits.py --url http://127.0.0.1:8000 --secret "$AUTH_SECRET" [--waits 200] [--replies 200]

Run against a running stack (`make run`, or a cluster). Figures are printed with a baseline from
the same run: a plain GET of the same message (no wait) over the same connection.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import jwt
import psutil
import requests


def token(secret: str, user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def gunicorn_rss_mib(port: int) -> float:
    """Resident memory of the gunicorn worker processes serving `port` (the master excluded)."""
    total = 0
    for process in psutil.process_iter(["cmdline"]):
        try:
            is_gunicorn = "gunicorn" in " ".join(process.info["cmdline"] or [])
            if is_gunicorn and process.environ().get("PORT") == str(port) and process.children() == []:
                total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def hold_idle_waits(url: str, secret: str, count: int, seconds: int) -> tuple[int, float, float]:
    """Open `count` idle long-polls at once; return how many were held to the end, the RSS of the
    web workers while holding them, and the RSS before."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token(secret, 'bench-waits-' + uuid.uuid4().hex[:6])}"
    conversations = [session.post(url + "/api/v1/conversations", json={}).json()["id"] for _ in range(count)]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    before = gunicorn_rss_mib(port)
    durations: list[float] = []
    lock = threading.Lock()

    def wait(conversation_id: str) -> None:
        started = time.monotonic()
        response = requests.get(f"{url}/api/v1/conversations/{conversation_id}/messages",
                                params={"after": 0, "wait": seconds}, headers=session.headers, timeout=seconds * 4)
        response.raise_for_status()
        with lock:
            durations.append(time.monotonic() - started)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(wait, cid) for cid in conversations]
        time.sleep(seconds / 2)
        during = gunicorn_rss_mib(port)
        for future in futures:
            future.result()
    held = sum(1 for d in durations if seconds * 0.9 <= d <= seconds * 1.5)
    return held, during, before


def reply_latency(url: str, secret: str, count: int) -> tuple[list[float], list[float]]:
    """For `count` messages: ms from the reply's commit (its created_at) to the long-poll's answer,
    and, as the baseline, the round trip of a plain GET of the same message afterwards."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token(secret, 'bench-latency-' + uuid.uuid4().hex[:6])}"
    conversation_id = session.post(url + "/api/v1/conversations", json={}).json()["id"]
    wake, plain = [], []
    for n in range(count):
        accepted = session.post(f"{url}/api/v1/conversations/{conversation_id}/messages",
                                json={"content": f"add bench task {n}"}).json()
        message = session.get(url + accepted["poll_url"], params={"wait": 10}).json()
        received = time.time()
        committed = datetime.fromisoformat(message["reply"]["created_at"].replace("Z", "+00:00")).timestamp()
        wake.append((received - committed) * 1000)
        started = time.perf_counter()
        session.get(url + accepted["poll_url"])
        plain.append((time.perf_counter() - started) * 1000)
    return wake, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--waits", type=int, default=200)
    parser.add_argument("--wait-seconds", type=int, default=6)
    parser.add_argument("--replies", type=int, default=200)
    args = parser.parse_args()

    held, during, before = hold_idle_waits(args.url, args.secret, args.waits, args.wait_seconds)
    print(f"idle long-polls held to the end: {held}/{args.waits} "
          f"(web workers' RSS {before:.0f} MiB idle -> {during:.0f} MiB holding them, "
          f"{(during - before) * 1024 / max(held, 1):.0f} KiB per wait)")
    wake, plain = reply_latency(args.url, args.secret, args.replies)
    print(f"reply commit -> long-poll answer: p50 {statistics.median(wake):.1f} ms, p99 {percentile(wake, .99):.1f} ms")
    print(f"baseline, plain GET of the message: p50 {statistics.median(plain):.1f} ms, "
          f"p99 {percentile(plain, .99):.1f} ms")
    print(f"ratio p50 wake/baseline: {statistics.median(wake) / statistics.median(plain):.2f}")


if __name__ == "__main__":
    main()
