"""A user's data in the fast tier: search finds the user's own words and nobody else's, retention
deletes exactly the conversations past their lifetime and none being answered, and an erasure
leaves nothing of the user in any table or Redis key while the other users' data stays."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session

from models import Conversation, Message, Status
from models.coordination.scheduling import recent_user_starts_keys
from tests.support import token
from worker import forget
from worker.runtime import Runtime

from .support import accept


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def someone(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def say(client, user: str, words: str, conversation_id: str | None = None) -> dict[str, Any]:
    body = {"message": words, **({"conversation_id": conversation_id} if conversation_id else {})}
    accepted = client.post("/api/v1/chat", json=body, headers=auth(user))
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    return accepted.get_json()


def search(client, user: str, **params: Any) -> Any:
    return client.get("/api/v1/search", query_string=params, headers=auth(user))


# Search ----------------------------------------------------------------------------------------


def test_search_finds_the_users_own_words_with_highlights_and_never_another_users(client) -> None:
    ann, bob = someone("ann"), someone("bob")
    first = say(client, ann, "Add task: water the ficus plants")
    say(client, ann, "remind me to call the plumber", first["conversation_id"])
    say(client, bob, "Add task: water the garden plants")

    found = search(client, ann, q="plants").get_json()
    assert [hit["message_id"] for hit in found["items"]] == [first["message"]["id"]]
    hit = found["items"][0]
    assert hit["conversation_id"] == first["conversation_id"] and hit["seq"] == 1 and hit["role"] == "user"
    assert [hit["snippet"][start:end] for start, end in hit["highlights"]] == ["plants"]
    assert "ficus" in hit["snippet"] and "\x02" not in hit["snippet"]
    # Stemmed (the english configuration): "watering" finds "water"; bob's garden is bob's alone.
    assert len(search(client, ann, q="watering").get_json()["items"]) == 1
    assert search(client, ann, q="garden").get_json()["items"] == []
    assert [h["message_id"] for h in search(client, bob, q="plants").get_json()["items"]] != [first["message"]["id"]]
    # websearch syntax: a quoted phrase, and -word.
    assert len(search(client, ann, q='"call the plumber"').get_json()["items"]) == 1
    assert search(client, ann, q='"plumber call"').get_json()["items"] == []
    assert search(client, ann, q="plants -ficus").get_json()["items"] == []
    # Nothing to search for (only stop words, or punctuation) is simply no hit.
    assert search(client, ann, q="the").get_json() == {"items": [], "next_cursor": None}
    assert search(client, ann, q="!!! ((").status_code == 200


@pytest.mark.parametrize("order", ["newest", "relevance"])
def test_search_pages_with_a_cursor_through_every_hit_once(client, order: str) -> None:
    user = someone("pager")
    said = [say(client, user, f"milk {'milk ' * (n % 3)}number {n}")["message"]["id"] for n in range(7)]
    seen, cursor = [], None
    while True:
        page = search(client, user, q="milk", limit=3, order=order, **({"cursor": cursor} if cursor else {}))
        body = page.get_json()
        seen += [hit["message_id"] for hit in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(said) and len(seen) == 7
    if order == "newest":
        assert seen == said[::-1]


def test_search_refuses_what_it_cannot_read(client) -> None:
    user = someone("refused")
    for params in ({}, {"q": ""}, {"q": "x" * 501}, {"q": "milk", "limit": 0}, {"q": "milk", "cursor": "nope"},
                   {"q": "milk", "order": "oldest"}):
        response = search(client, user, **params)
        assert response.status_code == 422 and response.mimetype == "application/problem+json", params
    assert client.get("/api/v1/search?q=milk").status_code == 401


# Export ----------------------------------------------------------------------------------------


def test_exports_stream_within_the_nodes_and_the_users_limits_and_free_their_place_when_closed(client) -> None:
    """An export holds a database connection for as long as it streams: one user's at a time, three
    on a node (the defaults), and a client that goes away gives its place back."""
    users = [someone("exporter") for _ in range(4)]
    for user in users:
        say(client, user, "Add task: export me")
    streaming = []
    try:
        streaming.append(client.get("/api/v1/export", headers=auth(users[0]), buffered=False))
        assert streaming[0].status_code == 200
        second = client.get("/api/v1/export", headers=auth(users[0]))
        assert second.status_code == 429 and second.headers["Retry-After"]
        assert second.get_json()["type"].endswith("/too-many-exports-per-user")
        streaming += [client.get("/api/v1/export", headers=auth(user), buffered=False) for user in users[1:3]]
        assert [response.status_code for response in streaming] == [200, 200, 200]
        full = client.get("/api/v1/export", headers=auth(users[3]))
        assert full.status_code == 503 and full.get_json()["type"].endswith("/too-many-exports")
    finally:
        for response in streaming:
            response.close()  # as gunicorn does when a client disconnects mid-stream
    # Closed mid-stream, the places are free again; an export read to its end frees its own.
    for _ in range(2):
        whole = client.get("/api/v1/export", headers=auth(users[3]))
        assert whole.status_code == 200
        assert whole.get_data(as_text=True).splitlines()[-1].startswith('{"type":"end"')
    assert client.get("/api/v1/export", headers=auth(users[0])).status_code == 200


def test_a_chat_that_starts_a_conversation_gives_it_a_lifetime_and_one_that_continues_cannot(client) -> None:
    user = someone("lifetime")
    kept = say(client, user, "Add task: scratch")
    temporary = client.post("/api/v1/chat", json={"message": "just for today", "temporary": True}, headers=auth(user))
    month = client.post("/api/v1/chat", json={"message": "for a month", "ttl_days": 30}, headers=auth(user))
    assert temporary.status_code == month.status_code == 202

    def lifetime(accepted: dict[str, Any]) -> tuple[Any, Any]:
        shown = client.get(f"/api/v1/conversations/{accepted['conversation_id']}", headers=auth(user)).get_json()
        return shown["ttl_days"], shown["temporary"]

    assert [lifetime(a) for a in (kept, temporary.get_json(), month.get_json())] == \
        [(None, False), (None, True), (30, False)]
    # Continuing a conversation with a lifetime is refused, and stores nothing.
    for bad in ({"ttl_days": 7}, {"temporary": True}):
        body = {"message": "more", "conversation_id": kept["conversation_id"], **bad}
        refused = client.post("/api/v1/chat", json=body, headers=auth(user))
        assert refused.status_code == 422, refused.get_data(as_text=True)
        assert "PATCH" in refused.get_json()["detail"]
    for bad in ({"ttl_days": 0}, {"ttl_days": 3651}, {"temporary": None}):
        assert client.post("/api/v1/chat", json={"message": "x", **bad}, headers=auth(user)).status_code == 422
    listed = client.get(f"/api/v1/conversations/{kept['conversation_id']}/messages", headers=auth(user)).get_json()
    assert [m["content"] for m in listed["items"]] == ["Add task: scratch"]
    assert len(client.get("/api/v1/conversations", headers=auth(user)).get_json()["items"]) == 3


# Retention -------------------------------------------------------------------------------------


def _aged(session: Session, conversation_id: str, days: float, **changes: Any) -> None:
    session.execute(update(Conversation).where(Conversation.id == uuid.UUID(conversation_id))
                    .values(updated_at=text(f"now() - interval '{days} days'"), **changes))


def test_retention_deletes_exactly_the_conversations_past_their_lifetime(rolled_back: Session) -> None:
    user = someone("kept")
    made = {name: accept(rolled_back, user, f"conversation {name}").body["conversation_id"]
            for name in ("fresh", "old", "own_ttl", "own_ttl_young", "temporary", "temporary_young", "answering",
                         "queued", "leased")}
    with rolled_back.begin_nested():
        rolled_back.execute(update(Message).where(Message.user_id == user).values(status=Status.ANSWERED))
        _aged(rolled_back, made["old"], 31)
        _aged(rolled_back, made["own_ttl"], 8, ttl_days=7)
        _aged(rolled_back, made["own_ttl_young"], 6, ttl_days=7)
        _aged(rolled_back, made["temporary"], 1.1, temporary=True)
        _aged(rolled_back, made["temporary_young"], 0.9, temporary=True)
        for name, status in (("answering", Status.PROCESSING), ("queued", Status.QUEUED)):
            _aged(rolled_back, made[name], 40)
            rolled_back.execute(update(Message).where(Message.conversation_id == uuid.UUID(made[name]))
                                .values(status=status))
        _aged(rolled_back, made["leased"], 40, lease_expires_at=text("now() + interval '10 seconds'"))
    connection = rolled_back.connection()
    deleted = forget.expire_conversations(connection, retention_days=30)
    left = {str(ident) for ident in connection.execute(
        text("SELECT id FROM conversations WHERE user_id = :user"), {"user": user}).scalars()}
    assert left == {made[name] for name in ("fresh", "own_ttl_young", "temporary_young", "answering", "queued",
                                             "leased")}
    assert deleted >= 3  # (other tests' conversations are never this old)
    # With no operator retention, only the conversations' own lifetimes count; a second round finds nothing.
    assert forget.expire_conversations(connection, retention_days=0) == 0
    assert connection.execute(text("SELECT count(*) FROM messages WHERE user_id = :user AND conversation_id <> ALL("
                                   "SELECT id FROM conversations)"), {"user": user}).scalar_one() == 0


# Erasure ---------------------------------------------------------------------------------------


def traces_of(engine: Engine, client: redis.Redis, user: str, ids: set[str]) -> list[str]:
    """Every row of every table, and every Redis key (and sorted-set member), that names the user or
    one of their ids — whatever the table: the walk reads them all as JSON."""
    found = []
    with engine.connect() as connection:
        tables = connection.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version'")).scalars().all()
        assert {"messages", "conversations", "tasks", "webhook_endpoints", "erasures"} <= set(tables)
        for table in tables:
            needles = [user, *ids]
            hits = connection.execute(text(
                f"SELECT row_to_json(t)::text FROM {table} AS t "  # noqa: S608 (names from the catalog)
                "WHERE row_to_json(t)::text LIKE ANY(:patterns)"), {"patterns": [f"%{n}%" for n in needles]}).all()
            found += [f"{table}: {row[0][:120]}" for row in hits]
    for key in client.scan_iter(count=1000):
        name = key.decode()
        if user in name or any(ident in name for ident in ids):
            found.append(f"redis key {name}")
        elif client.type(key) == b"zset" and client.zscore(key, user) is not None:
            found.append(f"redis member of {name}")
    return found


@pytest.fixture
def limited_app(unit_settings):
    from web import create_app

    return create_app(settings=unit_settings.model_copy(update={"rate_limit": "1000/minute",
                                                                "read_rate_limit": "1000/minute"}))


def test_an_erasure_leaves_nothing_of_the_user_anywhere_and_the_others_intact(
        limited_app, unit_settings, engine: Engine) -> None:
    client = limited_app.test_client()
    gone, stays = someone("gone"), someone("stays")
    redis_client = redis.Redis.from_url(unit_settings.redis_url)
    # Everything a user leaves: conversations and messages (one with an idempotency key), a
    # webhook endpoint, a day's usage, rate-limit windows, a share of the scheduler, and the
    # text of a generation in Redis.
    mine = say(client, gone, "Add task: forget me")
    key = client.post("/api/v1/chat", json={"message": "and this", "conversation_id": mine["conversation_id"]},
                      headers={**auth(gone), "Idempotency-Key": "erase-me-key"})
    assert key.status_code == 202
    assert client.post("/api/v1/webhooks", json={"url": "https://8.8.8.8/hook"}, headers=auth(gone)).status_code == 201
    theirs = say(client, stays, "Add task: keep me")
    ids = {mine["conversation_id"], mine["message"]["id"], key.get_json()["message"]["id"]}
    with engine.begin() as connection:  # a generation under way, with text so far, and a task it added
        connection.execute(text("UPDATE messages SET status = 'processing', attempts = 1 WHERE id = :id"),
                           {"id": mine["message"]["id"]})
        connection.execute(text("INSERT INTO tasks (id, user_id, title, done) VALUES (gen_random_uuid(), :u, "
                                "'forget me', false)"), {"u": gone})
    redis_client.xadd(f"chatq:pieces:{mine['message']['id']}:1", {"i": 0, "t": "Added"})
    redis_client.zincrby(recent_user_starts_keys()[-1], 1, gone)
    assert traces_of(engine, redis_client, gone, ids), "the walk must see the user's data before the erasure"
    assert any("LIMITS" in trace for trace in traces_of(engine, redis_client, gone, set()))

    asked = client.delete("/api/v1/me", headers=auth(gone))
    assert asked.status_code == 202 and asked.get_json()["status"] == "erasing"
    erasure_id = asked.get_json()["id"]
    assert client.delete("/api/v1/me", headers=auth(gone)).get_json()["id"] == erasure_id  # one at a time
    with engine.connect() as connection:  # generations in flight were stopped first
        assert connection.execute(text("SELECT status::text FROM messages WHERE id = :id"),
                                  {"id": mine["message"]["id"]}).scalar_one() == "cancelling"

    runtime = Runtime(settings=unit_settings, sessions=None, db=engine.execution_options(isolation_level="AUTOCOMMIT"),  # type: ignore[arg-type]
                 redis=redis_client, engine=None)  # type: ignore[arg-type]
    # A batch a row: every loop runs more than once. No worker generates here: nothing to wait for.
    erased = forget.erase(runtime, uuid.UUID(erasure_id), batch=1, settle_seconds=0)
    assert erased is not None and erased.stopped == []  # the DELETE had stopped it
    assert forget.erase(runtime, uuid.UUID(erasure_id)) is None  # repeating it is harmless

    assert traces_of(engine, redis_client, gone, ids) == []
    status = client.get(f"/api/v1/erasures/{erasure_id}", headers=auth(gone)).get_json()
    assert status["status"] == "erased"
    assert {name: status["erased"][name] for name in ("questions", "conversations", "tasks", "webhook_endpoints",
                                                      "idempotency_keys", "daily_usage")} == {
        "questions": 2, "conversations": 1, "tasks": 1, "webhook_endpoints": 1, "idempotency_keys": 1,
        "daily_usage": 1}
    assert status["erased"]["redis_keys"] >= 2
    assert client.get(f"/api/v1/erasures/{erasure_id}", headers=auth(stays)).status_code == 404
    # Every old id answers 404; the other user's data is all there; a new POST starts from nothing.
    assert client.get(f"/api/v1/messages/{mine['message']['id']}", headers=auth(gone)).status_code == 404
    assert client.get(f"/api/v1/conversations/{mine['conversation_id']}", headers=auth(gone)).status_code == 404
    assert client.get(theirs["poll_url"], headers=auth(stays)).status_code == 200
    again = say(client, gone, "hello again")
    assert again["message"]["seq"] == 1
    listed = client.get("/api/v1/conversations", headers=auth(gone)).get_json()["items"]
    assert [row["id"] for row in listed] == [again["conversation_id"]]
