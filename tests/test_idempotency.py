"""Idempotency-Key: a retry replays the first answer; one message and one reply, however many."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.support import Api


def test_a_retry_replays_the_first_answer_and_creates_one_reply(api: Api, db) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = api.post("/api/v1/chat", json={"message": "Add task: buy milk"}, headers=key)
    second = api.post("/api/v1/chat", json={"message": "Add task: buy milk"}, headers=key)
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    answered = api.wait_answered(first.json()["message"]["id"])
    assert answered["status"] == "answered"
    conversation_id = first.json()["conversation_id"]
    counts = db.execute(
        "SELECT role, count(*) FROM messages WHERE conversation_id = %s GROUP BY role", (conversation_id,)
    ).fetchall()
    assert dict(counts) == {"user": 1, "assistant": 1}
    assert len(api.tasks()) == 1


def test_the_same_key_with_another_body_is_422(api: Api) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    assert api.post("/api/v1/chat", json={"message": "one"}, headers=key).status_code == 202
    response = api.post("/api/v1/chat", json={"message": "two"}, headers=key)
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    assert len(api.get("/api/v1/conversations").json()["items"]) == 1


def test_keys_are_scoped_to_the_user(make_api) -> None:
    key = {"Idempotency-Key": "shared-key"}
    alice, bob = make_api(), make_api()
    a = alice.post("/api/v1/chat", json={"message": "hi"}, headers=key)
    b = bob.post("/api/v1/chat", json={"message": "hi"}, headers=key)
    assert a.status_code == b.status_code == 202
    assert a.json()["message"]["id"] != b.json()["message"]["id"]


def test_concurrent_retries_of_one_key_create_one_message(api: Api, db) -> None:
    conversation_id = api.chat("start")["conversation_id"]
    key = {"Idempotency-Key": f"burst-{uuid.uuid4()}"}
    path = f"/api/v1/conversations/{conversation_id}/messages"
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: api.post(path, json={"content": "Add task: once"}, headers=key),
                                  range(20)))
    assert {response.status_code for response in responses} == {202}
    assert len({response.json()["message"]["id"] for response in responses}) == 1
    api.wait_answered(responses[0].json()["message"]["id"])
    rows = db.execute(
        "SELECT count(*) FILTER (WHERE role = 'user' AND content = 'Add task: once'),"
        " count(*) FILTER (WHERE role = 'assistant' AND reply_to_id = %s) FROM messages WHERE conversation_id = %s",
        (responses[0].json()["message"]["id"], conversation_id),
    ).fetchone()
    assert rows == (1, 1)
    assert [task["title"] for task in api.tasks()] == ["once"]


def test_invalid_key_is_422(api: Api) -> None:
    response = api.post("/api/v1/chat", json={"message": "hi"}, headers={"Idempotency-Key": "x" * 256})
    assert response.status_code == 422
