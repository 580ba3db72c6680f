"""The API's request and response schemas (pydantic). They validate what clients send (a failure
is a 422 that names the field), shape what the API answers, and are the source of the OpenAPI
document (web/openapi.py) — one definition for all three."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, field_validator, model_validator

from models.representation import (  # the Message's schemas: web and worker (webhooks) show it alike
    MessageOut,
    Out,
    ReplyVersion,
    UserMessageOut,
    UtcTime,
)

_Out = Out

MAX_CONTENT = 8000
MAX_PAGE = 100

Content = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CONTENT)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be only white space")
    return value


def storable(value: Any) -> Any:
    """Every text a client sends may end in Postgres, whose text and jsonb cannot hold NUL (JSON can
    carry "\\u0000"): refused as the field's 422 here, rather than as a 500 at the INSERT; strings
    inside lists and objects (keys too) as well, walked without recursion however deep they nest.
    (A lone surrogate, "\\ud800", pydantic already refuses as no valid string.)"""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("must not contain NUL characters")
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, BaseModel):
            pending.extend(vars(item).values())
    return value


# Requests -----------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    _text = field_validator("*")(storable)  # every field of every body


# A conversation's own lifetime after its last message, in days (RETENTION_DAYS may shorten it).
TtlDays = Annotated[int, Field(ge=1, le=3650)]


class NewConversation(_Body):
    title: Annotated[str, StringConstraints(max_length=200)] | None = None
    ttl_days: TtlDays | None = None
    temporary: bool = Field(default=False, description="deleted a day after its last message")


class ConversationChange(_Body):
    """PATCH: the fields sent change; `ttl_days: null` returns the conversation to the operator's
    retention."""

    title: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    ttl_days: TtlDays | None = None
    temporary: bool | None = None


# What a POST does when the conversation is still answering an earlier question.
OnBusy = Literal["enqueue", "interrupt", "reject"]


# The scheduler's lane: "batch" is answered only on slots interactive work leaves idle.
Priority = Literal["interactive", "batch"]
# A message not started within this many seconds ends `expired` (at most a week).
ExpiresIn = Annotated[int, Field(ge=1, le=7 * 24 * 3600)]


class NewMessage(_Body):
    content: Content
    on_busy: OnBusy = "enqueue"
    priority: Priority = "interactive"
    expires_in: ExpiresIn | None = None

    _blank = field_validator("content")(_not_blank)


class NewChat(_Body):
    message: Content
    conversation_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    on_busy: OnBusy = "enqueue"
    priority: Priority = "interactive"
    expires_in: ExpiresIn | None = None
    # The new conversation's lifetime, as on POST /conversations (a conversation's own is PATCHed).
    ttl_days: TtlDays | None = None
    temporary: bool = Field(default=False, description="the new conversation is deleted a day after its last message")

    _blank = field_validator("message")(_not_blank)

    @model_validator(mode="after")
    def _lifetime_of_a_new_conversation_only(self) -> NewChat:
        if self.conversation_id is not None and (self.ttl_days is not None or self.temporary):
            raise ValueError("ttl_days and temporary start a new conversation's lifetime: PATCH "
                             "/conversations/{cid} changes an existing one's")
        return self


class Regenerate(_Body):
    content: Content | None = None

    @field_validator("content")
    @classmethod
    def _blank(cls, value: str | None) -> str | None:
        return _not_blank(value) if value is not None else None


WebhookEventType = Literal["message.answered", "message.failed", "message.cancelled", "message.expired",
                           "response.completed", "response.failed", "response.cancelled", "response.incomplete"]


class NewWebhook(_Body):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    events: list[WebhookEventType] = Field(default=["message.answered", "message.failed", "message.cancelled",
                                                   "message.expired"],
                                           min_length=1, max_length=8)


class NewKey(_Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]


class DevSignIn(_Body):
    user: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")

    _text = field_validator("*")(storable)


class ConversationPage(_Query):
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    cursor: str | None = None


class MessagesQuery(_Query):
    after: int = Field(default=0, ge=0, le=2**31 - 1)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    wait: float = Field(default=0, ge=0, le=30)


class MessageQuery(_Query):
    wait: float = Field(default=0, ge=0, le=30)


class EventsQuery(_Query):
    after: int = Field(default=0, ge=0, le=2**31 - 1)


class TasksQuery(_Query):
    status: Literal["open", "done", "all"] = "open"


class SearchQuery(_Query):
    q: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    limit: int = Field(default=20, ge=1, le=50)
    cursor: str | None = None
    order: Literal["newest", "relevance"] = "newest"


# Responses ----------------------------------------------------------------------------------------


class ConversationOut(_Out):
    id: str
    title: str
    created_at: UtcTime
    updated_at: UtcTime
    ttl_days: int | None = Field(description="kept this many days after its last message; null: the "
                                             "operator's retention")
    temporary: bool


class ConversationList(_Out):
    items: list[ConversationOut]
    next_cursor: str | None


class Limits(_Out):
    messages_per_day: int | None
    tokens_per_day: int | None


class Usage(_Out):
    """A user's use on one UTC day, and the limits (null: none)."""

    day: str
    messages: int
    prompt_tokens: int
    completion_tokens: int
    limits: Limits
    resets_at: UtcTime


class AnyMessage(RootModel[MessageOut]):
    """A user message (with its reply) or an assistant message."""


class MessageList(_Out):
    items: list[MessageOut]
    last_seq: int


class ReplyVersions(_Out):
    items: list[ReplyVersion]


class Accepted(_Out):
    conversation_id: str
    message: UserMessageOut
    poll_url: str


class TaskOut(_Out):
    id: str
    title: str
    done: bool
    created_at: UtcTime
    updated_at: UtcTime


class TaskList(_Out):
    items: list[TaskOut]


class ModelServerState(_Out):
    """One server of the pool as every worker sees it in Redis (no request is sent to it)."""

    url: str
    model: str
    group: Literal["primary", "fallback"]
    slots: int
    in_use: int = Field(description="slots workers hold on it now")
    state: Literal["ready", "cooling", "probing"] = Field(
        description="cooling: failed lately, no request is sent; probing: its cooldown is over, one request tries it")
    failures: int = Field(description="failures in a row")


class Health(_Out):
    status: Literal["healthy", "unhealthy"]
    database: Literal["connected", "disconnected"]
    broker: Literal["connected", "disconnected"]
    engine: Literal["builtin", "reachable", "unreachable"]
    model_servers: list[ModelServerState] = Field(
        default_factory=list, description="ENGINE=openai: the pool's servers (empty while Redis is unreachable)")
    server_id: str


class Alive(_Out):
    status: Literal["alive"]
    server_id: str


class DevToken(_Out):
    token: str
    user: str


class ProblemOut(_Out):
    type: str
    title: str
    status: int
    detail: str
    request_id: str | None


class WebhookOut(_Out):
    id: str
    url: str
    events: list[str]
    created_at: UtcTime
    failing_since: UtcTime | None
    disabled_at: UtcTime | None
    disabled_reason: str | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_...: verifies the webhook-signature header; shown only now")


class WebhookList(_Out):
    items: list[WebhookOut]


class KeyOut(_Out):
    id: str
    name: str
    created_at: UtcTime


class KeyCreated(KeyOut):
    key: str = Field(description="chatq-...: send it as 'Authorization: Bearer <key>'; shown only now")


class KeyList(_Out):
    items: list[KeyOut]


class AttemptOut(_Out):
    attempted_at: UtcTime
    status_code: int | None
    duration_ms: int
    error: str | None
    response_body: str | None


class DeliveryOut(_Out):
    id: str
    event_id: str
    type: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: UtcTime | None
    created_at: UtcTime
    delivered_at: UtcTime | None
    tries: list[AttemptOut]


class DeliveryList(_Out):
    items: list[DeliveryOut]


class SearchHit(_Out):
    conversation_id: str
    conversation_title: str
    message_id: str
    seq: int
    role: Literal["user", "assistant"]
    created_at: UtcTime
    snippet: str = Field(description="the message's words around the matches, as plain text")
    highlights: list[tuple[int, int]] = Field(description="[start, end) character offsets of the matched "
                                                          "words in the snippet")


class SearchResults(_Out):
    items: list[SearchHit]
    next_cursor: str | None


class ErasureOut(_Out):
    id: str
    status: Literal["erasing", "erased"]
    requested_at: UtcTime
    finished_at: UtcTime | None
    erased: dict[str, int] = Field(description="how many rows (and Redis keys) of each kind were deleted so far")
