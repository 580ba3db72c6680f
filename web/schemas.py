"""Request bodies and query strings, validated by pydantic; a failure names the field (422)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_CONTENT = 8000
MAX_PAGE = 100

Content = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CONTENT)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be only white space")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class NewConversation(_Body):
    title: Annotated[str, StringConstraints(max_length=200)] | None = None


class NewMessage(_Body):
    content: Content

    _blank = field_validator("content")(_not_blank)


class NewChat(_Body):
    message: Content
    conversation_id: str | None = None

    _blank = field_validator("message")(_not_blank)


class ConversationPage(BaseModel):
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    cursor: str | None = None


class MessagesQuery(BaseModel):
    after: int = Field(default=0, ge=0)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    wait: float = Field(default=0, ge=0, le=30)


class MessageQuery(BaseModel):
    wait: float = Field(default=0, ge=0, le=30)


class TasksQuery(BaseModel):
    status: str = Field(default="open", pattern="^(open|done|all)$")
