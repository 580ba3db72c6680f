"""Server-Sent Events: every new message once, in order, resumable on another web node."""

from __future__ import annotations

import pytest

from tests.support import Api, EventStream, Web


@pytest.fixture(scope="module")
def second_web(stack_env):
    node = Web("web-b", stack_env).start()
    yield node
    node.stop()


def test_events_stream_new_messages_and_updates(api: Api) -> None:
    conversation_id = api.post("/api/v1/conversations", json={}).json()["id"]
    stream = EventStream(api, f"/api/v1/conversations/{conversation_id}/events")
    try:
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        assert stream.response.headers["X-Accel-Buffering"] == "no"
        api.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "Add task: streamed"})
        events = stream.until(lambda e: e["data"]["role"] == "assistant")
    finally:
        stream.close()
    with_ids = [e for e in events if e["id"] is not None]
    assert [e["id"] for e in with_ids] == ["1", "2"]
    assert [e["data"]["seq"] for e in with_ids] == [1, 2]
    assert "streamed" in with_ids[-1]["data"]["content"]
    assert all(e["data"]["seq"] == 1 for e in events if e["id"] is None)  # updates of the question


def test_events_resume_from_last_event_id_on_another_node_without_gap_or_duplicate(
    api: Api, second_web: Web
) -> None:
    conversation_id, _ = api.ask("Add task: one")
    api.ask("Add task: two", conversation_id)  # seqs 1-4 exist
    first = EventStream(api, f"/api/v1/conversations/{conversation_id}/events")
    try:
        seen = first.until(lambda e: e["id"] == "2")
    finally:
        first.close()
    assert [e["id"] for e in seen] == ["1", "2"]

    elsewhere = Api(second_web.url, api.user)
    resumed = EventStream(elsewhere, f"/api/v1/conversations/{conversation_id}/events",
                          headers={"Last-Event-ID": "2"})
    try:
        assert resumed.response.headers["X-Served-By"] == "web-b"
        replayed = resumed.until(lambda e: e["id"] == "4")
        api.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "Add task: three"})
        live = resumed.until(lambda e: e["id"] == "6")
    finally:
        resumed.close()
    ids = [e["id"] for e in replayed + live if e["id"] is not None]
    assert ids == ["3", "4", "5", "6"]


def test_events_with_after_query_and_bad_cursor(api: Api) -> None:
    conversation_id, _ = api.ask("hello")
    stream = EventStream(api, f"/api/v1/conversations/{conversation_id}/events?after=1")
    try:
        assert stream.next_event()["id"] == "2"
    finally:
        stream.close()
    assert api.get(f"/api/v1/conversations/{conversation_id}/events", headers={"Last-Event-ID": "x"}).status_code == 422


def test_events_of_another_users_conversation_are_404(make_api) -> None:
    owner, stranger = make_api(), make_api()
    conversation_id = owner.chat("private")["conversation_id"]
    assert stranger.get(f"/api/v1/conversations/{conversation_id}/events").status_code == 404


def test_an_idle_stream_carries_heartbeat_comments(api: Api) -> None:
    conversation_id = api.post("/api/v1/conversations", json={}).json()["id"]
    stream = EventStream(api, f"/api/v1/conversations/{conversation_id}/events")
    try:
        lines = [next(stream.lines) for _ in range(6)]
    finally:
        stream.close()
    assert ": heartbeat" in lines
