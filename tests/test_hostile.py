"""What a hostile (or merely odd) client sends: a 4xx problem, never a 5xx, nothing that grows the
server's state, nothing that floods its log; and settings too weak to run with refuse to start."""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from models import ConfigError, Settings
from tests.support import Api, Web


def assert_problem(response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == status


def test_json_nested_too_deeply_is_400(api: Api) -> None:
    deep = '{"message": ' + "[" * 5000 + "]" * 5000 + "}"
    response = api.post("/api/v1/chat", data=deep, headers={"Content-Type": "application/json"})
    assert_problem(response, 400)
    assert api.get("/api/v1/conversations").json()["items"] == []  # and nothing was stored


@pytest.mark.parametrize("cursor", ["²", "١٢", "𝟙"], ids=["superscript", "arabic-indic", "math-digit"])
def test_a_cursor_of_non_ascii_digits_is_422(api: Api, cursor: str) -> None:
    cid = api.post("/api/v1/conversations", json={}).json()["id"]
    assert_problem(api.get(f"/api/v1/conversations/{cid}/events", params={"after": cursor}), 422)
    utf8 = cursor.encode().decode("latin-1")  # a header as raw UTF-8 bytes, as a client would send it
    assert_problem(api.get(f"/api/v1/conversations/{cid}/events", headers={"Last-Event-ID": utf8}), 422)


def test_invented_methods_do_not_grow_metrics(stack) -> None:
    def series() -> set[str]:
        text = requests.get(stack.url + "/metrics", timeout=10).text
        return set(re.findall(r'^chatq_http_request_duration_seconds_count\{[^}]*\}', text, re.M))

    requests.get(stack.url + "/livez", timeout=10)
    before = series()
    for _ in range(30):
        requests.request(f"X{uuid.uuid4().hex[:8].upper()}", stack.url + "/livez", timeout=10)
    after = series()
    methods = {re.search(r'method="([^"]*)"', line).group(1) for line in after}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert len(after - before) <= 1  # at most the one "other" series for all of them


@pytest.fixture(scope="module")
def limited_web(stack_env):
    node = Web("web-read-limited", {**stack_env, "RATE_LIMIT": "3/minute", "READ_RATE_LIMIT": "5/minute"}).start()
    yield node
    node.stop()


def test_an_anonymous_post_logs_no_error(limited_web: Web) -> None:
    offset = len(limited_web.log_text())
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        response = requests.post(limited_web.url + "/api/v1/chat", json={"message": "hi"}, headers=headers, timeout=10)
        assert_problem(response, 401)
    requests.get(limited_web.url + "/livez", timeout=10)  # the log is written before this answers
    logged = limited_web.log_text()[offset:]
    assert "ERROR" not in logged and "Traceback" not in logged and '"level": "error"' not in logged


def test_reads_are_rate_limited_per_user(limited_web: Web) -> None:
    reader, other = Api(limited_web.url), Api(limited_web.url)
    statuses = [reader.get("/api/v1/tasks").status_code for _ in range(5)]
    assert statuses == [200] * 5
    limited = reader.get("/api/v1/conversations")  # one budget for every read of the API
    assert_problem(limited, 429)
    assert int(limited.headers["Retry-After"]) > 0
    assert other.get("/api/v1/tasks").status_code == 200
    assert requests.get(limited_web.url + "/livez", timeout=10).status_code == 200  # not the API


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"AUTH_SECRET": " " * 40}, "AUTH_SECRET"),
        ({"AUTH_SECRET": "x" * 64}, "AUTH_SECRET"),
        ({"AUTH_SECRET": "", "AUTH_JWKS_URL": "https://id.example.test/jwks.json"}, "AUTH_AUDIENCE"),
        ({"FLOWER_BASIC_AUTH": ":"}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_BASIC_AUTH": "ops:short"}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_BASIC_AUTH": ":a-long-password"}, "FLOWER_BASIC_AUTH"),
    ],
    ids=["spaces-secret", "one-character-secret", "jwks-without-audience", "empty-flower-login",
         "short-flower-password", "flower-without-user"],
)
def test_weak_settings_refuse_to_start(variables: dict[str, str], named: str) -> None:
    settings = Settings.from_env({"AUTH_SECRET": "a-long-random-secret-0123456789abcdef", **variables})
    with pytest.raises(ConfigError, match=named):
        settings.require_flower_auth() if named == "FLOWER_BASIC_AUTH" else settings.require_auth_secret()


def test_strong_settings_start() -> None:
    settings = Settings.from_env({"AUTH_SECRET": "a-long-random-secret-0123456789abcdef",
                                  "FLOWER_BASIC_AUTH": "ops:a-long-password",
                                  "AUTH_JWKS_URL": "https://id.example.test/jwks.json", "AUTH_AUDIENCE": "chatq"})
    assert settings.require_auth_secret() and settings.require_flower_auth() == "ops:a-long-password"


def test_concurrent_registrations_never_pass_the_webhook_cap(api: Api) -> None:
    def register(number: int) -> int:
        return api.post("/api/v1/webhooks", json={"url": f"https://8.8.8.8/hook/{number}"}).status_code

    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(register, range(30)))
    assert statuses.count(201) == 10 and statuses.count(409) == 20, statuses
    assert len(api.get("/api/v1/webhooks").json()["items"]) == 10


def test_a_host_name_no_resolver_takes_is_a_422_and_one_structured_log_line(stack, api: Api) -> None:
    offset = len(stack.web.log_text())
    response = api.post("/api/v1/webhooks", json={"url": f"https://{'a' * 64}.example.com/hook"})
    assert_problem(response, 422)
    assert "not a valid host name" in response.json()["detail"]
    requests.get(stack.url + "/livez", timeout=10)  # the log is written before this answers
    logged = [line for line in stack.web.log_text()[offset:].splitlines() if line.strip()]
    assert logged and "Traceback" not in "\n".join(logged)
    for line in logged:  # gunicorn's access lines, and otherwise JSON of at most a warning
        if not ACCESS_LINE.match(line):
            assert json.loads(line).get("level", "info") in ("debug", "info", "warning"), line


ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^]]+\] "')
