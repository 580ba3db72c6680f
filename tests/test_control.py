"""Controlling a generation (contract: "Controlling a generation"), on real processes: two web
nodes, a worker whose built-in engine streams its answer a word at a time, and the sweeper.

Stop on either node, double-texting (`on_busy`), regenerate and edit with versions kept, and a
client joining mid-reply — on another node, or after the worker was SIGKILLed — that gets the text
so far and then the rest, every piece once. (With a model server: tests/test_llm_engine.py.)
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis
import requests

from scripts.devstack import libpq_url
from tests.support import (
    ARTIFACTS,
    Api,
    BackgroundPoll,
    EventStream,
    Stack,
    Web,
    Worker,
    isolated_env,
    sample,
    sign_in,
    wait_until,
)
from worker.engine.builtin import FALLBACK, HELP

STREAM_DELAY_MS = 120  # FALLBACK (26 words) streams for about 3 s


@pytest.fixture(scope="module")
def control(stack_env):
    env = isolated_env(stack_env, "control", ENGINE_STREAM_DELAY_MS=str(STREAM_DELAY_MS))
    running = Stack(env, "control").start()
    node_b = Web("control-web-b", env).start()
    yield SimpleNamespace(stack=running, a=running.web.url, b=node_b.url, env=env)
    node_b.stop()
    running.stop()


@pytest.fixture
def users(control) -> tuple[Api, Api]:
    """One user, as seen through node A and through node B."""
    on_a = Api(control.a)
    return on_a, Api(control.b, on_a.user)


@pytest.fixture
def db(control):
    with psycopg.connect(libpq_url(control.env["DATABASE_URL"]), autocommit=True) as connection:
        yield connection


def message(api: Api, message_id: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/messages/{message_id}")
    assert response.status_code == 200, response.text
    return response.json()


def writing(api: Api, message_id: str, words: int = 3) -> dict[str, Any]:
    """The message once its generation has written at least `words` pieces."""
    return wait_until(lambda: (m := message(api, message_id))["status"] == "processing"
                      and m["partial"]["pieces"] >= words and m, timeout=30, what="the reply to be written")


def settled(api: Api, message_id: str) -> dict[str, Any]:
    """The message in its final state, as the long-poll that waited for it answers: a final status
    is final, so a cancelled generation's text is already its reply there."""
    return api.wait_answered(message_id)


def test_a_cancel_on_another_node_stops_the_generation_and_keeps_the_text_so_far(users) -> None:
    on_a, on_b = users
    first = on_a.chat("hello")
    conversation_id, first_id = first["conversation_id"], first["message"]["id"]
    second_id = on_a.chat("Add task: after the cancel", conversation_id)["message"]["id"]
    writing(on_b, first_id)
    waiting = BackgroundPoll(on_a, first_id)  # a client waiting for the end, on the other node
    waiting.start()

    cancelled = on_b.post(f"/api/v1/messages/{first_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    # Until the worker has stored what it wrote, the question reads cancelling, its text so far shown.
    assert cancelled.json()["status"] == "cancelling" and cancelled.json()["partial"]["text"]

    waiting.join(timeout=40)
    final = waiting.answer
    reply = final["reply"]
    assert final["status"] == "cancelled" and reply["finish"] == "cancelled"
    assert reply["content"] and FALLBACK.startswith(reply["content"]) and len(reply["content"]) < len(FALLBACK)
    assert final["partial"] is None
    # The lease was given back with the cancel: the conversation's next message is answered.
    answered = on_b.wait_answered(second_id)
    assert answered["status"] == "answered"
    assert answered["reply"]["content"].startswith("Added “after the cancel”")
    # Cancelling again answers the same; an answered message cannot be cancelled.
    again = on_a.post(f"/api/v1/messages/{first_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    refused = on_a.post(f"/api/v1/messages/{second_id}/cancel")
    assert refused.status_code == 409 and refused.headers["Content-Type"] == "application/problem+json"


def test_a_cancelled_generation_is_counted_as_such_not_as_a_failure(control, users) -> None:
    on_a, on_b = users
    url = f"http://127.0.0.1:{control.stack.worker.metrics_port}/metrics"
    before = requests.get(url, timeout=5).text
    message_id = on_a.chat("hello")["message"]["id"]
    writing(on_a, message_id)
    assert on_b.post(f"/api/v1/messages/{message_id}/cancel").status_code == 200
    settled(on_a, message_id)
    # This cancel, counted once (the counter goes up just after the commit that settles it).
    def counted() -> str | None:
        text = requests.get(url, timeout=5).text
        name = "chatq_generations_cancelled_total"
        return text if sample(text, name) == sample(before, name) + 1 else None

    metrics = wait_until(counted, timeout=10, what="the cancel to be counted")
    failures = [line for line in metrics.splitlines() if line.startswith("chatq_failures_total{")]
    assert all(line.endswith(" 0.0") for line in failures), failures  # a stop is not a failure
    # The job's result, which Flower shows for it, is the outcome and the message it answered: logged
    # by the worker's main process once the pool process has returned it, after the count above.
    wait_until(lambda: f"'cancelled {message_id}'" in control.stack.worker.log_text(), timeout=10,
               what="the job's result in the worker's log")
    assert "succeeded" in control.stack.worker.log_text()


def test_a_cancelled_queued_message_never_reaches_the_engine(users, db) -> None:
    on_a, on_b = users
    first = on_a.chat("hello")
    conversation_id, first_id = first["conversation_id"], first["message"]["id"]
    queued = on_a.chat("Add task: never added", conversation_id)["message"]["id"]
    cancelled = on_b.post(f"/api/v1/messages/{queued}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert on_a.wait_answered(first_id)["status"] == "answered"
    after = message(on_a, queued)
    assert after["status"] == "cancelled" and after["reply"] is None
    assert "never added" not in [task["title"] for task in on_a.tasks("all")]
    attempts = db.execute("SELECT attempts FROM messages WHERE id = %s", (queued,)).fetchone()[0]
    assert attempts == 0  # never claimed


def test_twenty_cancels_racing_the_commit_each_end_in_exactly_one_state(users, db) -> None:
    on_a, on_b = users
    outcomes: list[tuple[int, dict[str, Any]]] = []

    def race(n: int) -> None:
        accepted = on_a.chat(f"Add task: race {n}")
        message_id = accepted["message"]["id"]
        writing(on_a, message_id, words=1)
        # The reply ("Added “race n” to your list. …", ~10 words) commits ~1.2 s into the stream:
        # a cancel within 2 s lands on either side of it.
        threading.Event().wait(random.uniform(0, 2.0))
        cancel = on_b.post(f"/api/v1/messages/{message_id}/cancel")
        outcomes.append((cancel.status_code, settled(on_a, message_id)))

    threads = [threading.Thread(target=race, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 20
    for status_code, final in outcomes:
        reply = final["reply"]
        if status_code == 200:
            assert final["status"] == "cancelled" and (reply is None or reply["finish"] == "cancelled"), final
        else:
            assert status_code == 409 and final["status"] == "answered" and reply["finish"] == "stop", final
        replies = db.execute("SELECT count(*) FROM messages WHERE reply_to_id = %s", (final["id"],)).fetchone()[0]
        assert replies == (0 if reply is None else 1)
    cancelled = sum(1 for code, _ in outcomes if code == 200)
    assert 0 < cancelled < 20, "the cancels did not race the commit: all landed on one side of it"
    with (ARTIFACTS / "fault-figures.txt").open("a") as figures:
        figures.write(f"cancel vs commit: 20 races, {cancelled} cancelled, {20 - cancelled} answered, none both\n")


def test_on_busy_reject_refuses_and_interrupt_cancels_and_answers_next(users) -> None:
    on_a, on_b = users
    first = on_a.chat("hello")
    conversation_id, first_id = first["conversation_id"], first["message"]["id"]
    writing(on_a, first_id)
    path = f"/api/v1/conversations/{conversation_id}/messages"

    rejected = on_b.post(path, json={"content": "Add task: rejected", "on_busy": "reject"})
    assert rejected.status_code == 409 and rejected.json()["busy_message_id"] == first_id
    listed = on_a.get(f"{path}?after=0").json()["items"]
    assert [m["content"] for m in listed] == ["hello"]  # nothing stored

    interrupting = on_b.post(path, json={"content": "Add task: interrupting", "on_busy": "interrupt"})
    assert interrupting.status_code == 202, interrupting.text
    final = settled(on_a, first_id)
    assert final["status"] == "cancelled" and final["reply"]["finish"] == "cancelled"
    answered = on_a.wait_answered(interrupting.json()["message"]["id"])
    assert answered["status"] == "answered" and answered["reply"]["content"].startswith("Added “interrupting”")

    bad = on_a.post(path, json={"content": "x", "on_busy": "shout"})
    assert bad.status_code == 422 and "on_busy" in bad.json()["detail"]


def test_regenerate_and_edit_keep_every_version(users) -> None:
    on_a, on_b = users
    conversation_id, first = on_a.ask("Add task: version one")
    question_id = first["id"]
    busy = on_a.chat("hello", conversation_id)["message"]["id"]
    not_latest = on_b.post(f"/api/v1/messages/{question_id}/regenerate", json={})
    assert not_latest.status_code == 409  # only the latest question
    still_running = on_b.post(f"/api/v1/messages/{busy}/regenerate", json={})
    assert still_running.status_code == 409  # not while it is being answered
    on_a.wait_answered(busy)

    again = on_b.post(f"/api/v1/messages/{busy}/regenerate", json={"content": "Add task: version two"})
    assert again.status_code == 202, again.text
    assert again.json()["message"]["status"] == "queued" and again.json()["message"]["content"] == \
        "Add task: version two"
    answered = on_a.wait_answered(busy)
    assert answered["status"] == "answered" and answered["reply"]["content"].startswith("Added “version two”")
    # The built-in engine reports no tokens, and sends all it has: the contract's null usage, "stop".
    assert answered["reply"]["usage"] is None and answered["reply"]["finish"] == "stop"

    versions = on_a.get(f"/api/v1/messages/{busy}/replies").json()["items"]
    assert [v["question_content"] for v in versions] == ["Add task: version two", "hello"]
    assert [v["current"] for v in versions] == [True, False]
    assert versions[0]["id"] == answered["reply"]["id"] and versions[1]["content"] == FALLBACK
    # The conversation lists every version in order; only the current one is the question's reply.
    listed = on_a.get(f"/api/v1/conversations/{conversation_id}/messages?after=0").json()["items"]
    assert [m["seq"] for m in listed] == sorted(m["seq"] for m in listed)
    assert [m.get("current") for m in listed if m["role"] == "assistant"] == [True, False, True]
    assert Api(on_a.base_url).get(f"/api/v1/messages/{busy}/replies").status_code == 404  # another user


def test_an_edited_question_is_answered_from_its_new_words(users) -> None:
    """An edit regenerates the answer from the edited text, tools included: the task the new words
    name is added and named in the reply (it used to find the first answer's task and say so)."""
    on_a, _on_b = users
    _conversation_id, first = on_a.ask("Add task: walk the dog")
    assert first["reply"]["content"].startswith("Added “walk the dog”")
    edited = on_a.post(f"/api/v1/messages/{first['id']}/regenerate", json={"content": "Add task: walk the cat"})
    assert edited.status_code == 202, edited.text
    answered = on_a.wait_answered(first["id"])
    assert answered["reply"]["content"].startswith("Added “walk the cat”"), answered["reply"]["content"]
    titles = [task["title"] for task in on_a.get("/api/v1/tasks?status=all").json()["items"]]
    assert sorted(titles) == ["walk the cat", "walk the dog"]


def test_an_erasure_mid_reply_waits_for_the_generation_and_nothing_is_written_after(control, users, db) -> None:
    """DELETE /me while a worker writes the user's reply: the erasure waits for the generation to
    stop, so neither the worker's commit nor the text it streams into Redis lands after the erasure
    went through them (without that wait, the pieces written after it stay for an hour)."""
    on_a, _on_b = users
    accepted = on_a.chat("hello")
    question, conversation = accepted["message"]["id"], accepted["conversation_id"]
    writing(on_a, question, words=3)
    asked = on_a.request("DELETE", "/api/v1/me")
    assert asked.status_code == 202
    wait_until(lambda: on_a.get(asked.headers["Location"]).json()["status"] == "erased", timeout=30,
               what="the erasure to finish")
    time.sleep(2)  # longer than a stopped worker takes to store what it wrote: nothing may come after
    client = redis.Redis.from_url(control.env["REDIS_URL"])
    left = [key.decode() for key in client.scan_iter(count=1000)
            if question in key.decode() or conversation in key.decode()]
    assert left == []
    for table in ("messages", "conversations", "tasks", "webhook_events", "daily_usage"):
        assert db.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s",  # noqa: S608 (names above)
                          (on_a.user,)).fetchone() == (0,), table


def test_a_streamed_chat_completion_sends_the_reply_as_the_worker_writes_it(control, users) -> None:
    """Through OpenAI's SDK on the slow-streaming stack: several content chunks arrive before the
    reply is committed (not the whole text at the end), and together they are the stored reply."""
    import openai

    on_a, _on_b = users
    key = on_a.post("/api/v1/keys", json={"name": "stream"}).json()["key"]
    client = openai.OpenAI(base_url=control.b + "/v1", api_key=key, max_retries=0, timeout=60)
    arrived, pieces = [], []
    for chunk in client.chat.completions.create(model="chatq-assistant", stream=True,
                                                messages=[{"role": "user", "content": "hello"}]):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            arrived.append(time.monotonic())
    assert "".join(pieces) == FALLBACK
    assert len(pieces) >= 5 and arrived[-1] - arrived[0] > 1.0, (len(pieces), arrived[-1] - arrived[0])


def test_responses_cancelled_while_queued_and_while_generated(control, users) -> None:
    """OpenAI's SDK on the slow-streaming stack: a response queued behind another is cancelled at
    once, never generated; the one being generated stops and keeps the text written so far."""
    import openai

    on_a, _on_b = users
    key = on_a.post("/api/v1/keys", json={"name": "cancels"}).json()["key"]
    client = openai.OpenAI(base_url=control.a + "/v1", api_key=key, max_retries=0, timeout=60)
    writing_now = client.responses.create(model="chatq-assistant", input="hello", background=True)
    waiting = client.responses.create(model="chatq-assistant", input="help", background=True,
                                      previous_response_id=writing_now.id)
    assert client.responses.retrieve(waiting.id).status == "queued"
    assert client.responses.cancel(waiting.id).status == "cancelled"
    writing(on_a, str(uuid.UUID(writing_now.id.removeprefix("resp_"))), words=3)
    client.responses.cancel(writing_now.id)
    stopped = wait_until(lambda: (r := client.responses.retrieve(writing_now.id)).status == "cancelled" and r,
                         timeout=15, what="the generation to stop")
    assert stopped.output_text and FALLBACK.startswith(stopped.output_text) and stopped.output_text != FALLBACK
    never = client.responses.retrieve(waiting.id)
    assert never.status == "cancelled" and never.output == []


def _sdk(api: Api, node: str, name: str):
    import openai

    key = api.post("/api/v1/keys", json={"name": name}).json()["key"]
    return openai.OpenAI(base_url=node + "/v1", api_key=key, max_retries=0, timeout=60)


def _read(stream, until=lambda event: False) -> list[tuple[int, str, str | None]]:
    """(sequence number, type, delta) of each event, up to the stream's end or `until`'s first yes."""
    read = []
    for event in stream:
        read.append((event.sequence_number, event.type, getattr(event, "delta", None)))
        if until(event):
            break
    return read


def _text(events: list[tuple[int, str, str | None]]) -> str:
    return "".join(delta for _number, kind, delta in events if kind == "response.output_text.delta")


def _deltas_at_least(count: int):
    seen = []
    return lambda event: event.type == "response.output_text.delta" and seen.append(event) is None \
        and len(seen) >= count


def _numbered_from(first: int, events: list[tuple[int, str, str | None]]) -> bool:
    return [number for number, _kind, _delta in events] == list(range(first, first + len(events)))


def test_a_streamed_response_numbers_its_events_and_any_node_resumes_them_after_any_number(control, users) -> None:
    """OpenAI's SDK: a background response streamed as it is written — events numbered 0, 1, 2 …,
    in OpenAI's order, the deltas together exactly the stored reply — and then resumed on the other
    node after several numbers (what the SDK's own `stream(starting_after=)` helper does too):
    exactly the events after it, the same ones."""
    on_a, _on_b = users
    client_a, client_b = _sdk(on_a, control.a, "stream-a"), _sdk(on_a, control.b, "stream-b")
    stream = client_a.responses.create(model="chatq-assistant", input="hello", stream=True, background=True)
    created = next(iter(stream))
    response_id, events, arrived = created.response.id, [(0, created.type, None)], [time.monotonic()]
    for event in stream:
        events.append((event.sequence_number, event.type, getattr(event, "delta", None)))
        arrived.append(time.monotonic())
    assert _numbered_from(0, events), events
    kinds = [kind for _number, kind, _delta in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * deltas,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"], kinds
    assert deltas >= 5 and arrived[4 + deltas - 1] - arrived[4] > 1.0  # written as the worker wrote it
    stored = client_b.responses.retrieve(response_id)
    assert _text(events) == stored.output_text == FALLBACK and stored.status == "completed"
    for after in (0, 3, 4 + deltas // 2, len(events) - 2):
        resumed = _read(client_b.responses.retrieve(response_id, stream=True, starting_after=after))
        assert resumed == events[after + 1:], after
    with client_b.responses.stream(response_id=response_id, starting_after=6) as helper:
        assert [event.sequence_number for event in helper] == list(range(7, len(events)))
        assert helper.get_final_response().output_text == FALLBACK


def test_a_stream_read_in_part_on_a_node_then_sigkilled_is_resumed_on_another(control, users) -> None:
    on_a, _on_b = users
    node_c = Web("control-web-c", control.env).start()
    try:
        client_c = _sdk(on_a, node_c.url, "dies")
        stream = client_c.responses.create(model="chatq-assistant", input="hello", stream=True, background=True)
        response_id = next(iter(stream)).response.id
        first = [(0, "response.created", None), *_read(stream, until=_deltas_at_least(4))]
        node_c.kill(signal.SIGKILL)
    finally:
        node_c.kill(signal.SIGKILL)
    client_b = _sdk(on_a, control.b, "resumes")
    rest = _read(client_b.responses.retrieve(response_id, stream=True, starting_after=first[-1][0]))
    assert _numbered_from(0, first + rest) and rest[-1][1] == "response.completed"
    assert _text(first + rest) == client_b.responses.retrieve(response_id).output_text == FALLBACK
    assert _text(first) and _text(first) != FALLBACK  # it really was cut mid-reply


def test_a_worker_sigkilled_mid_reply_and_the_stream_resumed_after_the_takeover(control, users, db) -> None:
    """The new attempt continues the text the dead one handed on: the stream open through the
    takeover, and one resumed from the middle on the other node, both assemble the stored reply."""
    on_a, _on_b = users
    client_a, client_b = _sdk(on_a, control.a, "takeover-a"), _sdk(on_a, control.b, "takeover-b")
    stream = client_a.responses.create(model="chatq-assistant", input="hello", stream=True, background=True)
    response_id = next(iter(stream)).response.id
    before = [(0, "response.created", None), *_read(stream, until=_deltas_at_least(4))]
    question_id = str(uuid.UUID(response_id.removeprefix("resp_")))
    attempt = message(on_a, question_id)["partial"]["attempt"]
    control.stack.worker.kill(signal.SIGKILL)
    control.stack.worker = Worker("control-worker", control.env).start()
    after = _read(stream)
    resumed = _read(client_b.responses.retrieve(response_id, stream=True, starting_after=before[-1][0] - 2))
    stored = client_b.responses.retrieve(response_id)
    assert stored.status == "completed" and stored.output_text == FALLBACK
    assert _numbered_from(0, before + after) and _text(before + after) == FALLBACK
    assert resumed == (before + after)[before[-1][0] - 1:]
    # Another attempt wrote the rest: the one the stream was reading died with the worker.
    assert db.execute("SELECT attempts FROM messages WHERE id = %s", (question_id,)).fetchone()[0] > attempt


def _rebuild(events: list[dict[str, Any]], question_id: str) -> tuple[str, list[int]]:
    """What a client shows of a reply being written, from its events, checking as it goes that
    every piece continues the text it has (no gap, none twice). Returns the text and the attempts
    it saw."""
    attempt, text, pieces, attempts = 0, "", 0, []
    for event in events:
        data = event["data"]
        if event["event"] == "message" and data["id"] == question_id and data.get("partial"):
            attempt, text, pieces = data["partial"]["attempt"], data["partial"]["text"], data["partial"]["pieces"]
            attempts.append(attempt)
        elif event["event"] == "delta" and data["message_id"] == question_id:
            if data["attempt"] != attempt:
                assert data["index"] == 0, event
                attempt, text, pieces = data["attempt"], "", 0
                attempts.append(attempt)
            assert data["index"] == pieces, (event, pieces)
            text, pieces = text + data["text"], pieces + 1
    return text, attempts


def _is_reply(question_id: str):
    return lambda e: e["event"] == "message" and e["data"].get("reply_to") == question_id


def test_a_stream_joining_mid_reply_on_another_node_gets_the_text_so_far_then_the_rest(users) -> None:
    on_a, on_b = users
    accepted = on_a.chat("hello")
    conversation_id, question_id = accepted["conversation_id"], accepted["message"]["id"]
    seq = accepted["message"]["seq"]
    so_far = writing(on_a, question_id, words=4)["partial"]
    assert so_far["text"] and FALLBACK.startswith(so_far["text"])

    # A page opened now (from the start) on node B, and one reloaded with its cursor at the question.
    path = f"/api/v1/conversations/{conversation_id}/events"
    fresh = EventStream(on_b, path)
    reloaded = EventStream(on_a, path, headers={"Last-Event-ID": str(seq)})
    try:
        for stream in (fresh, reloaded):
            events = stream.until(_is_reply(question_id), limit=200)
            joined = next(e for e in events if e["event"] == "message" and e["data"]["id"] == question_id)
            assert joined["data"]["status"] == "processing" and len(joined["data"]["partial"]["text"]) >= \
                len(so_far["text"])
            text, attempts = _rebuild(events, question_id)
            assert text == FALLBACK and len(set(attempts)) == 1
    finally:
        fresh.close()
        reloaded.close()


def test_a_worker_killed_mid_generation_is_continued_by_the_next_attempt(control, users) -> None:
    on_a, on_b = users
    conversation_id = on_a.post("/api/v1/conversations", json={}).json()["id"]
    stream = EventStream(on_b, f"/api/v1/conversations/{conversation_id}/events")
    try:
        question_id = on_a.chat("hello", conversation_id)["message"]["id"]
        first = writing(on_a, question_id, words=4)["partial"]
        control.stack.worker.kill(signal.SIGKILL)
        control.stack.worker = Worker("control-worker", control.env).start()
        events = stream.until(_is_reply(question_id), limit=300)
    finally:
        stream.close()
    text, attempts = _rebuild(events, question_id)
    assert attempts[0] == first["attempt"] and attempts[-1] > first["attempt"]
    assert text == FALLBACK  # the new attempt sends its text from its first piece: the dead one's, continued
    final = message(on_a, question_id)
    assert final["status"] == "answered" and final["reply"]["content"] == FALLBACK


@pytest.mark.browser
def test_the_page_stops_regenerates_switches_versions_edits_and_resumes_after_a_reload(control, browser) -> None:
    node = Web("control-web-dev", {**control.env, "CHATQ_DEV": "1"}).start()
    shots = ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(node.url + "/")
        sign_in(page, f"control-{os.getpid()}-{random.randrange(1 << 30)}")

        # Reload mid-reply: the text so far comes back at once, then the rest.
        page.fill("#message", "hello")
        page.press("#message", "Enter")
        page.wait_for_function("() => (document.querySelector('.message.assistant.draft') || {}).textContent"
                               "?.split(' ').length >= 5", timeout=15000)
        page.reload()
        draft = page.wait_for_selector(".message.assistant.draft", timeout=5000)
        assert FALLBACK.startswith(draft.inner_text().strip()) and len(draft.inner_text().split()) >= 4
        page.screenshot(path=str(shots / "control-resumed.png"))
        page.wait_for_selector(".message.assistant:not(.draft)", timeout=15000)
        assert page.locator(".message.assistant").inner_text().strip() == FALLBACK

        # Stop: the text so far stays, marked as stopped.
        page.fill("#message", "what can you do")
        page.press("#message", "Enter")
        page.wait_for_function("() => (document.querySelector('.message.assistant.draft') || {}).textContent"
                               "?.split(' ').length >= 3", timeout=15000)
        page.click(".status .stop")
        stopped = page.wait_for_selector(".message.assistant.stopped", timeout=5000).inner_text().strip()
        page.wait_for_selector(".status.note >> text=Stopped")
        assert stopped and HELP.startswith(stopped) and len(stopped) < len(HELP)
        page.screenshot(path=str(shots / "control-stopped.png"))

        # Regenerate the stopped reply: two versions, ‹ › switches between them.
        page.click(".reply-actions .regenerate")
        page.wait_for_selector(".reply-actions .version-label >> text=2/2", timeout=20000)
        assert page.locator(".message.assistant").last.inner_text().strip() == HELP
        page.click(".reply-actions .older")
        page.wait_for_selector(".reply-actions .version-label >> text=1/2")
        assert page.locator(".message.assistant").last.inner_text().strip() == stopped
        page.click(".reply-actions .newer")
        page.wait_for_selector(".reply-actions .version-label >> text=2/2")
        assert page.locator(".message.assistant").last.inner_text().strip() == HELP
        page.screenshot(path=str(shots / "control-versions.png"))

        # Edit the last question: it is answered again from the new text.
        page.click(".question-actions .edit")
        page.fill(".edit-box", "Add task: edited in the page")
        page.click(".save-edit")
        page.wait_for_selector(".message.user >> text=Add task: edited in the page")
        page.wait_for_selector(".message.assistant >> text=Added “edited in the page”", timeout=20000)
        page.wait_for_selector("#task-list li >> text=edited in the page")
        page.wait_for_selector(".reply-actions .version-label >> text=3/3", timeout=10000)
        page.screenshot(path=str(shots / "control-edited.png"))

        # Each Stop stops its own question: the third of three, and the first two are answered.
        answers = page.locator(".message.assistant").count()
        for words in ("help", "what can you do", "tell me a joke"):
            page.fill("#message", words)
            page.press("#message", "Enter")
        page.wait_for_function("() => document.querySelectorAll('.status.pending .stop').length === 3")
        page.locator(".status.pending .stop").nth(2).click()
        page.wait_for_selector(".status.cancelled >> text=Stopped", timeout=10000)
        page.wait_for_function(f"() => document.querySelectorAll('.message.assistant:not(.draft)').length "
                               f">= {answers + 2} && !document.querySelector('.status.pending')", timeout=30000)
        assert page.locator(".message.assistant:not(.draft)").count() == answers + 2
        assert page.locator(".message.user").last.inner_text().strip() == "tell me a joke"
        # Each answer stands under its question, though all three were stored after the questions.
        roles = page.evaluate("() => [...document.querySelectorAll('.message')].slice(-5)"
                              ".map((bubble) => bubble.classList.contains('user') ? 'user' : 'assistant')")
        assert roles == ["user", "assistant", "user", "assistant", "user"], roles
        assert errors == []
    finally:
        node.stop()
