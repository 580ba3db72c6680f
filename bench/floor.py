"""The floor under the web tier's CPU per message: the card's stack doing the least a message needs.

    .venv/bin/python bench/floor.py [--messages 1000] [--rounds 3] [--waits 3000]

CPU. Web apps, each served by ONE gunicorn process with chatq's gunicorn.conf.py (gevent, the same
access log), are sent the same requests by one client, one at a time — per message a POST and a
GET of what it stored — and the web process's CPU time (user + system, from the kernel) is divided
by the messages:

- `bare`: Flask answers both with a constant: gunicorn + Flask and nothing else;
- `+jwt`, `+sql`, `+celery`, then `lean`: what a message needs done, added one step at a time, each
  step by the library the card names, at its leanest: both requests verify an HS256 bearer token
  (PyJWT); the POST validates its body (pydantic) and inserts a row with one Core statement on a
  pooled connection (SQLAlchemy, psycopg), the GET reads it with one; the POST sends a Celery job
  carrying the id (Redis broker); `lean` also publishes one notification (redis-py);
- `chatq`: this checkout's app, the same two requests (`POST /api/v1/chat`, `GET` its poll_url).

Memory (`--waits N`, 0 to skip): N requests parked in a `bare` Flask view that waits on a gevent
event — a connection, a greenlet and a Flask request and nothing of chatq's — and the web process's
resident memory per parked request.

The rounds alternate the apps, so the machine's drift (10-20% here) hits all alike: read the
ratios. What `lean` costs is what no tuning of chatq's own code can go below without leaving
Flask, gunicorn, SQLAlchemy, Celery or PyJWT; a parked bare request, what a wait costs before
chatq adds anything (BENCHMARKS.md, "Waiting clients"). Not a test. Postgres and Redis:
DATABASE_URL / REDIS_URL, or the embedded default.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-floor-0123456789abcdefghijklmnopq"  # noqa: S105 - a bench database's
# Each app's steps (see above); chatq is this checkout's app.
MODES = {"bare": "", "+jwt": "jwt", "+sql": "jwt,sql", "+celery": "jwt,sql,celery", "lean": "jwt,sql,celery,publish",
         "chatq": "chatq"}


def create_app() -> Any:
    """The app gunicorn serves, made of FLOOR_STEPS (gunicorn calls this in its worker process)."""
    steps = set(filter(None, os.environ["FLOOR_STEPS"].split(",")))
    if steps == {"chatq"}:
        from web import create_app as create_chatq

        return create_chatq()
    import gevent.event
    import jwt
    import redis
    from celery import Celery
    from flask import Flask, request
    from pydantic import BaseModel, Field
    from sqlalchemy import create_engine, text

    from models.coordination import broker
    from models.coordination.messaging import PUBLISH_AS_IS

    app = Flask(__name__)
    app.add_url_rule("/livez", "livez", lambda: {"status": "alive"})  # what the harness waits for
    app.add_url_rule("/park", "park", lambda: {"woken": gevent.event.Event().wait(300)})

    class Body(BaseModel):
        message: str = Field(min_length=1, max_length=32_000)

    engine = create_engine(os.environ["DATABASE_URL"], pool_size=10, isolation_level="AUTOCOMMIT")
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    # Published as chatq publishes (the floor pays no cost chatq has removed): no task-sent event,
    # one Redis client per channel, no declare, no result, no repr of the arguments.
    producer = Celery("floor", broker=os.environ["REDIS_URL"], set_as_current=False)
    producer.conf.task_send_sent_event = False
    producer.conf.broker_transport = broker.TRANSPORT
    insert = text("INSERT INTO floor_messages (id, user_id, content) VALUES (:id, :user, :content)")
    read = text("SELECT id, content, status, created_at FROM floor_messages WHERE id = :id AND user_id = :user")

    def user() -> str:
        if "jwt" not in steps:
            return "anyone"
        token = request.headers.get("Authorization", "").partition(" ")[2]
        return jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["sub", "exp"]})["sub"]

    @app.post("/floor")
    def post() -> tuple[dict[str, Any], int]:
        who, ident = user(), uuid.uuid4()
        if "sql" in steps:
            body = Body.model_validate(request.get_json())
            with engine.connect() as connection:
                connection.execute(insert, {"id": ident, "user": who, "content": body.message})
        if "celery" in steps:
            producer.send_task("floor.answer", args=[str(ident)], argsrepr=f"['{ident}']", retry=False,
                               **PUBLISH_AS_IS)
        if "publish" in steps:
            client.publish(f"floor:{ident}", "queued")
        return {"id": str(ident), "poll_url": f"/floor/{ident}"}, 202

    @app.get("/floor/<ident>")
    def get(ident: str) -> dict[str, Any]:
        who = user()
        if "sql" not in steps:
            return {"id": ident, "status": "queued"}
        with engine.connect() as connection:
            row = connection.execute(read, {"id": uuid.UUID(ident), "user": who}).one()
        return {"id": str(row.id), "content": row.content, "status": row.status,
                "created_at": row.created_at.isoformat()}

    return app


def _web(mode: str, env: dict[str, str]) -> Any:
    from tests import support

    web = support.Web(f"bench-floor-{mode}", {**env, "FLOOR_STEPS": MODES[mode]}, workers=1)
    web.argv = [str(support.BIN / "gunicorn"), "bench.floor:create_app()", "--config", "gunicorn.conf.py"]
    return web.start()


def measure(mode: str, messages: int, env: dict[str, str]) -> float:
    import psutil
    import requests

    from bench.load import token

    web = _web(mode, env)
    try:
        assert web.popen is not None
        process = psutil.Process(web.popen.pid).children()[0]
        session = requests.Session()
        post_path = "/api/v1/chat" if mode == "chatq" else "/floor"

        def send(count: int) -> float:
            # A user of their own every 50 messages: nothing answers them here, and chatq refuses a
            # user's 101st waiting message (MAX_QUEUED_PER_USER), a check every POST still makes.
            signed = [f"Bearer {token(SECRET, 'bench-floor-' + uuid.uuid4().hex[:8])}" for _ in range(count // 50 + 1)]
            before = sum(process.cpu_times()[:2])
            for n in range(count):
                session.headers["Authorization"] = signed[n // 50]
                accepted = session.post(web.url + post_path, json={"message": f"add floor {n}"})
                assert accepted.status_code == 202, accepted.text
                assert session.get(web.url + accepted.json()["poll_url"]).status_code == 200
            return (sum(process.cpu_times()[:2]) - before) * 1000 / count

        send(30)  # warm up: pools, prepared statements
        return send(messages)
    finally:
        web.kill(signal.SIGKILL)


def parked_kib(waits: int, env: dict[str, str]) -> float:
    """Resident KiB per request parked in the bare app (its second batch: the first grows the heap)."""
    import psutil

    web = _web("bare", env)
    try:
        assert web.popen is not None
        process = psutil.Process(web.popen.pid).children()[0]
        host, port = web.url.rsplit("/", 1)[-1].rsplit(":", 1)
        for _batch in range(2):
            before = process.memory_info().rss
            clients = []
            for _ in range(waits):
                client = socket.create_connection((host, int(port)))
                client.sendall(b"GET /park HTTP/1.1\r\nHost: floor\r\n\r\n")
                clients.append(client)
            time.sleep(3)  # every request read and parked
            per_wait = (process.memory_info().rss - before) / waits / 1024
            for client in clients:
                client.close()
            time.sleep(2)
        return per_wait
    finally:
        web.kill(signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--waits", type=int, default=3000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per parked request
    sys.path.insert(0, str(HERE))
    os.chdir(HERE)
    import psycopg
    import redis

    from bench.environment import bench_environment
    from scripts import devstack

    env = bench_environment("floor", "chatq_floor", SECRET)
    database_url, redis_url = env["DATABASE_URL"], env["REDIS_URL"]
    with psycopg.connect(devstack.libpq_url(database_url), autocommit=True) as connection:
        connection.execute("CREATE TABLE floor_messages (id uuid PRIMARY KEY, user_id text NOT NULL, "
                           "content text NOT NULL, status text NOT NULL DEFAULT 'queued', "
                           "created_at timestamptz NOT NULL DEFAULT now())")
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for round_ in range(args.rounds):
            for mode in MODES:
                figures[mode].append(measure(mode, args.messages, env))
                print(f"round {round_ + 1}, {mode}: {figures[mode][-1]:.2f} ms of web CPU per message", flush=True)
    finally:
        redis.Redis.from_url(redis_url).flushdb()  # the jobs nobody consumes
    medians = {mode: statistics.median(values) for mode, values in figures.items()}
    print()
    for mode, median in medians.items():
        print(f"{mode:7s} median {median:.2f} ms of web CPU per message (POST + GET), "
              f"{median / medians['bare']:.2f}x bare, {median / medians['lean']:.2f}x lean")
    if args.waits:
        print(f"\n{args.waits} requests parked in a bare Flask view: {parked_kib(args.waits, env):.1f} KiB each")


if __name__ == "__main__":
    main()
