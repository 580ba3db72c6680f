"""Rows to the response schemas of the contract (web/schemas.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from models import Conversation, Message, Role, Status, Task
from models.messaging import Partial

from .schemas import AssistantMessageOut, ConversationOut, ReplyVersion, TaskOut, ToolCall, UserMessageOut
from .schemas import Partial as PartialOut


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def conversation_out(row: Conversation) -> ConversationOut:
    return ConversationOut(id=str(row.id), title=row.title, created_at=row.created_at, updated_at=row.updated_at)


def message_out(row: Message, reply: Message | None = None,
                partial: Partial | None = None) -> UserMessageOut | AssistantMessageOut:
    common = {
        "id": str(row.id),
        "conversation_id": str(row.conversation_id),
        "seq": row.seq,
        "content": row.content,
        "created_at": row.created_at,
        "error": row.error,
    }
    if row.role is Role.USER:
        assert row.status is not None
        answer = message_out(reply) if reply is not None else None
        shown = None
        if row.status is Status.PROCESSING:  # what was written so far; a new attempt starts again
            shown = PartialOut(attempt=row.attempts, text=partial.text, pieces=partial.pieces) \
                if partial is not None and partial.attempt == row.attempts else \
                PartialOut(attempt=row.attempts, text="", pieces=0)
        return UserMessageOut(role="user", status=row.status.value, reply=answer, partial=shown,  # type: ignore[arg-type]
                              context=answer.context if answer is not None else None, **common)
    return AssistantMessageOut(role="assistant", **_assistant(row), **common)


def _assistant(row: Message) -> dict[str, Any]:
    return {
        "reply_to": str(row.reply_to_id),
        "tool_calls": [ToolCall.model_validate(call) for call in row.tool_calls or []],
        "finish": row.finish.value if row.finish is not None else "stop",
        "usage": row.usage,
        "context": row.context,
        "current": not row.superseded,
    }


def message_json(row: Message, reply: Message | None = None, partial: Partial | None = None) -> dict[str, Any]:
    return dump(message_out(row, reply, partial))


def version_json(row: Message, question: Message) -> dict[str, Any]:
    """A reply as one of its question's versions, with the question's text it answered."""
    common = {"id": str(row.id), "conversation_id": str(row.conversation_id), "seq": row.seq, "content": row.content,
              "created_at": row.created_at, "error": row.error}
    return dump(ReplyVersion(role="assistant", question_content=row.question_content or question.content,
                             **_assistant(row), **common))


def conversation_json(row: Conversation) -> dict[str, Any]:
    return dump(conversation_out(row))


def task_json(row: Task) -> dict[str, Any]:
    return dump(TaskOut(id=str(row.id), title=row.title, done=row.done, created_at=row.created_at,
                        updated_at=row.updated_at))
