"""Change notifications through Redis pub/sub: a hint to re-read Postgres, never the truth."""

from __future__ import annotations

import uuid


def conversation_channel(conversation_id: uuid.UUID | str) -> str:
    return f"chatq:conversation:{conversation_id}"


def delta_channel(conversation_id: uuid.UUID | str) -> str:
    """Streamed text of replies being generated: for event streams only (long-polls do not wake)."""
    return f"chatq:conversation:{conversation_id}:deltas"


def message_channel(message_id: uuid.UUID | str) -> str:
    """A question's own channel: told when it is answered or fails (long-polls of one message)."""
    return f"chatq:message:{message_id}"
