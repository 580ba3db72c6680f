"""A user's data in the fast tier: search finds the user's own words and nobody else's, retention
deletes exactly the conversations past their lifetime and none being answered, and an erasure
leaves nothing of the user in any table or Redis key while the other users' data stays."""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session

from models import ConfigError, Conversation, Message, Settings, Status
from models.coordination.jobs import ERASE_USER, HOUSEKEEPING_QUEUE
from models.coordination.model_pool import AFFINITY_TTL_SECONDS, affinity_key
from models.coordination.queue_figures import recent_user_starts_keys
from models.sql.erasure import USERS_TABLES, user_digest
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
    bobs = say(client, bob, "Add task: water the garden plants")

    found = search(client, ann, q="plants").get_json()
    assert [hit["message_id"] for hit in found["items"]] == [first["message"]["id"]]
    hit = found["items"][0]
    assert hit["conversation_id"] == first["conversation_id"] and hit["seq"] == 1 and hit["role"] == "user"
    assert [hit["snippet"][start:end] for start, end in hit["highlights"]] == ["plants"]
    assert "ficus" in hit["snippet"] and "\x02" not in hit["snippet"]
    # Stemmed (the english configuration): "watering" finds "water"; bob's garden is bob's alone.
    assert len(search(client, ann, q="watering").get_json()["items"]) == 1
    assert search(client, ann, q="garden").get_json()["items"] == []
    assert [h["message_id"] for h in search(client, bob, q="plants").get_json()["items"]] == [bobs["message"]["id"]]
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
    else:  # best match first: the messages that say "milk" three times, then twice, then once
        times = [1 + said.index(ident) % 3 for ident in seen]
        assert times == sorted(times, reverse=True), times


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


@pytest.fixture(scope="module")
def long_history(app, engine: Engine) -> str:
    """A user with 5,000 long messages: a relevance search of common words ranks them all."""
    user = someone("heavy")
    cid = say(app.test_client(), user, "Add task: the first of many")["conversation_id"]
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, attempts) "
            "SELECT gen_random_uuid(), :cid, :user, 1 + n, 'user', "
            "       repeat('the quick brown fox jumps over the lazy dog and writes many common words ', 30), "
            "       'answered', 1 FROM generate_series(1, 5000) AS n"), {"cid": cid, "user": user})
        connection.execute(text("UPDATE conversations SET last_seq = 5001 WHERE id = :cid"), {"cid": cid})
    return user


_WORDS = "quick brown fox jumps lazy dog writes many common words"


def test_searches_flooding_from_one_user_hold_no_more_of_the_pool_than_admitted(
        unit_settings, engine: Engine, long_history: str) -> None:
    from web import create_app

    app = create_app(settings=unit_settings.model_copy(update={"max_searches": 2, "max_searches_per_user": 1}))
    light = someone("light")
    stop, most = threading.Event(), [0]

    def watching() -> None:  # how many searches Postgres runs at once, seen from outside the app
        # In autocommit: within a transaction, pg_stat_activity is read once and not again.
        with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
            while not stop.is_set():
                running = connection.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'active' AND query LIKE '%ts_headline%' AND pid <> pg_backend_pid()")).scalar_one()
                most[0] = max(most[0], running)
                time.sleep(0.005)

    def searching(_: int) -> tuple[int, str | None]:
        answer = app.test_client().get("/api/v1/search", query_string={"q": _WORDS, "order": "relevance"},
                                       headers=auth(long_history))
        return answer.status_code, answer.headers.get("Retry-After")

    watcher = threading.Thread(target=watching)
    watcher.start()
    with ThreadPoolExecutor(max_workers=12) as pool:
        flood = pool.map(searching, range(24))
        lights = [app.test_client().get("/api/v1/tasks", headers=auth(light)).status_code for _ in range(10)]
        answers = list(flood)
    stop.set()
    watcher.join()
    assert lights == [200] * 10
    assert {status for status, _ in answers} <= {200, 429} and (200, None) in answers
    assert all(int(after) >= 1 for status, after in answers if status == 429)
    assert 1 <= most[0] <= 1, most[0]  # one user's: max_searches_per_user, whatever the flood


def test_a_statement_past_the_web_timeout_is_cancelled_and_answers_503(
        unit_settings, long_history: str) -> None:
    from web import create_app

    app = create_app(settings=unit_settings.model_copy(update={"web_statement_timeout_ms": 20}))
    answer = app.test_client().get("/api/v1/search", query_string={"q": _WORDS, "order": "relevance"},
                                   headers=auth(long_history))
    assert answer.status_code == 503 and answer.content_type == "application/problem+json"
    assert int(answer.headers["Retry-After"]) >= 1
    assert app.test_client().get("/api/v1/tasks", headers=auth(long_history)).status_code == 200


# Erasure ---------------------------------------------------------------------------------------


# Celery's queues in the fast tier's Redis, where no worker takes the jobs the views send.
BROKER_QUEUES = {"celery", HOUSEKEEPING_QUEUE, "webhooks"}


def _values(client: redis.Redis, key: bytes) -> str:
    """Everything a key holds, whatever its type, as text to look for a user's id or words in."""
    kind = client.type(key)
    if kind == b"string":
        held: object = client.get(key)
    elif kind == b"hash":
        held = client.hgetall(key)
    elif kind == b"set":
        held = client.smembers(key)
    elif kind == b"zset":
        held = client.zrange(key, 0, -1)
    elif kind == b"list":
        held = client.lrange(key, 0, -1)
    elif kind == b"stream":
        held = client.xrange(key)
    else:
        held = kind
    return repr(held)


def traces_of(engine: Engine, client: redis.Redis, user: str, ids: set[str], words: tuple[str, ...] = ()
              ) -> list[str]:
    """Every row of every table, and every Redis key (its name and all it holds: strings, hashes,
    sets, sorted sets, lists, streams), that names the user, one of their ids or their words —
    whatever the table or key: the walk reads them all."""
    found = []
    needles = [user, *ids, *words]
    with engine.connect() as connection:
        tables = connection.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version'")).scalars().all()
        assert {"messages", "conversations", "tasks", "webhook_endpoints", "erasures"} <= set(tables)
        for table in tables:
            hits = connection.execute(text(
                f"SELECT row_to_json(t)::text FROM {table} AS t "  # noqa: S608 (names from the catalog)
                "WHERE row_to_json(t)::text LIKE ANY(:patterns)"), {"patterns": [f"%{n}%" for n in needles]}).all()
            found += [f"{table}: {row[0][:120]}" for row in hits]
    for key in client.scan_iter(count=1000):
        if key.decode() in BROKER_QUEUES:  # jobs carry ids only; a worker that takes one finds nothing
            continue
        name, held = key.decode(), _values(client, key)
        if any(needle in name for needle in needles):
            found.append(f"redis key {name}")
        elif any(needle in held for needle in needles):
            found.append(f"redis value of {name}: {held[:120]}")
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
    # The model pool's record of which server answered the conversation (what ModelPool.answered writes).
    redis_client.set(affinity_key(mine["conversation_id"]), "llama-a:0", ex=AFFINITY_TTL_SECONDS)
    assert any("affinity" in trace for trace in traces_of(engine, redis_client, gone, ids))
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


def _runtime(unit_settings, engine: Engine) -> Runtime:
    return Runtime(settings=unit_settings, sessions=None,  # type: ignore[arg-type]
                   db=engine.execution_options(isolation_level="AUTOCOMMIT"),
                   redis=redis.Redis.from_url(unit_settings.redis_url), engine=None)  # type: ignore[arg-type]


def _stored_rows(engine: Engine, user: str) -> dict[str, int]:
    with engine.connect() as connection:
        return {table.name: connection.execute(select(func.count()).select_from(table)
                                               .where(table.c.user_id == user)).scalar_one()
                for table in USERS_TABLES}


def test_an_erasure_takes_a_row_another_transaction_holds_locked_while_it_runs(
        client, unit_settings, engine: Engine) -> None:
    """The erasure deletes by key and goes on until a lookup finds nothing: a row that another
    transaction updated while the erasure waited for it is deleted all the same (by row address,
    the DELETE found the row moved, deleted nothing and took that for done)."""
    user = someone("locked")
    said = say(client, user, "Add task: keep me around")
    erasure_id = client.delete("/api/v1/me", headers=auth(user)).get_json()["id"]
    holder = engine.connect()
    held = holder.begin()  # what a POST's numbering does: the conversation's row, locked and updated
    holder.execute(text("UPDATE conversations SET last_seq = last_seq WHERE id = :id"),
                   {"id": said["conversation_id"]})
    done: list[Any] = []
    erasing = threading.Thread(target=lambda: done.append(
        forget.erase(_runtime(unit_settings, engine), uuid.UUID(erasure_id), settle_seconds=0)))
    erasing.start()
    erasing.join(timeout=1.0)
    assert erasing.is_alive(), "the erasure must be waiting for the locked row"
    held.commit()
    holder.close()
    erasing.join(timeout=30)
    assert done and done[0] is not None and done[0].counts.get("conversations") == 1
    assert sum(_stored_rows(engine, user).values()) == 0
    status = client.get(f"/api/v1/erasures/{erasure_id}", headers=auth(user)).get_json()
    assert status["status"] == "erased" and status["erased"]["conversations"] == 1
    assert client.get(f"/api/v1/conversations/{said['conversation_id']}", headers=auth(user)).status_code == 404


def test_an_erasure_waits_for_a_generation_to_stop_before_it_erases(client, unit_settings, engine: Engine) -> None:
    """A worker generating the user's reply when DELETE /me comes stores what it wrote (its last
    pieces in Redis, the question's final status) a moment later: the erasure waits for that, and
    then erases it too. Without the wait, the worker's last writes came after the erasure."""
    user = someone("midreply")
    said = say(client, user, "hello")
    question = said["message"]["id"]
    with engine.begin() as connection:
        connection.execute(text("UPDATE messages SET status = 'processing', attempts = 1 WHERE id = :id"),
                           {"id": question})
    erasure_id = client.delete("/api/v1/me", headers=auth(user)).get_json()["id"]
    pieces = redis.Redis.from_url(unit_settings.redis_url)

    def worker_stopping() -> None:  # what a worker told to stop does within its second
        time.sleep(0.8)
        pieces.xadd(f"chatq:pieces:{question}:1", {"i": 7, "t": " last words"})
        with engine.begin() as connection:
            connection.execute(text("UPDATE messages SET status = 'cancelled' WHERE id = :id"), {"id": question})

    stopping = threading.Thread(target=worker_stopping)
    stopping.start()
    started = time.monotonic()
    erased = forget.erase(_runtime(unit_settings, engine), uuid.UUID(erasure_id), settle_seconds=10)
    stopping.join()
    assert erased is not None and erased.counts.get("questions") == 1
    assert time.monotonic() - started >= 0.8  # it waited for the worker
    assert traces_of(engine, pieces, user, {question, said["conversation_id"]}) == []


def test_while_an_erasure_runs_every_write_is_refused_with_409_and_stores_nothing(
        client, unit_settings, engine: Engine) -> None:
    user = someone("busy")
    said = say(client, user, "Add task: water the plants")
    with engine.begin() as connection:  # answered, so that it could be regenerated
        connection.execute(text("UPDATE messages SET status = 'answered' WHERE id = :id"),
                           {"id": said["message"]["id"]})
    erasure_id = client.delete("/api/v1/me", headers=auth(user)).get_json()["id"]
    before = _stored_rows(engine, user)
    writes = [
        ("post", "/api/v1/chat", {"message": "show my tasks"}, {}),
        ("post", "/api/v1/chat", {"message": "show my tasks"}, {"Idempotency-Key": "during-erasure"}),
        ("post", f"/api/v1/conversations/{said['conversation_id']}/messages", {"content": "and this"}, {}),
        ("post", f"/api/v1/conversations/{said['conversation_id']}/messages",
         {"content": "now", "on_busy": "interrupt"}, {}),
        ("post", "/api/v1/conversations", {"title": "new"}, {}),
        ("post", "/api/v1/webhooks", {"url": "https://8.8.8.8/hook"}, {}),
        ("post", f"/api/v1/messages/{said['message']['id']}/regenerate", {"content": "Add task: other"}, {}),
    ]
    for method, path, body, headers in writes:
        answer = getattr(client, method)(path, json=body, headers={**auth(user), **headers})
        assert answer.status_code == 409, (path, answer.get_data(as_text=True))
        assert answer.content_type == "application/problem+json"
        assert answer.get_json()["type"].endswith("/erasure-running") and int(answer.headers["Retry-After"]) >= 1
    assert _stored_rows(engine, user) == before  # nothing of those writes was stored
    forget.erase(_runtime(unit_settings, engine), uuid.UUID(erasure_id), settle_seconds=0)
    assert sum(_stored_rows(engine, user).values()) == 0
    after = say(client, user, "hello again")  # once it has finished, the user starts from nothing
    assert client.get(after["poll_url"], headers=auth(user)).status_code == 200


def test_posts_and_patches_racing_an_erasure_never_outlive_it_and_no_202_is_undone(
        limited_app, unit_settings, engine: Engine) -> None:
    """Threads post into the user's conversation and change its ttl_days while DELETE /me is asked
    and carried out: afterwards nothing of the user is stored, every write that began after the
    DELETE /me was answered was refused (409) or found the conversation gone (404), and every 202
    went to a write that began before it."""
    user = someone("race")
    said = say(limited_app.test_client(), user, "Add task: race me")
    cid = said["conversation_id"]
    stop = threading.Event()
    asked_at: list[float] = []
    outcomes: list[tuple[float, int, str]] = []

    def patching() -> None:
        client = limited_app.test_client()
        while not stop.is_set():
            began = time.monotonic()
            answer = client.patch(f"/api/v1/conversations/{cid}", json={"ttl_days": random.randint(1, 30)},
                                  headers=auth(user))
            outcomes.append((began, answer.status_code, "patch"))

    def posting() -> None:
        client = limited_app.test_client()
        while not stop.is_set():
            began = time.monotonic()
            answer = client.post(f"/api/v1/conversations/{cid}/messages", json={"content": "Add task: one more"},
                                 headers=auth(user))
            outcomes.append((began, answer.status_code, "post"))

    threads = [threading.Thread(target=patching) for _ in range(3)] + [threading.Thread(target=posting)
                                                                        for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    asked = limited_app.test_client().delete("/api/v1/me", headers=auth(user))
    asked_at.append(time.monotonic())
    erased = forget.erase(_runtime(unit_settings, engine), uuid.UUID(asked.get_json()["id"]), batch=1,
                          settle_seconds=0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert erased is not None and erased.counts["conversations"] == 1
    assert sum(_stored_rows(engine, user).values()) == 0, _stored_rows(engine, user)
    late = [(status, kind) for began, status, kind in outcomes if began > asked_at[0]]
    assert late, "the writers must have raced the erasure"
    assert {status for status, _ in late} <= {404, 409}, late
    assert all(status in (200, 202, 404, 409) for _, status, _ in outcomes), outcomes  # never a 500


def test_a_patch_racing_the_delete_of_its_conversation_answers_404_never_500(client) -> None:
    user = someone("patch")
    for _ in range(8):
        cid = say(client, user, "Add task: delete me")["conversation_id"]
        statuses: list[int] = []

        def patching(conversation: str = cid, statuses: list[int] = statuses) -> None:
            own = client.application.test_client()
            for _ in range(15):
                statuses.append(own.patch(f"/api/v1/conversations/{conversation}", json={"ttl_days": 3},
                                          headers=auth(user)).status_code)

        threads = [threading.Thread(target=patching) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.01)
        assert client.delete(f"/api/v1/conversations/{cid}", headers=auth(user)).status_code == 204
        for thread in threads:
            thread.join(timeout=30)
        assert set(statuses) <= {200, 404} and 404 in statuses, statuses


def test_the_queue_cap_holds_exactly_under_concurrent_posts(unit_settings, engine: Engine) -> None:
    from web import create_app

    capped = create_app(settings=unit_settings.model_copy(update={"max_queued_per_user": 10}))
    user = someone("cap")

    def post(_: int) -> int:
        return capped.test_client().post("/api/v1/chat", json={"message": "Add task: one of many"},
                                         headers=auth(user)).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(post, range(48)))
    assert sorted(set(statuses)) == [202, 429] and statuses.count(202) == 10, statuses
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM messages WHERE user_id = :u AND status = 'queued'"),
                                  {"u": user}).scalar_one() == 10


def test_a_repeated_erasure_once_finished_with_nothing_stored_since_starts_nothing(
        client, unit_settings, engine: Engine) -> None:
    user = someone("again")
    say(client, user, "Add task: forget me twice")
    first = client.delete("/api/v1/me", headers=auth(user)).get_json()
    forget.erase(_runtime(unit_settings, engine), uuid.UUID(first["id"]), settle_seconds=0)
    for _ in range(3):
        again = client.delete("/api/v1/me", headers=auth(user))
        assert again.status_code == 202
        assert again.get_json()["id"] == first["id"] and again.get_json()["status"] == "erased"
    with engine.connect() as connection:
        digest = connection.execute(text("SELECT user_digest FROM erasures WHERE id = :id"),
                                    {"id": first["id"]}).scalar_one()
        assert connection.execute(text("SELECT count(*) FROM erasures WHERE user_digest = :d"),
                                  {"d": digest}).scalar_one() == 1
    # Something stored since: a new erasure, which takes it.
    say(client, user, "Add task: and this")
    assert client.delete("/api/v1/me", headers=auth(user)).get_json()["id"] != first["id"]


def test_erasure_jobs_go_to_the_housekeeping_queue_not_behind_the_answer_jobs() -> None:
    from worker import app as worker_app

    assert worker_app.amqp.router.route({}, ERASE_USER)["queue"].name == HOUSEKEEPING_QUEUE
    assert HOUSEKEEPING_QUEUE in {queue.name for queue in worker_app.conf.task_queues}


def test_no_erasure_digest_without_a_secret_the_deployment_keeps() -> None:
    from web import create_app

    only_a_provider = Settings.from_env({"AUTH_JWKS_URL": "https://idp.example/jwks", "AUTH_AUDIENCE": "chatq"})
    with pytest.raises(ConfigError, match="ERASURE_SECRET"):
        create_app(settings=only_a_provider)
    with pytest.raises(ConfigError):
        user_digest(only_a_provider, "ann@example.com")
    keyed = only_a_provider.model_copy(update={"erasure_secret": "e" * 16 + "f" * 16 + "0123456789abcdef"})
    other = keyed.model_copy(update={"erasure_secret": "another-long-random-secret-0123456789"})
    assert user_digest(keyed, "ann@example.com") != user_digest(other, "ann@example.com")


def test_the_erasure_deletes_every_table_that_holds_a_users_rows() -> None:
    assert set(USERS_TABLES) == forget.ERASED_TABLES
