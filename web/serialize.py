"""Rows to the response schemas of the contract (web/schemas.py)."""

from __future__ import annotations

from typing import Any

from models import Conversation, Task
from models.representation import dump

from .schemas import ConversationOut, TaskOut


def conversation_out(row: Conversation) -> ConversationOut:
    return ConversationOut(id=str(row.id), title=row.title, created_at=row.created_at, updated_at=row.updated_at,
                           ttl_days=row.ttl_days, temporary=row.temporary)


def conversation_json(row: Conversation) -> dict[str, Any]:
    return dump(conversation_out(row))


def task_json(row: Task) -> dict[str, Any]:
    return dump(TaskOut(id=str(row.id), title=row.title, done=row.done, created_at=row.created_at,
                        updated_at=row.updated_at))
