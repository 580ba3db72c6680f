"""Every error the front answers is problem+json, and a rejected request changes nothing. The app
answers in this process (tests/unit/in_process.py): each is its own decision, not gunicorn's."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
import requests

from tests.support import TEST_SECRET, Api, token

from . import in_process

PROBLEM_FIELDS = {"type", "title", "status", "detail", "request_id"}


def assert_problem(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body.keys() >= PROBLEM_FIELDS
    assert body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-jwt",
        "Bearer " + token("mallory", secret="another-secret-that-is-long-enough"),
        "Bearer " + token("alice", exp=int(time.time()) - 60),
        "Bearer " + token(""),
        "Bearer " + token("x" * 129),
        "Bearer " + token("nul\x00user"),
        "Bearer " + token("lone\ud800surrogate"),
        "Bearer " + token("tab\tuser"),
        "Bearer " + jwt.encode({"sub": "no-exp-user"}, TEST_SECRET, algorithm="HS256"),
        "Bearer " + token("forever", exp=int(time.time()) + 40 * 24 * 3600),
    ],
    ids=["missing", "empty", "basic", "malformed", "wrong-secret", "expired", "empty-sub", "long-sub", "nul-sub",
         "surrogate-sub", "control-sub", "no-exp", "too-long-lived"],
)
def test_identity_errors_are_401(app, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = in_process.session(app).post(in_process.BASE_URL + "/api/v1/chat", json={"message": "hi"},
                                            headers=headers)
    assert_problem(response, 401)


def test_malformed_json_is_400(api: Api) -> None:
    response = api.post("/api/v1/chat", data=b'{"message": ', headers={"Content-Type": "application/json"})
    assert_problem(response, 400)


def test_not_json_is_415(api: Api) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = api.post("/api/v1/chat", data=b"message=hi", headers=form)
    assert_problem(response, 415)


def test_body_over_64_kib_is_413(api: Api) -> None:
    response = api.post("/api/v1/chat", json={"message": "x" * (65 * 1024)})
    assert_problem(response, 413)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "   \n\t "}, "message"),
        ({"message": "x" * 8001}, "message"),
        ({"message": 42}, "message"),
        ({}, "message"),
        ({"message": "hi", "unexpected": 1}, "unexpected"),
        ({"message": "nul \u0000 inside"}, "message"),
        ([1, 2], "body"),
    ],
    ids=["empty", "white-space", "8001-chars", "not-a-string", "missing", "unknown-field", "nul", "not-an-object"],
)
def test_invalid_fields_are_422_naming_the_field(api: Api, body, field: str) -> None:
    problem = assert_problem(api.post("/api/v1/chat", json=body), 422)
    assert field in problem["detail"]
    assert api.get("/api/v1/conversations").json()["items"] == []


def test_8000_characters_is_accepted(api: Api) -> None:
    assert api.post("/api/v1/chat", json={"message": "y" * 8000}).status_code == 202


@pytest.mark.parametrize(
    "path",
    ["/api/v1/conversations/{cid}", "/api/v1/conversations/{cid}/messages", "/api/v1/messages/{mid}"],
)
def test_another_users_resources_are_404_like_missing_ones(make_api, path: str) -> None:
    owner, stranger = make_api(), make_api()
    accepted = owner.chat("Add task: private")
    mine = path.format(cid=accepted["conversation_id"], mid=accepted["message"]["id"])
    missing = path.format(cid=uuid.uuid4(), mid=uuid.uuid4())
    theirs, absent = assert_problem(stranger.get(mine), 404), assert_problem(stranger.get(missing), 404)
    assert theirs["detail"] == absent["detail"]
    assert owner.get(mine).status_code == 200


def test_posting_into_or_deleting_another_users_conversation_is_404(make_api) -> None:
    owner, stranger = make_api(), make_api()
    conversation_id = owner.chat("hello")["conversation_id"]
    assert_problem(stranger.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "hi"}), 404)
    assert_problem(stranger.post("/api/v1/chat", json={"message": "hi", "conversation_id": conversation_id}), 404)
    assert_problem(stranger.request("DELETE", f"/api/v1/conversations/{conversation_id}"), 404)
    items = owner.get(f"/api/v1/conversations/{conversation_id}/messages").json()["items"]
    assert [item["content"] for item in items if item["role"] == "user"] == ["hello"]


@pytest.mark.parametrize("path", ["/api/v1/conversations/not-an-id", "/api/v1/messages/123", "/api/v1/nothing"])
def test_unknown_ids_and_routes_are_404(api: Api, path: str) -> None:
    assert_problem(api.get(path), 404)


def test_wrong_method_is_405(api: Api) -> None:
    response = api.request("PUT", "/api/v1/chat", json={"message": "hi"})
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "1000"}, {"limit": "abc"}, {"cursor": "!!"}])
def test_bad_list_parameters_are_422(api: Api, query: dict) -> None:
    assert_problem(api.get("/api/v1/conversations", params=query), 422)


@pytest.mark.parametrize("wait", ["-1", "31", "soon"])
def test_bad_wait_is_422(api: Api, wait: str) -> None:
    message_id = api.chat("hi")["message"]["id"]
    assert_problem(api.get(f"/api/v1/messages/{message_id}", params={"wait": wait}), 422)


def test_request_id_is_echoed_when_well_formed_and_made_otherwise(api: Api, db) -> None:
    response = api.post("/api/v1/chat", json={"message": "hello"}, headers={"X-Request-ID": "trace.abc-123_X"})
    assert response.headers["X-Request-ID"] == "trace.abc-123_X"
    stored = db.execute("SELECT request_id FROM messages WHERE id = %s", (response.json()["message"]["id"],))
    assert stored.fetchone()[0] == "trace.abc-123_X"
    made = api.get("/api/v1/tasks", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert made and made != "bad id with spaces"


def test_a_title_with_nul_is_422(api: Api) -> None:
    problem = assert_problem(api.post("/api/v1/conversations", json={"title": "a\u0000b"}), 422)
    assert "title" in problem["detail"]
