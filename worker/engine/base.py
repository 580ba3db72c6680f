"""The reply-engine interface. An engine turns a conversation's history into the next reply,
calling the todo tools on the way; the worker persists what it returns."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, overload

from .tools import TodoTools


class EngineError(Exception):
    """A reply could not be generated."""


class TransientEngineError(EngineError):
    """Worth trying again later (a timeout, a busy upstream)."""


class PermanentEngineError(EngineError):
    """Trying again will not help; the message fails with this text as its error."""


class Turn(NamedTuple):
    """One message of the history, as an engine sees it. Its tool calls stay JSON text until an
    engine reads them: a history may hold 10,000 turns, of which the built-in engine reads a few."""

    seq: int
    role: str
    content: str
    tool_calls_json: str | None = None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return json.loads(self.tool_calls_json) if self.tool_calls_json else []


class History(Sequence[Turn]):
    """A conversation's history, in seq order, loaded whole. Holds rows whose first four columns
    are (seq, role, content, tool calls as json text) and makes a Turn of one when an engine reads
    it: at 10,000 messages, building every Turn up front cost more than reading the rows."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[Sequence[Any]]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Turn: ...

    @overload
    def __getitem__(self, index: slice) -> list[Turn]: ...

    def __getitem__(self, index: int | slice) -> Turn | list[Turn]:
        if isinstance(index, slice):
            return [Turn(*row[:4]) for row in self._rows[index]]
        return Turn(*self._rows[index][:4])


@dataclass(frozen=True)
class ReplyRequest:
    user: str
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    content: str
    history: History
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
