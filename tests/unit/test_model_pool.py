"""The pool of model servers (worker/engine/pool.py), driven as a worker drives it — the engine's
`reply` with a real todo list in Postgres and the pool's state in real Redis — against fake model
servers speaking the Chat Completions protocol (tests/fake_llm.py), in this process: slots never
exceeded across concurrent requests, a conversation kept on its server, failover before the first
token, cooldowns that grow and a probe that brings a server back, the fallback group, and the slot
of a worker that died freed by its lease."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from models import Settings
from models.coordination.model_pool import ModelServer, server_states, slot_uses_key, slots_key
from tests.fake_llm import FakeModelServer
from tests.support import free_port


@pytest.fixture
def servers() -> Iterator[list[FakeModelServer]]:
    made = [FakeModelServer() for _ in range(3)]
    yield made
    for server in made:
        server.close()


@pytest.fixture
def redis_client(unit_settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(unit_settings.redis_url)


def engine_of(unit_settings: Settings, client: redis.Redis, pool: list[dict[str, Any]], **settings: str):
    from worker.engine import make_reply_engine

    configured = Settings.from_env({
        "DATABASE_URL": unit_settings.database_url, "REDIS_URL": unit_settings.redis_url, "ENGINE": "openai",
        "LLM_SERVERS": json.dumps(pool), "LLM_CONTEXT_TOKENS": "4096", "LLM_MAX_TOKENS": "64",
        "LLM_TIMEOUT_S": "5", **settings})
    return make_reply_engine(configured, client), configured.model_servers()


def ask(engine, autocommit, conversation_id: uuid.UUID | None = None, text: str = "hello",
        history: list[tuple[int, str, str, str | None]] | None = None, reserved=None):
    from worker.engine import History, ReplyRequest, TodoTools

    conversation_id = conversation_id or uuid.uuid4()
    user = f"pool-{uuid.uuid4().hex[:8]}"
    request = ReplyRequest(user=user, conversation_id=conversation_id, message_id=uuid.uuid4(), content=text,
                           history=History(history or []), tools=TodoTools(autocommit, user, uuid.uuid4()),
                           reserved=reserved)
    return engine.reply(request)


def take_as(engine, server: ModelServer, token: str, lease_ms: int, index: int = -1) -> int:
    """A slot taken as another worker would (the pool's own script), never renewed: its index."""
    return engine.pool.scripts.take(keys=[slots_key(server), slot_uses_key(server)],
                                    args=[server.slots, lease_ms, token, index])


def entry(server: FakeModelServer, model: str, slots: int = 4, group: str = "primary") -> dict[str, Any]:
    return {"url": server.base_url, "model": model, "slots": slots, "group": group}


def test_no_server_ever_runs_more_requests_than_its_slots(unit_settings, redis_client, autocommit, servers) -> None:
    a, b, _ = servers
    for server in (a, b):
        server.default = {"content": "one two three four five six", "chunk_delay": 0.03}
    engine, _pool = engine_of(unit_settings, redis_client, [entry(a, "model-a", slots=2), entry(b, "model-b", slots=1)])
    replies: list[Any] = []
    threads = [threading.Thread(target=lambda: replies.append(ask(engine, autocommit))) for _ in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(replies) == 9 and all(reply.content == "one two three four five six" for reply in replies)
    assert a.most_active == 2 and b.most_active == 1  # full, never past
    assert {reply.model for reply in replies} == {"model-a", "model-b"}
    assert len(a.requests) + len(b.requests) == 9


def test_a_conversation_goes_back_to_the_server_that_answered_its_last_turn(
        unit_settings, redis_client, autocommit, servers) -> None:
    a, b, _ = servers
    engine, pool = engine_of(unit_settings, redis_client, [entry(a, "model-a", slots=2), entry(b, "model-b", slots=2)],
                             LLM_AFFINITY_WAIT_SECONDS="1")
    on_a = [uuid.uuid4() for _ in range(3)]
    on_b = [uuid.uuid4() for _ in range(3)]
    # A new conversation starts on the least busy server: the other one's slots are all taken.
    for started_on, busy in ((on_a, 1), (on_b, 0)):
        held = [engine.pool._try(server_states(redis_client, pool)[busy]) for _ in range(pool[busy].slots)]
        assert all(held)
        try:
            assert {ask(engine, autocommit, cid).model for cid in started_on} == {pool[1 - busy].model}
        finally:
            for slot in held:
                slot.release()
    # Both idle again: each conversation's next turns go where its last one was answered.
    for _turn in range(3):
        assert [ask(engine, autocommit, cid).model for cid in on_a + on_b] == ["model-a"] * 3 + ["model-b"] * 3
    # A conversation waits a little for its server's slot rather than go elsewhere ...
    held = [engine.pool._try(server_states(redis_client, pool)[1]) for _ in range(2)]
    threading.Timer(0.3, lambda: [slot.release() for slot in held]).start()
    started = time.monotonic()
    assert ask(engine, autocommit, on_b[0]).model == "model-b" and time.monotonic() - started >= 0.25
    # ... and no longer than LLM_AFFINITY_WAIT_SECONDS: then any server will do.
    held = [engine.pool._try(server_states(redis_client, pool)[1]) for _ in range(2)]
    try:
        started = time.monotonic()
        assert ask(engine, autocommit, on_b[1]).model == "model-a"
        assert 0.9 < time.monotonic() - started < 3
    finally:
        for slot in held:
            slot.release()


def test_a_server_that_fails_before_the_first_token_is_cooled_down_and_another_answers(
        unit_settings, redis_client, autocommit, servers) -> None:
    a, b, _ = servers
    down = {"url": f"http://127.0.0.1:{free_port()}/v1", "model": "model-down", "slots": 4}
    engine, pool = engine_of(unit_settings, redis_client, [down, entry(a, "model-a")],
                             LLM_COOLDOWN_SECONDS="30")
    cid = uuid.uuid4()
    redis_client.set(f"chatq:llm:affinity:{cid}", pool[0].key)  # its last turn was on the server now down
    started = time.monotonic()
    reply = ask(engine, autocommit, cid)
    assert reply.model == "model-a" and reply.content == "OK"
    assert time.monotonic() - started < 2  # at once, not after a backoff
    states = {state.server.model: state for state in server_states(redis_client, pool)}
    assert states["model-down"].state == "cooling" and states["model-down"].failures == 1
    assert 25 < states["model-down"].cooling_for <= 30
    # While it cools down, nothing is sent to it: every request goes to the other (a 5xx too).
    a.reset({"status": 503, "message": "overloaded"}, {"content": "after the 503"})
    b_entry = entry(b, "model-b")
    engine2, pool2 = engine_of(unit_settings, redis_client, [down, entry(a, "model-a"), b_entry],
                               LLM_COOLDOWN_SECONDS="30")
    assert ask(engine2, autocommit).content in ("OK", "after the 503")
    shown = {state.server.model: state for state in server_states(redis_client, pool2)}
    # Still its one failure: a request sent to it would have failed again (a connection refused).
    assert shown["model-down"].state == "cooling" and shown["model-down"].failures == 1


def test_cooldowns_grow_with_failures_in_a_row_and_one_probe_brings_a_server_back(
        unit_settings, redis_client, autocommit, servers) -> None:
    a, b, _ = servers
    engine, pool = engine_of(unit_settings, redis_client, [entry(a, "model-a"), entry(b, "model-b")],
                             LLM_COOLDOWN_SECONDS="0.4", LLM_AFFINITY_WAIT_SECONDS="0")
    flaky = pool[0]
    for failures, pause in ((1, 0.4), (2, 0.8), (3, 1.6)):
        engine.pool.failed(flaky, "5xx")
        [state] = [s for s in server_states(redis_client, pool) if s.server == flaky]
        assert state.failures == failures and pause - 0.15 < state.cooling_for <= pause
    assert all(ask(engine, autocommit).model == "model-b" for _ in range(3))  # cooling: not asked
    time.sleep(1.7)
    [state] = [s for s in server_states(redis_client, pool) if s.server == flaky]
    assert state.state == "probing"
    # With the other server busy, the next request probes it, and its answer makes it ready again.
    a.reset()
    held = [engine.pool._try(server_states(redis_client, pool)[1]) for _ in range(pool[1].slots)]
    try:
        assert ask(engine, autocommit).model == "model-a" and len(a.requests) == 1
    finally:
        for slot in held:
            slot.release()
    [state] = [s for s in server_states(redis_client, pool) if s.server == flaky]
    assert state.state == "ready" and state.failures == 0


def test_the_fallback_group_answers_only_when_no_primary_server_can(
        unit_settings, redis_client, autocommit, servers) -> None:
    a, _, fallback = servers
    engine, pool = engine_of(unit_settings, redis_client,
                             [entry(a, "model-a", slots=1), entry(fallback, "hosted", group="fallback")],
                             LLM_COOLDOWN_SECONDS="30")
    assert {ask(engine, autocommit).model for _ in range(4)} == {"model-a"}
    assert fallback.requests == []
    engine.pool.failed(pool[0], "connection")  # the primary server is down
    assert {ask(engine, autocommit).model for _ in range(3)} == {"hosted"}


def test_a_slot_whose_worker_died_is_free_again_when_its_lease_runs_out(
        unit_settings, redis_client, autocommit, servers) -> None:
    a = servers[0]
    engine, pool = engine_of(unit_settings, redis_client, [entry(a, "model-a", slots=1)],
                             LLM_SLOT_TTL_SECONDS="0.6")
    # A worker took the only slot and died: nobody renews it.
    assert take_as(engine, pool[0], "dead-worker", lease_ms=600) == 0  # slot 0
    assert server_states(redis_client, pool)[0].in_use == 1
    started = time.monotonic()
    assert ask(engine, autocommit).content == "OK"
    assert 0.4 < time.monotonic() - started < 3  # it waited for the lease, not for ever
    assert redis_client.zscore(slots_key(pool[0]), "0:dead-worker") is None


def test_a_request_waiting_for_a_slot_gives_up_in_time_and_its_message_goes_back(
        unit_settings, redis_client, autocommit, servers) -> None:
    from worker.engine import TransientEngineError

    a = servers[0]
    engine, pool = engine_of(unit_settings, redis_client, [entry(a, "model-a", slots=1)],
                             LLM_SLOT_WAIT_SECONDS="0.5", LLM_SLOT_TTL_SECONDS="30")
    assert take_as(engine, pool[0], "busy", lease_ms=30_000) == 0
    try:
        with pytest.raises(TransientEngineError, match="no model server had a free slot"):
            ask(engine, autocommit)
        assert a.requests == []
    finally:
        redis_client.zrem(slots_key(pool[0]), "0:busy")


def test_a_slot_is_reserved_before_the_claim_and_given_up_for_the_conversations_own_server(
        unit_settings, redis_client, autocommit, servers) -> None:
    from worker.engine import TransientEngineError

    a, b, _ = servers
    engine, pool = engine_of(unit_settings, redis_client, [entry(a, "model-a", slots=1), entry(b, "model-b", slots=1)],
                             LLM_SLOT_WAIT_SECONDS="0.5", LLM_AFFINITY_WAIT_SECONDS="0.3")
    # What a worker does before it claims: a slot on a free server, one per server here.
    first, second = engine.reserve(lambda: False), engine.reserve(lambda: False)
    assert {first.server.model, second.server.model} == {"model-a", "model-b"}
    started = time.monotonic()
    with pytest.raises(TransientEngineError, match=r"stayed busy for 0\.5 s"):
        engine.reserve(lambda: False)  # nothing claimed: the doorbell goes back to the queue
    assert 0.5 <= time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(TransientEngineError, match="stopping"):
        engine.reserve(lambda: True)
    assert time.monotonic() - started < 0.3
    first.release()
    second.release()

    # The claimed conversation's last server has a free slot: the reserved one is given back.
    cid = uuid.uuid4()
    redis_client.set(f"chatq:llm:affinity:{cid}", pool[1].key)
    held_b = engine.reserve(lambda: False)
    held_a = engine.reserve(lambda: False)
    reserved, other = (held_a, held_b) if held_a.server == pool[0] else (held_b, held_a)
    other.release()  # model-b free now
    assert ask(engine, autocommit, cid, reserved=reserved).model == "model-b"
    assert not reserved.held and server_states(redis_client, pool)[0].in_use == 0
    # Its server stays busy past the affinity wait: the reserved slot answers.
    busy_b = engine.pool._try(server_states(redis_client, pool)[1])
    reserved = engine.reserve(lambda: False)
    try:
        assert reserved.server == pool[0]
        started = time.monotonic()
        assert ask(engine, autocommit, cid, reserved=reserved).model == "model-a"
        assert 0.25 < time.monotonic() - started < 2
    finally:
        busy_b.release()
    assert [state.in_use for state in server_states(redis_client, pool)] == [0, 0]
    # Every server cooling down: nothing to reserve, the message is claimed and meets the cooldown.
    for server in pool:
        engine.pool.failed(server, "connection")
    assert engine.reserve(lambda: False) is None


def test_two_workers_each_holding_the_others_home_server_swap_without_waiting(
        unit_settings, redis_client, autocommit, servers) -> None:
    a, b, _ = servers
    engine, pool = engine_of(unit_settings, redis_client, [entry(a, "model-a", slots=1), entry(b, "model-b", slots=1)],
                             LLM_AFFINITY_WAIT_SECONDS="5")
    home_a, home_b = uuid.uuid4(), uuid.uuid4()
    redis_client.set(f"chatq:llm:affinity:{home_a}", pool[0].key)
    redis_client.set(f"chatq:llm:affinity:{home_b}", pool[1].key)
    first, second = engine.reserve(lambda: False), engine.reserve(lambda: False)
    on_b, on_a = (first, second) if first.server == pool[1] else (second, first)
    # The worker holding b's slot claimed home_a's turn, the one holding a's claimed home_b's.
    answers: dict[uuid.UUID, str] = {}
    threads = [threading.Thread(target=lambda cid=cid, held=held: answers.update(
        {cid: ask(engine, autocommit, cid, reserved=held).model})) for cid, held in ((home_a, on_b), (home_b, on_a))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {home_a: "model-a", home_b: "model-b"}
    assert time.monotonic() - started < 2  # neither waited out the affinity wait for the other


def test_a_server_that_pins_slots_gets_each_conversation_back_in_its_own_slot(
        unit_settings, redis_client, autocommit, servers) -> None:
    a, plain, _ = servers
    engine, pool = engine_of(unit_settings, redis_client, [{**entry(a, "model-a", slots=2), "pin_slots": True}],
                             LLM_AFFINITY_WAIT_SECONDS="0.4")
    first, second = uuid.uuid4(), uuid.uuid4()
    for _turn in range(3):  # taking turns, as two conversations on one server do
        ask(engine, autocommit, first)
        ask(engine, autocommit, second)
    slots = [request["body"]["id_slot"] for request in a.requests]
    assert slots[0::2] == [slots[0]] * 3 and slots[1::2] == [1 - slots[0]] * 3  # each its own, the other free
    # Its slot busy: the conversation waits for it (the server's other slot is free) ...
    a.reset()
    mine = slots[0]
    held = take_as(engine, pool[0], "elsewhere", lease_ms=300, index=mine)
    assert held == mine
    started = time.monotonic()
    ask(engine, autocommit, first)
    assert a.requests[-1]["body"]["id_slot"] == mine and time.monotonic() - started >= 0.2
    # ... for no longer than the affinity wait, then any slot will do.
    assert take_as(engine, pool[0], "elsewhere-longer", lease_ms=5_000, index=mine) == mine
    started = time.monotonic()
    ask(engine, autocommit, first)
    assert a.requests[-1]["body"]["id_slot"] == 1 - mine and 0.35 < time.monotonic() - started < 2
    redis_client.zrem(slots_key(pool[0]), f"{mine}:elsewhere-longer")
    # A server that does not pin slots is never sent llama.cpp's id_slot.
    unpinned, _ = engine_of(unit_settings, redis_client, [entry(plain, "model-plain", slots=2)])
    ask(unpinned, autocommit)
    assert "id_slot" not in plain.requests[-1]["body"]


def test_the_pool_setting_refuses_what_it_cannot_use() -> None:
    from models.process.config import ConfigError

    for bad, says in (("[]", "at least one"), ('[{"url": "ftp://x", "model": "m", "slots": 1}]', "url"),
                      ('[{"url": "http://x/v1", "model": "m", "slots": 0}]', "slots"),
                      ('[{"url": "http://x/v1", "model": "m", "slots": 1, "group": "fallback"}]', "primary"),
                      ('[{"url": "http://x/v1", "model": "m", "slots": 1}, {"url": "http://x/v1", "model": "m", '
                       '"slots": 2}]', "twice"), ("not json", "LLM_SERVERS")):
        with pytest.raises(ConfigError, match=says):
            Settings.from_env({"ENGINE": "openai", "LLM_SERVERS": bad})
    one = Settings.from_env({"ENGINE": "openai", "LLM_BASE_URL": "http://u:secret@h:1/v1", "LLM_MODEL": "m"})
    [server] = one.model_servers()
    assert server.shown_url == "http://h:1/v1" and server.slots >= 1  # a pool of one; no credentials shown
    assert ModelServer(url="http://a/v1", model="m", slots=1).key != ModelServer(url="http://a/v1", model="n",
                                                                                 slots=1).key


def test_a_history_that_surely_fits_is_sent_whole_without_a_round_trip_to_count_it(
        unit_settings, redis_client, autocommit, servers) -> None:
    """Counting a turn's tokens exactly is a request to the model server: before the first token,
    one per turn. A history far inside the window (by the estimate, with room for it to be twice
    too low) is sent as it is; one near the window's edge is still counted."""
    a = servers[0]
    engine, _pool = engine_of(unit_settings, redis_client, [entry(a, "model-a")], LLM_CONTEXT_TOKENS="4096")

    def history(turns: int, words: int) -> list[tuple[int, str, str, str | None]]:
        return [(seq, "user" if seq % 2 else "assistant", "word " * words, None) for seq in range(1, turns + 1)]

    short = ask(engine, autocommit, history=history(20, 10))
    assert a.tokenize_calls == 0 and short.context == {"messages_sent": 20, "messages_total": 20}
    a.reset()
    long = ask(engine, autocommit, history=history(20, 150))  # ~5,000 tokens by the estimate: past the window
    assert a.tokenize_calls >= 1 and long.context["messages_sent"] < 20
