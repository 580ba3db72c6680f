"""A user's data through the running service (gunicorn, a Celery worker, beat): the export holds
everything the API shows of the user, reply versions included; a conversation's lifetime is set and
changed; DELETE /me is carried out by a worker, after which every old id answers 404."""

from __future__ import annotations

import json
from typing import Any

from tests.support import Api, wait_until


def export_of(api: Api) -> list[dict[str, Any]]:
    response = api.get("/api/v1/export", stream=True)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["Content-Disposition"]
    return [json.loads(line) for line in response.iter_lines() if line]


def test_the_export_holds_everything_the_api_shows_of_the_user(api: Api, make_api) -> None:
    conversation_id, first = api.ask("Add task: buy milk")
    _, second = api.ask("show my tasks", conversation_id)
    regenerated = api.post(f"/api/v1/messages/{second['id']}/regenerate", json={"content": "list tasks"})
    assert regenerated.status_code == 202
    api.wait_answered(second["id"])
    other_conversation, _ = api.ask("remind me to call mom")
    assert api.post("/api/v1/webhooks", json={"url": "https://8.8.8.8/hook"}).status_code == 201
    made_key = api.post("/api/v1/keys", json={"name": "exported"}).json()
    make_api().ask("Add task: not yours")  # another user's data is never in it

    records = export_of(api)
    assert records[0]["type"] == "export" and records[0]["user"] == api.user and records[-1]["type"] == "end"
    kinds = [record.pop("type") for record in records]
    assert records[-1]["records"] == {kind: kinds.count(kind) for kind in set(kinds) - {"export", "end"}}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for kind, record in zip(kinds, records, strict=True):
        by_kind.setdefault(kind, []).append(record)

    conversations = api.get("/api/v1/conversations").json()["items"]
    assert sorted(by_kind["conversation"], key=lambda c: c["id"]) == sorted(conversations, key=lambda c: c["id"])
    for conversation in (conversation_id, other_conversation):
        shown = api.get(f"/api/v1/conversations/{conversation}/messages").json()["items"]
        exported = [m for m in by_kind["message"] if m["conversation_id"] == conversation]
        assert exported == shown
    versions = api.get(f"/api/v1/messages/{second['id']}/replies").json()["items"]
    assert len(versions) == 2
    assert sorted(versions, key=lambda v: v["seq"]) == [r for r in by_kind["reply"] if r["reply_to"] == second["id"]]
    assert [r for r in by_kind["reply"] if r["reply_to"] == first["id"]] == \
        api.get(f"/api/v1/messages/{first['id']}/replies").json()["items"]
    assert by_kind["task"] == api.tasks("all")
    assert by_kind["usage"][0]["messages"] == 4  # three posts and a regenerate, today
    assert [hook["url"] for hook in by_kind["webhook_endpoint"]] == ["https://8.8.8.8/hook"]
    assert "secret" not in by_kind["webhook_endpoint"][0] and "whsec_" not in json.dumps(records)
    assert "not yours" not in json.dumps(records)
    assert [key["name"] for key in by_kind["api_key"]] == ["exported"] and made_key["key"] not in json.dumps(records)


def test_a_conversations_lifetime_is_set_on_create_and_changed_by_patch(api: Api) -> None:
    created = api.post("/api/v1/conversations", json={"title": "Scratch", "temporary": True}).json()
    assert created["temporary"] is True and created["ttl_days"] is None
    path = f"/api/v1/conversations/{created['id']}"
    changed = api.request("PATCH", path, json={"ttl_days": 30, "temporary": False, "title": "Kept a month"})
    assert changed.status_code == 200, changed.text
    assert {key: changed.json()[key] for key in ("title", "ttl_days", "temporary")} == \
        {"title": "Kept a month", "ttl_days": 30, "temporary": False}
    assert changed.json()["updated_at"] == created["updated_at"]  # retention counts from the last message
    assert api.request("PATCH", path, json={"ttl_days": None}).json()["ttl_days"] is None
    for bad in ({"ttl_days": 0}, {"ttl_days": 3651}, {"temporary": None}, {"title": ""}, {"owner": "me"}):
        assert api.request("PATCH", path, json=bad).status_code == 422, bad
    assert Api(api.base_url).request("PATCH", path, json={"title": "mine now"}).status_code == 404


def test_delete_me_is_carried_out_by_a_worker_and_every_old_id_answers_404(api: Api, make_api, db) -> None:
    conversation_id, answered = api.ask("Add task: erase me")
    other = make_api()
    _, kept = other.ask("Add task: keep me")

    asked = api.request("DELETE", "/api/v1/me")
    assert asked.status_code == 202
    status_url = asked.headers["Location"]
    erased = wait_until(lambda: (body := api.get(status_url).json())["status"] == "erased" and body,
                        what="the erasure to finish")
    assert erased["erased"]["questions"] == 1 and erased["erased"]["replies"] == 1 and erased["erased"]["tasks"] == 1
    for path in (f"/api/v1/messages/{answered['id']}", f"/api/v1/conversations/{conversation_id}",
                 f"/api/v1/messages/{answered['reply']['id']}/replies"):
        assert api.get(path).status_code == 404, path
    assert api.tasks("all") == [] and api.get("/api/v1/search", params={"q": "erase"}).json()["items"] == []
    # The audit keeps that it happened and how much, not who or what.
    audit = db.execute("SELECT user_id, row_to_json(e)::text FROM erasures AS e WHERE id = %s",
                       (erased["id"],)).fetchone()
    assert audit[0] is None and api.user not in audit[1] and "erase me" not in audit[1]
    assert other.get(f"/api/v1/messages/{kept['id']}").json()["status"] == "answered"
    again = api.request("DELETE", "/api/v1/me")  # harmless: there is nothing left to erase
    assert again.status_code == 202
    wait_until(lambda: api.get(again.headers["Location"]).json()["status"] == "erased", what="the second erasure")
    assert api.ask("Add task: a new start")[1]["seq"] == 1


def test_beat_deletes_a_conversation_past_its_lifetime_and_keeps_the_others(api: Api, db) -> None:
    """Retention as it runs: beat's forget round, not a call of the function."""
    expiring = api.post("/api/v1/conversations", json={"title": "a day", "ttl_days": 1}).json()["id"]
    kept = api.post("/api/v1/conversations", json={"title": "for ever"}).json()["id"]
    db.execute("UPDATE conversations SET updated_at = now() - interval '2 days' WHERE id = ANY(%s)",
               ([expiring, kept],))
    wait_until(lambda: api.get(f"/api/v1/conversations/{expiring}").status_code == 404, timeout=30,
               what="beat's forget round to delete the expired conversation")
    assert api.get(f"/api/v1/conversations/{kept}").status_code == 200  # no lifetime of its own, none set
