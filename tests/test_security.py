"""Security: object-level authorization on every route, rate limits shared by all nodes, refusing
weak secrets, Flower behind credentials, and nothing secret in the logs."""

from __future__ import annotations

import ast
import re
import time
import uuid

import pytest
import requests

from models import Settings
from tests.support import ARTIFACTS, BIN, ROOT, Api, Process, Web, free_port, wait_until
from web import create_app
from web import schemas as api_schemas
from web.openai_api import conversations as openai_conversations

SAMPLE_BODIES = {api_schemas.NewMessage: {"content": "hi"}, api_schemas.NewConversation: {},
                 api_schemas.NewChat: {"message": "hi"}, api_schemas.ConversationChange: {"title": "mine now"},
                 openai_conversations.MetadataIn: {"metadata": {"mine": "now"}},
                 openai_conversations.ItemsIn: {"items": [{"type": "message", "role": "user", "content": "hi"}]}}


@pytest.fixture(scope="module")
def route_table(stack_env):
    app = create_app(settings=Settings.from_env(stack_env))
    routes = []
    for rule in app.url_map.iter_rules():
        if "<" not in rule.rule or rule.endpoint.endswith("static"):
            continue
        spec = app.view_functions[rule.endpoint].openapi
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, rule.rule, spec))
    return routes


def test_every_route_with_an_id_is_covered(route_table) -> None:
    """The object-level test below runs once per route of the app's own table: a new route with an
    id cannot escape it. This checks that the table is what we think it is."""
    paths = {path for _, path, _ in route_table}
    assert "/api/v1/messages/<message_id>" in paths and "/api/v1/conversations/<conversation_id>/events" in paths
    names = "conversation_id|message_id|webhook_id|delivery_id|erasure_id|key_id|response|conversation|item"
    assert all(re.fullmatch(rf"<({names})>", part)
               for _, path, _ in route_table for part in re.findall(r"<[^>]+>", path))


def test_another_users_ids_answer_404_on_every_route(route_table, make_api) -> None:
    owner, stranger = make_api(), make_api()
    # A public address (nothing is reachable from here: its deliveries only fail, and that is fine).
    webhook = owner.post("/api/v1/webhooks", json={"url": "https://93.184.216.34/hook"})
    assert webhook.status_code == 201, webhook.text
    conversation_id, answered = owner.ask("Add task: mine")
    before = owner.get(f"/api/v1/conversations/{conversation_id}/messages").json()
    deliveries = owner.get(f"/api/v1/webhooks/{webhook.json()['id']}/deliveries").json()["items"]
    erasure = make_api().request("DELETE", "/api/v1/me")  # another user's erasure (of nothing)
    key = owner.post("/api/v1/keys", json={"name": "mine"}).json()
    ids = {"conversation_id": conversation_id, "message_id": answered["id"], "webhook_id": webhook.json()["id"],
           "delivery_id": deliveries[0]["id"], "erasure_id": erasure.json()["id"], "key_id": key["id"],
           "response": "resp_" + uuid.UUID(answered["id"]).hex,
           "conversation": "conv_" + uuid.UUID(conversation_id).hex, "item": "msg_" + uuid.UUID(answered["id"]).hex}
    prefixes = {"response": "resp_", "conversation": "conv_", "item": "msg_"}

    def made_up(name: str) -> str:
        return prefixes[name] + uuid.uuid4().hex if name in prefixes else str(uuid.uuid4())

    def said(answer) -> str:  # problem+json under /api/, OpenAI's shape under /v1/
        body = answer.json()
        return body["detail"] if "detail" in body else body["error"]["message"]

    for method, rule, spec in route_table:
        path = re.sub(r"<([a-z_]+)>", lambda match: ids[match.group(1)], rule)
        body = SAMPLE_BODIES.get(spec.body) if spec.body else None
        theirs = stranger.request(method, path, json=body)
        missing = stranger.request(method, re.sub(r"<([a-z_]+)>", lambda match: made_up(match.group(1)), rule),
                                   json=body)
        assert theirs.status_code == missing.status_code == 404, (method, rule, theirs.text)
        assert said(theirs) == said(missing), (method, rule)
    assert owner.get(f"/api/v1/conversations/{conversation_id}/messages").json() == before
    assert owner.get(f"/api/v1/conversations/{conversation_id}").json()["title"] != "mine now"
    assert [t["title"] for t in owner.tasks()] == ["mine"]
    assert [w["id"] for w in owner.get("/api/v1/webhooks").json()["items"]] == [webhook.json()["id"]]
    assert [k["id"] for k in owner.get("/api/v1/keys").json()["items"]] == [key["id"]]
    assert owner.get(f"/v1/responses/{ids['response']}").json()["status"] == "completed"


@pytest.fixture(scope="module")
def limited_nodes(stack_env):
    env = {**stack_env, "RATE_LIMIT": "4/minute"}
    nodes = [Web("web-limited-a", env).start(), Web("web-limited-b", env).start()]
    yield nodes
    for node in nodes:
        node.stop()


def test_rate_limit_is_per_user_and_shared_by_all_nodes(limited_nodes) -> None:
    a, b = limited_nodes
    user = f"limited-{uuid.uuid4().hex[:6]}"
    on_a, on_b = Api(a.url, user), Api(b.url, user)
    statuses = [api.post("/api/v1/chat", json={"message": "hello"}).status_code for api in (on_a, on_b, on_a, on_b)]
    assert statuses == [202, 202, 202, 202]
    limited = on_a.post("/api/v1/chat", json={"message": "one too many"})
    assert limited.status_code == 429
    assert limited.headers["Content-Type"] == "application/problem+json"
    assert int(limited.headers["Retry-After"]) > 0
    assert on_b.post("/api/v1/chat", json={"message": "still too many"}).status_code == 429
    assert on_a.get("/api/v1/conversations").status_code == 200  # reads are not limited
    assert Api(a.url).post("/api/v1/chat", json={"message": "another user"}).status_code == 202
    assert len(on_a.get("/api/v1/conversations").json()["items"]) == 4  # the refused POSTs stored nothing


@pytest.mark.parametrize("secret", ["", "changeme", "too-short", " " * 40, "ab" * 20],
                         ids=["unset", "well-known", "short", "spaces", "few-characters"])
def test_web_refuses_to_start_with_a_weak_secret(stack_env, secret: str) -> None:
    env = {**stack_env, "AUTH_SECRET": secret}
    node = Web(f"web-weak-{secret or 'unset'}", env)
    Process.start(node)
    try:
        assert node.popen.wait(timeout=30) != 0
    finally:
        node.kill()
    assert "AUTH_SECRET" in node.log_text()


def test_dev_mode_starts_without_a_secret(stack_env) -> None:
    node = Web("web-dev-nosecret", {**stack_env, "AUTH_SECRET": "", "CHATQ_DEV": "1"}).start()
    node.stop()


def test_flower_never_serves_without_credentials(stack_env) -> None:
    port = free_port()
    argv = [str(BIN / "celery"), "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1"]
    refused = Process("flower-open", argv, {**stack_env, "FLOWER_BASIC_AUTH": ""}).start()
    try:
        assert refused.popen.wait(timeout=30) != 0
    finally:
        refused.kill()
    assert "FLOWER_BASIC_AUTH" in refused.log_text()

    guarded = Process("flower-guarded", argv, {**stack_env, "FLOWER_BASIC_AUTH": "ops:s3cret-pass"}).start()
    try:
        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/api/workers", timeout=2).status_code > 0
            except requests.RequestException:
                return False

        wait_until(up, timeout=30, what="flower")
        assert requests.get(f"http://127.0.0.1:{port}/api/workers", timeout=5).status_code == 401
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 401
        signed_in = requests.get(f"http://127.0.0.1:{port}/api/workers", auth=("ops", "s3cret-pass"), timeout=10)
        assert signed_in.status_code == 200
    finally:
        guarded.kill()


def test_logs_hold_no_tokens_secrets_or_message_text(stack, api: Api) -> None:
    marker = f"confidential-{uuid.uuid4().hex}"
    api.ask(f"Add task: {marker}")
    bearer = api.http.headers["Authorization"].split()[1]
    time.sleep(0.5)  # let the processes flush their last lines
    logs = "".join(path.read_text(errors="replace") for path in (ARTIFACTS / "logs").rglob("*.log"))
    assert "answered" in logs  # the worker did log the job
    assert marker not in logs
    assert bearer not in logs and bearer.split(".")[2] not in logs
    assert stack.env["AUTH_SECRET"] not in logs


def test_sql_is_built_with_bound_parameters_only() -> None:
    """No f-string, %-format or concatenation reaches text() or execute() in web, worker or models."""
    offenders = []
    for path in [*ROOT.glob("web/**/*.py"), *ROOT.glob("worker/**/*.py"), *ROOT.glob("models/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            called = getattr(node.func, "attr", getattr(node.func, "id", "")) if isinstance(node, ast.Call) else ""
            if called in {"text", "execute", "exec_driver_sql"} and node.args \
                    and isinstance(node.args[0], ast.JoinedStr | ast.BinOp):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
