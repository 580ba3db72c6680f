"""web's producer and the worker send through one Redis client per kombu channel
(models/coordination/broker.py): an override of kombu's `Channel.conn_or_acquire`. Against the fast
tier's real Redis, this fails when a kombu upgrade stops sending through that method (each command
would build a client again) or changes what the jobs look like on the broker."""

from __future__ import annotations

import json
import threading
import uuid
from urllib.parse import urlsplit

import pytest
import redis
from kombu import Connection
from kombu.simple import SimpleQueue

from models import Settings
from models.coordination import broker
from models.coordination.jobs import ANSWER_MESSAGE
from models.coordination.messaging import send_answer_job
from tests.faults.proxy import SilentProxy
from web.services import make_producer


def redis_port(settings: Settings) -> int:
    return urlsplit(settings.redis_url).port or 6379


def test_jobs_are_published_through_one_client_per_channel(unit_settings: Settings, monkeypatch) -> None:
    made: list[object] = []
    create_client = broker.Channel._create_client

    def counted(self, *args, **kwargs):  # our own transport's method, counted (kombu's behaviour is the subject)
        made.append(self)
        return create_client(self, *args, **kwargs)

    monkeypatch.setattr(broker.Channel, "_create_client", counted)
    producer = make_producer(unit_settings)
    client = redis.Redis.from_url(unit_settings.redis_url)
    client.delete("celery")
    ids = [uuid.uuid4() for _ in range(5)]
    try:
        for message_id in ids:
            assert send_answer_job(producer, message_id, "unit")
    finally:
        producer.close()
    # The five jobs are on the queue as Celery's protocol has them, naming their messages ...
    jobs = [json.loads(raw) for raw in client.lrange("celery", 0, -1)]
    assert [job["headers"]["task"] for job in jobs] == [ANSWER_MESSAGE] * 5
    assert sorted(job["headers"]["argsrepr"] for job in jobs) == sorted(f"['{i}']" for i in ids)
    # ... and were published by one client (kombu alone builds one per publish).
    assert len(made) <= 2, f"{len(made)} Redis clients for 5 publishes: kombu no longer calls conn_or_acquire"
    client.delete("celery")


def test_the_worker_takes_and_acknowledges_jobs_through_one_client_per_channel(unit_settings: Settings,
                                                                                 monkeypatch) -> None:
    """A delivery's bookkeeping and its ack are commands kombu sends outside its polling loop: in
    the worker's main process, one client built for each was a fifth of its CPU."""
    made: list[object] = []
    create_client = broker.WorkerChannel._create_client

    def counted(self, *args, **kwargs):
        made.append(args or kwargs)
        return create_client(self, *args, **kwargs)

    monkeypatch.setattr(broker.WorkerChannel, "_create_client", counted)
    queue_name = f"chatq-unit-{uuid.uuid4().hex[:8]}"
    connection = Connection(unit_settings.redis_url, transport=broker.WORKER_TRANSPORT)
    try:
        channel = connection.channel()
        queue = SimpleQueue(channel, queue_name)
        for job in range(5):
            queue.put({"job": job})
        taken = []
        for _ in range(5):
            message = queue.get(timeout=5)
            taken.append(message.payload["job"])
            message.ack()
        assert taken == list(range(5))
        # The five puts, takes, deliveries and acks: one client, and the channel's own polling one.
        assert len(made) <= 2, f"{len(made)} Redis clients for 20 commands: kombu no longer calls conn_or_acquire"
        # After a fork kombu gives the channel new pools: its commands go through a client on them.
        channel._after_fork()
        queue.put({"job": "after the fork"})
        assert queue.get(timeout=5).payload == {"job": "after the fork"}
        assert len(made) == 3
    finally:
        connection.release()
        redis.Redis.from_url(unit_settings.redis_url).delete(queue_name)


def test_a_worker_subscription_read_ends_when_its_connection_goes_silent(unit_settings: Settings) -> None:
    """kombu reads the worker's subscription (remote control) from the event loop; redis-py reads a
    blocking pub/sub reply with no timeout. On a connection that went silent that read never ended,
    and the worker's whole event loop with it (the partition scenario in tests/faults)."""
    proxy = SilentProxy(redis_port(unit_settings))
    subscription = broker.BoundedPubSub(redis.ConnectionPool.from_url(f"redis://127.0.0.1:{proxy.port}/0"))
    ended = threading.Event()
    try:
        subscription.subscribe("chatq-unit-silent")
        assert subscription.parse_response()[0] == b"subscribe"
        proxy.silence()
        reader = threading.Thread(target=lambda: (subscription.parse_response(), ended.set()), daemon=True)
        reader.start()
        reader.join(broker.SUBSCRIPTION_READ_SECONDS + 3)
        assert ended.is_set(), "a subscription read on a silent connection did not end"
    finally:
        proxy.close()


def test_a_worker_whose_ack_timed_out_asks_for_its_next_job(unit_settings: Settings) -> None:
    """An ack that Redis never heard (the connection went silent) still ends the delivery in this
    process: with one job prefetched, kombu's own QoS kept it counted and never consumed again."""
    proxy = SilentProxy(redis_port(unit_settings))
    queue_name = f"chatq-unit-{uuid.uuid4().hex[:8]}"
    connection = Connection(f"redis://127.0.0.1:{proxy.port}/0", transport=broker.WORKER_TRANSPORT,
                            transport_options={"socket_timeout": 0.5})
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_size=0, prefetch_count=1)
        queue = SimpleQueue(channel, queue_name)
        queue.put({"job": 1})
        message = queue.get(timeout=5)
        assert not channel.qos.can_consume()  # one delivered, not yet acknowledged
        proxy.silence()
        with pytest.raises(redis.exceptions.RedisError):
            message.ack()
        assert channel.qos.can_consume()
    finally:
        proxy.close()
        redis.Redis.from_url(unit_settings.redis_url).delete(queue_name)
