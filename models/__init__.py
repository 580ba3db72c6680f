"""What web and worker share, by folder: tables/ (the tables and statuses), sql/ (sessions and the
statements both sides run), coordination/ (what they tell each other through Redis), process/
(settings, connections, logs, metrics), policy/ (backoff, webhook address checks), and
representation.py (how a message is shown). The names most code needs are importable from here."""

from .process.config import ConfigError, Settings
from .tables.base import Base
from .tables.entities import (
    FINAL,
    GENERATING,
    PENDING,
    PENDING_SQL,
    UNFINISHED,
    ApiKey,
    Conversation,
    DailyUsage,
    EndUserShare,
    Erasure,
    Finish,
    IdempotentRequest,
    Lane,
    Message,
    Role,
    Status,
    Task,
    UserShare,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "FINAL",
    "GENERATING",
    "PENDING",
    "PENDING_SQL",
    "UNFINISHED",
    "ApiKey",
    "Base",
    "ConfigError",
    "Conversation",
    "DailyUsage",
    "EndUserShare",
    "Erasure",
    "Finish",
    "IdempotentRequest",
    "Lane",
    "Message",
    "Role",
    "Settings",
    "Status",
    "Task",
    "UserShare",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
