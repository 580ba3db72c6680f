"""Views through Flask's test client: the contract's errors and answers, without a server process."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import text

from tests.support import token, wait_until


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return response.get_json()


def test_livez(client) -> None:
    assert client.get("/livez").get_json()["status"] == "alive"


@pytest.mark.parametrize(("kwargs", "status"), [
    ({}, 401),
    ({"headers": auth("u1"), "data": "{", "content_type": "application/json"}, 400),
    ({"headers": auth("u1"), "data": "message=hi", "content_type": "application/x-www-form-urlencoded"}, 415),
    ({"headers": auth("u1"), "json": {"message": "   "}}, 422),
    ({"headers": auth("u1"), "json": {"message": "x" * 8001}}, 422),
    ({"headers": auth("u1"), "json": {"message": "a" * 70_000}}, 413),
])
def test_post_errors_are_problems(client, kwargs: dict, status: int) -> None:
    problem(client.post("/api/v1/chat", **kwargs), status)


def test_a_post_is_accepted_and_readable_by_its_user_only(client) -> None:
    accepted = client.post("/api/v1/chat", json={"message": "add unit tier"}, headers=auth("erin"))
    assert accepted.status_code == 202
    body = accepted.get_json()
    assert accepted.headers["Location"] == body["poll_url"]
    mine = client.get(body["poll_url"], headers=auth("erin"))
    assert mine.status_code == 200 and mine.get_json()["content"] == "add unit tier"
    problem(client.get(body["poll_url"], headers=auth("frank")), 404)


def test_a_cancel_that_loses_to_the_replys_commit_answers_409_not_200(client, engine) -> None:
    """The reply's commit takes the question's row between the cancel's read and its UPDATE: the
    UPDATE then matches nothing, and the cancel must say so (it once answered 200 with the message
    answered, because the ORM marked the row cancelled in memory). Deterministic: the commit is held
    open here until the cancel waits for its row lock."""
    accepted = client.post("/api/v1/chat", json={"message": "cancel me if you can"}, headers=auth("fay"))
    message_id = accepted.get_json()["message"]["id"]
    found = {"id": message_id}
    with engine.connect() as replying, engine.connect() as watching:
        replying.execute(text("UPDATE messages SET status = 'processing' WHERE id = :id"), found)
        replying.commit()
        replying.execute(text("UPDATE messages SET status = 'answered' WHERE id = :id"), found)  # held, not committed
        answers: dict[str, Any] = {}
        cancel = threading.Thread(target=lambda: answers.update(
            response=client.post(f"/api/v1/messages/{message_id}/cancel", headers=auth("fay"))))
        cancel.start()
        wait_until(lambda: watching.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar(),
                   timeout=10, what="the cancel's UPDATE to wait for the reply's row lock")
        replying.commit()
        cancel.join(timeout=10)
    assert problem(answers["response"], 409)["detail"].endswith("this one is answered.")
    assert client.get(f"/api/v1/messages/{message_id}", headers=auth("fay")).get_json()["status"] == "answered"
