"""The OpenAI-compatible API (`/v1`) driven by OpenAI's own Python SDK against real gunicorn, Celery
and Postgres: API keys made, used and revoked; the models; Chat Completions plain and streamed,
stored and answered like any message; errors raised as the SDK's own exception classes."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from typing import Any

import openai
import pytest
import requests

from tests.support import Api, wait_until
from worker.engine.builtin import HELP


def client_for(api: Api, key: str, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.base_url + "/v1", api_key=key, max_retries=0, timeout=60, **options)


def make_key(api: Api, name: str = "server") -> str:
    made = api.post("/api/v1/keys", json={"name": name})
    assert made.status_code == 201, made.text
    return made.json()["key"]


def question_of(api: Api, completion_id: str) -> dict[str, Any]:
    """The chatq message a completion answered (its id is chatcmpl-<the question's id>)."""
    message = api.get(f"/api/v1/messages/{uuid.UUID(completion_id.removeprefix('chatcmpl-'))}")
    assert message.status_code == 200, message.text
    return message.json()


def test_an_api_key_is_made_shown_once_used_like_a_token_and_revoked(api: Api, make_api) -> None:
    made = api.post("/api/v1/keys", json={"name": "nightly job"})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key.startswith("chatq-") and made.json()["name"] == "nightly job"
    listed = api.get("/api/v1/keys").json()["items"]
    assert [item["id"] for item in listed] == [made.json()["id"]] and "key" not in listed[0]
    # The key acts as its user: on /api/ and through the SDK.
    as_key = requests.get(api.base_url + "/api/v1/conversations", headers={"Authorization": f"Bearer {key}"},
                          timeout=10)
    assert as_key.status_code == 200
    assert [model.id for model in client_for(api, key).models.list()] == ["chatq-assistant"]
    # A key cannot make another, nor revoke one; another user cannot revoke it either.
    by_key = requests.post(api.base_url + "/api/v1/keys", json={"name": "copy"},
                           headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert by_key.status_code == 403 and by_key.json()["type"].endswith("/key-not-allowed")
    assert make_api().request("DELETE", f"/api/v1/keys/{made.json()['id']}").status_code == 404
    assert api.request("DELETE", f"/api/v1/keys/{made.json()['id']}").status_code == 204
    with pytest.raises(openai.AuthenticationError):
        client_for(api, key).models.list()
    assert api.get("/api/v1/keys").json()["items"] == []


def test_a_chat_completion_is_stored_queued_and_answered_like_any_message(api: Api) -> None:
    client = client_for(api, make_key(api))
    completion = client.chat.completions.create(
        model="chatq-assistant", messages=[{"role": "user", "content": "Add task: buy oat milk"}])
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content.startswith("Added “buy oat milk”"), choice.message.content
    assert completion.object == "chat.completion" and completion.model == "chatq-assistant"
    assert completion.usage is not None and completion.usage.total_tokens == 0  # the built-in engine counts none
    # One and the same queue: the question is a chatq message of the user's, answered, its task added.
    question = question_of(api, completion.id)
    assert question["status"] == "answered" and question["reply"]["content"] == choice.message.content
    assert [task["title"] for task in api.tasks()] == ["buy oat milk"]
    conversation = api.get(f"/api/v1/conversations/{question['conversation_id']}").json()
    assert conversation["temporary"] is True  # deleted a day after its last message, unless store: true


def test_the_calls_earlier_messages_are_the_conversation_the_question_is_answered_from(api: Api) -> None:
    client = client_for(api, make_key(api))
    completion = client.chat.completions.create(model="chatq-assistant", store=True, messages=[
        {"role": "system", "content": "You keep my todo list."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi! What shall I add?"},
        {"role": "user", "content": [{"type": "text", "text": "help"}]},
    ])
    assert completion.choices[0].message.content == HELP
    question = question_of(api, completion.id)
    stored = api.get(f"/api/v1/conversations/{question['conversation_id']}/messages").json()["items"]
    assert [(m["seq"], m["role"], m["content"]) for m in stored] == [
        (1, "user", "hello"), (2, "assistant", "Hi! What shall I add?"), (3, "user", "help"), (4, "assistant", HELP)]
    assert stored[1]["reply_to"] == stored[0]["id"] and stored[3]["reply_to"] == stored[2]["id"]
    assert api.get(f"/api/v1/conversations/{question['conversation_id']}").json()["temporary"] is False


def test_a_streamed_completion_sends_chunks_whose_text_is_the_stored_reply(api: Api) -> None:
    client = client_for(api, make_key(api))
    chunks = list(client.chat.completions.create(model="chatq-assistant", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "remind me to call mom"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == ["stop"] and chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({chunk.id for chunk in chunks}) == 1
    assert text == question_of(api, chunks[0].id)["reply"]["content"] and "call mom" in text


def test_errors_are_raised_as_the_sdks_own_exception_classes(api: Api) -> None:
    client = client_for(api, make_key(api))
    with pytest.raises(openai.AuthenticationError):
        client_for(api, "chatq-" + "x" * 43).models.list()
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        client.chat.completions.create(model="chatq-assistant", messages=[])
    assert invalid.value.body["param"] == "messages" and invalid.value.code == "invalid-field"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="chatq-assistant", messages=[{"role": "user", "content": "hi"}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert refused.value.body["param"] == "tools" and refused.value.code == "unsupported-field"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="chatq-assistant",
                                       messages=[{"role": "user", "content": "hi"}, {"role": "assistant",
                                                                                     "content": "hello"}])
    # An error under /v1 is OpenAI's shape, never problem+json, and says whether a retry can help.
    missing = requests.get(api.base_url + "/v1/responses/nope", headers={"Authorization": "Bearer " + "x"},
                           timeout=10)
    assert missing.status_code in (401, 404) and set(missing.json()) == {"error"}
    assert missing.headers["Content-Type"].startswith("application/json")
    assert missing.headers["x-should-retry"] == "false"


def test_a_background_response_is_queued_at_once_and_polled_to_completion(api: Api) -> None:
    client = client_for(api, make_key(api))
    started = client.responses.create(model="chatq-assistant", input="Add task: water the ferns", background=True)
    assert started.status in ("queued", "in_progress", "completed") and started.id.startswith("resp_")
    response = started
    for _ in range(200):
        if response.status in ("completed", "failed", "cancelled", "incomplete"):
            break
        time.sleep(0.05)
        response = client.responses.retrieve(started.id)
    assert response.status == "completed" and response.output_text.startswith("Added “water the ferns”")
    # One conversation on both APIs: the response's is a chatq conversation of the user's.
    conversation = uuid.UUID(response.conversation.id.removeprefix("conv_"))
    listed = api.get(f"/api/v1/conversations/{conversation}/messages").json()["items"]
    assert [m["content"] for m in listed] == ["Add task: water the ferns", response.output_text]
    items = client.responses.input_items.list(started.id)
    assert [item.content[0].text for item in items.data] == ["Add task: water the ferns"]


def test_a_synchronous_chain_through_previous_response_id_is_answered_from_the_history(api: Api) -> None:
    client = client_for(api, make_key(api))
    first = client.responses.create(model="chatq-assistant", input="Add task: feed the cat")
    assert first.status == "completed"
    second = client.responses.create(model="chatq-assistant", input="what did I just add?",
                                     previous_response_id=first.id)
    assert second.status == "completed" and "feed the cat" in second.output_text, second.output_text
    assert second.conversation.id == first.conversation.id
    # Continued from a response that is no longer the latest: a copy of the conversation up to it,
    # answered from that history alone; the original is left as it was.
    client.responses.create(model="chatq-assistant", input="Add task: feed the dog", previous_response_id=second.id)
    forked = client.responses.create(model="chatq-assistant", input="what did I just add?",
                                     previous_response_id=first.id)
    assert forked.conversation.id != first.conversation.id and "feed the cat" in forked.output_text
    copied = api.get(f"/api/v1/conversations/{uuid.UUID(forked.conversation.id[5:])}/messages").json()["items"]
    assert [m["content"] for m in copied][:2] == ["Add task: feed the cat", first.output_text] and len(copied) == 4
    original = api.get(f"/api/v1/conversations/{uuid.UUID(first.conversation.id[5:])}/messages").json()["items"]
    assert len(original) == 6
    # Deleted: every later call on it answers 404.
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + uuid.uuid4().hex)


def test_a_conversation_is_one_and_the_same_on_both_apis(api: Api, make_api) -> None:
    """Made through the Conversations API with two items, answered through a response that names it,
    continued on /api/v1, read back as items in either order, added to, pruned and deleted."""
    client = client_for(api, make_key(api))
    conversation = client.conversations.create(metadata={"topic": "chores"}, items=[
        {"type": "message", "role": "user", "content": "hello"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi! I keep lists."}]}])
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "chores"}
    answered = client.responses.create(model="chatq-assistant", input="Add task: sweep the porch",
                                       conversation=conversation.id)
    assert answered.status == "completed" and answered.conversation.id == conversation.id
    chatq_id = uuid.UUID(conversation.id.removeprefix("conv_"))
    asked = api.chat("what did I just add?", str(chatq_id))
    api.wait_answered(asked["message"]["id"])
    on_chatq = [m["content"] for m in api.get(f"/api/v1/conversations/{chatq_id}/messages").json()["items"]]
    items = list(client.conversations.items.list(conversation.id, order="asc", limit=2))  # two pages and more
    assert [item.content[0].text for item in items] == on_chatq
    assert on_chatq[:3] == ["hello", "Hi! I keep lists.", "Add task: sweep the porch"]
    assert "sweep the porch" in on_chatq[-1] and len(on_chatq) == 6
    assert [item.role for item in items] == ["user", "assistant"] * 3
    newest = client.conversations.items.list(conversation.id, limit=1).data[0]
    assert newest.id == items[-1].id and newest.content[0].text == on_chatq[-1]
    assert client.conversations.items.retrieve(items[3].id, conversation_id=conversation.id).content[0].text == \
        answered.output_text

    added = client.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "user", "content": "a note to self"}])
    assert [item.content[0].text for item in added.data] == ["a note to self"]
    client.conversations.items.delete(added.data[0].id, conversation_id=conversation.id)
    client.conversations.items.delete(items[0].id, conversation_id=conversation.id)  # a question, with its reply
    left = [m["content"] for m in api.get(f"/api/v1/conversations/{chatq_id}/messages").json()["items"]]
    assert left == on_chatq[2:]
    assert client.conversations.update(conversation.id, metadata={"topic": "errands"}).metadata == {"topic": "errands"}
    assert client.conversations.retrieve(conversation.id).metadata == {"topic": "errands"}
    with pytest.raises(openai.NotFoundError):  # another user's: as if it did not exist
        client_for(make_api(), make_key(make_api())).conversations.retrieve(conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(f"msg_{uuid.uuid4().hex}", conversation_id=conversation.id)
    assert client.conversations.delete(conversation.id).deleted is True
    assert api.get(f"/api/v1/conversations/{chatq_id}").status_code == 404


def test_creates_retried_with_an_idempotency_key_store_and_answer_once(api: Api) -> None:
    """What the SDKs do on a 409, 429 or 5xx, done by six clients at once with one key: one
    question, one answer, one task; a retry says it stored nothing; the key with another body is
    refused as the SDK's own 422 exception."""
    client = client_for(api, make_key(api))
    key = {"Idempotency-Key": f"add-once-{uuid.uuid4().hex}"}

    def create() -> Any:
        return client.responses.create(model="chatq-assistant", input="Add task: only once", background=True,
                                       extra_headers=key)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        created = list(pool.map(lambda _: create(), range(6)))
    assert len({response.id for response in created}) == 1
    answered = wait_until(lambda: (r := client.responses.retrieve(created[0].id)).status == "completed" and r,
                          timeout=30, what="the answer")
    assert answered.output_text.startswith("Added “only once”")
    assert [task["title"] for task in api.tasks()] == ["only once"]
    retried = client.responses.with_raw_response.create(model="chatq-assistant", input="Add task: only once",
                                                        background=True, extra_headers=key)
    assert retried.headers["Idempotent-Replayed"] == "true" and retried.parse().id == created[0].id
    with pytest.raises(openai.UnprocessableEntityError):
        client.responses.create(model="chatq-assistant", input="Add task: twice", background=True, extra_headers=key)
    completions = [client.chat.completions.create(model="chatq-assistant", extra_headers={"Idempotency-Key": "c-1"},
                                                  messages=[{"role": "user", "content": "Add task: a third"}])
                   for _ in range(2)]
    assert completions[0].id == completions[1].id
    assert sorted(task["title"] for task in api.tasks()) == ["a third", "only once"]
    assert len(api.get("/api/v1/conversations").json()["items"]) == 2


def test_function_tools_are_refused_by_name_with_the_built_in_assistant(api: Api) -> None:
    client = client_for(api, make_key(api))
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="chatq-assistant", input="hi", tools=[
            {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}])
    assert refused.value.body["param"] == "tools" and "ENGINE=openai" in refused.value.body["message"]
    assert api.get("/api/v1/conversations").json()["items"] == []  # nothing stored
