"""Sending answer jobs, always after the transaction that stored the message has committed."""

from __future__ import annotations

import json
import uuid

import structlog
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from models.jobs import ANSWER_MESSAGE, REQUEST_ID_HEADER
from models.signals import conversation_channel

from .services import services

log = structlog.get_logger(__name__)


def send_answer_job(message_id: uuid.UUID, request_id: str | None) -> bool:
    """Enqueue the job for a committed message. A broker outage is not the client's problem:
    the message is safe in Postgres as `queued`, and the sweeper enqueues it again."""
    try:
        services().producer.send_task(
            ANSWER_MESSAGE,
            args=[str(message_id)],
            headers={REQUEST_ID_HEADER: request_id},
            # Flower and the logs name the job by what it answers, not only by its uuid.
            shadow=f"{ANSWER_MESSAGE} {message_id}",
            retry=False,
        )
    except (KombuOperationalError, RedisError, OSError) as error:
        log.warning("enqueue_failed", message_id=str(message_id), error=str(error))
        return False
    return True


def announce(conversation_id: str, message_id: uuid.UUID, status: str) -> None:
    """Wake long-polls and event streams of this conversation on every node: a new message."""
    payload = json.dumps({"message_id": str(message_id), "status": status})
    try:
        services().redis.publish(conversation_channel(conversation_id), payload)
    except RedisError as error:  # they re-check on their own within RECHECK_SECONDS
        log.warning("announce_failed", error=str(error))
