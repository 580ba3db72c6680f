"""Load benchmark against a running chatq (make run, make cluster, or bench/matrix.py's stacks).

    python bench/load.py --url http://127.0.0.1:8080 --secret "$AUTH_SECRET" --users 16 --messages 20 \\
        [--metrics http://127.0.0.1:8080/metrics --metrics http://127.0.0.1:9811/metrics ...]

N simulated users each post a message and long-poll for its reply, M times. In the same run, the
baseline: a no-op Celery job's round trip (chatq.ping: broker -> worker -> Redis) on the same
broker and workers, at the same concurrency. Prints messages per second (and the ratio to the
baseline), post->reply latency p50/p95/p99, POST latency p50/p99, errors, and Postgres round trips
per message counted by the processes themselves (chatq_sql_round_trips_total, web + worker).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

import jwt
import redis
import requests
import urllib3
from celery import Celery

from bench.cpu import cpu_seconds, describe_cpu, per_message_ms

PING = "chatq.ping"


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def token(secret: str, user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


def round_trips(metrics_urls: list[str]) -> float:
    total = 0.0
    for url in metrics_urls:
        text = requests.get(url, timeout=10).text
        total += sum(float(value) for value in re.findall(r"^chatq_sql_round_trips_total\{[^}]*\} (\S+)$", text, re.M))
    return total


@dataclass
class LoadResult:
    messages: int = 0
    seconds: float = 0.0
    errors: int = 0
    post_ms: list[float] = field(default_factory=list)
    reply_ms: list[float] = field(default_factory=list)
    sql_per_message: float | None = None
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per message by part (bench/cpu.py)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def run_load(url: str, secret: str, users: int, messages: int, metrics_urls: list[str] | None = None) -> LoadResult:
    result = LoadResult()
    lock = threading.Lock()
    # urllib3 rather than requests: the load generator shares the machine's cores with what it
    # measures, and requests cost it twice the CPU per message (bench/matrix.py's CPU table).
    target = urllib3.util.parse_url(url)

    def user_loop(index: int) -> None:
        connection = urllib3.HTTPConnectionPool(target.host, target.port, maxsize=1, timeout=60, retries=False)
        headers = {"Authorization": f"Bearer {token(secret, f'bench-{uuid.uuid4().hex[:8]}-{index}')}",
                   "Content-Type": "application/json"}
        conversation_id = None
        for n in range(messages):
            body: dict[str, str] = {"message": f"add bench item {n}"}
            if conversation_id:
                body["conversation_id"] = conversation_id
            started = time.perf_counter()
            try:
                response = connection.request("POST", "/api/v1/chat", body=json.dumps(body), headers=headers)
                posted = time.perf_counter()
                if response.status != 202:
                    raise RuntimeError(response.status)
                accepted = json.loads(response.data)
                conversation_id = accepted["conversation_id"]
                while True:
                    message = json.loads(connection.request("GET", accepted["poll_url"] + "?wait=30",
                                                            headers=headers).data)
                    if message["status"] in ("answered", "failed"):
                        break
                done = time.perf_counter()
                with lock:
                    result.post_ms.append((posted - started) * 1000)
                    result.reply_ms.append((done - started) * 1000)
                    result.messages += message["status"] == "answered"
                    result.errors += message["status"] == "failed"
            except (urllib3.exceptions.HTTPError, RuntimeError, ValueError, KeyError):
                with lock:
                    result.errors += 1

    before = round_trips(metrics_urls) if metrics_urls else None
    _run_at_once(user_loop, users, result)
    if metrics_urls and before is not None and result.messages:
        time.sleep(1.0)  # let the last counters land
        result.sql_per_message = (round_trips(metrics_urls) - before) / result.messages
    return result


def run_baseline(redis_url: str, senders: int, jobs: int) -> LoadResult:
    """The same concurrency of no-op jobs: send chatq.ping, wait for its pong on a Redis list."""
    producer = Celery("bench", broker=redis_url, set_as_current=False)
    client = redis.Redis.from_url(redis_url)
    result = LoadResult()
    lock = threading.Lock()

    def sender(index: int) -> None:
        for n in range(jobs):
            key = f"chatq:bench:pong:{index}:{n}:{uuid.uuid4().hex[:6]}"
            started = time.perf_counter()
            producer.send_task(PING, args=[key])
            posted = time.perf_counter()
            answered = client.blpop([key], timeout=30)
            done = time.perf_counter()
            with lock:
                if answered is None:
                    result.errors += 1
                else:
                    result.messages += 1
                    result.post_ms.append((posted - started) * 1000)
                    result.reply_ms.append((done - started) * 1000)

    _run_at_once(sender, senders, result)
    return result


def _run_at_once(loop: Callable[[int], None], concurrency: int, result: LoadResult) -> None:
    """Run loop(0) ... loop(concurrency - 1) at once; record the wall time and the CPU per message."""
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(loop, range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.cpu_ms = per_message_ms(cpu_before, cpu_seconds(), result.messages)


def describe(name: str, result: LoadResult, baseline: LoadResult | None = None) -> str:
    ratio = f" ({result.rate / baseline.rate:.0%} of the no-op baseline)" if baseline and baseline.rate else ""
    sql = f", SQL round trips per message {result.sql_per_message:.1f}" if result.sql_per_message is not None else ""
    return (f"{name}: {result.messages} messages in {result.seconds:.1f} s = {result.rate:.1f}/s{ratio}; "
            f"post->reply p50 {percentile(result.reply_ms, .5):.1f} / p95 {percentile(result.reply_ms, .95):.1f} / "
            f"p99 {percentile(result.reply_ms, .99):.1f} ms; POST p50 {percentile(result.post_ms, .5):.1f} / "
            f"p99 {percentile(result.post_ms, .99):.1f} ms; errors {result.errors}{sql}"
            + (f"\n    CPU ms per message: {describe_cpu(result.cpu_ms)}" if result.cpu_ms else ""))


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--redis", default="redis://127.0.0.1:56379/0", help="the broker, for the baseline")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--metrics", action="append", default=[], help="a /metrics URL (web and workers)")
    args = parser.parse_args(argv)
    baseline = run_baseline(args.redis, args.users, args.messages)
    out(describe("baseline (no-op Celery job round trip)", baseline))
    load = run_load(args.url, args.secret, args.users, args.messages, args.metrics)
    out(describe("chatq (post, long-poll the reply)", load, baseline))
    light = run_load(args.url, args.secret, 1, 30)
    out(f"latency of a light load (1 user): {statistics.median(light.reply_ms):.1f} ms p50 post->reply")


if __name__ == "__main__":
    main()
