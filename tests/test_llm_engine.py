"""ENGINE=openai against a local fake model server that speaks the Chat Completions protocol:
answers, tool calls, retries, permanent failures, a worker killed mid-stream, streamed deltas."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid

import pytest

from tests.fake_llm import FakeModelServer
from tests.support import Api, EventStream, Process, Web, Worker, wait_until


@pytest.fixture
def user(llm_user: Api) -> Api:
    return llm_user


def test_a_plain_answer(user: Api, model: FakeModelServer) -> None:
    model.reset({"content": "Hello! How can I help with your list?"})
    _, answered = user.ask("hi there")
    assert answered["reply"]["content"] == "Hello! How can I help with your list?"
    assert answered["reply"]["model"] == "fake-model"  # which model wrote it
    request = model.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["authorization"] == "Bearer sk-test"
    assert request["body"]["model"] == "fake-model"
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user"]
    assert {tool["function"]["name"] for tool in request["body"]["tools"]} == {
        "add_task", "list_tasks", "complete_task", "delete_task", "rename_task"}


def test_a_tool_call_then_an_answer_and_recall_after_restarting_everything(
    llm_stack, user: Api, model: FakeModelServer
) -> None:
    # Streamed slowly enough that the long-poll is waiting when the reply commits: it is answered
    # with the message the worker's notification carries, which must be what a read shows.
    model.reset({"tool_calls": [{"name": "add_task", "arguments": {"title": "buy milk"}}]},
                {"content": "Added “buy milk” to your list.", "chunk_delay": 0.05})
    conversation_id, answered = user.ask("Add task: buy milk")
    assert answered == user.get(f"/api/v1/messages/{answered['id']}").json()
    assert answered["reply"]["usage"]["completion_tokens"] > 0 and answered["context"] == answered["reply"]["context"]
    assert [t["title"] for t in user.tasks()] == ["buy milk"]
    reply = answered["reply"]
    assert reply["content"] == "Added “buy milk” to your list."
    assert reply["tool_calls"][0]["name"] == "add_task" and reply["tool_calls"][0]["result"]["task"]["title"] == \
        "buy milk"
    tool_message = model.requests[1]["body"]["messages"][-1]
    assert tool_message["role"] == "tool" and "buy milk" in tool_message["content"]

    llm_stack.restart()
    model.reset({"content": "You just added “buy milk”."})
    _, recalled = user.ask("What did I just add?", conversation_id)
    assert "buy milk" in recalled["reply"]["content"]
    history = model.requests[0]["body"]["messages"]
    roles = [m["role"] for m in history]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert history[2]["tool_calls"][0]["function"]["name"] == "add_task"
    assert "buy milk" in history[3]["content"] and history[3]["tool_call_id"] == history[2]["tool_calls"][0]["id"]


def test_bad_tool_arguments_are_answered_to_the_model_not_crashed(user: Api, model: FakeModelServer) -> None:
    model.reset({"tool_calls": [{"name": "complete_task", "arguments": "{not json"}]},
                {"content": "Sorry, which task?"})
    _, answered = user.ask("complete the thing")
    assert answered["reply"]["content"] == "Sorry, which task?"
    assert "bad arguments" in model.requests[1]["body"]["messages"][-1]["content"]


def test_429_then_success(user: Api, model: FakeModelServer) -> None:
    model.reset({"status": 429, "retry_after": "0.2", "message": "slow down"}, {"content": "Recovered."})
    _, answered = user.ask("hello?")
    assert answered["reply"]["content"] == "Recovered." and len(model.requests) == 2


def test_a_permanent_400_fails_readably_then_retry_answers(user: Api, model: FakeModelServer) -> None:
    model.reset({"status": 400, "message": "unsupported value: 'temperature'"})
    message_id = user.chat("a very long story")["message"]["id"]
    failed = user.wait_answered(message_id)
    assert failed["status"] == "failed" and "unsupported value: 'temperature'" in failed["error"]
    assert len(model.requests) == 1  # permanent: not retried
    model.reset({"content": "Now it fits."})
    assert user.post(f"/api/v1/messages/{message_id}/retry").status_code == 202
    answered = user.wait_answered(message_id)
    assert answered["status"] == "answered" and answered["reply"]["content"] == "Now it fits."


def test_a_worker_killed_mid_stream_leaves_one_reply_that_continues_the_text_handed_on(
    llm_stack, user: Api, model: FakeModelServer, db_llm
) -> None:
    """The next attempt sends the text the dead one handed on as the start of the assistant's
    message, which the server continues; so a client that holds that text — a Responses stream read
    through the takeover — assembles exactly the stored reply: that text, then the rest. (A new
    answer from the start would contradict what the client holds: the second script below does not
    begin with the first's words.)"""
    import openai

    model.reset({"content": "this answer streams slowly and never finishes " * 3, "chunk_delay": 0.3},
                {"content": "The second attempt answers."})
    key = user.post("/api/v1/keys", json={"name": "takeover"}).json()["key"]
    client = openai.OpenAI(base_url=user.base_url + "/v1", api_key=key, max_retries=0, timeout=90)
    stream = client.responses.create(model="any", input="tell me something", stream=True, background=True)
    response_id = next(iter(stream)).response.id
    read = []
    for event in stream:
        read.append(event)
        if sum(e.type == "response.output_text.delta" for e in read) >= 3:
            break
    llm_stack.worker.kill(signal.SIGKILL)
    llm_stack.worker = Worker("llm-worker", llm_stack.env).start()
    read += list(stream)
    assert [e.sequence_number for e in read] == list(range(1, len(read) + 1))
    assembled = "".join(e.delta for e in read if e.type == "response.output_text.delta")
    handed_on = model.requests[-1]["body"]["messages"][-1]
    assert handed_on["role"] == "assistant" and handed_on["content"].startswith("this answer streams ")
    message_id = response_id.removeprefix("resp_")
    answered = user.wait_answered(str(uuid.UUID(message_id)), timeout=60)
    assert answered["status"] == "answered"
    assert answered["reply"]["content"] == handed_on["content"] + "The second attempt answers." == assembled
    replies = db_llm.execute("SELECT count(*) FROM messages WHERE reply_to_id = %s",
                             (str(uuid.UUID(message_id)),)).fetchone()[0]
    assert replies == 1


def test_streamed_deltas_reach_an_event_stream_on_another_node_before_the_final_message(
    llm_stack, user: Api, model: FakeModelServer
) -> None:
    other = Web("llm-web-b", llm_stack.env).start()
    try:
        conversation_id = user.post("/api/v1/conversations", json={}).json()["id"]
        watcher = Api(other.url, user.user)
        stream = EventStream(watcher, f"/api/v1/conversations/{conversation_id}/events")
        model.reset({"content": "one two three four five six", "chunk_delay": 0.15})
        events: list[dict] = []
        reader = threading.Thread(target=lambda: events.extend(
            stream.until(lambda e: e["event"] == "message" and e["data"]["role"] == "assistant")))
        reader.start()
        user.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "count to six"})
        reader.join(timeout=30)
        stream.close()
    finally:
        other.stop()
    kinds = [e["event"] for e in events]
    assert "delta" in kinds
    last_delta = max(i for i, kind in enumerate(kinds) if kind == "delta")
    reply_events = [i for i, e in enumerate(events) if e["event"] == "message" and e["data"]["role"] == "assistant"]
    assert reply_events == [len(events) - 1] and reply_events[0] > last_delta  # deltas first, then the reply
    assert events[-1]["data"]["content"] == "one two three four five six"
    deltas = [e["data"] for e in events if e["event"] == "delta"]
    assert "".join(d["text"] for d in deltas) == "one two three four five six"
    assert [d["index"] for d in deltas] == list(range(len(deltas)))


@pytest.mark.parametrize("missing", ["LLM_BASE_URL", "LLM_MODEL"])
def test_the_worker_refuses_to_start_without_base_url_or_model(llm_stack, missing: str) -> None:
    worker = Worker(f"llm-worker-bad-{missing}", {**llm_stack.env, missing: ""})
    Process.start(worker)  # without waiting for "ready": it must not get there
    assert worker.popen.wait(timeout=30) != 0
    assert missing in worker.log_text()


@pytest.mark.browser
def test_the_chat_page_renders_tokens_as_they_arrive(llm_stack, model: FakeModelServer, browser) -> None:
    node = Web("llm-web-dev", {**llm_stack.env, "CHATQ_DEV": "1"}).start()
    try:
        page = browser.new_page()
        page.goto(node.url + "/")
        page.fill("#user-name", f"streamer-{os.getpid()}")
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#app:not([hidden])")
        final_text = "Streaming word by word works nicely here"
        model.reset({"content": final_text, "chunk_delay": 0.3})
        page.fill("#message", "stream something")
        page.press("#message", "Enter")
        draft = page.wait_for_selector(".message.assistant.draft", timeout=15000)
        partial = draft.inner_text()
        page.wait_for_selector(f".message.assistant:not(.draft) >> text={final_text}", timeout=20000)
        assert partial and final_text.startswith(partial.strip()) and len(partial.strip()) < len(final_text)
        assert page.locator(".message.assistant.draft").count() == 0
    finally:
        node.stop()


def test_a_generation_longer_than_the_lease_renews_it_and_answers_once(user: Api, model: FakeModelServer,
                                                                        db_llm) -> None:
    """LEASE_SECONDS is 4 here; this answer streams for about 6 s on its first and only attempt."""
    model.reset({"content": "slow but steady " * 4, "chunk_delay": 0.5})
    message_id = user.chat("take your time")["message"]["id"]
    answered = user.wait_answered(message_id, timeout=60)
    assert answered["status"] == "answered" and answered["reply"]["content"].startswith("slow but steady")
    attempts, replies = db_llm.execute(
        "SELECT q.attempts, (SELECT count(*) FROM messages r WHERE r.reply_to_id = q.id) FROM messages q "
        "WHERE q.id = %s", (message_id,)).fetchone()
    assert (attempts, replies) == (1, 1)
    assert len(model.requests) == 1


def test_a_model_answer_with_nul_characters_is_stored_without_them(user: Api, model: FakeModelServer) -> None:
    model.reset({"tool_calls": [{"name": "add_task", "arguments": {"title": "nul\u0000task"}}]},
                {"content": "Done\u0000, added it."})
    _, answered = user.ask("add something odd")
    assert answered["reply"]["content"] == "Done, added it."
    assert [t["title"] for t in user.tasks()] == ["nultask"]


def test_each_reply_is_generated_from_everything_before_it_and_nothing_sent_after(
    llm_stack, user: Api, model: FakeModelServer
) -> None:
    # Contract, delivery 4: the history a reply is generated from holds every message before its
    # question and every reply already given, in seq order (as clients show the conversation: the
    # replies to back-to-back messages come after them) — and not the user's later messages, even
    # when they are already stored when the generation starts (the worker is down while all three
    # are sent). The worker that answers them plans without index scans, so Postgres returns the
    # rows as they lie on disk, where an answered question's last version follows its reply.
    _, first = user.ask("first")
    conversation_id = first["conversation_id"]
    llm_stack.worker.stop()
    model.reset({"content": "answer two"}, {"content": "answer three"}, {"content": "answer four"})
    sent = [user.chat(text, conversation_id)["message"]["id"] for text in ("two", "three", "four")]
    heap_order = {"PGOPTIONS": "-c enable_indexscan=off -c enable_bitmapscan=off -c enable_indexonlyscan=off"}
    llm_stack.worker = Worker("llm-worker", {**llm_stack.env, **heap_order}).start()
    try:
        answered = [user.wait_answered(message_id) for message_id in sent]
    finally:
        llm_stack.worker.stop()
        llm_stack.worker = Worker("llm-worker", llm_stack.env).start()
    assert [message["reply"]["content"] for message in answered] == ["answer two", "answer three", "answer four"]
    shown = [[(m["role"], m["content"]) for m in request["body"]["messages"][1:]] for request in model.requests]
    assert shown == [
        [("user", "first"), ("assistant", first["reply"]["content"]), ("user", "two")],
        [("user", "first"), ("assistant", first["reply"]["content"]), ("user", "two"), ("assistant", "answer two"),
         ("user", "three")],
        [("user", "first"), ("assistant", first["reply"]["content"]), ("user", "two"), ("user", "three"),
         ("assistant", "answer two"), ("assistant", "answer three"), ("user", "four")],
    ]


@pytest.fixture(scope="module")
def node_b(llm_stack):
    """A second web node of the model stack: a cancel lands on it, not on the node that accepted."""
    other = Web("llm-web-b", llm_stack.env).start()
    yield Api(other.url)
    other.stop()


def _as(api: Api, node: Api) -> Api:
    return Api(node.base_url, api.user)


def _streaming(user: Api, model: FakeModelServer, question: str) -> tuple[str, str]:
    """(conversation id, question id) of a question whose slow answer has written a few pieces."""
    accepted = user.chat(question)
    conversation_id, question_id = accepted["conversation_id"], accepted["message"]["id"]
    assert model.streaming.wait(20)
    wait_until(lambda: user.get(f"/api/v1/messages/{question_id}").json()["partial"]["pieces"] >= 3, timeout=20,
               what="three pieces")
    return conversation_id, question_id


def test_a_cancel_on_another_node_closes_the_model_stream_and_keeps_the_text(
    user: Api, model: FakeModelServer, node_b: Api
) -> None:
    words = "this answer streams slowly so that it can be stopped half way through " * 3
    model.reset({"content": words, "chunk_delay": 0.3}, {"content": "The next one."})
    conversation_id, first_id = _streaming(user, model, "tell me a long story")
    second_id = user.chat("and then?", conversation_id)["message"]["id"]

    cancelled = _as(user, node_b).post(f"/api/v1/messages/{first_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelling"
    assert model.hung_up.wait(5), "the model server's stream was not closed"
    final = user.wait_answered(first_id)  # final means final: the text so far is its reply already
    reply = final["reply"]
    assert final["status"] == "cancelled" and reply["finish"] == "cancelled"
    assert reply["content"] and words.startswith(reply["content"])
    assert len(reply["content"]) < len(words)
    answered = user.wait_answered(second_id)
    assert answered["status"] == "answered" and answered["reply"]["content"] == "The next one."
    # The next question was generated from the cancelled one and its partial reply.
    shown = [(m["role"], m["content"]) for m in model.requests[-1]["body"]["messages"][1:]]
    assert shown == [("user", "tell me a long story"), ("assistant", reply["content"]), ("user", "and then?")]


def test_interrupt_answers_from_everything_before_it_with_the_partial_reply(
    user: Api, model: FakeModelServer, node_b: Api
) -> None:
    words = "a slow answer that the next message interrupts before it ends " * 3
    model.reset({"content": words, "chunk_delay": 0.3}, {"content": "Answering the interruption."})
    conversation_id, first_id = _streaming(user, model, "start something long")
    response = _as(user, node_b).post(f"/api/v1/conversations/{conversation_id}/messages",
                                      json={"content": "stop, do this instead", "on_busy": "interrupt"})
    assert response.status_code == 202, response.text
    answered = user.wait_answered(response.json()["message"]["id"])
    assert answered["reply"]["content"] == "Answering the interruption."
    partial = user.get(f"/api/v1/messages/{first_id}").json()
    assert partial["status"] == "cancelled" and partial["reply"]["finish"] == "cancelled"
    shown = [(m["role"], m["content"]) for m in model.requests[-1]["body"]["messages"][1:]]
    assert shown == [("user", "start something long"), ("assistant", partial["reply"]["content"]),
                     ("user", "stop, do this instead")]


def test_after_a_regenerate_later_turns_are_generated_from_the_current_version_only(
    user: Api, model: FakeModelServer
) -> None:
    model.reset({"content": "First version."}, {"content": "Second version."}, {"content": "Later turn."})
    conversation_id, first = user.ask("what is it?")
    again = user.post(f"/api/v1/messages/{first['id']}/regenerate", json={"content": "what is it, really?"})
    assert again.status_code == 202, again.text
    assert user.wait_answered(first["id"])["reply"]["content"] == "Second version."
    user.ask("and after that?", conversation_id)
    shown = [[(m["role"], m["content"]) for m in request["body"]["messages"][1:]] for request in model.requests]
    assert shown == [
        [("user", "what is it?")],
        [("user", "what is it, really?")],
        [("user", "what is it, really?"), ("assistant", "Second version."), ("user", "and after that?")],
    ]


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_the_apps_function_tools_end_a_response_and_their_output_continues_it(user: Api, model: FakeModelServer):
    """OpenAI's SDK: the app's function tool goes to the model server beside chatq's own; the
    model's call of it ends the response as a function_call item; the app's output, sent with
    previous_response_id, is the tool's message of the next request, answered. `instructions`
    are the system prompt, `max_output_tokens` caps the answer (incomplete when it cuts)."""
    import openai

    key = user.post("/api/v1/keys", json={"name": "tools"}).json()["key"]
    client = openai.OpenAI(base_url=user.base_url + "/v1", api_key=key, max_retries=0, timeout=60)
    model.reset({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
                {"content": "It is sunny in Paris."})
    first = client.responses.create(model="any", input="What is the weather in Paris?", tools=[WEATHER],
                                    instructions="You are a weather bot.", metadata={"app": "weather"})
    [call] = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert first.instructions == "You are a weather bot." and first.metadata == {"app": "weather"}
    assert [tool.name for tool in first.tools] == ["get_weather"]
    sent = model.requests[-1]["body"]
    assert sent["messages"][0] == {"role": "system", "content": "You are a weather bot."}
    assert "get_weather" in [tool["function"]["name"] for tool in sent["tools"]]
    with pytest.raises(openai.BadRequestError):  # an output must answer a call of the previous response
        client.responses.create(model="any", previous_response_id=first.id, tools=[WEATHER], input=[
            {"type": "function_call_output", "call_id": "call_elsewhere", "output": "{}"}])
    events = list(client.responses.retrieve(first.id, stream=True))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert [event.type for event in events][-3:] == ["response.function_call_arguments.done",
                                                     "response.output_item.done", "response.completed"]

    second = client.responses.create(model="any", previous_response_id=first.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}])
    assert second.status == "completed" and second.output_text == "It is sunny in Paris."
    asked = model.requests[-1]["body"]["messages"]
    assert asked[-2]["tool_calls"][0]["id"] == call.call_id
    assert asked[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"sky": "sunny"}'}
    assert client.responses.input_items.list(second.id).data[0].type == "function_call_output"

    model.reset({"content": " ".join(["word"] * 40)})
    cut = client.responses.create(model="any", input="Say a lot.", max_output_tokens=20)
    assert model.requests[-1]["body"]["max_tokens"] == 20
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
