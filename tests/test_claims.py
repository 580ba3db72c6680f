"""The worker's claim against the test database, whatever plan Postgres picks: an engine is handed
the whole history in seq order, and none of the user's later messages (CONTRACT.md, delivery 4)."""

from __future__ import annotations

import uuid

import psycopg
import redis
from sqlalchemy import event

from models import Settings
from models.db import make_engine, make_sessionmaker
from worker import claims
from worker.engine import BuiltinEngine
from worker.runtime import Runtime


def _runtime_without_index_scans(database_url: str, redis_url: str) -> Runtime:
    engine = make_engine(database_url)

    @event.listens_for(engine, "connect")
    def _heap_order(dbapi_connection, _record) -> None:  # rows come back as they lie on disk
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET enable_indexscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off")
        dbapi_connection.commit()

    return Runtime(settings=Settings.from_env({"DATABASE_URL": database_url, "REDIS_URL": redis_url}),
                   sessions=make_sessionmaker(engine), db=engine.execution_options(isolation_level="AUTOCOMMIT"),
                   redis=redis.Redis.from_url(redis_url), engine=BuiltinEngine())


def test_the_history_comes_in_seq_order_and_stops_at_the_question(
    database_url: str, redis_url: str, db: psycopg.Connection
) -> None:
    conversation_id, user = uuid.uuid4(), f"user-{uuid.uuid4().hex[:10]}"
    db.execute("INSERT INTO conversations (id, user_id, title, last_seq, lease_version) VALUES (%s, %s, 't', 6, 0)",
               (conversation_id, user))
    ids = {seq: uuid.uuid4() for seq in range(1, 7)}

    def store(seq: int, role: str, status: str | None, reply_to: int | None = None) -> None:
        db.execute("INSERT INTO messages (id, conversation_id, seq, role, content, status, reply_to_id, "
                   "tool_calls, attempts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0)",
                   (ids[seq], conversation_id, seq, role, f"message {seq}", status,
                    ids[reply_to] if reply_to else None, "[]" if role == "assistant" else None))

    # On disk out of seq order, as updates and retries leave real conversations.
    store(3, "user", "answered")
    store(4, "assistant", None, reply_to=3)
    store(6, "user", "queued")  # sent after the question: not part of its history
    store(1, "user", "answered")
    store(2, "assistant", None, reply_to=1)
    store(5, "user", "queued")  # the question
    rt = _runtime_without_index_scans(database_url, redis_url)
    try:
        claimed = claims.claim(rt, ids[5])
        assert claimed.question is not None and claimed.question.seq == 5
        assert [(turn.seq, turn.role, turn.content) for turn in claimed.question.history] == [
            (1, "user", "message 1"), (2, "assistant", "message 2"),
            (3, "user", "message 3"), (4, "assistant", "message 4")]
    finally:
        db.execute("DELETE FROM conversations WHERE id = %s", (conversation_id,))
        rt.db.dispose()
