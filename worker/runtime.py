"""What one worker process holds: settings, a connection pool, a Redis client and the engine.
Created lazily in the process that runs tasks (after prefork's fork), never at import time."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models import Settings
from models.process.connections import redis_client
from models.sql.db import make_engine, make_sessionmaker

from . import metrics
from .engine import ReplyEngine, make_reply_engine


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    # The same pool in autocommit: the claim, the reply's commit and the tools are each one
    # statement, atomic on its own, so they need no BEGIN/COMMIT round trips.
    db: Engine
    redis: redis.Redis
    engine: ReplyEngine


@functools.cache
def process_runtime() -> Runtime:
    settings = Settings.from_env()
    # A task uses one connection, plus one for its lease heartbeat.
    database = make_engine(settings.database_url, pool_size=2, max_overflow=2, on_round_trip=metrics.count_round_trip)
    client = redis_client(settings, socket_timeout=2)
    return Runtime(
        settings=settings,
        sessions=make_sessionmaker(database),
        db=database.execution_options(isolation_level="AUTOCOMMIT"),
        redis=client,
        engine=make_reply_engine(settings, client),
    )
