"""The reply-engine interface. An engine turns a conversation's history into the next reply,
calling the todo tools on the way; the worker persists what it returns."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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


class Cancellation:
    """Set when the user cancelled the question being generated (the worker's watcher learns it
    from Redis or Postgres), or when the worker is stopping and must give the question back.
    Engines check it between steps, wait on it instead of sleeping, and register what must be
    closed at once — a model's HTTP stream — with `closing`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        # "user": the question was cancelled; "shutdown": the worker is stopping and gives it back.
        self.reason: str | None = None

    def cancel(self, reason: str = "user") -> None:
        with self._lock:
            self.reason = self.reason or reason
            self._event.set()
            closers, self._closers = self._closers, []
        for close in closers:
            # Best effort: the engine stops at its next check anyway.
            with contextlib.suppress(Exception):
                close()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep `seconds`, or less when cancelled; True when cancelled."""
        return self._event.wait(seconds)

    @contextmanager
    def closing(self, close: Callable[[], None]) -> Iterator[None]:
        """While inside, a cancel calls `close` (from the watcher's thread)."""
        with self._lock:
            if self._event.is_set():
                close()
            self._closers.append(close)
        try:
            yield
        finally:
            with self._lock:
                if close in self._closers:
                    self._closers.remove(close)


@dataclass(frozen=True)
class AppRequest:
    """What an app asked of the answer through /v1/responses (docs/openai.md): `instructions` (the
    model's system prompt), function tools of its own in Chat Completions' shape (a call of one
    ends the reply: the app runs it and answers with its output), `tool_choice`, and a cap on the
    answer's tokens. Engines without a model read none of it."""

    instructions: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None
    max_output_tokens: int | None = None

    @classmethod
    def of(cls, options: dict[str, Any] | None) -> AppRequest:
        options = options or {}
        return cls(instructions=options.get("instructions"), tools=options.get("tools") or [],
                   tool_choice=options.get("tool_choice"), max_output_tokens=options.get("max_output_tokens"))


@dataclass(frozen=True)
class ReplyRequest:
    user: str
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    content: str
    history: History
    tools: TodoTools
    # Called with each piece of text as a streaming engine produces it. Text handed on is never
    # taken back (a client of the Responses API may hold it): a request retried mid-stream, a tool
    # step after text, an attempt after a crash — each continues the text, never starts it again.
    on_delta: Callable[[str], None] | None = None
    # The reply's text an earlier attempt already handed on (a worker died mid-reply): the reply
    # begins with it, and the engine hands on only what follows (`continued`).
    written: str = ""
    app: AppRequest = field(default_factory=AppRequest)
    # The question answers the app's function calls: their outputs, [{"call_id", "output"}].
    tool_outputs: list[dict[str, Any]] | None = None
    cancellation: Cancellation = field(default_factory=Cancellation)
    # What the engine reserved for this request before its message was claimed (ReplyEngine.reserve).
    reserved: Reserved | None = None


class Reserved(Protocol):
    """Room on a model server held for the next request (a model server's slot)."""

    def release(self) -> None: ...


@dataclass(frozen=True)
class Reply:
    content: str
    tool_calls: list[dict[str, Any]]
    # "stop", "cancelled" (the text written before the cancel) or "length" (cut at the output limit).
    finish: str = "stop"
    usage: dict[str, int] | None = None  # {"prompt_tokens", "completion_tokens"}, as a model reported them
    context: dict[str, int] | None = None  # {"messages_sent", "messages_total"}: how much history was sent
    model: str | None = None  # the model that wrote it (a model server's; None: the built-in engine)
    pieces: list[int] | None = None  # the lengths of the pieces it was handed on in (the worker sets it)


def continued(written: str, text: str) -> str:
    """The reply of an attempt that regenerated `text` whole after an earlier one handed on
    `written`: the text itself when it begins with what was handed on (a deterministic engine, as
    the built-in one is), else what was handed on, a blank line, and the new text — never a reply
    that contradicts what a client already holds."""
    if not written or text.startswith(written):
        return text
    return f"{written}\n\n{text}"


class ReplyEngine(Protocol):
    def reserve(self, stopping: Callable[[], bool]) -> Reserved | None:
        """Room for one request, taken before a message is claimed, so that a message starts only
        when the engine can take it (None: nothing to reserve). TransientEngineError: no room came
        in time, or `stopping()` said this worker is stopping."""
        ...

    def reply(self, request: ReplyRequest) -> Reply: ...
