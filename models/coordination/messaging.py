"""The web↔worker contract, in one place: how an answer job is sent, how a change is announced,
how a generation's text so far is kept and read, and how a cancel reaches the worker.

web and worker never import each other; both send answer jobs (web for a message it accepted or
put back, worker for a conversation's next message or a generation given back) and both announce
changes to waiting clients. They do it here, so that the job's name, arguments and headers, and
the channels a change is published on, cannot drift apart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from ..tables.entities import FINAL, Status
from .jobs import (
    ANSWER_MESSAGE,
    DELIVER_WEBHOOK,
    ERASE_USER,
    HOUSEKEEPING_QUEUE,
    REQUEST_ID_HEADER,
    WEBHOOK_QUEUE,
)
from .queue_figures import record_start
from .signals import cancel_channel, conversation_channel, delta_channel, message_channel, pieces_key

log = structlog.get_logger(__name__)
# What a question's own channel is told: the end of its wait (long-polls of one message).
_FINAL_VALUES = frozenset(status.value for status in FINAL)  # announced as strings
# How long a generation's pieces are kept after its last one: far longer than any generation, so
# a client reconnecting mid-reply finds them; they are only a live view of what Postgres gets.
PIECES_TTL_SECONDS = 3600


# What every job publish can skip (a large share of `send_task`'s CPU on the web tier,
# docs/decisions/0010; bench/floor.py's lean app skips it too):
# - declaring the queue before each publish: a job goes to the default exchange, straight to the
#   queue named by its routing key, which the workers declare when they start (and Redis keeps a
#   list whether or not it was declared);
# - a result: no result backend is configured (the reply is in Postgres, not in a Celery result);
# - building the repr of the arguments with `saferepr`: they are ids, whose repr is short and safe.
PUBLISH_AS_IS: dict[str, Any] = {"declare": [], "ignore_result": True, "kwargsrepr": "{}"}


def send_answer_job(producer: Celery, message_id: uuid.UUID, request_id: str | None,
                    countdown: float | None = None) -> bool:
    """Enqueue the job that answers a committed message (only ever after its commit). A broker
    outage is not fatal: the message is safe in Postgres as `queued`, and the sweeper enqueues it
    again. Returns whether the job was sent."""
    try:
        producer.send_task(
            ANSWER_MESSAGE,
            args=[str(message_id)],
            argsrepr=f"['{message_id}']",
            headers={REQUEST_ID_HEADER: request_id},
            # Flower and the logs name the job by what it answers, not only by its uuid.
            shadow=f"{ANSWER_MESSAGE} {message_id}",
            countdown=countdown,
            retry=False,
            **PUBLISH_AS_IS,
        )
    except (KombuOperationalError, RedisError, OSError) as error:
        log.warning("enqueue_failed", message_id=str(message_id), error=str(error))
        return False
    return True


def send_webhook_job(producer: Celery, delivery_id: str, claim: str) -> None:
    """One try of one webhook delivery, on the webhooks queue (its own workers). Not sent (Redis
    away): the delivery comes due again when its claim runs out, and the sweeper sends it then."""
    try:
        producer.send_task(DELIVER_WEBHOOK, args=[delivery_id, claim], queue=WEBHOOK_QUEUE, retry=False)
    except (KombuOperationalError, RedisError, OSError) as error:
        log.warning("webhook_enqueue_failed", delivery_id=delivery_id, error=str(error))


def send_erasure_job(producer: Celery, erasure_id: uuid.UUID) -> None:
    """Carry out a committed erasure. Not sent (Redis away): the forget round finds it unattended
    and sends it again (worker/tasks.py)."""
    try:
        # On the housekeeping queue: it starts at a worker's next free slot, not behind every
        # answer job already queued (worker/celery_app.py).
        producer.send_task(ERASE_USER, args=[str(erasure_id)], queue=HOUSEKEEPING_QUEUE, retry=False,
                           ignore_result=True)
    except (KombuOperationalError, RedisError, OSError) as error:
        log.warning("erasure_enqueue_failed", erasure_id=str(erasure_id), error=str(error))


def announce(client: redis.Redis, conversation_id: uuid.UUID | str, message_id: uuid.UUID | str,
             status: str, *, message: dict[str, Any] | None = None) -> None:
    """Tell waiting clients on every node that a message of the conversation is new or changed
    (and the question's own channel when it reached a final state). A hint only: they re-read
    Postgres, and fall back to re-checking when it cannot be delivered. `message`: the question as
    the API shows it at this final state, just committed — its long-polls answer with it instead
    of reading it again (the message's own channel only: streams read what they need)."""
    try:
        with client.pipeline(transaction=False) as pipe:  # one round trip to Redis
            _announce_into(pipe, conversation_id, message_id, status, message)
            pipe.execute()
    except RedisError as error:
        log.warning("announce_failed", status=status, error=str(error))


def _announce_into(pipe: redis.client.Pipeline, conversation_id: uuid.UUID | str, message_id: uuid.UUID | str,
                   status: str, message: dict[str, Any] | None = None) -> None:
    change = {"message_id": str(message_id), "status": status}
    pipe.publish(conversation_channel(conversation_id), json.dumps(change))
    if status in _FINAL_VALUES:
        pipe.publish(message_channel(message_id), json.dumps({**change, "message": message} if message else change))


def request_cancel(client: redis.Redis, message_ids: Iterable[uuid.UUID | str]) -> None:
    """Wake the workers generating these (already cancelled in Postgres) questions. A hint: a
    worker that misses it reads the cancel from Postgres when it next renews its lease."""
    try:
        with client.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.publish(cancel_channel(message_id), "cancel")
            pipe.execute()
    except RedisError as error:
        log.warning("cancel_publish_failed", error=str(error))


@dataclass
class PiecePublisher:
    """Called with each piece of a reply as an engine generates it: numbers it within its attempt
    (0, 1, 2 ...), appends it to the attempt's stream in Redis (pieces_key) and publishes it for
    the event streams of the conversation, in one round trip. Nothing handed on is taken back: an
    attempt after a crash starts from the earlier attempt's pieces (`start`), so a client that
    holds them sees the reply continue, and the committed reply's `pieces` number the same events."""

    client: redis.Redis
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    attempt: int
    user: str = ""  # whose generation it is, for the start rate by user
    texts: list[str] = field(default_factory=list, init=False)  # handed on so far, in order

    def start(self) -> str:
        """The attempt begins: waiting clients hear that the question is `processing`, and, in the
        same round trip, this attempt's stream starts as a copy of the previous attempt's (an
        earlier generation of the same attempt number, before a retry or a regenerate counted
        attempts from 0 again, leaves nothing behind), and the start is counted in the start rate
        that queued messages' waits are estimated from. Returns the text carried over."""
        key = pieces_key(self.message_id, self.attempt)
        self.texts = read_pieces(self.client, self.message_id, self.attempt - 1, 0) if self.attempt > 1 else []
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(key)
                for index, text in enumerate(self.texts):
                    pipe.xadd(key, {"i": index, "t": text}, id=piece_id(index))
                pipe.expire(key, PIECES_TTL_SECONDS)
                record_start(pipe, self.user)
                _announce_into(pipe, self.conversation_id, self.message_id, Status.PROCESSING.value)
                pipe.execute()
        except RedisError as error:
            log.warning("announce_failed", status=Status.PROCESSING.value, error=str(error))
        return "".join(self.texts)

    def __call__(self, text: str) -> None:
        if not text:
            return
        index = len(self.texts)
        self.texts.append(text)
        key = pieces_key(self.message_id, self.attempt)
        payload = json.dumps({"message_id": str(self.message_id), "attempt": self.attempt, "index": index,
                              "text": text})
        try:
            # XADD before PUBLISH on one connection: whoever hears of a piece can already read it.
            with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"i": index, "t": text}, id=piece_id(index))
                pipe.expire(key, PIECES_TTL_SECONDS)
                pipe.publish(delta_channel(self.conversation_id), payload)
                pipe.execute()
        except RedisError as error:
            log.warning("delta_publish_failed", error=str(error))

    def lengths(self, content: str) -> list[int] | None:
        """The lengths of the pieces `content`, the reply as stored, is made of: those handed on,
        then the rest in one piece. None when nothing was handed on (one piece: the whole text)."""
        handed_on = "".join(self.texts)
        if not self.texts or not content.startswith(handed_on):
            return None
        rest = len(content) - len(handed_on)
        return [len(text) for text in self.texts] + ([rest] if rest else [])


@dataclass(frozen=True)
class WrittenSoFar:
    """What an attempt has generated so far: its text and how many pieces that text is made of
    (the index the next piece will carry)."""

    attempt: int
    text: str
    pieces: int


def read_partials(client: redis.Redis, attempts: dict[uuid.UUID, int]) -> dict[uuid.UUID, WrittenSoFar]:
    """The text so far of each (message id -> current attempt), in one round trip. A Redis outage
    or wipe reads as nothing generated yet."""
    if not attempts:
        return {}
    try:
        with client.pipeline(transaction=False) as pipe:
            for message_id, attempt in attempts.items():
                pipe.xrange(pieces_key(message_id, attempt))
            ranges = pipe.execute()
    except RedisError as error:
        log.warning("partial_read_failed", error=str(error))
        ranges = [[] for _ in attempts]
    partials = {}
    for (message_id, attempt), entries in zip(attempts.items(), ranges, strict=True):
        texts = [fields[b"t"].decode() for _id, fields in entries]
        partials[message_id] = WrittenSoFar(attempt, "".join(texts), len(texts))
    return partials


def piece_id(index: int) -> str:
    """A piece's id in its attempt's stream: its index + 1, so that a reader can ask for the
    pieces after the ones it has, and tell from the stream's length and last id that none is
    missing."""
    return f"0-{index + 1}"


def read_pieces(client: redis.Redis, message_id: uuid.UUID | str, attempt: int, start: int) -> list[str]:
    """The pieces of an attempt from index `start` on (an event stream filling a gap, a resumed
    stream), up to the first one missing: a Redis that lost the stream mid-attempt holds only its
    later pieces, which are not numbered from 0 and are not read as if they were. When the stream
    holds n entries and the last is piece n, none is missing, and only those from `start` are read."""
    key = pieces_key(message_id, attempt)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.xlen(key)
            pipe.xrevrange(key, count=1)
            pipe.xrange(key, min=piece_id(start))
            length, last, entries = pipe.execute()
        if last and last[0][0] == piece_id(length - 1).encode():
            return [fields[b"t"].decode() for _id, fields in entries]
        entries = client.xrange(key)
    except RedisError:
        return []
    texts = []
    for index, (_id, fields) in enumerate(entries):
        if int(fields[b"i"]) != index:
            break
        texts.append(fields[b"t"].decode())
    return texts[start:]
