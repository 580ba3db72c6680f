"""Tell waiting clients that a conversation changed. A hint only: they re-read Postgres."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import structlog
from redis.exceptions import RedisError

from models.signals import conversation_channel, delta_channel, message_channel

from .runtime import Runtime

log = structlog.get_logger(__name__)


def conversation_changed(rt: Runtime, conversation_id: uuid.UUID, message_id: uuid.UUID, status: str) -> None:
    payload = json.dumps({"message_id": str(message_id), "status": status})
    try:
        with rt.redis.pipeline(transaction=False) as pipe:  # one round trip to Redis
            pipe.publish(conversation_channel(conversation_id), payload)
            if status != "processing":
                pipe.publish(message_channel(message_id), payload)
            pipe.execute()
    except RedisError as error:  # waiting clients fall back to their re-check interval
        log.warning("notify_failed", error=str(error))


def delta_publisher(
    rt: Runtime, conversation_id: uuid.UUID, message_id: uuid.UUID, attempt: int
) -> Callable[[str], None]:
    """A callback that publishes each streamed piece of a reply, numbered, for live clients."""
    channel = delta_channel(conversation_id)
    counter = iter(range(1 << 30))

    def publish(text: str) -> None:
        payload = json.dumps({"message_id": str(message_id), "attempt": attempt, "index": next(counter),
                              "text": text})
        try:
            rt.redis.publish(channel, payload)
        except RedisError as error:
            log.warning("delta_publish_failed", error=str(error))

    return publish
