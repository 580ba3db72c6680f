"""How a message is shown — to an API client, an event stream, or a webhook receiver: the response
schemas of the contract's Message (pydantic, also the source of the OpenAPI document) and the
functions that turn rows into them. Here, not in web/, because the worker sends messages too (the
payload of a webhook event) and web and worker never import each other."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from .coordination.messaging import WrittenSoFar
from .tables.entities import GENERATING, Message, Role, Status


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A time as the contract writes it: RFC 3339 in UTC ("…Z"), whatever the database session's zone.
# On the time fields only: a serializer on every field ("*") cost more than the rest of writing an
# export's message (BENCHMARKS.md, "A user's data").
UtcTime = Annotated[datetime, PlainSerializer(_rfc3339, when_used="json")]


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ToolCall(Out):
    name: str
    arguments: dict[str, Any]
    # What chatq's tool answered; none for a call of the app's own tool (`client`: the app runs
    # it and answers with the next question: docs/openai.md).
    result: dict[str, Any] | None = None
    client: bool = False


class TokenUsage(Out):
    prompt_tokens: int
    completion_tokens: int


class ContextSent(Out):
    messages_sent: int
    messages_total: int


class Partial(Out):
    """What the generation of a `processing` question has written so far."""

    attempt: int
    text: str
    pieces: int = Field(description="how many streamed pieces the text holds: the index of the next delta")


class QueuePosition(Out):
    """Where a `queued` question stands: an estimate, from the order the scheduler would start
    the waiting messages in and the recent rate of starts."""

    ahead: int = Field(description="how many messages will start before this one (counted up to 10,000)")
    eta_seconds: int | None = Field(description="when this one is expected to start; null when no start was "
                                                "seen recently to estimate from")


class AssistantMessageOut(Out):
    id: str
    conversation_id: str
    seq: int
    role: Literal["assistant"]
    content: str
    created_at: UtcTime
    error: str | None
    reply_to: str
    tool_calls: list[ToolCall]
    finish: Literal["stop", "cancelled", "length"]
    usage: TokenUsage | None
    context: ContextSent | None = Field(description="how much of the history a model was sent")
    model: str | None = Field(default=None, description="the model that wrote it; null for the built-in engine")
    current: bool = Field(description="false for an earlier version, replaced by a regenerate")


class UserMessageOut(Out):
    id: str
    conversation_id: str
    seq: int
    role: Literal["user"]
    content: str
    created_at: UtcTime
    error: str | None
    status: Literal["queued", "processing", "cancelling", "answered", "failed", "cancelled", "expired"]
    reply: AssistantMessageOut | None
    partial: Partial | None
    queue: QueuePosition | None = Field(default=None, description="while queued: its place in the queue")
    context: ContextSent | None = Field(description="its reply's: how much of the history a model was sent")


MessageOut = Annotated[UserMessageOut | AssistantMessageOut, Field(discriminator="role")]


class ReplyVersion(AssistantMessageOut):
    question_content: str = Field(description="the question's text this version answered")


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def message_out(row: Message, reply: Message | None = None, partial: WrittenSoFar | None = None,
                queue: dict[str, Any] | None = None) -> UserMessageOut | AssistantMessageOut:
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
        if row.status in GENERATING:  # what was written so far; a new attempt starts again
            shown = Partial(attempt=row.attempts, text=partial.text, pieces=partial.pieces) \
                if partial is not None and partial.attempt == row.attempts else \
                Partial(attempt=row.attempts, text="", pieces=0)
        waiting = QueuePosition.model_validate(queue) if queue is not None and row.status is Status.QUEUED else None
        return UserMessageOut(role="user", status=row.status.value, reply=answer, partial=shown,  # type: ignore[arg-type]
                              queue=waiting, context=answer.context if answer is not None else None, **common)
    return AssistantMessageOut(role="assistant", **_assistant(row), **common)


def _assistant(row: Message) -> dict[str, Any]:
    return {
        "reply_to": str(row.reply_to_id),
        "tool_calls": [ToolCall.model_validate(call) for call in row.tool_calls or []],
        "finish": row.finish.value if row.finish is not None else "stop",
        "usage": row.usage,
        "context": row.context,
        "model": row.model,
        "current": not row.superseded,
    }


def message_json(row: Message, reply: Message | None = None, partial: WrittenSoFar | None = None,
                 queue: dict[str, Any] | None = None) -> dict[str, Any]:
    return dump(message_out(row, reply, partial, queue))


def version_out(row: Message, question: Message) -> ReplyVersion:
    """A reply as one of its question's versions, with the question's text it answered."""
    common = {"id": str(row.id), "conversation_id": str(row.conversation_id), "seq": row.seq, "content": row.content,
              "created_at": row.created_at, "error": row.error}
    return ReplyVersion(role="assistant", question_content=row.question_content or question.content,
                        **_assistant(row), **common)


def version_json(row: Message, question: Message) -> dict[str, Any]:
    return dump(version_out(row, question))
