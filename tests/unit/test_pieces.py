"""The pieces of a reply being written, in Redis (models/coordination/messaging.py): what an event
stream and a resumed Responses stream read. Against the real Redis of the unit tier."""

from __future__ import annotations

import uuid

import redis

from models import Settings
from models.coordination.messaging import PiecePublisher, piece_id, read_pieces
from models.coordination.signals import pieces_key


def test_pieces_are_read_from_any_index_and_never_past_a_missing_one(unit_settings: Settings) -> None:
    client = redis.Redis.from_url(unit_settings.redis_url)
    question, conversation = uuid.uuid4(), uuid.uuid4()
    publisher = PiecePublisher(client, conversation, question, attempt=1)
    publisher.start()
    for word in ("Once ", "upon ", "a ", "time"):
        publisher(word)
    assert read_pieces(client, question, 1, 0) == ["Once ", "upon ", "a ", "time"]
    assert read_pieces(client, question, 1, 2) == ["a ", "time"]
    assert read_pieces(client, question, 1, 9) == []
    # The next attempt starts as a copy of this one's pieces, with the same ids.
    second = PiecePublisher(client, conversation, question, attempt=2)
    assert second.start() == "Once upon a time"
    second(" there")
    assert read_pieces(client, question, 2, 3) == ["time", " there"]
    assert second.lengths("Once upon a time there was") == [5, 5, 2, 4, 6, 4]

    # A stream Redis lost the start of (a failover mid-reply) is not read as if numbered from 0.
    lost = uuid.uuid4()
    key = pieces_key(lost, 1)
    for index in (2, 3):
        client.xadd(key, {"i": index, "t": f"piece {index}"}, id=piece_id(index))
    assert read_pieces(client, lost, 1, 0) == [] and read_pieces(client, lost, 1, 2) == []
    # A stream written before pieces had their own ids (a deploy mid-reply) is read by its indices.
    legacy = uuid.uuid4()
    for index, text in enumerate(("old ", "ids")):
        client.xadd(pieces_key(legacy, 1), {"i": index, "t": text})
    assert read_pieces(client, legacy, 1, 1) == ["ids"]
    client.delete(pieces_key(question, 1), pieces_key(question, 2), key, pieces_key(legacy, 1))
