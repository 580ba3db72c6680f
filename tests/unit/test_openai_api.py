"""The OpenAI-compatible API in the fast tier: a call that waits for its answer is a waiting request,
admitted before anything is stored — a user at their share of waits is refused (429) and no
message is queued for a call the client was told failed."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, text

from tests.support import token


def test_a_completion_refused_at_admission_stores_nothing(unit_settings, engine: Engine) -> None:
    from web import create_app

    app = create_app(settings=unit_settings.model_copy(update={"max_waits_per_user": 1}))
    user = f"waits-{uuid.uuid4().hex[:8]}"
    app.extensions["chatq.admission"].enter(user)  # the user's one place, held by another wait
    try:
        for stream in (False, True):
            refused = app.test_client().post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {token(user)}"},
                json={"model": "chatq-assistant", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            assert refused.status_code == 429 and set(refused.get_json()) == {"error"}
            assert int(refused.headers["Retry-After"]) >= 1
    finally:
        app.extensions["chatq.admission"].leave(user)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM messages WHERE user_id = :u"), {"u": user}).scalar() == 0


def test_odd_input_on_v1_is_a_4xx_in_openais_shape_and_stores_nothing(client, unit_settings, engine: Engine) -> None:
    """NUL characters (which Postgres text and jsonb cannot hold) anywhere a /v1 body carries text,
    and query values that are digits only to `str.isdigit` ("²", "--1"): a 4xx naming the field, never
    a 500, and nothing stored."""
    user = f"odd-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {token(user)}"}
    bodies = [
        ("/v1/responses", {"model": "m", "input": "a\x00b"}),
        ("/v1/responses", {"model": "m", "input": [{"type": "message", "role": "user",
                                                    "content": [{"type": "input_text", "text": "a\x00"}]}]}),
        ("/v1/responses", {"model": "m", "input": "hi", "metadata": {"k\x00": "v"}}),
        ("/v1/responses", {"model": "m", "input": "hi", "safety_identifier": "end\x00user"}),
        ("/v1/responses", {"model": "m", "input": "hi", "instructions": "be\x00brief"}),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "a\x00b"}]}),
        ("/v1/conversations", {"items": [{"type": "message", "role": "user", "content": "a\x00b"}]}),
        ("/v1/conversations", {"metadata": {"topic": "\x00"}}),
    ]
    for path, body in bodies:
        answer = client.post(path, headers=auth, json=body)
        assert 400 <= answer.status_code < 500 and set(answer.get_json()) == {"error"}, (path, body, answer.data)
    created = client.post("/v1/responses", headers=auth, json={"model": "m", "input": "hi", "background": True})
    assert created.status_code == 200, created.data
    for query in ("?stream=true&starting_after=--1", "?stream=true&starting_after=%C2%B2"):
        assert client.get(f"/v1/responses/{created.get_json()['id']}{query}", headers=auth).status_code == 400
    conversation = created.get_json()["conversation"]["id"]
    assert client.get(f"/v1/conversations/{conversation}/items?limit=%C2%B2", headers=auth).status_code == 400
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM messages WHERE user_id = :u"), {"u": user}).scalar()
    assert stored == 1  # the one good response's question
