"""Reply engines. `make_reply_engine` picks one by configuration."""

from __future__ import annotations

from models import Settings

from .base import (
    Cancellation,
    EngineError,
    History,
    PermanentEngineError,
    Reply,
    ReplyEngine,
    ReplyRequest,
    TransientEngineError,
    Turn,
)
from .builtin import BuiltinEngine
from .openai_compat import DEFAULT_SYSTEM_PROMPT, OpenAICompatibleEngine, OpenAIConfig
from .tools import TodoTools


def make_reply_engine(settings: Settings) -> ReplyEngine:
    settings.require_engine()
    if settings.engine == "openai":
        return OpenAICompatibleEngine(OpenAIConfig(
            base_url=settings.llm_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
            timeout_s=settings.llm_timeout_s,
            system_prompt=settings.llm_system_prompt or DEFAULT_SYSTEM_PROMPT,
            stream=settings.llm_stream,
            context_tokens=settings.llm_context_tokens,
            max_tokens=settings.llm_max_tokens,
        ))
    return BuiltinEngine(delay_ms=settings.engine_delay_ms, stream_delay_ms=settings.engine_stream_delay_ms)


__all__ = [
    "BuiltinEngine",
    "Cancellation",
    "EngineError",
    "History",
    "OpenAICompatibleEngine",
    "PermanentEngineError",
    "Reply",
    "ReplyEngine",
    "ReplyRequest",
    "TodoTools",
    "TransientEngineError",
    "Turn",
    "make_reply_engine",
]
