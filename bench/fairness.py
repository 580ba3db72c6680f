"""Fair share under overload, this checkout against a baseline checkout (plain FIFO), in one run.

    git worktree add --detach /tmp/chatq-fifo 473fbb8           # the last commit before the scheduler
    .venv/bin/python bench/fairness.py --against /tmp/chatq-fifo [--rounds 1] [--delay-ms 150]
    .venv/bin/python bench/fairness.py --claim-scaling 100,1000,10000,100000   # this checkout only

For each round and checkout: that checkout's gunicorn (one process), one Celery worker with two
slots and beat, on a fresh `chatq_fair` database beside DATABASE_URL's (or the embedded default's),
the built-in engine taking --delay-ms per reply (the two slots, not the CPU, are the bound). Then:

1. idle: 4 light users, each sending 5 messages one at a time (POST, then a long-poll until
   answered): their reply times;
2. overload: 4 heavy users post 3 messages into each of 30 conversations at once (360), then the
   4 light users send 5 messages each as before: their reply times, and how fast the heavy backlog
   drains (messages/s from the first heavy POST to the last heavy reply);
3. weights: a `pro` (weight 4) and a `free` user post 40 messages each at once: the starts each got
   in the first 40 replies (the baseline has no weights: about 1:1);
4. web and worker CPU (user + system, from the kernel) per message over the whole run.

--claim-scaling seeds N queued messages (over N/10 users, 3 per conversation) and times the claim's
statement (rolled back, so every call sees the same queue). Figures print; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-fairness-0123456789abcdefghijk"  # noqa: S105 - a bench database's
BENCH_REDIS_DB = 6


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(delay_ms: int) -> dict[str, float]:
    """Run in the checkout being measured (its bench/ may not have this file: see main)."""
    import jwt
    import psutil
    import requests

    from scripts import devstack
    from tests.support import Beat, Web, Worker

    base = devstack.environment()
    database_url = devstack.create_database(base["DATABASE_URL"], "chatq_fair")
    redis_url = base["REDIS_URL"].rsplit("/", 1)[0] + f"/{BENCH_REDIS_DB}"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    env = {**{k: v for k, v in base.items() if k != "CHATQ_DEV"}, "DATABASE_URL": database_url,
           "REDIS_URL": redis_url, "AUTH_SECRET": SECRET, "RATE_LIMIT": "", "READ_RATE_LIMIT": "",
           "PROMETHEUS_MULTIPROC_DIR": "", "ENGINE_DELAY_MS": str(delay_ms), "TIER_WEIGHTS": "free=1,pro=4",
           "MAX_QUEUED_PER_USER": "1000"}
    worker = Worker("bench-fair-worker", env, concurrency=2).start()
    beat = Beat("bench-fair-beat", env).start()
    web = Web("bench-fair-web", env, workers=1).start()

    def session(name: str, **claims: object) -> requests.Session:
        client = requests.Session()
        claims = {"sub": name, "exp": int(time.time()) + 3600, **claims}
        client.headers["Authorization"] = f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"
        return client

    def ask(client: requests.Session, conversation: str | None) -> tuple[str, float]:
        started = time.monotonic()
        body = {"message": "add bench task", **({"conversation_id": conversation} if conversation else {})}
        accepted = client.post(web.url + "/api/v1/chat", json=body).json()
        while client.get(web.url + accepted["poll_url"], params={"wait": 30}).json()["status"] not in (
                "answered", "failed", "cancelled", "expired"):
            pass
        return accepted["conversation_id"], time.monotonic() - started

    def light_round(users: list[requests.Session], each: int) -> list[float]:
        times: list[float] = []
        lock = threading.Lock()

        def one(client: requests.Session) -> None:
            conversation = None
            for _ in range(each):
                conversation, took = ask(client, conversation)
                with lock:
                    times.append(took)

        threads = [threading.Thread(target=one, args=(client,)) for client in users]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return times

    def post_backlog(client: requests.Session, conversations: int, each: int) -> None:
        for _ in range(conversations):
            first = client.post(web.url + "/api/v1/chat", json={"message": "add heavy task"}).json()
            for _ in range(each - 1):
                client.post(web.url + "/api/v1/chat", json={"message": "add heavy task",
                                                            "conversation_id": first["conversation_id"]})

    def replies_of(users: list[str]) -> list[tuple[str, float]]:
        import psycopg

        with psycopg.connect(devstack.libpq_url(database_url)) as db:
            rows = db.execute("SELECT c.user_id, extract(epoch FROM m.created_at) FROM messages m JOIN conversations c "
                              "ON c.id = m.conversation_id WHERE m.role = 'assistant' AND c.user_id = ANY(%s) "
                              "ORDER BY m.created_at", (users,)).fetchall()
        return [(user, float(at)) for user, at in rows]

    try:
        assert web.popen is not None and worker.popen is not None
        web_process = psutil.Process(web.popen.pid).children()[0]
        worker_process = psutil.Process(worker.popen.pid)

        def cpu() -> tuple[float, float]:
            workers = [worker_process, *worker_process.children(recursive=True)]
            return sum(web_process.cpu_times()[:2]), sum(sum(p.cpu_times()[:2]) for p in workers)

        tag = uuid.uuid4().hex[:6]
        light = [session(f"light-{tag}-{n}") for n in range(4)]
        light_round(light, 2)  # warm up
        cpu_before, messages = cpu(), 0
        idle = light_round(light, 5)
        messages += len(idle)
        heavy_names = [f"heavy-{tag}-{n}" for n in range(4)]
        heavy = [session(name) for name in heavy_names]
        drain_started = time.time()
        posters = [threading.Thread(target=post_backlog, args=(client, 30, 3)) for client in heavy]
        for thread in posters:
            thread.start()
        for thread in posters:
            thread.join()
        loaded = light_round(light, 5)
        messages += len(loaded) + 360
        deadline = time.monotonic() + 600
        while len(replies_of(heavy_names)) < 360 and time.monotonic() < deadline:
            time.sleep(0.5)
        heavy_replies = replies_of(heavy_names)
        drain_rate = len(heavy_replies) / (heavy_replies[-1][1] - drain_started)
        pro, free = f"pro-{tag}", f"free-{tag}"
        weighted = [threading.Thread(target=post_backlog, args=(session(pro, tier="pro"), 40, 1)),
                    threading.Thread(target=post_backlog, args=(session(free, tier="free"), 40, 1))]
        for thread in weighted:
            thread.start()
        for thread in weighted:
            thread.join()
        while len(replies_of([pro, free])) < 80 and time.monotonic() < deadline:
            time.sleep(0.5)
        first = [user for user, _ in replies_of([pro, free])[:40]]
        messages += 80
        cpu_after = cpu()
        return {
            "idle_p50": statistics.median(idle), "idle_p95": _p(idle, 0.95),
            "loaded_p50": statistics.median(loaded), "loaded_p95": _p(loaded, 0.95), "loaded_max": max(loaded),
            "drain_per_s": drain_rate, "pro_starts": first.count(pro), "free_starts": first.count(free),
            "web_cpu_ms": (cpu_after[0] - cpu_before[0]) * 1000 / messages,
            "worker_cpu_ms": (cpu_after[1] - cpu_before[1]) * 1000 / messages,
        }
    finally:
        for process in (web, worker, beat):
            process.kill(signal.SIGKILL)


def claim_scaling(sizes: list[int]) -> None:
    """The claim's statement against N queued messages: this checkout's code, in process."""
    import psycopg
    from sqlalchemy import create_engine

    from models import Settings
    from scripts import devstack
    from worker import claim_sql

    base = devstack.environment()
    database_url = devstack.create_database(base["DATABASE_URL"], "chatq_claimscale")
    engine = create_engine(database_url)
    seeded = 0
    with psycopg.connect(devstack.libpq_url(database_url), autocommit=True) as db:
        for size in sizes:
            # 3 queued messages per conversation, 10 conversations per user; tags as posting would give.
            db.execute("""
                WITH c AS (
                    INSERT INTO conversations (id, user_id, title, last_seq, lease_version, created_at, updated_at)
                    SELECT gen_random_uuid(), 'seed-' || (g / 10), '', 3, 0, now(), now()
                      FROM generate_series(%(start)s, %(stop)s - 1) AS g
                    RETURNING id, user_id
                )
                INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, attempts, lane,
                                      fair_tag, created_at, updated_at)
                SELECT gen_random_uuid(), c.id, c.user_id, s, 'user', 'add seeded', 'queued', 0, 0,
                       random() * 1000 + s, now(), now()
                  FROM c, generate_series(1, 3) AS s
            """, {"start": seeded // 3, "stop": size // 3})
            seeded = size // 3 * 3
            db.execute("ANALYZE messages")
            db.execute("ANALYZE conversations")
            timings = []
            settings = Settings.from_env({"DATABASE_URL": database_url, "REDIS_URL": "redis://unused"})
            with engine.connect() as connection:
                for _ in range(200):
                    transaction = connection.begin()
                    started = time.perf_counter()
                    connection.execute(claim_sql.CLAIM[False], {"lease": settings.lease_seconds,
                                                                "max_generations": 0}).all()
                    timings.append((time.perf_counter() - started) * 1000)
                    transaction.rollback()
            print(f"{seeded:>7} queued: claim p50 {statistics.median(timings):.2f} ms, p95 {_p(timings, 0.95):.2f} ms",
                  flush=True)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="a checkout of the baseline (with its own .venv or this one's)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--delay-ms", type=int, default=150)
    parser.add_argument("--claim-scaling", help="queue sizes to time the claim at, e.g. 100,1000,100000")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.measure is not None:
        sys.path.insert(0, str(args.measure))
        os.chdir(args.measure)
        print(json.dumps(measure(args.delay_ms)))
        return
    if args.claim_scaling:
        sys.path.insert(0, str(HERE))
        claim_scaling([int(size) for size in args.claim_scaling.split(",")])
        return
    sys.path.insert(0, str(HERE))
    from bench.environment import alternated, private_tmpdir

    private_tmpdir("fairness")  # the measured processes' temporary files, whichever checkout they are
    for round_, root, line in alternated(Path(__file__), args.against, args.rounds, "--delay-ms", str(args.delay_ms)):
        figures = json.loads(line)
        print(f"round {round_}, {root}: " + ", ".join(f"{key} {value:.3g}" for key, value in figures.items()),
              flush=True)

if __name__ == "__main__":
    main()
