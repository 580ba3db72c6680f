"""The reply-engine interface. An engine turns a conversation's history into the next reply,
calling the todo tools on the way; the worker persists what it returns."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .tools import TodoTools


class EngineError(Exception):
    """A reply could not be generated."""


class TransientEngineError(EngineError):
    """Worth trying again later (a timeout, a busy upstream)."""


class PermanentEngineError(EngineError):
    """Trying again will not help; the message fails with this text as its error."""


@dataclass(frozen=True)
class Turn:
    """One message of the history, as an engine sees it."""

    seq: int
    role: str
    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ReplyRequest:
    user: str
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    content: str
    history: list[Turn]
    tools: TodoTools
    # Called with each piece of text as a streaming engine produces it (a hint for live clients;
    # the committed reply is the truth).
    on_delta: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Reply:
    content: str
    tool_calls: list[dict[str, Any]]


class ReplyEngine(Protocol):
    def reply(self, request: ReplyRequest) -> Reply: ...
