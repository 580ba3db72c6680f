"""The process-wide clients one web process holds (connection pools, not user data), and how a
view talks to Postgres: `reader()` for reads, `transaction()` for every write — with
`after_commit()` for what must happen once the write is committed (a job sent, a change
announced), and only then (pypi/warehouse sends its tasks from an after-commit hook the same way)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis
from celery import Celery
from flask import Flask, current_app, g
from sqlalchemy.orm import Session, sessionmaker

from models import Settings
from models.coordination import broker
from models.process.connections import broker_options, broker_url, redis_client
from models.sql.db import make_engine, make_sessionmaker

from .waiting.wakeups import Wakeups


@dataclass(frozen=True)
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    # The same pool in autocommit, for reads and single-statement writes: no BEGIN/COMMIT round trips.
    autocommit: sessionmaker[Session]
    # Waiting requests read through a pool of their own: a burst of thousands of waits starting
    # at once queues for these connections, while posts and plain reads keep theirs.
    waits: sessionmaker[Session]
    redis: redis.Redis
    producer: Celery


def make_producer(settings: Settings) -> Celery:
    """A Celery app that only sends: web never imports worker/, it sends jobs by name."""
    producer = Celery("chatq-web", broker=broker_url(settings), set_as_current=False)
    producer.conf.update(
        # No "task-sent" event: it is a second publish to Redis on every POST (what it cost:
        # docs/decisions/0010); Flower shows a job from its "received" on.
        task_send_sent_event=False,
        broker_connection_timeout=2,
        broker_connection_retry=False,
        # Publishing must not hang a request when Redis is down: the message is already
        # committed and the sweeper enqueues it once Redis is back.
        broker_transport_options={"socket_connect_timeout": 1, "socket_timeout": 2, **broker_options(settings)},
    )
    # One client per channel (models/coordination/broker.py); under Sentinel, kombu's own.
    if not settings.redis_sentinels:
        producer.conf.broker_transport = broker.TRANSPORT
    return producer


def init_app(app: Flask, settings: Settings, on_round_trip: Callable[[str], None] | None = None) -> None:
    engine = make_engine(settings.database_url, pool_size=app.config["DB_POOL_SIZE"], max_overflow=5,
                         on_round_trip=on_round_trip, statement_timeout_ms=settings.web_statement_timeout_ms)
    # A fixed pool: overflow connections are closed when handed back, and with hundreds of waits
    # starting and ending every second that meant a new Postgres connection per few requests.
    waits_engine = make_engine(settings.database_url, pool_size=6, max_overflow=0, pool_timeout=30,
                               on_round_trip=on_round_trip, autocommit=True,
                               statement_timeout_ms=settings.web_statement_timeout_ms)
    app.extensions["chatq"] = Services(
        settings=settings,
        sessions=make_sessionmaker(engine),
        autocommit=make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")),
        waits=make_sessionmaker(waits_engine),
        redis=redis_client(settings, socket_timeout=5),
        producer=make_producer(settings),
    )

    # The notification listener blocks on its reads for as long as nothing happens: no socket
    # timeout, and no health-check PINGs, which redis-py would send from the reading thread; TCP
    # keep-alive finds a connection that died silently (web/waiting/wakeups.py).
    app.extensions["chatq.wakeups"] = Wakeups(redis_client(settings, socket_timeout=None, health_check_interval=0))
    # gunicorn.conf.py calls this when the process is told to stop (SIGTERM).
    app.extensions["chatq.drain"] = app.extensions["chatq.wakeups"].drain

    @app.teardown_appcontext
    def _close_session(_error: BaseException | None) -> None:
        release_db()


def services() -> Services:
    return current_app.extensions["chatq"]


@contextmanager
def transaction(*, autocommit: bool = False) -> Iterator[Session]:
    """The one way a view writes: the block is one transaction; what it asked for with
    `after_commit` runs once the block (and its commit) succeeded, and not at all if it raised.
    `autocommit`: there is no transaction around the block — each statement commits by itself, with
    no BEGIN/COMMIT round trips — for a block that is a single statement, which is then atomic on
    its own (the POST of a message asks for it when `web/accept.py` `is_one_statement` says so)."""
    queued: list[Callable[[], None]] = []
    g.after_commit = queued
    try:
        if autocommit:
            yield reader()
        else:
            session = db()
            with session.begin():
                yield session
    finally:
        g.pop("after_commit", None)
    for send in queued:  # only reached when the block (and its commit) succeeded
        send()


def after_commit(function: Callable[..., Any], *args: Any) -> None:
    """Call `function(*args)` once the current `transaction()` has committed."""
    g.after_commit.append(partial(function, *args))


def db() -> Session:
    """This request's transactional session (`transaction()` opens its transactions)."""
    if "db_session" not in g:
        g.db_session = services().sessions()
    return g.db_session


def reader() -> Session:
    """This request's autocommit session: each statement is its own transaction. For reads, and
    for writes that are a single statement."""
    if "db_reader" not in g:
        g.db_reader = services().waits() if g.get("waiting") else services().autocommit()
    return g.db_reader


def use_wait_pool() -> None:
    """From now on this request is a waiting one: its reads go through the waits' own pool."""
    release_db()
    g.waiting = True


def release_db() -> None:
    """Give the connections back (before a long wait, and at the end of the request)."""
    for name in ("db_session", "db_reader"):
        session = g.pop(name, None)
        if session is not None:
            session.close()
