"""Per-user rate limits (web/limits.py) through the app, against the fast tier's real Redis: every
route and method of the API spends a budget, and Retry-After means what the contract says it means
on every kind of answer (a limit's 429: when the window lets the next request through; a pending
message: the poll interval; anything else: nothing)."""

from __future__ import annotations

import uuid

import pytest

from models import Settings
from tests.support import token
from web import create_app
from web.limits import READS, WRITES


def limited_app(unit_settings: Settings, writes: str, reads: str):
    return create_app(settings=unit_settings.model_copy(update={"rate_limit": writes, "read_rate_limit": reads}))


def routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the API, with made-up ids in its path."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = rule.rule
        for argument in rule.arguments:
            path = path.replace(f"<{argument}>", str(uuid.uuid4()))
        found += [(method, path) for method in sorted(rule.methods or ())]
    return found


def test_every_method_of_every_route_spends_a_budget(unit_settings: Settings) -> None:
    app = limited_app(unit_settings, "1/minute", "1/minute")
    client = app.test_client()
    checked = routes(app)
    assert {method for method, _ in checked} <= {*WRITES, *READS}  # a new method needs a budget first
    assert {"HEAD", "DELETE", "POST", "GET"} <= {method for method, _ in checked}
    for method, path in checked:
        headers = {"Authorization": f"Bearer {token(f'limits-{uuid.uuid4().hex[:10]}')}"}
        client.open(path, method=method, headers=headers, json={} if method in WRITES else None)
        second = client.open(path, method=method, headers=headers, json={} if method in WRITES else None)
        assert second.status_code == 429, (method, path, second.status_code)
        assert int(second.headers["Retry-After"]) >= 1, (method, path)
        if method != "HEAD":
            assert second.headers["Content-Type"] == "application/problem+json"


@pytest.fixture
def generous(unit_settings: Settings):
    return limited_app(unit_settings, "100/minute", "100/minute").test_client()


def test_only_a_limits_429_carries_the_limiters_retry_after(generous, unit_settings: Settings) -> None:
    headers = {"Authorization": f"Bearer {token(f'retry-after-{uuid.uuid4().hex[:10]}')}"}
    accepted = generous.post("/api/v1/chat", json={"message": "add buy milk"}, headers=headers)
    assert accepted.status_code == 202 and "Retry-After" not in accepted.headers
    # Nobody answers it here (no worker): it stays pending, and its poll says to ask again in 1 s.
    pending = generous.get(accepted.json["poll_url"], headers=headers)
    assert pending.json["status"] == "queued" and pending.headers["Retry-After"] == "1"
    missing = generous.get(f"/api/v1/messages/{uuid.uuid4()}", headers=headers)
    assert missing.status_code == 404 and "Retry-After" not in missing.headers
    listed = generous.get("/api/v1/conversations", headers=headers)
    assert listed.status_code == 200 and "Retry-After" not in listed.headers
    for answer in (accepted, pending, missing, listed):
        assert not any(name.lower().startswith("x-ratelimit") for name, _value in answer.headers.items())
