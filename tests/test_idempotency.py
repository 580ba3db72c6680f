"""Idempotency-Key: a retry replays the first answer; one message and one reply, however many."""

from __future__ import annotations

import uuid

from tests.support import Api, wait_until


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


# Twenty concurrent retries of one key: tests/faults/test_faults.py::test_concurrent_retries_of_one_idempotency_key


def test_invalid_key_is_422(api: Api) -> None:
    response = api.post("/api/v1/chat", json={"message": "hi"}, headers={"Idempotency-Key": "x" * 256})
    assert response.status_code == 422


def test_keys_are_kept_at_least_24_hours_and_swept_after_48(api: Api, db) -> None:
    """The sweeper (beat runs it every second in the test stack) deletes stored answers older than
    48 hours and keeps younger ones: the contract promises at least 24."""
    young, old = f"young-{uuid.uuid4()}", f"old-{uuid.uuid4()}"
    for key, age in ((young, "25 hours"), (old, "49 hours")):
        db.execute("INSERT INTO idempotent_requests (user_id, key, fingerprint, status_code, body, created_at) "
                   "VALUES (%s, %s, 'f', 202, '{}', now() - %s::interval)", (api.user, key, age))

    def keys() -> set[str]:
        rows = db.execute("SELECT key FROM idempotent_requests WHERE user_id = %s", (api.user,)).fetchall()
        return {row[0] for row in rows}

    wait_until(lambda: old not in keys(), timeout=20, what="the sweeper to delete the old key")
    assert young in keys()
