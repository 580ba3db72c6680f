"""Forgetting: a user's erasure (DELETE /me) and the retention of idle conversations.

Both delete in bounded batches, each statement its own transaction: a statement holds the row locks
of at most BATCH rows for milliseconds, other users never wait on them (a DELETE takes no lock that
conflicts with their INSERTs), and a worker that dies mid-way leaves a consistent database that the
next run carries on from. Deleting a question deletes its replies and its webhook events with it
(the foreign keys cascade); the indexes of migration 0008 make each of those a lookup.

An erasure's work list is its row in `erasures`, leased like a conversation: the worker that runs
it renews the lease at every batch; the forget round hands an erasure whose lease ran out (three
conversation leases) to a worker again (worker/tasks.py). Once done, the row keeps only the user's
keyed digest, when, and how many rows of each kind were deleted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from redis.exceptions import RedisError
from sqlalchemy import (
    Connection,
    Select,
    Table,
    Text,
    bindparam,
    delete,
    exists,
    func,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

from models import (
    ApiKey,
    Conversation,
    DailyUsage,
    EndUserShare,
    IdempotentRequest,
    Message,
    Role,
    Status,
    Task,
    UserShare,
    WebhookEndpoint,
    WebhookEvent,
)
from models.coordination import messaging
from models.coordination.model_pool import affinity_key
from models.coordination.queue_figures import recent_user_starts_keys
from models.coordination.signals import pieces_key
from models.sql.stopping import STOP_USERS_QUESTIONS

from .runtime import Runtime

log = structlog.get_logger(__name__)

BATCH = 1000  # rows one statement deletes
RETENTION_BATCH = 50  # conversations one statement deletes, with their messages
RETENTION_ROUNDS = 20  # statements a forget round runs at most: the rest waits for the next round
# An erasure's lease, in conversation leases: its first renewal comes after the wait for the user's
# generations (two leases at most) and one batch. A worker that dies mid-erasure is replaced once it
# runs out (the forget round sends the erasure again), in seconds rather than the minute it was.
ERASURE_LEASES = 3
SETTLE_POLL_SECONDS = 0.2

# The user's rows, table by table, in an order the foreign keys allow: events before the messages
# they name, replies before questions (deleting a question would take its replies uncounted),
# messages before their conversations. Each statement deletes at most :batch rows, found by their
# primary key (never by row address: a row another transaction updates meanwhile gets a new one,
# and a DELETE by the old address skips it, deletes nothing and looks done), and says how many
# (`deleted`); questions also say which attempts left text in Redis (`pieces`), conversations
# which ids they had (`ids`, for the model pool's affinity keys).


def _batch_of(table: Table, *where: ColumnElement[bool], returning: tuple[ColumnElement[Any], ...] = ()
              ) -> Select[Any]:
    key = tuple_(*table.primary_key.columns)
    mine = (table.c.user_id == bindparam("user"), *where)
    doomed = select(*table.primary_key.columns).where(*mine).limit(bindparam("batch"))
    gone = delete(table).where(key.in_(doomed)).returning(literal(1).label("one"), *returning).cte("gone")
    columns = [func.count().label("deleted")]
    if returning:
        columns.append(func.coalesce(func.array_agg(gone.c[returning[0].name]), literal([], ARRAY(Text)))
                       .label(returning[0].name))
    # Whether the statement found a row of the user at all (it reads the table as it was before its
    # own DELETE): a step ends with a statement that found none.
    left = exists(select(literal(1)).select_from(table).where(*mine)).label("left")
    return select(*columns, left).select_from(gone)


_messages = Message.__table__
_conversations = Conversation.__table__
_attempt = (_messages.c.id.cast(Text) + ":" + _messages.c.attempts.cast(Text)).label("pieces")
# Every table of models/sql/erasure.py USERS_TABLES (tests/unit/test_user_data.py holds them equal).
_STEPS: tuple[tuple[str, Table, Select[Any]], ...] = (
    ("webhook_events", WebhookEvent.__table__, _batch_of(WebhookEvent.__table__)),
    ("replies", _messages, _batch_of(_messages, _messages.c.role == Role.ASSISTANT)),
    ("questions", _messages, _batch_of(_messages, _messages.c.role == Role.USER, returning=(_attempt,))),
    ("conversations", _conversations,
     _batch_of(_conversations, returning=(_conversations.c.id.cast(Text).label("ids"),))),
    ("tasks", Task.__table__, _batch_of(Task.__table__)),
    # with their deliveries and attempts
    ("webhook_endpoints", WebhookEndpoint.__table__, _batch_of(WebhookEndpoint.__table__)),
    ("daily_usage", DailyUsage.__table__, _batch_of(DailyUsage.__table__)),
    ("idempotency_keys", IdempotentRequest.__table__, _batch_of(IdempotentRequest.__table__)),
    ("scheduler_shares", UserShare.__table__, _batch_of(UserShare.__table__)),
    ("end_user_shares", EndUserShare.__table__, _batch_of(EndUserShare.__table__)),
    ("api_keys", ApiKey.__table__, _batch_of(ApiKey.__table__)),
)
ERASED_TABLES = {table for _, table, _ in _STEPS}


_TAKE = text("""
    UPDATE erasures SET lease_expires_at = now() + make_interval(secs => :lease)
     WHERE id = :id AND finished_at IS NULL
    RETURNING user_id, erased
""")
_PROGRESS = text("UPDATE erasures SET erased = CAST(:erased AS jsonb), "
                 "lease_expires_at = now() + make_interval(secs => :lease) WHERE id = :id")
_FINISH = text("UPDATE erasures SET erased = CAST(:erased AS jsonb), finished_at = now(), user_id = NULL, "
               "lease_expires_at = NULL WHERE id = :id")
# Erasures no worker is carrying out: never started (the job was lost) or whose worker died.
UNATTENDED_ERASURES = text("""
    SELECT id FROM erasures
     WHERE finished_at IS NULL AND (lease_expires_at IS NULL OR lease_expires_at < now())
     ORDER BY requested_at LIMIT 10
""")


@dataclass(frozen=True)
class Erased:
    user: str
    counts: dict[str, int]
    stopped: list[uuid.UUID]  # questions it told to stop (a POST after the DELETE /me had started them)


_GENERATING = text("SELECT count(*) FROM messages WHERE user_id = :user AND status IN ('processing', 'cancelling')")


def erase(runtime: Runtime, erasure_id: uuid.UUID, *, batch: int = BATCH,
          settle_seconds: float | None = None) -> Erased | None:
    """Carry out an erasure to its end. None when it is done already (or unknown): repeating it
    is harmless. First the user's generations stop: each worker told to stop stores what it wrote
    and ends its question within a second; a dead worker's question ends when its lease runs out.
    The erasure waits for that (at most `settle_seconds`, by default two leases), so that no
    worker writes the user's text into Redis after the erasure went through it."""
    lease = ERASURE_LEASES * runtime.settings.lease_seconds
    with runtime.db.connect() as connection:
        taken = connection.execute(_TAKE, {"id": erasure_id, "lease": lease}).first()
        if taken is None or taken.user_id is None:
            return None
        user: str = taken.user_id
        counts = Counter(taken.erased or {})
        stopped = [row.id for row in connection.execute(STOP_USERS_QUESTIONS, {"user": user})
                   if row.status is Status.CANCELLING]
        if stopped:
            messaging.request_cancel(runtime.redis, stopped)
        deadline = time.monotonic() + (2 * runtime.settings.lease_seconds if settle_seconds is None else settle_seconds)
        while connection.execute(_GENERATING, {"user": user}).scalar_one() and time.monotonic() < deadline:
            time.sleep(SETTLE_POLL_SECONDS)
        for name, _table, statement in _STEPS:
            # Until no row of the user is left. New ones cannot appear meanwhile: every write of the
            # user's data is refused while the erasure runs (user_writable(), migration 0010).
            while True:
                row = connection.execute(statement, {"user": user, "batch": batch}).one()
                counts[name] += row.deleted
                if name == "questions":
                    _forget_pieces(runtime.redis, row.pieces)
                elif name == "conversations":
                    _forget_affinities(runtime.redis, row.ids)
                if row.deleted:
                    connection.execute(_PROGRESS, {"id": erasure_id, "erased": json.dumps(counts), "lease": lease})
                if not row.left:
                    break
        counts["redis_keys"] += _forget_in_redis(runtime.redis, user)
        connection.execute(_FINISH, {"id": erasure_id, "erased": json.dumps(counts)})
    log.info("user_erased", erasure_id=str(erasure_id), erased=dict(counts))
    return Erased(user, dict(counts), stopped)


def _forget_pieces(client: redis.Redis, attempts: Iterable[str]) -> None:
    """The text generations left in Redis for these questions ("id:attempts"): every attempt's.
    They expire within PIECES_TTL_SECONDS anyway."""
    _forget_keys(client, [pieces_key(ident, attempt) for ident, _, last in (item.partition(":") for item in attempts)
                          for attempt in range(int(last) + 1)], what="pieces")


def _forget_affinities(client: redis.Redis, conversation_ids: Iterable[str]) -> None:
    """Which model server answered each of these conversations last (the pool's affinity keys).
    They expire within AFFINITY_TTL_SECONDS anyway."""
    _forget_keys(client, [affinity_key(ident) for ident in conversation_ids], what="affinities")


def _forget_keys(client: redis.Redis, keys: list[str], *, what: str) -> None:
    """Delete keys that expire by themselves: Redis away, they are left to expire."""
    if not keys:
        return
    try:
        client.delete(*keys)
    except RedisError as error:
        log.warning(f"{what}_not_forgotten", error=str(error))


def _forget_in_redis(client: redis.Redis, user: str) -> int:
    """The user's keys in Redis: their rate-limit windows (flask-limiter's, named by the user) and
    their place among the busiest users in the start counts. Returns how many keys went."""
    pattern = "LIMITS:*/user:" + _glob_escape(user) + "/*"
    try:
        limits = [key for key in client.scan_iter(match=pattern, count=1000)]
        if limits:
            client.delete(*limits)
        with client.pipeline(transaction=False) as pipe:
            for key in recent_user_starts_keys(kept=True):
                pipe.zrem(key, user)
            removed = sum(pipe.execute())
    except RedisError as error:  # limits and counts expire by themselves within minutes
        log.warning("redis_not_forgotten", error=str(error))
        return 0
    return len(limits) + removed


def _glob_escape(value: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in value)


# Retention: conversations idle past their lifetime — the shortest of a temporary one's day, their
# own ttl_days and the operator's RETENTION_DAYS — and not being answered (no question waiting or
# generated, no live lease). SKIP LOCKED: a conversation a POST is writing to is left for the next
# round; FOR UPDATE re-reads a row that changed meanwhile, and a new message makes it live again.
EXPIRE_CONVERSATIONS = text("""
    WITH expired AS (
        SELECT c.id FROM conversations AS c
         WHERE c.updated_at < now() - make_interval(days => 1)
           AND c.updated_at < now() - make_interval(days => least(CASE WHEN c.temporary THEN 1 END, c.ttl_days,
                                                                  nullif(:retention, 0)))
           AND (c.lease_expires_at IS NULL OR c.lease_expires_at < now())
           AND NOT EXISTS (SELECT 1 FROM messages AS m
                            WHERE m.conversation_id = c.id AND m.status IN ('queued', 'processing', 'cancelling'))
         ORDER BY c.updated_at
         LIMIT :batch
         FOR UPDATE OF c SKIP LOCKED
    ), gone AS (
        DELETE FROM conversations WHERE id IN (SELECT id FROM expired) RETURNING 1
    )
    SELECT count(*) FROM gone
""")


def expire_conversations(connection: Connection, retention_days: int, *, batch: int = RETENTION_BATCH) -> int:
    """One round of retention: at most `batch` conversations deleted. Returns how many."""
    return connection.execute(EXPIRE_CONVERSATIONS, {"retention": retention_days, "batch": batch}).scalar_one()
