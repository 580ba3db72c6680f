"""Reply engines. `make_engine` picks one by configuration."""

from __future__ import annotations

from models import ConfigError, Settings

from .base import (
    EngineError,
    PermanentEngineError,
    Reply,
    ReplyEngine,
    ReplyRequest,
    TransientEngineError,
    Turn,
)
from .builtin import BuiltinEngine
from .tools import TodoTools


def make_engine(settings: Settings) -> ReplyEngine:
    if settings.engine == "builtin":
        return BuiltinEngine(delay_ms=settings.engine_delay_ms)
    raise ConfigError(f"ENGINE={settings.engine!r} is not known; use 'builtin'")


__all__ = [
    "BuiltinEngine",
    "EngineError",
    "PermanentEngineError",
    "Reply",
    "ReplyEngine",
    "ReplyRequest",
    "TodoTools",
    "TransientEngineError",
    "Turn",
    "make_engine",
]
