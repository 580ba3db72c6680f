"""Accepting a user message: one unit of work stores it (and its idempotency record, and with
`on_busy` the cancel of the questions it interrupts). The view opens it — one statement in
autocommit when `is_one_statement` says that is all it takes, else a transaction — and sends the
job only after it has committed."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, Row, SmallInteger, bindparam, cast, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import (
    UNFINISHED,
    Conversation,
    IdempotentRequest,
    Lane,
    Message,
    Role,
    Settings,
    Status,
)
from models.coordination.queue_figures import queue_position, retry_after_seconds
from models.representation import message_json
from models.sql.erasure import ERASING
from models.sql.queries import QUESTION_SHOWN, ahead_of, ahead_of_users_first, owned_conversation, parse_uuid
from models.sql.stopping import STOP_IN_CONVERSATION
from models.sql.usage import add_to_today

from .problems import Problem
from .quotas import charge_message, has_quotas
from .writes import erasure_running

POLL_URL = "/api/v1/messages/{}"
DEFAULT_TITLE_CHARS = 60


@dataclass(frozen=True)
class Accepted:
    status: int
    body: dict[str, Any]
    message_id: uuid.UUID | None  # None for a replay: its job was sent by the first call
    replayed: bool = False
    # Questions on_busy=interrupt stopped, with what they are now: cancelled, or cancelling (being
    # generated: their workers are told after the commit).
    interrupted: list[tuple[uuid.UUID, Status]] = field(default_factory=list)


@dataclass(frozen=True)
class Asked:
    """How the message asks to be scheduled: its lane, its user's weight, and its expiry."""

    lane: Lane = Lane.INTERACTIVE
    weight: float = 1.0
    expires_in: int | None = None


@dataclass(frozen=True)
class Lifetime:
    """How long a conversation the message starts is kept after its last message (docs/api.md,
    retention): its own ttl_days, or a temporary one's day; the operator's RETENTION_DAYS otherwise."""

    ttl_days: int | None = None
    temporary: bool = False


def fingerprint(route: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"route": route, "body": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def remember_answer(session: Session, user: str, key: str, body: dict[str, Any]) -> None:
    """Store the answer under the key this transaction reserved (`reserve_key`)."""
    session.execute(update(IdempotentRequest).where(IdempotentRequest.user_id == user, IdempotentRequest.key == key)
                    .values(status_code=202, body=body))


def reserve_key(session: Session, user: str, key: str, print_: str) -> IdempotentRequest | None:
    """Reserve the key for this transaction, or return the answer already stored under it.
    A concurrent first call holds the row until it commits; Postgres makes us wait for it."""
    reserved = session.execute(
        pg_insert(IdempotentRequest)
        .values(user_id=user, key=key, fingerprint=print_, status_code=0, body={})
        .on_conflict_do_nothing()
        .returning(IdempotentRequest.key)
    ).first()
    if reserved is not None:
        return None
    stored = session.get(IdempotentRequest, (user, key))
    if stored is None:  # the other call rolled back between our insert and read: a rare race
        raise Problem(409, "A request with this Idempotency-Key is in flight; retry it.",
                      headers={"Retry-After": "1"})
    if stored.fingerprint != print_:
        raise Problem(422, "Idempotency-Key was already used with a different request body.",
                      slug="idempotency-key-reused")
    return stored


def _numbered_insert(numbered: Any, *, counted: bool = False) -> Any:
    """INSERT the message with the conversation id and seq that the CTE `numbered` returns, in the
    lane it asked for, with its place in its user's share of that lane (next_fair_tag(), migration
    0006) and its expiry; `counted`: and count it in its user's day (daily_usage) in the same
    statement — with no quota to check first, counting then costs no statement of its own on the
    hottest write, and nothing is counted when nothing was numbered (not the user's conversation,
    or the user has too many messages waiting)."""
    columns = Message.__table__.c
    lane = cast(bindparam("lane"), SmallInteger)
    values = select(
        bindparam("message_id", type_=columns.id.type), numbered.c.cid, bindparam("user"), numbered.c.seq,
        literal(Role.USER, columns.role.type), bindparam("content", type_=columns.content.type),
        literal(Status.QUEUED, columns.status.type), literal(0, columns.attempts.type),
        bindparam("request_id", type_=columns.request_id.type), func.now(), lane,
        func.next_fair_tag(bindparam("user"), lane, cast(bindparam("weight"), Float)),
        func.now() + func.make_interval(0, 0, 0, 0, 0, 0, cast(bindparam("expires_in"), Float)),
    )
    stored = (
        insert(Message.__table__)
        .from_select(["id", "conversation_id", "user_id", "seq", "role", "content", "status", "attempts",
                      "request_id", "enqueued_at", "lane", "fair_tag", "expires_at"], values)
        .returning(*(columns[name] for name in QUESTION_SHOWN), columns.lane, columns.fair_tag)
        .cte("stored")
    )
    # What the 202 shows of it, and how many messages will start before it. Counted in a SELECT of
    # the stored row, not in the INSERT's RETURNING: there, SQLAlchemy did not correlate the count
    # with the new row but added `messages` to its FROM — a scan of the whole table under every POST
    # while anything was queued (bench/data.py: 35 s a POST at 910,000 messages).
    statement = select(*(stored.c[name] for name in QUESTION_SHOWN), ahead_of(stored))
    if not counted:
        return statement
    return statement.add_cte(add_to_today(bindparam("user"), source=numbered, messages=literal(1)).cte("counted"))


# Built once (building them per request was a large share of a POST's CPU: docs/decisions/0010); values are bound.
# Core statements on the tables: with parameters, an ORM insert would mean an ORM bulk insert.
_conversations = Conversation.__table__.c
_messages = Message.__table__.c
# The user may queue a message (migration 0010): no erasure of theirs runs, and with a cap
# (MAX_QUEUED_PER_USER > 0) they have fewer than `cap` messages waiting, counted under their queue
# lock, so that concurrent POSTs take turns and each counts the others' (a cap-th one found in
# ix_messages_user_pending: at most `cap` entries read, whatever else waits).
_MAY_QUEUE = func.may_queue(bindparam("user"), bindparam("cap"))


def _new_conversation() -> Any:
    row = select(bindparam("conversation_uuid"), bindparam("user"), bindparam("title"), literal(1), literal(0),
                 bindparam("ttl_days", type_=_conversations.ttl_days.type),
                 bindparam("temporary", type_=_conversations.temporary.type))
    return (
        insert(Conversation.__table__)
        .from_select(["id", "user_id", "title", "last_seq", "lease_version", "ttl_days", "temporary"],
                     row.where(_MAY_QUEUE))
        .returning(_conversations.id.label("cid"), _conversations.last_seq.label("seq"))
        .cte("numbered")
    )


def _next_in_conversation() -> Any:
    mine = (_conversations.id == bindparam("conversation_id"), _conversations.user_id == bindparam("user"))
    return (
        update(Conversation.__table__)
        .where(*mine, _MAY_QUEUE)
        .values(last_seq=_conversations.last_seq + 1, updated_at=func.now())
        .returning(_conversations.id.label("cid"), _conversations.last_seq.label("seq"))
        .cte("numbered")
    )


@dataclass(frozen=True)
class _Storing:
    """The statements that store a message, for one combination of the settings that shape them."""

    into_new: Any
    into_existing: Any


# counted in the day -> the two statements.
_STORING = {counted: _Storing(_numbered_insert(_new_conversation(), counted=counted),
                              _numbered_insert(_next_in_conversation(), counted=counted))
            for counted in (False, True)}


class QueueFull(Exception):
    """The user already has MAX_QUEUED_PER_USER messages waiting: nothing was stored."""


def _refused(session: Session, user: str) -> Exception:
    """Why may_queue() refused: the user's erasure runs, or their queue is full."""
    return erasure_running() if session.scalar(ERASING, {"user": user}) else QueueFull()


def _store(session: Session, *, user: str, content: str, conversation_id: str | None, request_id: str,
           counted: bool, asked: Asked, lifetime: Lifetime, settings: Settings) -> Row[Any] | None:
    """Number and insert the message in one statement (`counted`: and count it in the user's day):
    the conversation row's lock (taken by the UPDATE that bumps its `last_seq`, or the INSERT of a
    new conversation) orders concurrent posts. None when the conversation is not the user's;
    QueueFull when the user has too many messages waiting, 409 while their erasure runs."""
    storing = _STORING[counted]
    parameters = {"message_id": uuid.uuid4(), "content": content, "request_id": request_id, "user": user,
                  "lane": asked.lane, "weight": asked.weight, "expires_in": asked.expires_in,
                  "cap": settings.max_queued_per_user}
    # A Core statement on the session's connection: the ORM's execute would only add its own work
    # to a statement that loads no entities.
    connection = session.connection()
    if conversation_id is None:
        stored = connection.execute(storing.into_new, {**parameters, "title": _title_from(content),
                                                       "conversation_uuid": uuid.uuid4(),
                                                       "ttl_days": lifetime.ttl_days,
                                                       "temporary": lifetime.temporary}).one_or_none()
        if stored is None:
            raise _refused(session, user)
        return stored
    parsed = parse_uuid(conversation_id)
    if parsed is None:
        return None
    stored = connection.execute(storing.into_existing, {**parameters, "conversation_id": parsed}).one_or_none()
    if stored is None and owned_conversation(session, user, conversation_id) is not None:
        raise _refused(session, user)
    return stored


def _settle_busy(session: Session, user: str, conversation_id: str,
                 on_busy: str) -> list[tuple[uuid.UUID, Status]]:
    """`reject`: 409 when the conversation has a question queued or processing. `interrupt`: cancel
    them (their workers are told after the commit). Under the conversation's row lock, taken first
    as everywhere, so that two such posts cannot both find it idle."""
    parsed = parse_uuid(conversation_id)
    owned = parsed is not None and session.execute(
        select(Conversation.id).where(Conversation.id == parsed, Conversation.user_id == user).with_for_update()
    ).first()
    if not owned:
        raise Problem(404, "No such conversation.")
    if on_busy == "reject":
        busy = session.scalar(select(Message.id).where(Message.conversation_id == parsed,
                                                       Message.status.in_(UNFINISHED)).order_by(Message.seq).limit(1))
        if busy is not None:
            raise Problem(409, f"The conversation is still answering message {busy}; send this once it is done, "
                          "or with on_busy \"interrupt\" or \"enqueue\".", slug="conversation-busy",
                          extensions={"busy_message_id": str(busy)})
        return []
    # Queued ones are cancelled at once (with their webhook events, in this commit); the one being
    # generated becomes cancelling, and its worker stores what it wrote before the new one starts.
    stopped = session.execute(STOP_IN_CONVERSATION, {"conversation": parsed})
    return [(row.id, row.status) for row in stopped]


def is_one_statement(settings: Settings, idempotency: tuple[str, str] | None, on_busy: str) -> bool:
    """Whether accepting a message is one statement (numbering, storing and counting it in the
    day): then it needs no transaction around it. An idempotency key (reserved first), on_busy
    (the busy questions settled first) or a quota (checked as it is counted) each add statements
    that must commit together."""
    return idempotency is None and on_busy == "enqueue" and not has_quotas(settings)


def accept_message(session: Session, *, user: str, content: str, conversation_id: str | None, request_id: str,
                   idempotency: tuple[str, str] | None, settings: Settings, on_busy: str = "enqueue",
                   asked: Asked = Asked(), lifetime: Lifetime = Lifetime(),
                   start_rate: Callable[[], float | None] = lambda: None) -> Accepted:
    """Store a user message and count it in the user's day, in the caller's unit of work: the view
    opens it with `transaction(autocommit=is_one_statement(...))`, commits it, and only then sends
    the job. Nothing is stored if it raises."""
    # In a transaction, the user's locks first, in the order the storing statement takes them
    # (may_queue()): taken after the conversation's row lock, they could deadlock with a plain POST,
    # which takes them before it. Refused only for an erasure here: a full queue is counted again
    # when storing, after any questions this POST interrupts.
    if not is_one_statement(settings, idempotency, on_busy) \
            and not session.scalar(select(_MAY_QUEUE), {"user": user, "cap": settings.max_queued_per_user}) \
            and session.scalar(ERASING, {"user": user}):
        raise erasure_running()
    if idempotency is not None:
        stored = reserve_key(session, user, *idempotency)
        if stored is not None:
            return Accepted(stored.status_code, stored.body, None, replayed=True)
    interrupted = []
    if on_busy != "enqueue" and conversation_id is not None:
        interrupted = _settle_busy(session, user, conversation_id, on_busy)
    quota = has_quotas(settings)
    try:
        message = _store(session, user=user, content=content, conversation_id=conversation_id,
                         request_id=request_id, counted=not quota, asked=asked, lifetime=lifetime,
                         settings=settings)
    except QueueFull:
        ahead = ahead_of_users_first(session.connection(), user)
        raise Problem(429, f"You have {settings.max_queued_per_user} messages waiting, the most one user may; "
                      "send this one once one of them has started.", slug="queue-full",
                      headers={"Retry-After": str(retry_after_seconds(ahead, start_rate()))}) from None
    if message is None:
        raise Problem(404, "No such conversation.")
    if quota:
        charge_message(session, user, settings)
    body = {
        "conversation_id": str(message.conversation_id),
        # A row with a Message's columns, and how many will start before it.
        "message": message_json(message, queue=queue_position(message.ahead, start_rate)),  # type: ignore[arg-type]
        "poll_url": POLL_URL.format(message.id),
    }
    if idempotency is not None:
        remember_answer(session, user, idempotency[0], body)
    return Accepted(202, body, message.id, interrupted=interrupted)


def _title_from(content: str) -> str:
    first_line = " ".join(content.split())
    return first_line[:DEFAULT_TITLE_CHARS]

