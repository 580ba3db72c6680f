"""`/v1/conversations`: OpenAI's Conversations API over chatq's conversations — one and the same
thing, so a conversation begun on either API is continued and read on both. Its items are its
messages (items.py): a user's question, and the current reply to each (earlier versions of a
regenerated reply are not items). Adding items stores turns without asking for an answer; a
response (`conversation` on /v1/responses) asks.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from flask import Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from models import FINAL, Conversation, Message, Role

from ..control import cancel_question
from ..inputs import json_body
from ..problems import Problem
from ..services import reader, transaction
from ..shown import conversation_or_404
from ..spec import operation
from ..writes import refuse_while_erasing
from . import bp
from .chat import TITLE_CHARS, start_conversation, turn_rows
from .items import conversation_id, input_turns, message_item, parsed, parsed_item
from .schemas import OpenAIBody, OpenAIError

Metadata = dict[str, str]


class ConversationIn(OpenAIBody):
    items: list[dict[str, Any]] = Field(default_factory=list, max_length=20)
    metadata: Metadata | None = Field(default=None, max_length=16)


class MetadataIn(OpenAIBody):
    metadata: Metadata = Field(max_length=16)


class ItemsIn(OpenAIBody):
    items: list[dict[str, Any]] = Field(min_length=1, max_length=20)


class ConversationOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["conversation"]
    created_at: int
    metadata: Metadata


class ItemList(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: Literal["list"]
    data: list[dict[str, Any]]
    has_more: bool


def _checked(metadata: Metadata | None) -> Metadata | None:
    """OpenAI's limits: keys of at most 64 characters, values of at most 512."""
    for key, value in (metadata or {}).items():
        if len(key) > 64 or len(value) > 512:
            raise Problem(422, "metadata: keys are at most 64 characters, values at most 512", slug="invalid-field")
    return metadata


def conversation_object(row: Conversation) -> dict[str, Any]:
    return {"id": conversation_id(row.id), "object": "conversation", "created_at": _epoch(row.created_at),
            "metadata": row.app_metadata or {}}


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


def _owned(conversation: str, session: Session | None = None) -> Conversation:
    return conversation_or_404(str(parsed(conversation, "conv_", "conversation")), session)


@bp.post("/conversations")
@operation("OpenAI: create a conversation, with up to 20 items (turns, stored without an answer)",
           body=ConversationIn, responses={200: ConversationOut}, errors=OpenAIError)
def create_conversation() -> Response:
    body = json_body(ConversationIn)
    turns = input_turns(body.items, "items")
    title = next((" ".join(text.split())[:TITLE_CHARS] for role, text in turns if role is Role.USER), "")
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        ident = start_conversation(session, g.user, turns, title, temporary=False)
        session.execute(update(Conversation).where(Conversation.id == ident)
                        .values(app_metadata=_checked(body.metadata)))
        row = session.get(Conversation, ident)
        assert row is not None
        shown = conversation_object(row)
    return jsonify(shown)


@bp.get("/conversations/<conversation>")
@operation("OpenAI: a conversation", responses={200: ConversationOut}, errors=OpenAIError)
def get_conversation(conversation: str) -> Response:
    return jsonify(conversation_object(_owned(conversation)))


@bp.post("/conversations/<conversation>")
@operation("OpenAI: replace a conversation's metadata", body=MetadataIn, responses={200: ConversationOut},
           errors=OpenAIError)
def update_conversation(conversation: str) -> Response:
    body = json_body(MetadataIn)
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        row = _owned(conversation, session)
        row.app_metadata = _checked(body.metadata)
        session.flush()
        shown = conversation_object(row)
    return jsonify(shown)


@bp.delete("/conversations/<conversation>")
@operation("OpenAI: delete a conversation and its messages (as DELETE /api/v1/conversations/{id})",
           responses={200: ItemList}, errors=OpenAIError)
def delete_conversation(conversation: str) -> Response:
    with transaction() as session:
        row = _owned(conversation, session)
        session.execute(delete(Conversation).where(Conversation.id == row.id))
    return jsonify({"id": conversation, "object": "conversation.deleted", "deleted": True})


@bp.get("/conversations/<conversation>/items")
@operation("OpenAI: a conversation's items (its questions and their current replies), newest first "
           "unless order=asc; `after` is an item id", responses={200: ItemList}, errors=OpenAIError)
def list_items(conversation: str) -> Response:
    row = _owned(conversation)
    limit = request.args.get("limit", "20")
    if not re.fullmatch(r"[0-9]{1,3}", limit) or not 1 <= int(limit) <= 100:
        raise Problem(400, "limit: a number from 1 to 100", slug="invalid-field")
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise Problem(400, "order: asc or desc", slug="invalid-field")
    query = select(Message).where(Message.conversation_id == row.id, Message.superseded.is_(False))
    after = request.args.get("after")
    if after:
        cursor = _item(row.id, after).seq
        query = query.where(Message.seq > cursor if order == "asc" else Message.seq < cursor)
    query = query.order_by(Message.seq.asc() if order == "asc" else Message.seq.desc()).limit(int(limit) + 1)
    rows = list(reader().scalars(query))
    data = [message_item(message) for message in rows[:int(limit)]]
    return jsonify({"object": "list", "data": data, "has_more": len(rows) > int(limit),
                    "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


@bp.post("/conversations/<conversation>/items")
@operation("OpenAI: add up to 20 items to a conversation (stored as turns; nothing is answered)",
           body=ItemsIn, responses={200: ItemList}, errors=OpenAIError)
def add_items(conversation: str) -> Response:
    body = json_body(ItemsIn)
    turns = input_turns(body.items, "items")
    if not turns:
        raise Problem(400, "items: no user or assistant message among them", slug="unsupported-field")
    with transaction() as session:
        refuse_while_erasing(session, g.user)
        row = _owned(conversation, session)
        # Numbered after everything stored so far, in one statement that takes the row's lock.
        last = session.execute(update(Conversation).where(Conversation.id == row.id)
                               .values(last_seq=Conversation.last_seq + len(turns))
                               .returning(Conversation.last_seq)).scalar_one()
        rows = turn_rows(session, row.id, g.user, turns, first_seq=last - len(turns) + 1)
        data = [message_item(message) for message in rows]
    return jsonify({"object": "list", "data": data, "has_more": False, "first_id": data[0]["id"],
                    "last_id": data[-1]["id"]})


def _item(conversation: uuid.UUID, item: str, session: Session | None = None) -> Message:
    """The message an item id names in the conversation (a reply item: the question's current reply)."""
    message_id, is_reply = parsed_item(item)
    found = select(Message).where(Message.conversation_id == conversation, Message.superseded.is_(False))
    found = found.where(Message.reply_to_id == message_id if is_reply else Message.id == message_id)
    row = (session or reader()).scalars(found).first()
    if row is None or (not is_reply and row.role is Role.ASSISTANT and row.reply_to_id is not None):
        raise Problem(404, "No such item.")
    return row


@bp.get("/conversations/<conversation>/items/<item>")
@operation("OpenAI: one item of a conversation", responses={200: ItemList}, errors=OpenAIError)
def get_item(conversation: str, item: str) -> Response:
    return jsonify(message_item(_item(_owned(conversation).id, item)))


@bp.delete("/conversations/<conversation>/items/<item>")
@operation("OpenAI: delete an item (a question goes with its replies; one being answered is cancelled first)",
           responses={200: ConversationOut}, errors=OpenAIError)
def delete_item(conversation: str, item: str) -> Response:
    owner = _owned(conversation)
    found = _item(owner.id, item)
    if found.role is Role.USER and found.status not in FINAL:
        cancel_question(str(found.id))  # nothing is generated for it after this
    with transaction() as session:
        session.execute(delete(Message).where(Message.id == found.id, Message.user_id == g.user))
        row = _owned(conversation, session)
        shown = conversation_object(row)
    return jsonify(shown)
