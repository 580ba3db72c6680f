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
