"""What web and worker share: configuration, the tables, sessions and the queries both sides run."""

from .base import Base
from .config import ConfigError, Settings
from .entities import (
    FINAL,
    PENDING,
    PENDING_SQL,
    Conversation,
    DailyUsage,
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
    "PENDING",
    "PENDING_SQL",
    "Base",
    "ConfigError",
    "Conversation",
    "DailyUsage",
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
