"""What web and worker share: configuration, the tables, sessions and the queries both sides run."""

from .base import Base
from .config import ConfigError, Settings
from .entities import PENDING, PENDING_SQL, Conversation, IdempotentRequest, Message, Role, Status, Task

__all__ = [
    "PENDING",
    "PENDING_SQL",
    "Base",
    "ConfigError",
    "Conversation",
    "IdempotentRequest",
    "Message",
    "Role",
    "Settings",
    "Status",
    "Task",
]
