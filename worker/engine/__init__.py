"""Reply engines. `make_reply_engine` picks one by configuration."""

from __future__ import annotations

import redis

from models import Settings

from .base import (
    AppRequest,
    Cancellation,
    EngineError,
    History,
    PermanentEngineError,
    Reply,
    ReplyEngine,
    ReplyRequest,
    Reserved,
    TransientEngineError,
    Turn,
)
from .builtin import BuiltinEngine
from .openai_compat import DEFAULT_SYSTEM_PROMPT, OpenAICompatibleEngine, OpenAIConfig
from .pool import Pool, PoolSettings
from .tools import TodoTools


def make_reply_engine(settings: Settings, client: redis.Redis) -> ReplyEngine:
    """The engine ENGINE names; a model's on the pool of LLM_SERVERS (or LLM_BASE_URL's server),
    whose shared state lives in Redis (`client`)."""
    settings.require_engine()
    if settings.engine == "openai":
        pool = Pool(settings.model_servers(), client, PoolSettings(
            slot_ttl_seconds=settings.llm_slot_ttl_seconds,
            affinity_wait_seconds=settings.llm_affinity_wait_seconds,
            slot_wait_seconds=settings.llm_slot_wait_seconds,
            cooldown_seconds=settings.llm_cooldown_seconds,
            cooldown_cap_seconds=settings.llm_cooldown_cap_seconds,
            probe_seconds=settings.llm_timeout_s,
        ))
        return OpenAICompatibleEngine(OpenAIConfig(
            timeout_s=settings.llm_timeout_s,
            system_prompt=settings.llm_system_prompt or DEFAULT_SYSTEM_PROMPT,
            stream=settings.llm_stream,
            context_tokens=settings.llm_context_tokens,
            max_tokens=settings.llm_max_tokens,
        ), pool)
    return BuiltinEngine(delay_ms=settings.engine_delay_ms, stream_delay_ms=settings.engine_stream_delay_ms)


__all__ = [
    "AppRequest",
    "BuiltinEngine",
    "Cancellation",
    "EngineError",
    "History",
    "OpenAICompatibleEngine",
    "PermanentEngineError",
    "Reply",
    "ReplyEngine",
    "ReplyRequest",
    "Reserved",
    "TodoTools",
    "TransientEngineError",
    "Turn",
    "make_reply_engine",
]
