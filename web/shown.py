"""What the views show of the signed-in user's conversations and messages beyond their rows: the
conversation or its 404, the text a generation has written so far, and a queued question's place in
the queue. Shared by the API's views (web/api.py) and the event stream (web/waiting/stream.py)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from flask import g
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from models import FINAL, GENERATING, Conversation, Message, Status
from models.coordination.messaging import WrittenSoFar, read_partials
from models.coordination.queue_figures import queue_position, start_rate
from models.representation import message_json
from models.sql.queries import ShownQuestion, owned_conversation, queue_positions, shown_message_with_reply

from .problems import Problem
from .services import reader, services


def conversation_or_404(conversation_id: str, session: Session | None = None) -> Conversation:
    row = owned_conversation(session or reader(), g.user, conversation_id)
    if row is None:
        raise Problem(404, "No such conversation.")
    return row


def message_view(ident: uuid.UUID) -> tuple[dict[str, Any], bool]:
    """The user's message as the API shows it (with its reply, or the text written so far), and
    whether its status is final; 404 for another user's or no message."""
    found = shown_message_with_reply(reader().connection(), g.user, ident)
    if found is None:
        raise Problem(404, "No such message.")
    row, reply = found
    return message_json(row, reply, partials([row]).get(row.id)), row.status in FINAL


def committed_message(ident: uuid.UUID) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """For a long-poll of one message: the message as just committed, when the notification that
    woke it carries it (the worker's final one does), so that it need not be read again."""
    def carried(change: dict[str, Any]) -> dict[str, Any] | None:
        message = change.get("message")
        # Ownership was checked by the wait's first read; the channel is this message's own.
        return message if isinstance(message, dict) and message.get("id") == str(ident) else None

    return carried


def refreshed_or_404(session: Session, row: Conversation | Message, what: str) -> None:
    """Read the row again in this transaction; 404 when a concurrent DELETE (of it, or of its
    conversation) has taken it meanwhile, as for any id that does not exist."""
    try:
        session.refresh(row)
    except InvalidRequestError:  # "Could not refresh instance": the row is gone
        raise Problem(404, f"No such {what}.") from None


def partials(rows: Sequence[Message | ShownQuestion]) -> dict[uuid.UUID, WrittenSoFar]:
    """The text written so far for each question being generated (from Redis, where the worker
    keeps it while it generates), in one round trip; nothing when no question is."""
    return read_partials(services().redis, {row.id: row.attempts for row in rows if row.status in GENERATING})


def with_queue_positions(messages: list[dict[str, Any]]) -> None:
    """Each queued one of these messages (as shown) gets its place in the queue: read once, for
    what is answered, not at every wake-up of a wait."""
    queued = [message for message in messages if message.get("status") == Status.QUEUED]
    if not queued:
        return
    positions = queue_positions(reader().connection(), [uuid.UUID(message["id"]) for message in queued])
    rate = functools.cache(lambda: start_rate(services().redis))  # read once, if anything is ahead
    for message in queued:
        # Not counted: it started between its read and this count. Nothing is ahead of it.
        message["queue"] = queue_position(positions.get(uuid.UUID(message["id"]), 0), rate)
