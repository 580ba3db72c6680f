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


def cancel_channel(message_id: uuid.UUID | str) -> str:
    """Told when a question being generated is cancelled: wakes the worker generating it (the
    cancel itself is already committed in Postgres, which the worker reads to be sure)."""
    return f"chatq:cancel:{message_id}"


def pieces_key(message_id: uuid.UUID | str, attempt: int) -> str:
    """A Redis Stream of the text one attempt has generated so far, piece by piece: what a client
    that connects mid-generation, on any node, is sent first. Expires; the committed reply is the
    truth."""
    return f"chatq:pieces:{message_id}:{attempt}"


# The generations started in the last minute (a random name -> unix time), service-wide:
# the recent start rate, from which a queued message's wait is estimated. Expires.
RECENT_STARTS_KEY = "chatq:recent-starts"


def user_starts_key(bucket: int) -> str:
    """The same per user (a sorted set of user id -> starts): the busiest users' share, for operators."""
    return f"chatq:starts-by-user:{bucket}"
