"""The benchmark matrix: one run, several deployments, one table. Starts its own processes on a
`chatq_bench` database beside DATABASE_URL's (or the embedded default's) and a Redis database of
its own, then for each row runs bench/load.py's load and the no-op baseline at the same
concurrency; then measures reply latency at history lengths 10, 1,000 and 10,000.

    .venv/bin/python bench/matrix.py [--users 16] [--messages 15]     # about 3 minutes
    .venv/bin/python bench/matrix.py --history-only                   # the history lengths alone

Not a test: it prints figures (see BENCHMARKS.md for a run and how to read it).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import requests

from bench.environment import bench_environment
from bench.load import describe, percentile, run_baseline, run_load, token
from scripts import devstack
from scripts.cluster import nginx_binary, render_nginx_conf
from tests.support import ARTIFACTS, Process, Web, Worker, free_port, wait_until

SECRET = "bench-secret-matrix-0123456789abcdefghijklmnop"  # noqa: S105 - a bench database's
TOOL_CALLS = ('[{"name": "add_task", "arguments": {"title": "x"}, "result": {"task": '
              '{"id": "00000000-0000-0000-0000-000000000000", "title": "x", "done": false}}}]')


class Deployment:
    def __init__(self, env: dict[str, str], webs: int, workers: int) -> None:
        self.env = env
        # A node as deployed: gunicorn with WEB_CONCURRENCY processes (its default, 2).
        self.webs = [Web(f"bench-web{i}", env, workers=int(env["WEB_CONCURRENCY"])).start() for i in range(webs)]
        self.workers = [Worker(f"bench-worker{i}", env, concurrency=2).start() for i in range(workers)]
        self.proxy = None
        if webs > 1:
            port = free_port()
            conf = render_nginx_conf([w.port for w in self.webs], port, ARTIFACTS / "bench-nginx")
            self.proxy = Process("bench-nginx", [nginx_binary(), "-c", str(conf), "-p", str(conf.parent), "-g",
                                                 "daemon off;"], env).start()
            self.url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                try:
                    return requests.get(self.url + "/livez", timeout=1).ok
                except requests.RequestException:
                    return False

            wait_until(up, what="nginx")
        else:
            self.url = self.webs[0].url

    @property
    def metrics(self) -> list[str]:
        return [w.url + "/metrics" for w in self.webs] + [
            f"http://127.0.0.1:{w.metrics_port}/metrics" for w in self.workers]

    def stop(self) -> None:
        for process in [*self.webs, *self.workers, *([self.proxy] if self.proxy else [])]:
            process.kill(signal.SIGKILL)


def seed_history(database_url: str, user: str, length: int) -> str:
    """A conversation of `length` messages (user and assistant turns), written straight to SQL."""
    conversation_id = str(uuid.uuid4())
    with psycopg.connect(devstack.libpq_url(database_url), autocommit=True) as connection:
        connection.execute("INSERT INTO conversations (id, user_id, title, last_seq, lease_version) "
                           "VALUES (%s, %s, 'history', %s, 0)", (conversation_id, user, length))
        connection.execute(
            """
            WITH q AS (
              INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, attempts)
              SELECT gen_random_uuid(), %(c)s, %(u)s, s, 'user', 'add history item ' || s, 'answered', 1
              FROM generate_series(1, %(n)s, 2) AS s RETURNING id, seq)
            INSERT INTO messages (id, conversation_id, user_id, seq, role, content, reply_to_id, tool_calls, attempts)
            SELECT gen_random_uuid(), %(c)s, %(u)s, q.seq + 1, 'assistant', 'Added it.', q.id, %(calls)s::json, 0
            FROM q WHERE q.seq + 1 <= %(n)s
            """,
            {"c": conversation_id, "u": user, "n": length, "calls": TOOL_CALLS},
        )
    return conversation_id


def history_latencies(deployment: Deployment, database_url: str, lengths: tuple[int, ...],
                      samples: int = 41) -> dict[int, float]:
    """Median post->reply latency in conversations of each history length. The lengths take turns,
    sample by sample, so that the machine's noise falls on all of them alike."""
    conversations = {}
    for length in lengths:
        user = f"bench-history-{length}-{uuid.uuid4().hex[:6]}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token(SECRET, user)}"
        conversations[length] = (session, seed_history(database_url, user, length))
    timings: dict[int, list[float]] = {length: [] for length in lengths}
    for n in range(samples + 1):
        for length, (session, conversation_id) in conversations.items():
            started = time.perf_counter()
            body = {"message": f"what did I just add? {n}", "conversation_id": conversation_id}
            accepted = session.post(deployment.url + "/api/v1/chat", json=body).json()
            while session.get(deployment.url + accepted["poll_url"], params={"wait": 30}).json()["status"] not in (
                    "answered", "failed"):
                pass
            if n:  # the first round warms each conversation up
                timings[length].append((time.perf_counter() - started) * 1000)
    return {length: statistics.median(values) for length, values in timings.items()}


def report_history(deployment: Deployment, database_url: str) -> None:
    lengths = history_latencies(deployment, database_url, (10, 1000, 10000))
    print("reply latency by history length: " + ", ".join(f"{n}: {ms:.1f} ms" for n, ms in lengths.items())
          + f" (10,000 / 10 = {lengths[10000] / lengths[10]:.2f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--messages", type=int, default=15)
    parser.add_argument("--history-only", action="store_true", help="only the reply latency by history length")
    args = parser.parse_args()
    env = bench_environment("matrix", "chatq_bench", SECRET, WEB_CONCURRENCY="2")
    database_url, redis_url = env["DATABASE_URL"], env["REDIS_URL"]
    rows = []
    for webs, workers in [(1, 2)] if args.history_only else [(1, 1), (1, 2), (1, 4), (3, 2)]:
        deployment = Deployment(env, webs, workers)
        try:
            if args.history_only:
                report_history(deployment, database_url)
                continue
            baseline = run_baseline(redis_url, args.users, args.messages)
            load = run_load(deployment.url, SECRET, args.users, args.messages, deployment.metrics)
            print(describe(f"[{webs} web, {workers} workers] baseline", baseline), flush=True)
            print(describe(f"[{webs} web, {workers} workers] chatq   ", load, baseline), flush=True)
            rows.append((webs, workers, load, baseline))
            if (webs, workers) == (1, 2):
                light = run_load(deployment.url, SECRET, 1, 40)
                print(f"light load (1 user, 40 messages): post->reply p50 "
                      f"{statistics.median(light.reply_ms):.1f} ms", flush=True)
                report_history(deployment, database_url)
        finally:
            deployment.stop()
    if args.history_only:
        return
    print("\n| web nodes (x2 processes) | workers (x2 processes) | messages/s | no-op jobs/s | ratio | "
          "reply p50 / p99 ms | SQL round trips / message | CPU ms / message (no-op) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for webs, workers, load, baseline in rows:
        print(f"| {webs} | {workers} | {load.rate:.1f} | {baseline.rate:.1f} | {load.rate / baseline.rate:.0%} | "
              f"{percentile(load.reply_ms, .5):.1f} / {percentile(load.reply_ms, .99):.1f} | "
              f"{load.sql_per_message:.1f} | {load.cpu_ms.get('total', 0):.1f} "
              f"({baseline.cpu_ms.get('total', 0):.1f}) |")
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


if __name__ == "__main__":
    main()
