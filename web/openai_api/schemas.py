"""The OpenAI-compatible API's bodies: what a call takes (only what chatq reads is declared; every
other field OpenAI defines is accepted and ignored, docs/openai.md lists them) and what it answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..schemas import storable

# The app's end user (`safety_identifier`, or the older `user`): within one chatq user, end users
# share that user's part of the workers fairly (migration 0014).
EndUser = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class OpenAIBody(BaseModel):
    # OpenAI's requests carry many fields chatq has no use for; an app must not have to strip them.
    model_config = ConfigDict(extra="allow")

    _text = field_validator("*")(storable)  # no NUL in any text a field holds, however nested


class ContentPart(OpenAIBody):
    type: str
    text: str | None = None


class ChatMessageIn(OpenAIBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, StringConstraints(max_length=8000)] | list[ContentPart] | None = None


class StreamOptions(OpenAIBody):
    include_usage: bool = False


class ChatCompletionIn(OpenAIBody):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=500)
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool = False
    n: int = Field(default=1, ge=1, le=1, description="one choice: chatq answers each message once")
    tools: list[dict[str, Any]] | None = None
    service_tier: Literal["auto", "default", "flex", "priority", "scale"] | None = None
    safety_identifier: EndUser | None = None
    user: EndUser | None = None  # OpenAI's older name for it


class ResponseIn(OpenAIBody):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    input: Annotated[str, StringConstraints(min_length=1, max_length=8000)] | list[dict[str, Any]] = Field(
        min_length=1, max_length=500)
    background: bool = False
    stream: bool = False
    store: bool = True
    previous_response_id: Annotated[str, StringConstraints(max_length=100)] | None = None
    conversation: Annotated[str, StringConstraints(max_length=100)] | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    service_tier: Literal["auto", "default", "flex", "priority", "scale"] | None = None
    safety_identifier: EndUser | None = None
    user: EndUser | None = None
    instructions: Annotated[str, StringConstraints(max_length=32_000)] | None = None
    max_output_tokens: int | None = Field(default=None, ge=16, le=1_000_000)
    tool_choice: str | dict[str, Any] | None = None
    metadata: dict[Annotated[str, StringConstraints(max_length=64)],
                   Annotated[str, StringConstraints(max_length=512)]] | None = Field(default=None, max_length=16)


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelOut(_Out):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Out):
    object: Literal["list"]
    data: list[ModelOut]


class ChatCompletionOut(_Out):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any]


class ResponseOut(_Out):
    id: str
    object: Literal["response", "response.deleted"]


class InputItemList(_Out):
    object: Literal["list"]
    data: list[dict[str, Any]]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: ErrorDetail
