"""web's producer publishes through one Redis client per kombu channel (models/coordination/broker.py): an
override of kombu's `Channel.conn_or_acquire`. Against the fast tier's real Redis, this fails when
a kombu upgrade stops sending publishes through that method (each would build a client again) or
changes what the jobs look like on the broker."""

from __future__ import annotations

import json
import uuid

import redis

from models import Settings
from models.coordination import broker
from models.coordination.jobs import ANSWER_MESSAGE
from models.coordination.messaging import send_answer_job
from web.services import make_producer


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
