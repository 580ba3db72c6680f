"""What short leases cost and buy: Postgres writes to hold a conversation while a model generates,
and how long a conversation whose worker was SIGKILLed waits before another worker takes it over.

    python bench/lease.py [--messages 8] [--generation 6]

For each lease length (6 s, the default, against the 30 s it replaced), in one run on this
machine's servers (the embedded ones unless DATABASE_URL / REDIS_URL are set): a web node, a worker
and beat against a fake model server that streams each answer for `--generation` seconds;
`--messages` messages one after another; the UPDATEs of `conversations` per message (pg_stat), of
which the renewals are the part that grows with the generation; then a worker SIGKILLed mid-way
through a generation, and the seconds until the next attempt started.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

import psycopg

from bench.environment import bench_environment
from scripts import devstack
from tests.fake_llm import FakeModelServer
from tests.support import TEST_SECRET, Api, Beat, Web, Worker, wait_until


def updates(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_force_next_flush()")
        return connection.execute(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'conversations'").fetchone()[0]


def measure(lease: int, messages: int, generation: float, base_env: dict[str, str], model: FakeModelServer) -> dict:
    env = bench_environment("lease", f"chatq_bench_lease_{lease}", TEST_SECRET, base_env, ENGINE="openai",
                            LLM_BASE_URL=model.base_url, LLM_MODEL="fake", LEASE_SECONDS=str(lease),
                            SWEEP_INTERVAL_SECONDS="1")
    database = env["DATABASE_URL"]
    words = max(1, int(generation / 0.25))
    answer = {"content": " ".join(["word"] * words), "chunk_delay": 0.25}
    processes = [Web(f"bench-lease-web-{lease}", env).start(), Worker(f"bench-lease-worker-{lease}", env).start(),
                 Beat(f"bench-lease-beat-{lease}", env).start()]
    dsn = devstack.libpq_url(database)
    try:
        user = Api(processes[0].url)
        model.reset(*[answer] * messages)
        before = updates(dsn)
        for _ in range(messages):
            user.ask("tell me something")
        per_message = (updates(dsn) - before) / messages

        model.reset(answer, answer)
        message_id = user.chat("and again")["message"]["id"]
        assert model.streaming.wait(20)
        processes[1].kill(signal.SIGKILL)
        killed = time.monotonic()
        processes[1] = Worker(f"bench-lease-worker-{lease}", env).start()
        wait_until(lambda: len(model.requests) >= 2, timeout=lease * 3 + 30, what="the next attempt")
        takeover = time.monotonic() - killed
        user.wait_answered(message_id, timeout=60)
    finally:
        for process in processes:
            process.stop()
    return {"lease": lease, "updates": per_message, "takeover": takeover}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=8)
    parser.add_argument("--generation", type=float, default=6.0, help="seconds each answer streams for")
    arguments = parser.parse_args()
    started: list[str] = []
    base_env = devstack.environment(started)
    model = FakeModelServer()
    try:
        rows = [measure(lease, arguments.messages, arguments.generation, base_env, model) for lease in (30, 6)]
    finally:
        model.close()
        devstack.stop_started(started)
    print(f"{arguments.messages} messages, each generated for about {arguments.generation:g} s")
    print(f"{'lease':>6} {'UPDATEs of conversations per message':>38} {'SIGKILL -> next attempt':>24}")
    for row in rows:
        print(f"{row['lease']:>5}s {row['updates']:>38.1f} {row['takeover']:>23.1f}s")
    print(f"ratio (6 s / 30 s): writes x{rows[1]['updates'] / rows[0]['updates']:.2f}, "
          f"takeover x{rows[1]['takeover'] / rows[0]['takeover']:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
