"""Queries of the ORM models (the worker's own SQL is in worker/claim_sql.py). They take a session;
the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from .entities import Conversation, Message


def parse_uuid(value: str) -> uuid.UUID | None:
    """Ids are opaque to clients; anything that is not one of ours simply does not exist."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


def owned_conversation(session: Session, user: str, conversation_id: str) -> Conversation | None:
    cid = parse_uuid(conversation_id)
    if cid is None:
        return None
    return session.scalars(
        select(Conversation).where(Conversation.id == cid, Conversation.user_id == user)
    ).one_or_none()


# Built once: making an alias is costly (a fifth of the web process's CPU under load when it was
# made per request, measured with py-spy --gil). It is an immutable SQL construct, not state.
_REPLY = aliased(Message, name="reply")


def owned_message_with_reply(session: Session, user: str, message_id: str) -> tuple[Message, Message | None] | None:
    """A message of the user's, with its reply if it has one: one statement."""
    mid = parse_uuid(message_id)
    if mid is None:
        return None
    row = session.execute(
        select(Message, _REPLY)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .outerjoin(_REPLY, _REPLY.reply_to_id == Message.id)
        .where(Message.id == mid, Conversation.user_id == user)
    ).one_or_none()
    return (row[0], row[1]) if row is not None else None


def replies_to(session: Session, message_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Message]:
    if not message_ids:
        return {}
    rows = session.scalars(select(Message).where(Message.reply_to_id.in_(message_ids)))
    return {row.reply_to_id: row for row in rows if row.reply_to_id is not None}
