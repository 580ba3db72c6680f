"""Rows to the response schemas of the contract (web/schemas.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from models import Conversation, Message, Role, Task

from .schemas import AssistantMessageOut, ConversationOut, TaskOut, ToolCall, UserMessageOut


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def conversation_out(row: Conversation) -> ConversationOut:
    return ConversationOut(id=str(row.id), title=row.title, created_at=row.created_at, updated_at=row.updated_at)


def message_out(row: Message, reply: Message | None = None) -> UserMessageOut | AssistantMessageOut:
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
        return UserMessageOut(role="user", status=row.status.value, reply=answer, **common)  # type: ignore[arg-type]
    return AssistantMessageOut(
        role="assistant",
        reply_to=str(row.reply_to_id),
        tool_calls=[ToolCall.model_validate(call) for call in row.tool_calls or []],
        **common,
    )


def message_json(row: Message, reply: Message | None = None) -> dict[str, Any]:
    return dump(message_out(row, reply))


def conversation_json(row: Conversation) -> dict[str, Any]:
    return dump(conversation_out(row))


def task_json(row: Task) -> dict[str, Any]:
    return dump(TaskOut(id=str(row.id), title=row.title, done=row.done, created_at=row.created_at,
                        updated_at=row.updated_at))
