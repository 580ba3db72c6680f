"""The tables: conversations, their messages, the users' tasks and stored idempotent answers."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ColumnElement,
    Computed,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    cast,
    literal,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, created_at, updated_at, user_id, uuid_pk


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class Status(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    CANCELLING = "cancelling"  # asked to stop: the worker stores the text so far, then `cancelled`
    ANSWERED = "answered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # not started within its `expires_in`: never generated


class Lane(enum.IntEnum):
    """Which of the scheduler's lanes a question waits in (docs/scheduler.md)."""

    INTERACTIVE = 0
    BATCH = 1  # runs only on slots interactive work leaves idle, until it ages into INTERACTIVE


class Finish(enum.StrEnum):
    """Why an assistant message ended."""

    STOP = "stop"  # the engine finished its answer
    CANCELLED = "cancelled"  # stopped by the user: the text written before the cancel
    LENGTH = "length"  # the model hit its output limit: the text is cut short


# Where a question may still go: a cancelled, answered or failed one only moves again by request
# (regenerate, retry).
FINAL = (Status.ANSWERED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)
# Waiting for a worker or generated now: what the scheduler and the sweeper look at.
PENDING = (Status.QUEUED, Status.PROCESSING)
# Not final yet: will change by itself (clients keep waiting; a new question waits behind it).
UNFINISHED = (*PENDING, Status.CANCELLING)
# A worker is generating its reply: it has text so far (a cancelling one, until it is stored).
GENERATING = (Status.PROCESSING, Status.CANCELLING)
# PENDING as the partial indexes' predicate writes it: the claim's and the sweeper's statements
# write the statuses into their SQL the same way (`status_in` below), or Postgres cannot use the
# index.
PENDING_SQL = "status IN (" + ", ".join(f"'{status.value}'" for status in PENDING) + ")"


def written_in_sql(value: enum.StrEnum, type_: Any) -> ColumnElement[Any]:
    """One of our enum's values as a constant in the statement's text, not a bound parameter, and
    written there when the statement is compiled (SQLAlchemy's `literal_execute` writes it again at
    every execution, into a fresh copy of the statement's text: a share of the worker's CPU)."""
    return literal_column(f"'{value.value}'", type_)


def status_in(column: ColumnElement[Any], *statuses: Status) -> ColumnElement[bool]:
    """`status IN ('queued', ...)` with the statuses written into the SQL, not bound: Postgres uses
    a partial index (ix_messages_pending, ix_messages_ready ...) only where the query's text implies
    the index's predicate."""
    return column.in_([written_in_sql(status, column.type) for status in statuses])


def status_cast(status: Status | ColumnElement[Any], type_: Any) -> ColumnElement[Any]:
    """A status to write, cast to the column's enum type: inside a CASE, Postgres would take it for
    text."""
    return cast(status if isinstance(status, ColumnElement) else literal(status, type_), type_)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[uuid_pk]
    user_id: Mapped[user_id]
    title: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    # The last seq handed out; incrementing it under the row lock numbers messages 1, 2, 3 ...
    last_seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # The claim a worker holds while it generates a reply in this conversation. `lease_version`
    # only grows: it is the fencing token a worker presents when it commits a reply.
    lease_version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # How long the conversation is kept after its last message (None: the operator's RETENTION_DAYS,
    # if any); a temporary one is kept a day. `updated_at` is its last message's arrival.
    ttl_days: Mapped[int | None] = mapped_column(SmallInteger)
    temporary: Mapped[bool] = mapped_column(nullable=False, server_default=text("false"))
    # What an app attached through /v1/conversations (up to 16 short key-value pairs); never read.
    app_metadata: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    __table_args__ = (
        Index("ix_conversations_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        CheckConstraint("ttl_days BETWEEN 1 AND 3650", name="ttl_days"),
        # Retention's: the conversations idle longest (worker/forget.py).
        Index("ix_conversations_idle", "updated_at"),
        # The sweeper's: leases that ran out (their workers are presumed dead).
        Index("ix_conversations_leased", "lease_expires_at", postgresql_where=text("lease_expires_at IS NOT NULL")),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[uuid_pk]
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    # The conversation's user, kept on each message: a user's waiting and running messages are
    # counted from an index (the scheduler's caps) rather than by walking their conversations.
    user_id: Mapped[user_id]
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    role: Mapped[Role] = mapped_column(Enum(Role, name="message_role", values_callable=lambda e: [m.value for m in e]))
    content: Mapped[str] = mapped_column(Text, nullable=False)
    # User messages only: where the message is on its way to a reply.
    status: Mapped[Status | None] = mapped_column(
        Enum(Status, name="message_status", values_callable=lambda e: [m.value for m in e])
    )
    attempts: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # User messages only, for the scheduler (worker/claim_sql.py): the lane it waits in, its virtual
    # start time in its user's share of that lane (next_fair_tag(), migration 0006), when it expires
    # unstarted, and the end of a backoff before it may be tried again.
    lane: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default=text("0"))
    fair_tag: Mapped[float | None] = mapped_column(Float(precision=53))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # User messages from /v1 that name the app's end user (`safety_identifier`), and that end
    # user's virtual start time within the user (place_for_end_user(), migration 0014).
    end_user: Mapped[str | None] = mapped_column(String(128))
    end_user_tag: Mapped[float | None] = mapped_column(Float(precision=53))
    # User messages from /v1/responses: what the call asked of the answer (instructions, the app's
    # function tools and tool_choice, max_output_tokens; migration 0015), read by the worker.
    response_options: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Assistant messages only: the question it answers. A question has one current reply
    # (uq_messages_current_reply); a regenerate supersedes it and keeps it as an earlier version.
    reply_to_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    superseded: Mapped[bool] = mapped_column(nullable=False, server_default=text("false"))
    # Assistant messages only: the question's text this reply answered (an edit changes the
    # question; each version keeps what it was asked), why it ended, and the tokens it cost.
    question_content: Mapped[str | None] = mapped_column(Text)
    finish: Mapped[Finish | None] = mapped_column(
        Enum(Finish, name="reply_finish", values_callable=lambda e: [m.value for m in e])
    )
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Assistant messages only: the model that wrote it (a pool's server's model name; null for the
    # built-in engine).
    model: Mapped[str | None] = mapped_column(String(200))
    # Assistant messages only, from a model: {"messages_sent", "messages_total"} of the history.
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Assistant messages only: the lengths (in characters) of the pieces it was streamed in, in
    # order (null: one piece). The Responses API numbers a reply's events from them (migration 0012).
    pieces: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    # User messages only: what an app attached to the response that asked it (/v1/responses).
    app_metadata: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    # Assistant messages only: the tools the engine called, and the last seq it was shown. json,
    # not jsonb: read whole with every history, never queried inside (migration 0002 says why).
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    context_seq: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # Its words, for search: generated by Postgres in the configuration migration 0008 was run with
    # (SEARCH_CONFIG). Deferred: only a search reads it.
    search: Mapped[Any] = mapped_column(TSVECTOR, Computed("to_tsvector('english'::regconfig, content)"),
                                        deferred=True)
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
        # Search's (GIN), and the walk of one user's messages, newest first: search by date, export, erasure.
        Index("ix_messages_search", "search", postgresql_using="gin"),
        Index("ix_messages_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        CheckConstraint("(role = 'user') = (status IS NOT NULL)", name="status_only_on_user_messages"),
        # Exactly one current reply per question; its earlier versions are superseded.
        Index("uq_messages_current_reply", "reply_to_id", unique=True, postgresql_where=text("NOT superseded")),
        Index("ix_messages_reply_to", "reply_to_id"),
        # The sweeper's and the claim's access path: unanswered messages, oldest first.
        Index(
            "ix_messages_pending",
            "conversation_id",
            "seq",
            postgresql_where=text(PENDING_SQL),
        ),
        CheckConstraint("lane IN (0, 1)", name="lane"),
        # The scheduler's: the claim walks the ready messages in (lane, tag, created_at, id) order
        # (ties first come, first served: migration 0017); the running ones' largest tag is a lane's
        # virtual time; a user's pending ones are counted for the caps; the sweeper finds what expires
        # and what has waited in the batch lane long enough.
        Index("ix_messages_ready", "lane", "fair_tag", "created_at", "id",
              postgresql_where=text("status = 'queued'")),
        Index("ix_messages_running", "lane", "fair_tag", postgresql_where=text("status = 'processing'")),
        Index("ix_messages_user_pending", "user_id", "status", postgresql_where=text(PENDING_SQL)),
        Index("ix_messages_expiring", "expires_at",
              postgresql_where=text("status = 'queued' AND expires_at IS NOT NULL")),
        Index("ix_messages_batch_waiting", "created_at", postgresql_where=text("status = 'queued' AND lane = 1")),
    )


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[uuid_pk]
    user_id: Mapped[user_id]
    title: Mapped[str] = mapped_column(String(500), nullable=False)
    done: Mapped[bool] = mapped_column(nullable=False, default=False)
    # The reply attempt's tool call that created it: a replayed generation adds nothing twice.
    origin_message_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    origin_call: Mapped[int | None] = mapped_column(SmallInteger)
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    __table_args__ = (
        Index("ix_tasks_user_created", "user_id", "created_at"),
        UniqueConstraint("origin_message_id", "origin_call", name="uq_tasks_origin"),
    )


class EndUserShare(Base):
    """An app's end user's share of its user's part of a lane: the last virtual start time handed
    to one of their messages. Written only by place_for_end_user() (migration 0014)."""

    __tablename__ = "end_user_shares"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    end_user: Mapped[str] = mapped_column(String(128), primary_key=True)
    lane: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    last_tag: Mapped[float] = mapped_column(Float(precision=53), nullable=False)


class UserShare(Base):
    """A user's share of a lane of the scheduler: their weight (from the token's `tier`) and the
    last virtual start time handed to one of their messages. Written only by next_fair_tag()."""

    __tablename__ = "user_shares"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    lane: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    weight: Mapped[float] = mapped_column(Float(precision=53), nullable=False)
    last_tag: Mapped[float] = mapped_column(Float(precision=53), nullable=False)

    __table_args__ = (
        CheckConstraint("weight > 0", name="weight_positive"),
        Index("ix_user_shares_lane_tag", "lane", "last_tag"),
    )


class DailyUsage(Base):
    """What a user used on one UTC day: messages sent (and regenerated) and model tokens. Counted
    as it happens, in the statements that accept a message and commit a reply, so that quotas hold
    across every node and `GET /usage` reads one row."""

    __tablename__ = "daily_usage"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    messages: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))


class WebhookEndpoint(Base):
    """A user's server that wants message events pushed to it (Standard Webhooks)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid_pk]
    user_id: Mapped[user_id]
    url: Mapped[str] = mapped_column(Text, nullable=False)
    events: Mapped[list[str]] = mapped_column(ARRAY(String(32)), nullable=False)
    secret: Mapped[str] = mapped_column(String(100), nullable=False)  # whsec_<base64>, shown once
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[created_at]

    __table_args__ = (Index("ix_webhook_endpoints_user", "user_id"),)


class ApiKey(Base):
    """A user's API key (`POST /api/v1/keys`): what a server-side app sends instead of a JWT. Only a
    SHA-256 of the key is kept (the key is 256 random bits, shown once): a copy of the database
    names no usable key. It acts as its user, with the tier of the token that made it."""

    __tablename__ = "api_keys"

    id: Mapped[uuid_pk]
    user_id: Mapped[user_id]
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    tier: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[created_at]

    __table_args__ = (Index("ix_api_keys_user", "user_id"),)


class WebhookEvent(Base):
    """The outbox: an event row is written in the transaction that commits the change it reports
    (models/sql/outbox.py). Its payload is built once, at the first delivery, from rows that never
    change after (the reply it names, the question's id and seq) and the status it reports."""

    __tablename__ = "webhook_events"

    id: Mapped[uuid_pk]  # the webhook-id: the same on every retry and for every endpoint
    user_id: Mapped[user_id]
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    question_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), nullable=False)
    reply_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[created_at]

    # Deleting a message looks up the events naming it (cascade, SET NULL); an erasure, a user's.
    __table_args__ = (
        Index("ix_webhook_events_question", "question_id"),
        Index("ix_webhook_events_reply", "reply_id"),
        Index("ix_webhook_events_user", "user_id"),
    )


class WebhookDelivery(Base):
    """One event to one endpoint: pending (due at `next_attempt_at`), delivered, or failed."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid_pk]
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), nullable=False)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
                                                   nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                      server_default=text("now()"))
    claim: Mapped[uuid.UUID | None] = mapped_column()  # the job sent for it now (sweeper -> job)
    created_at: Mapped[created_at]
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", text("created_at DESC")),
        Index("ix_webhook_deliveries_event", "event_id"),  # for the cascade when an event is deleted
    )


class WebhookAttempt(Base):
    """What one try of a delivery got: for `GET .../deliveries`."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
                                                   nullable=False)
    attempted_at: Mapped[created_at]
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)  # the first 1,000 characters

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempted_at"),)


class IdempotentRequest(Base):
    """The first answer to a POST that carried an Idempotency-Key, replayed to its retries."""

    __tablename__ = "idempotent_requests"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status_code: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[created_at]

    __table_args__ = (Index("ix_idempotent_requests_created", "created_at"),)


class Erasure(Base):
    """A user's DELETE /me: the worker's work list while it runs (it holds the user id), and the
    audit record after (a keyed digest of the id, when, and how many rows of each kind went —
    never what they said)."""

    __tablename__ = "erasures"

    id: Mapped[uuid_pk]
    user_id: Mapped[str | None] = mapped_column(String(128))  # cleared when it is done
    user_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    requested_at: Mapped[created_at]
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The worker carrying it out holds this lease; the sweeper hands an erasure whose lease ran out
    # (or that never had one) to a worker again.
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    erased: Mapped[dict[str, int]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))

    __table_args__ = (
        # One running erasure per user: a repeated DELETE /me finds the one under way.
        Index("uq_erasures_running", "user_id", unique=True, postgresql_where=text("finished_at IS NULL")),
        Index("ix_erasures_digest", "user_digest"),
    )
