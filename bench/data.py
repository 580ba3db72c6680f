"""A user's data at scale: search, export, erasure and the POST with the search column in place.

    .venv/bin/python bench/data.py [--messages 1000000] [--users 10000] [--rounds 2]

Seeds a fresh `chatq_data` database beside DATABASE_URL's (or the embedded default's), built by
Alembic and vacuumed after the load, with --messages messages (questions and their replies, 20 a
conversation) over --users users: one user with 100,000 messages ("heavy"), one with 10,000
("searcher"), the rest spread evenly; the words come from a 2,000-word vocabulary (Zipf-like: a
few common words, many rare).
Then, against one gunicorn process of this checkout:

1. search: 300 searches of the searcher's (a common word, a rare word, two words, a phrase, a
   word and a -word; newest first and by relevance): p50 / p95 / p99 through HTTP;
2. export: the heavy user's export, streamed and counted, three times: the median MB/s, and the
   web process's peak RSS (sampled every 10 ms) against its RSS at rest just before;
3. erasure: the heavy user erased by worker/forget.py's `erase` (the code a worker runs, here in
   process so that each statement's duration is timed) while 8 other users POST: the longest
   statement (a statement holds its row locks until it ends: autocommit), the erasure's total time,
   and the others' POST p95 during it against before it;
4. POST p95 with the search column against without it (the column dropped, the web restarted),
   --rounds alternated rounds of 400 POSTs by 8 users; the column is put back after.

Figures print; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
SECRET = "bench-secret-user-data-0123456789abcdefghijk"  # noqa: S105 - a bench database's
HEAVY, SEARCHER = "heavy", "searcher"
EXPORTS = 3  # the heavy user's export, measured this many times: the median is printed


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


SEED = """
-- A vocabulary where word k is drawn about as often as a cube law says: a few common, many rare.
CREATE TEMP TABLE vocab AS SELECT array_agg('w' || n || substr(md5(n::text), 1, 4) ORDER BY n) AS words
  FROM generate_series(1, 2000) n;
CREATE TEMP TABLE people AS
  SELECT n, CASE n WHEN 1 THEN 'heavy' WHEN 2 THEN 'searcher' ELSE 'user-' || n END AS user_id,
         CASE n WHEN 1 THEN 100000 WHEN 2 THEN 10000 ELSE %(rest)s END AS messages
    FROM generate_series(1, %(users)s) n;
INSERT INTO conversations (id, user_id, title, last_seq, lease_version, created_at, updated_at)
  SELECT md5(p.user_id || ':' || c)::uuid, p.user_id, 'conversation ' || c, 20, 0, now(), now()
    FROM people p, generate_series(1, greatest(1, p.messages / 20)) c;
-- The search index is built after the rows (as a restore would): faster than row by row.
DROP INDEX ix_messages_search;
INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, attempts, lane, superseded,
                      reply_to_id, created_at, updated_at)
  SELECT md5(cv.id::text || ':' || s)::uuid, cv.id, cv.user_id, s,
         CASE WHEN s %% 2 = 1 THEN 'user' ELSE 'assistant' END::message_role,
         (SELECT string_agg(v.words[1 + floor(power(random(), 3) * 2000)::int], ' ')
            FROM vocab AS v, generate_series(1, 14) WHERE s > 0),  -- correlated: drawn again for every row
         CASE WHEN s %% 2 = 1 THEN 'answered' END::message_status, 1, 0, false,
         CASE WHEN s %% 2 = 0 THEN md5(cv.id::text || ':' || (s - 1))::uuid END,
         now() - make_interval(secs => (20 - s) + random()), now()
    FROM conversations cv, generate_series(1, 20) s;
CREATE INDEX ix_messages_search ON messages USING gin (search);
"""


def seed(database_url: str, messages: int, users: int) -> None:
    import psycopg

    from scripts.devstack import libpq_url

    rest = max(2, (messages - 110_000) // max(1, users - 2))
    started = time.monotonic()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as db:
        db.execute(SEED % {"rest": rest, "users": users})
        # As a database that has lived a while is: rows' visibility settled (hint bits, the
        # visibility map) and statistics current. Read fresh after a bulk load, every row read
        # first is also written once (its hint bits), and the export measured that: 18.9 and 19.7
        # MB/s against 22.4 vacuumed (issue 37).
        db.execute("VACUUM (ANALYZE) messages, conversations")
        counted = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    print(f"seeded {counted:,} messages over {users:,} users in {time.monotonic() - started:.0f} s")


def common_and_rare(database_url: str) -> tuple[list[str], list[str]]:
    import psycopg

    from scripts.devstack import libpq_url

    with psycopg.connect(libpq_url(database_url)) as db:
        rows = db.execute("SELECT word, ndoc FROM ts_stat($$SELECT search FROM messages WHERE user_id = "
                          "'searcher'$$) ORDER BY ndoc DESC").fetchall()
    words = [word for word, _ in rows]
    return words[:20], words[len(words) // 2: len(words) // 2 + 200]


def session(name: str) -> Any:
    import jwt
    import requests

    client = requests.Session()
    claims = {"sub": name, "exp": int(time.time()) + 7200}
    client.headers["Authorization"] = f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"
    return client


def searches(url: str, common: list[str], rare: list[str], count: int = 300) -> list[float]:
    import random

    client = session(SEARCHER)
    picks = random.Random(7)
    took = []
    for n in range(count):
        a, b, r = picks.choice(common), picks.choice(common), picks.choice(rare)
        q = [a, r, f"{a} {r}", f'"{a} {b}"', f"{a} -{b}", f"{r} or {b}"][n % 6]
        started = time.perf_counter()
        response = client.get(url + "/api/v1/search", params={"q": q, "order": ["newest", "relevance"][n % 2]})
        took.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return took


def export(url: str, pid: int) -> tuple[float, float, float, int]:
    """(MB/s, RSS at rest in MiB, peak RSS in MiB, records)."""
    import psutil

    process = psutil.Process(pid)
    rest = process.memory_info().rss
    peak, done = rest, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started, size, records = time.perf_counter(), 0, 0
    with session(HEAVY).get(url + "/api/v1/export", stream=True) as response:
        for chunk in response.iter_content(chunk_size=1 << 16):
            size += len(chunk)
            records += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return size / seconds / 1e6, rest / 2**20, peak / 2**20, records


def post_load(url: str, users: int, each: int, stop: threading.Event | None = None) -> list[float]:
    took: list[float] = []
    lock = threading.Lock()

    def one(name: str) -> None:
        client = session(name)
        conversation = None
        for n in range(each):
            if stop is not None and stop.is_set() and n:
                return
            started = time.perf_counter()
            body = {"message": f"add task number {n}", **({"conversation_id": conversation} if conversation else {})}
            response = client.post(url + "/api/v1/chat", json=body)
            elapsed = time.perf_counter() - started
            assert response.status_code == 202, response.text
            conversation = response.json()["conversation_id"] if n % 10 else None
            with lock:
                took.append(elapsed)

    threads = [threading.Thread(target=one, args=(f"poster-{uuid.uuid4().hex[:6]}",)) for _ in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return took


def erase_heavy(database_url: str, url: str, redis_url: str) -> None:
    import redis
    from sqlalchemy import create_engine, event, text

    from models import Settings
    from worker import forget
    from worker.runtime import Runtime

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    durations: list[float] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _started(conn: Any, *_args: Any) -> None:
        conn.info["started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _ended(conn: Any, *_args: Any) -> None:
        durations.append(time.perf_counter() - conn.info.pop("started"))

    before = post_load(url, 8, 40)
    with engine.connect() as connection:
        erasure = uuid.uuid4()
        connection.execute(text("INSERT INTO erasures (id, user_id, user_digest) VALUES (:id, 'heavy', 'bench')"),
                           {"id": erasure})
    settings = Settings.from_env({"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    runtime = Runtime(settings=settings, sessions=None, db=engine, redis=redis.Redis.from_url(redis_url),  # type: ignore[arg-type]
                 engine=None)  # type: ignore[arg-type]
    stop, during = threading.Event(), []
    load = threading.Thread(target=lambda: during.extend(post_load(url, 8, 100_000, stop)))
    load.start()
    started = time.perf_counter()
    erased = forget.erase(runtime, erasure, settle_seconds=0)
    took = time.perf_counter() - started
    stop.set()
    load.join()
    assert erased is not None
    print(f"erasure of {HEAVY} ({sum(v for k, v in erased.counts.items() if k != 'redis_keys'):,} rows): "
          f"{took:.1f} s, {len(durations)} statements, longest {max(durations) * 1000:.0f} ms, "
          f"p99 {_p(durations, 0.99) * 1000:.1f} ms")
    print(f"others' POST p95 during it {_p(during, 0.95) * 1000:.1f} ms ({len(during)} POSTs) "
          f"against {_p(before, 0.95) * 1000:.1f} ms before ({len(before)})")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import psutil
    import psycopg

    from bench.environment import bench_environment
    from scripts import devstack
    from scripts.devstack import libpq_url
    from tests.support import Web

    base = devstack.environment()
    env = bench_environment("data", "chatq_data", SECRET, base, MAX_QUEUED_PER_USER="0")
    database_url, redis_url = env["DATABASE_URL"], env["REDIS_URL"]
    seed(database_url, args.messages, args.users)
    common, rare = common_and_rare(database_url)

    def web() -> tuple[Any, int]:
        node = Web("bench-data-web", env, workers=1).start()
        assert node.popen is not None
        return node, psutil.Process(node.popen.pid).children()[0].pid

    node, pid = web()
    try:
        searches(node.url, common, rare, 30)  # warm
        took = searches(node.url, common, rare)
        print(f"search ({SEARCHER}, 10,000 messages; 300 queries): p50 {_p(took, 0.5) * 1000:.1f} ms, "
              f"p95 {_p(took, 0.95) * 1000:.1f} ms, p99 {_p(took, 0.99) * 1000:.1f} ms")
        exports = [export(node.url, pid) for _ in range(EXPORTS)]
        rate, rest, peak, records = sorted(exports)[EXPORTS // 2]  # the median by rate
        print(f"export ({HEAVY}, 100,000 messages; {records:,} records): {rate:.1f} MB/s (median of "
              f"{EXPORTS}: {', '.join(f'{run[0]:.1f}' for run in exports)}), web RSS at rest "
              f"{rest:.1f} MiB, peak {peak:.1f} MiB (+{peak - rest:.1f} MiB)")

        with_column: list[float] = []
        without_column: list[float] = []
        for _round in range(args.rounds):
            for present in (True, False):
                node.stop()
                with psycopg.connect(libpq_url(database_url), autocommit=True) as db:
                    has = db.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'messages' "
                                     "AND column_name = 'search'").fetchone()[0]
                    if present and not has:
                        db.execute("ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS "
                                   "(to_tsvector('english'::regconfig, content)) STORED")
                        db.execute("CREATE INDEX ix_messages_search ON messages USING gin (search)")
                    elif not present and has:
                        db.execute("ALTER TABLE messages DROP COLUMN search")
                node, pid = web()
                post_load(node.url, 8, 10)  # warm
                took = post_load(node.url, 8, 50)
                (with_column if present else without_column).append(_p(took, 0.95))
                shown = "in place" if present else "dropped"
                print(f"  POST p95, search column {shown}: {_p(took, 0.95) * 1000:.1f} ms "
                      f"(p50 {statistics.median(took) * 1000:.1f})")
        print(f"POST p95 with the search column / without: {statistics.median(with_column) * 1000:.1f} / "
              f"{statistics.median(without_column) * 1000:.1f} ms = "
              f"{statistics.median(with_column) / statistics.median(without_column):.2f}x")
        node.stop()
        with psycopg.connect(libpq_url(database_url), autocommit=True) as db:
            if not db.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'messages' "
                              "AND column_name = 'search'").fetchone()[0]:
                db.execute("ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS "
                           "(to_tsvector('english'::regconfig, content)) STORED")
        node, pid = web()
        erase_heavy(database_url, node.url, redis_url)
    finally:
        node.stop()
        with psycopg.connect(libpq_url(base["DATABASE_URL"]), autocommit=True) as db:
            db.execute('DROP DATABASE IF EXISTS "chatq_data" WITH (FORCE)')


if __name__ == "__main__":
    main()
