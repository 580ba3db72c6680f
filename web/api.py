"""The v1 API: conversations, messages, chat and tasks. Views are a handful of lines each."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

import structlog
from flask import Blueprint, Response, g, jsonify
from sqlalchemy import delete, select, tuple_, update

from models import UNFINISHED, Conversation, Lane, Status, Task
from models.coordination.messaging import announce, request_cancel, send_answer_job
from models.coordination.queue_figures import start_rate
from models.coordination.signals import conversation_channel, message_channel
from models.representation import message_json
from models.sql.queries import (
    owned_messages_after,
    parse_uuid,
    replies_to,
)

from . import schemas
from .accept import Asked, Lifetime, accept_message, is_one_statement
from .auth import authenticate
from .inputs import idempotency_of, json_body, query
from .problems import Problem
from .quotas import usage_today
from .serialize import conversation_json, task_json
from .services import after_commit, reader, services, transaction
from .shown import (
    committed_message,
    conversation_or_404,
    message_view,
    partials,
    refreshed_or_404,
    with_queue_positions,
)
from .spec import operation
from .waiting.longpoll import wait_for
from .writes import refuse_while_erasing

bp = Blueprint("api", __name__, url_prefix="/api/v1")
log = structlog.get_logger(__name__)
IDEMPOTENCY_HEADER = {"Idempotency-Key": "1-255 printable characters; a retry with it replays the first answer"}
PENDING_RETRY_AFTER = "1"  # seconds a plain poller should wait before asking again


@bp.before_request
def _identify() -> None:
    authenticate()


# Conversations ---------------------------------------------------------------------------------


@bp.post("/conversations")
@operation("Start a conversation", body=schemas.NewConversation, responses={201: schemas.ConversationOut})
def create_conversation() -> tuple[dict[str, Any], int]:
    body = json_body(schemas.NewConversation)
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        row = Conversation(user_id=g.user, title=(body.title or "New conversation").strip(), ttl_days=body.ttl_days,
                           temporary=body.temporary)
        session.add(row)
    return conversation_json(row), 201


def _encode_cursor(row: Conversation) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, ident = raw.partition("|")
        parsed = parse_uuid(ident)
        if parsed is None:
            raise ValueError(ident)
        return datetime.fromisoformat(moment), parsed
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(422, "cursor: not a cursor this API handed out", slug="invalid-field") from None


@bp.get("/conversations")
@operation("List conversations, newest first", query=schemas.ConversationPage,
           responses={200: schemas.ConversationList})
def list_conversations() -> dict[str, Any]:
    page = query(schemas.ConversationPage)
    statement = select(Conversation).where(Conversation.user_id == g.user)
    if page.cursor:
        statement = statement.where(
            tuple_(Conversation.created_at, Conversation.id) < tuple_(*_decode_cursor(page.cursor))
        )
    rows = list(
        reader().scalars(
            statement.order_by(Conversation.created_at.desc(), Conversation.id.desc()).limit(page.limit + 1)
        )
    )
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    return {
        "items": [conversation_json(row) for row in rows],
        "next_cursor": _encode_cursor(rows[-1]) if more else None,
    }


@bp.get("/conversations/<conversation_id>")
@operation("Get a conversation", responses={200: schemas.ConversationOut})
def get_conversation(conversation_id: str) -> dict[str, Any]:
    return conversation_json(conversation_or_404(conversation_id))


@bp.patch("/conversations/<conversation_id>")
@operation("Rename a conversation, or change how long it is kept", body=schemas.ConversationChange,
           responses={200: schemas.ConversationOut})
def change_conversation(conversation_id: str) -> dict[str, Any]:
    body = json_body(schemas.ConversationChange)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if changes.get("title") is not None:
        changes["title"] = changes["title"].strip() or "New conversation"
    for name in ("title", "temporary"):
        if name in changes and changes[name] is None:
            raise Problem(422, f"{name}: may not be null", slug="invalid-field")
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        row = conversation_or_404(conversation_id, session)
        # Not its updated_at: that is its last message's arrival, which retention counts from.
        session.execute(update(Conversation).where(Conversation.id == row.id)
                        .values(**changes, updated_at=Conversation.updated_at)
                        .execution_options(synchronize_session="fetch"))
        refreshed_or_404(session, row, "conversation")
    return conversation_json(row)


@bp.delete("/conversations/<conversation_id>")
@operation("Delete a conversation and its messages", responses={204: None})
def delete_conversation(conversation_id: str) -> tuple[str, int]:
    with transaction() as session:
        row = conversation_or_404(conversation_id, session)
        session.execute(delete(Conversation).where(Conversation.id == row.id))
    return "", 204


# Messages --------------------------------------------------------------------------------------


# Fields whose default stays out of an Idempotency-Key's fingerprint: keys stored before the field
# existed still match their retries.
_FINGERPRINT_DEFAULTS = {"on_busy": "enqueue", "priority": "interactive", "expires_in": None, "ttl_days": None,
                         "temporary": False}


def _accepted(content: str, conversation_id: str | None, route: str, payload: dict[str, Any]) -> Response:
    on_busy = payload.get("on_busy", "enqueue")
    asked = Asked(lane=Lane.BATCH if payload.get("priority") == "batch" else Lane.INTERACTIVE,
                  weight=services().settings.weight_of(g.tier), expires_in=payload.get("expires_in"))
    lifetime = Lifetime(ttl_days=payload.get("ttl_days"), temporary=payload.get("temporary", False))
    for name, default in _FINGERPRINT_DEFAULTS.items():
        if payload.get(name, default) == default:
            payload.pop(name, None)
    idempotency = idempotency_of(route, payload)
    settings = services().settings
    arguments = {"user": g.user, "content": content, "conversation_id": conversation_id,
                 "request_id": g.request_id, "idempotency": idempotency, "on_busy": on_busy, "settings": settings,
                 "asked": asked, "lifetime": lifetime, "start_rate": lambda: start_rate(services().redis)}
    redis = services().redis
    # Accepting a plain message is one statement: no transaction around it (no BEGIN/COMMIT round
    # trips); with a key, on_busy or a quota it is several, committed together.
    with transaction(autocommit=is_one_statement(settings, idempotency, on_busy)) as session:
        accepted = accept_message(session, **arguments)
        conversation = accepted.body["conversation_id"]
        stopping = [ident for ident, status in accepted.interrupted if status is Status.CANCELLING]
        if stopping:
            after_commit(request_cancel, redis, stopping)
        for ident, status in accepted.interrupted:
            after_commit(announce, redis, conversation, ident, status.value)
        if accepted.message_id is not None:
            after_commit(send_answer_job, services().producer, accepted.message_id, g.request_id)
            after_commit(announce, redis, conversation, accepted.message_id, Status.QUEUED.value)
    structlog.contextvars.bind_contextvars(user=g.user, conversation_id=conversation,
                                           message_id=accepted.body["message"]["id"])
    log.info("message_accepted", replayed=accepted.replayed, interrupted=[str(i) for i, _ in accepted.interrupted])
    response = jsonify(accepted.body)
    response.status_code = accepted.status
    response.headers["Location"] = accepted.body["poll_url"]
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/conversations/<conversation_id>/messages")
@operation("Send a message into a conversation", body=schemas.NewMessage, responses={202: schemas.Accepted},
           headers=IDEMPOTENCY_HEADER)
def post_message(conversation_id: str) -> Response:
    body = json_body(schemas.NewMessage)
    return _accepted(body.content, conversation_id, f"conversations/{conversation_id}/messages",
                     body.model_dump())  # on_busy is taken out of the fingerprint when it is the default


@bp.post("/chat")
@operation("Send a message, starting a conversation when none is given", body=schemas.NewChat,
           responses={202: schemas.Accepted}, headers=IDEMPOTENCY_HEADER)
def chat() -> Response:
    body = json_body(schemas.NewChat)
    return _accepted(body.message, body.conversation_id, "chat", body.model_dump())


@bp.get("/messages/<message_id>")
@operation("Get a message; with wait, return once it is answered or failed", query=schemas.MessageQuery,
           responses={200: schemas.AnyMessage})
def get_message(message_id: str) -> Response:
    params = query(schemas.MessageQuery)
    ident = parse_uuid(message_id)
    if ident is None:  # answered before anything waits
        raise Problem(404, "No such message.")
    if params.wait > 0:
        # The channel is named by the canonical id: "ABC…", "{abc…}" and "abc…" are one message.
        # The worker's final notification carries the message as just committed: a woken long-poll
        # answers with it and does not read it again (docs/decisions/0010).
        body = wait_for(message_channel(ident), lambda: message_view(ident), params.wait,
                        answer=committed_message(ident))
    else:
        body, _ = message_view(ident)
    with_queue_positions([body])
    response = jsonify(body)
    if body.get("status") in UNFINISHED:
        response.headers["Retry-After"] = PENDING_RETRY_AFTER
    return response


def _messages_after(conversation_id: uuid.UUID, after: int, limit: int) -> tuple[dict[str, Any], bool]:
    session = reader()
    rows = owned_messages_after(session, g.user, conversation_id, after, limit)
    if rows is None:
        raise Problem(404, "No such conversation.")
    replies = replies_to(session, [row.id for row in rows])
    written = partials(rows)
    items = [message_json(row, replies.get(row.id), written.get(row.id)) for row in rows]
    return {"items": items, "last_seq": rows[-1].seq if rows else after}, bool(items)


@bp.get("/conversations/<conversation_id>/messages")
@operation("Messages after a seq, in order; with wait, return once one exists", query=schemas.MessagesQuery,
           responses={200: schemas.MessageList})
def list_messages(conversation_id: str) -> dict[str, Any]:
    params = query(schemas.MessagesQuery)
    ident = parse_uuid(conversation_id)
    if ident is None:
        raise Problem(404, "No such conversation.")
    if params.wait <= 0:
        page = _messages_after(ident, params.after, params.limit)[0]
    else:
        # Whose the conversation is, and what is new in it, in one statement at every read.
        page = wait_for(conversation_channel(ident), lambda: _messages_after(ident, params.after, params.limit),
                        params.wait, wake=lambda change: change.get("status") != Status.PROCESSING)
    with_queue_positions(page["items"])
    return page


# Tasks -----------------------------------------------------------------------------------------


@bp.get("/tasks")
@operation("The todo list", query=schemas.TasksQuery, responses={200: schemas.TaskList})
def list_tasks() -> dict[str, Any]:
    params = query(schemas.TasksQuery)
    statement = select(Task).where(Task.user_id == g.user)
    if params.status != "all":
        statement = statement.where(Task.done.is_(params.status == "done"))
    rows = reader().scalars(statement.order_by(Task.created_at, Task.id))
    return {"items": [task_json(row) for row in rows]}


# Usage -----------------------------------------------------------------------------------------


@bp.get("/usage")
@operation("The user's use today (UTC) and the daily limits", responses={200: schemas.Usage})
def usage() -> dict[str, Any]:
    return schemas.Usage.model_validate(usage_today(reader(), g.user, services().settings)).model_dump(mode="json")
