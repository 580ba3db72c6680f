"""The web↔worker contract, in one place: how an answer job is sent and how a change is announced.

web and worker never import each other; both send answer jobs (web for a message it accepted or
put back, worker for a conversation's next message or a generation given back) and both announce
changes to waiting clients. They do it here, so that the job's name, arguments and headers, and
the channels a change is published on, cannot drift apart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import redis
import structlog
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from .entities import Status
from .jobs import ANSWER_MESSAGE, REQUEST_ID_HEADER
from .signals import conversation_channel, delta_channel, message_channel

log = structlog.get_logger(__name__)
# What a question's own channel is told: the end of its wait (long-polls of one message).
FINAL = frozenset({Status.ANSWERED.value, Status.FAILED.value})


def send_answer_job(producer: Celery, message_id: uuid.UUID, request_id: str | None,
                    countdown: float | None = None) -> bool:
    """Enqueue the job that answers a committed message (only ever after its commit). A broker
    outage is not fatal: the message is safe in Postgres as `queued`, and the sweeper enqueues it
    again. Returns whether the job was sent."""
    try:
        producer.send_task(
            ANSWER_MESSAGE,
            args=[str(message_id)],
            headers={REQUEST_ID_HEADER: request_id},
            # Flower and the logs name the job by what it answers, not only by its uuid.
            shadow=f"{ANSWER_MESSAGE} {message_id}",
            countdown=countdown,
            retry=False,
        )
    except (KombuOperationalError, RedisError, OSError) as error:
        log.warning("enqueue_failed", message_id=str(message_id), error=str(error))
        return False
    return True


def announce(client: redis.Redis, conversation_id: uuid.UUID | str, message_id: uuid.UUID | str,
             status: str) -> None:
    """Tell waiting clients on every node that a message of the conversation is new or changed
    (and the question's own channel when it reached a final state). A hint only: they re-read
    Postgres, and fall back to re-checking when it cannot be delivered."""
    payload = json.dumps({"message_id": str(message_id), "status": status})
    try:
        with client.pipeline(transaction=False) as pipe:  # one round trip to Redis
            pipe.publish(conversation_channel(conversation_id), payload)
            if status in FINAL:
                pipe.publish(message_channel(message_id), payload)
            pipe.execute()
    except RedisError as error:
        log.warning("announce_failed", status=status, error=str(error))


def delta_publisher(client: redis.Redis, conversation_id: uuid.UUID, message_id: uuid.UUID,
                    attempt: int) -> Callable[[str], None]:
    """A callback that publishes each streamed piece of a reply, numbered from 0 in its attempt, for
    the event streams of the conversation (web/events.py passes them on as they come)."""
    channel = delta_channel(conversation_id)
    counter = iter(range(1 << 30))

    def publish(text: str) -> None:
        payload = json.dumps({"message_id": str(message_id), "attempt": attempt, "index": next(counter),
                              "text": text})
        try:
            client.publish(channel, payload)
        except RedisError as error:
            log.warning("delta_publish_failed", error=str(error))

    return publish
