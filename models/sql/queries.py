"""Queries of the ORM models (the worker's own SQL is in worker/claim_sql.py). They take a session;
the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, literal, select, tuple_
from sqlalchemy.orm import Session, aliased

from ..tables.entities import Conversation, Message, Status, status_in


def parse_uuid(value: str) -> uuid.UUID | None:
    """Ids are opaque to clients; anything that is not one of ours simply does not exist."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


# Statements built once with bound values: building one costs more than running it, and waiting
# requests run them by the thousand (docs/decisions/0010). Immutable SQL constructs, not state.
_OWNED_CONVERSATION = select(Conversation).where(
    Conversation.id == bindparam("cid", type_=Conversation.id.type), Conversation.user_id == bindparam("user"))
_MESSAGES_AFTER = (
    select(Message)
    .where(Message.conversation_id == bindparam("cid", type_=Message.conversation_id.type),
           Message.seq > bindparam("after"))
    .order_by(Message.seq)
    .limit(bindparam("limit"))
)


def owned_conversation(session: Session, user: str, conversation_id: str) -> Conversation | None:
    cid = parse_uuid(conversation_id)
    if cid is None:
        return None
    return session.scalars(_OWNED_CONVERSATION, {"cid": cid, "user": user}).one_or_none()


_OWNED_MESSAGES_AFTER = (
    select(Conversation.id, Message)
    .outerjoin(Message, and_(Message.conversation_id == Conversation.id, Message.seq > bindparam("after")))
    .where(Conversation.id == bindparam("cid", type_=Conversation.id.type), Conversation.user_id == bindparam("user"))
    .order_by(Message.seq)
    .limit(bindparam("limit"))
)


def owned_messages_after(session: Session, user: str, conversation_id: uuid.UUID, after: int,
                         limit: int) -> list[Message] | None:
    """The user's conversation's messages with seq above `after`, in order, at most `limit`; None
    when the conversation is not theirs (or does not exist). One statement: a long-poll runs it at
    every start."""
    rows = session.execute(_OWNED_MESSAGES_AFTER, {"cid": conversation_id, "user": user, "after": after,
                                                   "limit": limit}).all()
    return [message for _, message in rows if message is not None] if rows else None


def messages_after(session: Session, conversation_id: uuid.UUID, after: int, limit: int | None) -> list[Message]:
    """The conversation's messages with seq above `after`, in order, at most `limit` (None: all; the
    caller checked the conversation is the user's)."""
    return list(session.scalars(_MESSAGES_AFTER, {"cid": conversation_id, "after": after, "limit": limit}))


# Built once: making an alias is costly (docs/decisions/0010). An immutable SQL construct, not state.
_REPLY = aliased(Message, name="reply")


_OWNED_MESSAGE_WITH_REPLY = (
    select(Message, _REPLY)
    .join(Conversation, Conversation.id == Message.conversation_id)
    .outerjoin(_REPLY, and_(_REPLY.reply_to_id == Message.id, _REPLY.superseded.is_(False)))
    .where(Message.id == bindparam("mid", type_=Message.id.type), Conversation.user_id == bindparam("user"))
)


def owned_message_with_reply(session: Session, user: str, message_id: str) -> tuple[Message, Message | None] | None:
    """A message of the user's, with its reply if it has one: one statement (a long-poll runs it at
    its start and when woken)."""
    mid = parse_uuid(message_id)
    if mid is None:
        return None
    row = session.execute(_OWNED_MESSAGE_WITH_REPLY, {"mid": mid, "user": user}).one_or_none()
    return (row[0], row[1]) if row is not None else None


# The columns the API shows of a question and of a reply (models/representation.py), nothing more,
# as light rows: the message read of every poll and long-poll is the web tier's hottest read, and
# the ORM built an entity per row and described and loaded every column (what it cost:
# docs/decisions/0010). Immutable SQL constructs and row types.
_SHOWN = ("id", "conversation_id", "seq", "role", "content", "created_at", "error")
QUESTION_SHOWN = (*_SHOWN, "status", "attempts")
REPLY_SHOWN = (*_SHOWN, "reply_to_id", "tool_calls", "finish", "usage", "context", "superseded", "model")
ShownQuestion = namedtuple("ShownQuestion", QUESTION_SHOWN)
ShownReply = namedtuple("ShownReply", REPLY_SHOWN)
_messages = Message.__table__
_replies = _messages.alias("reply")
_SHOWN_MESSAGE_WITH_REPLY = (
    select(*(_messages.c[name] for name in QUESTION_SHOWN), *(_replies.c[name] for name in REPLY_SHOWN))
    .select_from(
        _messages.join(Conversation.__table__, Conversation.__table__.c.id == _messages.c.conversation_id)
        .outerjoin(_replies, and_(_replies.c.reply_to_id == _messages.c.id, _replies.c.superseded.is_(False)))
    )
    .where(_messages.c.id == bindparam("mid", type_=_messages.c.id.type),
           Conversation.__table__.c.user_id == bindparam("user"))
)


def shown_message_with_reply(connection: Connection, user: str,
                             message_id: uuid.UUID) -> tuple[ShownQuestion, ShownReply | None] | None:
    """What the API shows of a message of the user's and of its reply (None: no reply yet), in one
    statement; None when the message is not theirs. For reading; `owned_message_with_reply` gives
    the ORM rows, to change them."""
    row = connection.execute(_SHOWN_MESSAGE_WITH_REPLY, {"mid": message_id, "user": user}).first()
    if row is None:
        return None
    split = len(QUESTION_SHOWN)
    reply = ShownReply._make(row[split:]) if row[split] is not None else None
    return ShownQuestion._make(row[:split]), reply


def replies_to(session: Session, message_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Message]:
    """The current reply of each question that has one."""
    if not message_ids:
        return {}
    rows = session.scalars(select(Message).where(Message.reply_to_id.in_(message_ids), Message.superseded.is_(False)))
    return {row.reply_to_id: row for row in rows if row.reply_to_id is not None}


def reply_versions(session: Session, question_id: uuid.UUID) -> list[Message]:
    """Every reply a question has had, newest first."""
    return list(session.scalars(select(Message).where(Message.reply_to_id == question_id)
                                .order_by(Message.seq.desc())))


# How many messages will start before a queued one, counted up to AHEAD_COUNTED: the queued messages
# that come first in the claim's order, ready_order(), from ix_messages_ready. Not exact where a
# message waits on behind an earlier one of its own conversation (docs/scheduler.md).
AHEAD_COUNTED = 10_000


def ready_order(messages: Any) -> tuple[Any, Any, Any, Any]:
    """The order in which queued messages start: interactive lane first, then by virtual start time
    (fair_tag); equal times first come, first served, and by id when stored in the same instant.
    The claim (worker/claim_sql.py) and the count below both follow it."""
    return messages.c.lane, messages.c.fair_tag, messages.c.created_at, messages.c.id


def ahead_of(message: Any) -> Any:
    """A scalar subquery: for the row `message` (a messages table or alias) if queued, how many
    messages are ahead of it; NULL otherwise. Labelled `ahead`."""
    queued = _messages.alias("ahead_of_it")
    earlier = (
        select(literal(1))
        # The status written into the SQL: a prepared statement's generic plan can then count in
        # ix_messages_ready, whose predicate it implies (bound, the plan scanned the whole table).
        .where(status_in(queued.c.status, Status.QUEUED), tuple_(*ready_order(queued)) < tuple_(*ready_order(message)))
        .correlate(message)  # two levels up: SQLAlchemy would otherwise add `message` to this FROM
        .limit(AHEAD_COUNTED)
        .subquery()
    )
    counted = select(func.count()).select_from(earlier).scalar_subquery()
    return case((message.c.status == Status.QUEUED, counted), else_=None).label("ahead")


_QUEUE_POSITIONS = select(_messages.c.id, ahead_of(_messages)).where(
    _messages.c.id.in_(bindparam("ids", expanding=True)), status_in(_messages.c.status, Status.QUEUED))
_FIRST_IN_QUEUE = (
    select(ahead_of(_messages))
    .where(_messages.c.user_id == bindparam("user"), status_in(_messages.c.status, Status.QUEUED))
    .order_by(*ready_order(_messages))
    .limit(1)
)


def queue_positions(connection: Connection, message_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many messages are ahead of each of these that is queued, in one statement."""
    if not message_ids:
        return {}
    return {row.id: row.ahead for row in connection.execute(_QUEUE_POSITIONS, {"ids": list(message_ids)})}


def ahead_of_users_first(connection: Connection, user: str) -> int:
    """How many messages are ahead of the user's first waiting one (0 when none waits)."""
    return connection.execute(_FIRST_IN_QUEUE, {"user": user}).scalar() or 0
