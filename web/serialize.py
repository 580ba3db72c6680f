"""Rows to the JSON shapes of the contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from models import Conversation, Message, Role, Task


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def conversation_json(row: Conversation) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "title": row.title,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
    }


def message_json(row: Message, reply: Message | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(row.id),
        "conversation_id": str(row.conversation_id),
        "seq": row.seq,
        "role": row.role.value,
        "content": row.content,
        "created_at": rfc3339(row.created_at),
        "error": row.error,
    }
    if row.role is Role.USER:
        body["status"] = row.status.value if row.status else None
        body["reply"] = message_json(reply) if reply is not None else None
    else:
        body["reply_to"] = str(row.reply_to_id)
        body["tool_calls"] = row.tool_calls or []
    return body


def task_json(row: Task) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "title": row.title,
        "done": row.done,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
    }
