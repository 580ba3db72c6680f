"""Views through Flask's test client: the contract's errors and answers, without a server process."""

from __future__ import annotations

import pytest

from tests.support import token


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
