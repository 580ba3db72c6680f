"""The resources of the contract: conversations, messages and their cursors, tasks."""

from __future__ import annotations

import re
import threading

from tests.support import Api

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_conversation_lifecycle(api: Api) -> None:
    created = api.post("/api/v1/conversations", json={"title": "Groceries"})
    assert created.status_code == 201
    conversation = created.json()
    assert set(conversation) == {"id", "title", "created_at", "updated_at", "ttl_days", "temporary"}
    assert conversation["title"] == "Groceries"
    assert RFC3339_UTC.match(conversation["created_at"])
    assert api.get(f"/api/v1/conversations/{conversation['id']}").json() == conversation

    assert api.post("/api/v1/conversations", json={}).status_code == 201
    deleted = api.request("DELETE", f"/api/v1/conversations/{conversation['id']}")
    assert deleted.status_code == 204
    assert api.get(f"/api/v1/conversations/{conversation['id']}").status_code == 404
    assert api.get(f"/api/v1/conversations/{conversation['id']}/messages").status_code == 404


def test_deleting_a_conversation_deletes_its_messages(api: Api, db) -> None:
    conversation_id, answered = api.ask("Add task: keep me")
    assert api.request("DELETE", f"/api/v1/conversations/{conversation_id}").status_code == 204
    assert db.execute("SELECT count(*) FROM messages WHERE conversation_id = %s", (conversation_id,)).fetchone() == (0,)
    assert api.get(f"/api/v1/messages/{answered['id']}").status_code == 404
    assert [task["title"] for task in api.tasks()] == ["keep me"]  # tasks belong to the user


def test_conversations_are_listed_newest_first_with_a_cursor(api: Api) -> None:
    ids = [api.post("/api/v1/conversations", json={"title": f"c{i}"}).json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/conversations", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


def test_chat_answer_shape_and_location(api: Api) -> None:
    response = api.post("/api/v1/chat", json={"message": "Add task: shape"})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"conversation_id", "message", "poll_url"}
    message = body["message"]
    assert body["poll_url"] == f"/api/v1/messages/{message['id']}" == response.headers["Location"]
    assert message["role"] == "user" and message["seq"] == 1 and message["status"] == "queued"
    assert message["reply"] is None and message["error"] is None
    assert message["conversation_id"] == body["conversation_id"]

    answered = api.wait_answered(message["id"])
    reply = answered["reply"]
    assert answered["status"] == "answered"
    assert reply["role"] == "assistant" and reply["reply_to"] == message["id"] and reply["seq"] == 2
    assert RFC3339_UTC.match(reply["created_at"])


def test_messages_after_a_seq_in_order(api: Api) -> None:
    conversation_id, _ = api.ask("Add task: one")
    api.ask("Add task: two", conversation_id)
    page = api.get(f"/api/v1/conversations/{conversation_id}/messages", params={"after": 0}).json()
    assert [item["seq"] for item in page["items"]] == [1, 2, 3, 4]
    assert [item["role"] for item in page["items"]] == ["user", "assistant", "user", "assistant"]
    assert page["last_seq"] == 4
    later = api.get(f"/api/v1/conversations/{conversation_id}/messages", params={"after": 2, "limit": 1}).json()
    assert [item["seq"] for item in later["items"]] == [3] and later["last_seq"] == 3
    nothing = api.get(f"/api/v1/conversations/{conversation_id}/messages", params={"after": 4}).json()
    assert nothing == {"items": [], "last_seq": 4}


def test_several_messages_before_the_first_answer_each_get_their_reply_in_order(api: Api) -> None:
    conversation_id = api.chat("Add task: first")["conversation_id"]
    for text in ("Add task: second", "Add task: third", "what did I just add?"):
        api.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": text})
    questions = [m for m in api.get(f"/api/v1/conversations/{conversation_id}/messages").json()["items"]
                 if m["role"] == "user"]
    answered = [api.wait_answered(q["id"]) for q in questions]
    assert all(a["status"] == "answered" for a in answered)
    assert all(a["reply"]["seq"] > a["seq"] for a in answered)
    reply_seqs = [a["reply"]["seq"] for a in answered]
    assert reply_seqs == sorted(reply_seqs)
    assert "third" in answered[-1]["reply"]["content"]


def test_long_poll_returns_when_the_reply_is_committed_not_when_the_wait_ends(api: Api) -> None:
    """The answer arrives before the long-poll's 30 s: ordering, not a wall-clock bound."""
    message_id = api.chat("Add task: wake me")["message"]["id"]
    events: list[str] = []
    result: dict = {}

    def poll() -> None:
        result.update(api.get(f"/api/v1/messages/{message_id}", params={"wait": 30}).json())
        events.append("poll returned")

    poller = threading.Thread(target=poll)
    poller.start()
    poller.join(timeout=25)
    events.append("25 s passed" if poller.is_alive() else "joined")
    poller.join()
    assert events[0] == "poll returned", events
    assert result["status"] == "answered"


def test_listing_with_wait_returns_when_a_new_message_exists(api: Api, make_api) -> None:
    """A long-poll on `after=N` answers once a message above N exists — here one posted by another
    client of the same user after the poll began — not when its 30 s run out."""
    conversation_id, _ = api.ask("hello")  # seqs 1 and 2
    events: list[str] = []
    result: dict = {}

    def poll() -> None:
        result.update(api.get(f"/api/v1/conversations/{conversation_id}/messages",
                              params={"after": 2, "wait": 30}).json())
        events.append("poll returned")

    poller = threading.Thread(target=poll)
    poller.start()
    other_device = make_api(api.user)
    other_device.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "Add task: from my phone"})
    poller.join(timeout=25)
    events.append("25 s passed" if poller.is_alive() else "joined")
    poller.join()
    assert events[0] == "poll returned", events
    assert result["items"][0]["seq"] == 3 and result["items"][0]["content"] == "Add task: from my phone"
    assert result["last_seq"] >= 3


def test_listing_with_wait_and_nothing_new_answers_empty_when_the_wait_ends(api: Api) -> None:
    conversation_id, _ = api.ask("hello")
    page = api.get(f"/api/v1/conversations/{conversation_id}/messages", params={"after": 2, "wait": 1}).json()
    assert page == {"items": [], "last_seq": 2}


def test_plain_polling_gets_304_when_nothing_changed(api: Api) -> None:
    _, answered = api.ask("Add task: etag")
    first = api.get(f"/api/v1/messages/{answered['id']}")
    assert first.headers.get("ETag")
    again = api.get(f"/api/v1/messages/{answered['id']}", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304


def test_tasks_filter_by_status(api: Api) -> None:
    conversation_id, _ = api.ask("Add task: open one")
    api.ask("add closed one", conversation_id)
    api.ask("complete closed one", conversation_id)
    assert [t["title"] for t in api.tasks("open")] == ["open one"]
    assert [t["title"] for t in api.tasks("done")] == ["closed one"]
    assert [t["title"] for t in api.tasks("all")] == ["open one", "closed one"]
    task = api.tasks("all")[0]
    assert set(task) == {"id", "title", "done", "created_at", "updated_at"}
    assert api.get("/api/v1/tasks", params={"status": "maybe"}).status_code == 422
