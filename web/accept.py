"""Accepting a user message: one transaction stores it (and its idempotency record); the job is
sent only after that transaction has committed."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import Conversation, IdempotentRequest, Message, Role, Status
from models.queries import parse_uuid

from .problems import Problem
from .serialize import message_json

POLL_URL = "/api/v1/messages/{}"
DEFAULT_TITLE_CHARS = 60


@dataclass(frozen=True)
class Accepted:
    status: int
    body: dict[str, Any]
    message_id: uuid.UUID | None  # None for a replay: its job was sent by the first call
    replayed: bool = False


def fingerprint(route: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"route": route, "body": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _claim_key(session: Session, user: str, key: str, print_: str) -> IdempotentRequest | None:
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


def _next_seq(session: Session, user: str, conversation_id: uuid.UUID) -> int:
    """Number the next message; the row lock this takes orders concurrent posts."""
    seq = session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.user_id == user)
        .values(last_seq=Conversation.last_seq + 1)
        .returning(Conversation.last_seq)
    ).scalar_one_or_none()
    if seq is None:
        raise Problem(404, "No such conversation.")
    return seq


def accept_message(
    session: Session,
    *,
    user: str,
    content: str,
    conversation_id: str | None,
    request_id: str,
    idempotency: tuple[str, str] | None,
) -> Accepted:
    """Store a user message. `idempotency` is (key, fingerprint) when the client sent a key.
    The caller commits; nothing here is visible to anyone until then."""
    if idempotency is not None:
        stored = _claim_key(session, user, *idempotency)
        if stored is not None:
            return Accepted(stored.status_code, stored.body, None, replayed=True)

    if conversation_id is None:
        cid = session.execute(
            insert(Conversation)
            .values(user_id=user, title=_title_from(content), last_seq=1)
            .returning(Conversation.id)
        ).scalar_one()
        seq = 1
    else:
        parsed = parse_uuid(conversation_id)
        if parsed is None:
            raise Problem(404, "No such conversation.")
        cid, seq = parsed, _next_seq(session, user, parsed)

    message = Message(
        conversation_id=cid,
        seq=seq,
        role=Role.USER,
        content=content,
        status=Status.QUEUED,
        request_id=request_id,
        enqueued_at=func.now(),
    )
    session.add(message)
    session.flush()
    session.refresh(message, ["created_at", "enqueued_at"])
    body = {
        "conversation_id": str(cid),
        "message": message_json(message),
        "poll_url": POLL_URL.format(message.id),
    }
    if idempotency is not None:
        session.execute(
            update(IdempotentRequest)
            .where(IdempotentRequest.user_id == user, IdempotentRequest.key == idempotency[0])
            .values(status_code=202, body=body)
        )
    return Accepted(202, body, message.id)


def _title_from(content: str) -> str:
    first_line = " ".join(content.split())
    return first_line[:DEFAULT_TITLE_CHARS]

