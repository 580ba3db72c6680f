"""A model in real use (contract: "Models, context and quotas"), against the fake model server:
a conversation longer than the context window keeps being answered, an answer cut at max_tokens
says so, failures keep their cause, usage is stored and quotas hold across two web nodes, and a
request retried within an attempt starts its live text again; while every slot of the model
server is taken, messages wait queued (no lease) and a freed slot goes to the message fair share
picks. (The same against llama.cpp's own
server: tests/test_llama_server.py.)"""

from __future__ import annotations

import os
import time
import uuid

import pytest
import redis
import requests

from models.coordination.model_pool import SINGLE_SERVER_SLOTS, ModelServer, slots_key
from tests.fake_llm import CONTEXT_TOKENS, FakeModelServer
from tests.support import Api, EventStream, Web, wait_until

MAX_TOKENS = 60  # the llm stack's LLM_MAX_TOKENS


@pytest.fixture
def user(llm_user: Api) -> Api:
    return llm_user


def test_a_conversation_longer_than_the_context_window_keeps_being_answered(
    user: Api, model: FakeModelServer
) -> None:
    long_text = ("This is a long message that fills the model's context window quickly. " * 30).strip()
    conversation_id = None
    for turn in range(50):  # 50 x 2 x 2,200 characters: about thirteen times the 4,096-token window
        model.reset({"content": f"Answer {turn}: " + long_text})
        conversation_id, answered = user.ask(f"Turn {turn}: {long_text}", conversation_id)
        assert answered["reply"]["content"].startswith(f"Answer {turn}")
    sent = answered["context"]
    assert sent["messages_total"] == 98 and 0 < sent["messages_sent"] < sent["messages_total"]
    request = model.requests[-1]["body"]
    shown = request["messages"][1:]
    # The most recent whole turns, starting at a question, ending with this one; within the window.
    assert shown[0]["role"] == "user" and shown[-1]["content"].startswith("Turn 49")
    assert len(shown) - 1 == sent["messages_sent"]
    assert request["max_tokens"] == MAX_TOKENS
    assert len(str(request["messages"])) // 4 < CONTEXT_TOKENS


def test_an_answer_cut_at_max_tokens_is_kept_and_says_so(user: Api, model: FakeModelServer) -> None:
    model.reset({"content": " ".join(f"word{n}" for n in range(500))})
    _, answered = user.ask("tell me an endless story")
    reply = answered["reply"]
    assert reply["finish"] == "length"
    assert reply["content"].split() == [f"word{n}" for n in range(MAX_TOKENS)]
    assert model.requests[0]["body"]["max_tokens"] == MAX_TOKENS


def test_usage_is_stored_per_reply_and_counted_per_day(user: Api, model: FakeModelServer) -> None:
    model.reset({"content": "Counted.", "usage": {"prompt_tokens": 321, "completion_tokens": 7}},
                {"tool_calls": [{"name": "list_tasks", "arguments": {}}],
                 "usage": {"prompt_tokens": 100, "completion_tokens": 5}},
                {"content": "Your list is empty.", "usage": {"prompt_tokens": 150, "completion_tokens": 6}})
    _, first = user.ask("count this")
    assert first["reply"]["usage"] == {"prompt_tokens": 321, "completion_tokens": 7}
    _, second = user.ask("what is on my list?")
    assert second["reply"]["usage"] == {"prompt_tokens": 250, "completion_tokens": 11}  # both requests
    today = user.get("/api/v1/usage").json()
    assert (today["messages"], today["prompt_tokens"], today["completion_tokens"]) == (2, 571, 18)
    assert today["limits"] == {"messages_per_day": None, "tokens_per_day": None}


def test_quotas_hold_across_two_web_nodes(llm_stack, model: FakeModelServer) -> None:
    env = {**llm_stack.env, "QUOTA_MESSAGES_PER_DAY": "3", "QUOTA_TOKENS_PER_DAY": "1200"}
    nodes = [Web(f"llm-quota-{n}", env).start() for n in "ab"]
    try:
        sender = f"quota-{uuid.uuid4().hex[:8]}"
        a, b = (Api(node.url, sender) for node in nodes)
        # Three messages, sent without waiting, alternately on both nodes: the fourth is refused.
        model.reset(*({"content": "ok", "usage": {"prompt_tokens": 1, "completion_tokens": 1}} for _ in range(3)))
        sent = []
        for n, node in enumerate((a, b, a)):
            response = node.post("/api/v1/chat", json={"message": f"m{n}"})
            assert response.status_code == 202
            sent.append(response.json()["message"]["id"])
        refused = b.post("/api/v1/chat", json={"message": "one too many"})
        assert refused.status_code == 429 and refused.json()["quota"] == "messages_per_day"
        assert 0 < int(refused.headers["Retry-After"]) <= 86400
        assert b.get("/api/v1/usage").json()["limits"] == {"messages_per_day": 3, "tokens_per_day": 1200}
        for message_id in sent:  # before the script changes under them
            assert a.wait_answered(message_id)["status"] == "answered"

        # Tokens: each reply reports 710; after two, the third message is refused, on either node.
        spender = f"tokens-{uuid.uuid4().hex[:8]}"
        a, b = (Api(node.url, spender) for node in nodes)
        model.reset(*({"content": "costly", "usage": {"prompt_tokens": 700, "completion_tokens": 10}}
                      for _ in range(2)))
        conversation_id, _ = a.ask("first")
        b.ask("second", conversation_id)
        refused = a.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "third"})
        assert refused.status_code == 429 and refused.json()["quota"] == "tokens_per_day", refused.text
        assert "1200 model tokens" in refused.json()["detail"]
        used = b.get("/api/v1/usage").json()
        assert used["prompt_tokens"] + used["completion_tokens"] == 1420 and used["messages"] == 2
    finally:
        for node in nodes:
            node.stop()


def test_a_transient_failure_keeps_its_cause_and_health_reports_the_model_server(
    llm_stack, user: Api, model: FakeModelServer
) -> None:
    # Three 503s use up the engine's tries within one attempt: the message goes back to the queue,
    # and says why while it waits.
    model.reset(*({"status": 503, "message": "loading model"} for _ in range(3)), {"content": "Back."})
    message_id = user.chat("are you there?")["message"]["id"]
    waiting = wait_until(lambda: (m := user.get(f"/api/v1/messages/{message_id}").json())["error"] and m,
                         timeout=30, what="the cause to be kept")
    assert "503" in waiting["error"] and "loading model" in waiting["error"]
    # Each 503 cooled the server down a little longer; /health shows it from what workers share.
    [server] = requests.get(llm_stack.url + "/health", timeout=5).json()["model_servers"]
    assert server["model"] == "fake-model" and server["failures"] >= 1 and server["state"] in ("cooling", "probing")
    answered = user.wait_answered(message_id, timeout=60)
    assert answered["status"] == "answered" and answered["error"] is None

    health = requests.get(llm_stack.url + "/health", timeout=5).json()
    assert health["engine"] == "reachable"
    assert [(s["model"], s["state"], s["failures"], s["in_use"]) for s in health["model_servers"]] == \
        [("fake-model", "ready", 0, 0)]  # the probe's answer made it ready
    unreachable = Web("llm-web-no-model", {**llm_stack.env, "LLM_BASE_URL": "http://127.0.0.1:9/v1"}).start()
    try:
        health = requests.get(unreachable.url + "/health", timeout=5)
        assert health.status_code == 200 and health.json()["engine"] == "unreachable"
    finally:
        unreachable.stop()


def test_a_request_retried_within_an_attempt_continues_the_text_handed_on(user: Api, model: FakeModelServer) -> None:
    """A model stream that breaks off mid-answer is asked again with the text handed on as the start
    of the assistant's message: the server continues it, nothing handed on is taken back, and the
    pieces together are the stored reply."""
    model.reset({"content": "Once upon a time there was a story that broke off", "chunk_delay": 0.05,
                 "break_after": 5},
                {"content": "Once upon a time there was a dragon asleep in a cave", "chunk_delay": 0.05})
    conversation_id = user.post("/api/v1/conversations", json={}).json()["id"]
    stream = EventStream(user, f"/api/v1/conversations/{conversation_id}/events")
    try:
        question_id = user.chat("tell me a story", conversation_id)["message"]["id"]
        events = stream.until(lambda e: e["event"] == "message" and e["data"].get("reply_to") == question_id,
                              limit=200)
    finally:
        stream.close()
    assert model.requests[-1]["body"]["messages"][-1] == {"role": "assistant", "content": "Once upon a time there "}
    deltas = [e["data"] for e in events if e["event"] == "delta"]
    assert [d["index"] for d in deltas] == list(range(len(deltas)))
    text = "".join(d["text"] for d in deltas)
    assert text == "Once upon a time there was a dragon asleep in a cave" == events[-1]["data"]["content"]


@pytest.mark.browser
def test_the_page_continues_a_retried_reply_and_marks_a_cut_one(llm_stack, model: FakeModelServer,
                                                                   browser) -> None:
    node = Web("llm-web-limits-dev", {**llm_stack.env, "CHATQ_DEV": "1"}).start()
    try:
        page = browser.new_page()
        page.goto(node.url + "/")
        page.fill("#user-name", f"limits-{os.getpid()}")
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#app:not([hidden])")
        model.reset({"content": "Once upon a time there was a story that broke off", "chunk_delay": 0.2,
                     "break_after": 4},
                    {"content": "Once upon a time a dragon slept in a cave all day long and dreamed",
                     "chunk_delay": 0.3})
        page.fill("#message", "tell me a story")
        page.press("#message", "Enter")
        page.wait_for_selector(".message.assistant.draft >> text=Once", timeout=15000)
        draft = page.wait_for_selector(".message.assistant.draft >> text=dragon", timeout=15000).inner_text()
        assert draft.count("Once") == 1  # the broken text was continued, not shown twice
        page.wait_for_selector(".message.assistant:not(.draft) >> text=dreamed", timeout=15000)

        model.reset({"content": " ".join(f"word{n}" for n in range(200))})
        page.fill("#message", "an endless story")
        page.press("#message", "Enter")
        page.wait_for_selector(".message.assistant.cut-short", timeout=15000)
        page.wait_for_selector(".status.note >> text=Cut short")
    finally:
        node.stop()


def test_while_every_slot_is_taken_messages_wait_queued_and_a_freed_slot_goes_by_fair_share(
    llm_stack, model: FakeModelServer, db_llm
) -> None:
    # Every slot of the stack's model server held, as by workers elsewhere (their leases live on).
    server = ModelServer(url=llm_stack.env["LLM_BASE_URL"], model="fake-model", slots=SINGLE_SERVER_SLOTS)
    client = redis.Redis.from_url(llm_stack.env["REDIS_URL"])
    seconds, _micros = client.time()
    held = {f"held-elsewhere-{index}": (seconds + 300) * 1000 for index in range(SINGLE_SERVER_SLOTS)}
    client.zadd(slots_key(server), held)
    model.default = {"content": "one at a time", "chunk_delay": 0.05}
    try:
        heavy, light = Api(llm_stack.url), Api(llm_stack.url)
        heavy_ids = [heavy.chat(f"heavy {index}")["message"]["id"] for index in range(3)]
        light_id = light.chat("light 0")["message"]["id"]
        # The worker's two processes have taken a doorbell each (delivered, not yet acknowledged:
        # kombu's `unacked` hash) and wait for a slot with nothing claimed: every message still
        # queued (cancellable at once), none leased.
        wait_until(lambda: client.hlen("unacked") >= 2, timeout=10, what="the worker's processes to take a job each")
        time.sleep(0.3)  # what a claim would take, had one been made
        for api, message_id in [*((heavy, i) for i in heavy_ids), (light, light_id)]:
            assert api.get(f"/api/v1/messages/{message_id}").json()["status"] == "queued"
        assert db_llm.execute("SELECT count(*) FROM conversations WHERE lease_expires_at IS NOT NULL "
                              "AND user_id = ANY(%s)", ([heavy.user, light.user],)).fetchone() == (0,)
        assert model.requests == []

        # One slot comes free: one request at a time, in the order fair share starts them — the
        # light user's one message second, not after the heavy user's backlog.
        client.zrem(slots_key(server), "held-elsewhere-0")
        for api, message_id in [*((heavy, i) for i in heavy_ids), (light, light_id)]:
            assert api.wait_answered(message_id, timeout=60)["status"] == "answered"
        asked = [request["body"]["messages"][-1]["content"] for request in model.requests]
        assert asked == ["heavy 0", "light 0", "heavy 1", "heavy 2"]
        assert model.most_active == 1
    finally:
        client.delete(slots_key(server))
