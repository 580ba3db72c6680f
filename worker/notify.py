"""Tell waiting clients that a conversation changed. A hint only: they re-read Postgres."""

from __future__ import annotations

import json
import uuid

import structlog
from redis.exceptions import RedisError

from models.signals import conversation_channel

from .runtime import Runtime

log = structlog.get_logger(__name__)


def conversation_changed(rt: Runtime, conversation_id: uuid.UUID, message_id: uuid.UUID, status: str) -> None:
    payload = json.dumps({"message_id": str(message_id), "status": status})
    try:
        rt.redis.publish(conversation_channel(conversation_id), payload)
    except RedisError as error:  # waiting clients fall back to their re-check interval
        log.warning("notify_failed", error=str(error))
