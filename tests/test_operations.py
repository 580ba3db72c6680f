"""/health, /livez and behaviour with Postgres unreachable."""

from __future__ import annotations

import signal
import socket

import pytest
import requests

from models.process import metrics_support
from tests.support import Api, Web, Worker, free_port


def test_health_reports_healthy(stack) -> None:
    response = requests.get(stack.url + "/health", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "database": "connected", "broker": "connected",
                               "engine": "builtin", "model_servers": [], "server_id": "web"}
    assert requests.get(stack.url + "/livez", timeout=10).status_code == 200


@pytest.fixture
def web_without_postgres(stack_env):
    """A web node whose DATABASE_URL points at a port where nothing listens."""
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/chatq"
    node = Web("web-no-db", {**stack_env, "DATABASE_URL": dead}).start()
    yield node
    node.stop()


def test_health_is_503_unhealthy_when_postgres_is_unreachable(web_without_postgres) -> None:
    response = requests.get(web_without_postgres.url + "/health", timeout=20)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    body = response.json()
    assert body["status"] == "unhealthy" and body["database"] == "disconnected" and body["broker"] == "connected"
    assert requests.get(web_without_postgres.url + "/livez", timeout=10).status_code == 200


def test_posts_are_503_with_retry_after_when_postgres_is_unreachable(web_without_postgres) -> None:
    response = Api(web_without_postgres.url).post("/api/v1/chat", json={"message": "hi"})
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0


def test_health_is_503_when_redis_is_unreachable(stack_env) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    node = Web("web-no-redis", {**stack_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}).start()
    try:
        response = requests.get(node.url + "/health", timeout=20)
        assert response.status_code == 503
        assert response.json()["broker"] == "disconnected" and response.json()["database"] == "connected"
    finally:
        node.stop()


def test_posts_succeed_while_redis_is_down_and_the_sweeper_delivers_them(stack_env, make_api) -> None:
    """Decision: with Redis unreachable a POST still answers 202 (the message is committed in
    Postgres as `queued`); the sweeper enqueues it once a worker and Redis can be reached."""
    node = Web("web-no-redis-post", {**stack_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).start()
    user = make_api()
    try:
        response = Api(node.url, user.user).post("/api/v1/chat", json={"message": "Add task: survive redis"})
        assert response.status_code == 202, response.text
    finally:
        node.stop()
    answered = user.wait_answered(response.json()["message"]["id"])
    assert answered["status"] == "answered"
    assert [task["title"] for task in user.tasks()] == ["survive redis"]


def test_one_request_id_follows_a_message_from_post_to_reply(stack, api: Api) -> None:
    """Structured (JSON) log lines of the web request and of the worker job that answered it carry
    the same request id, with the user, conversation, message and Celery task ids."""
    import json
    import time
    import uuid

    request_id = f"trace-{uuid.uuid4().hex}"
    response = api.post("/api/v1/chat", json={"message": "Add task: traced"}, headers={"X-Request-ID": request_id})
    message_id = response.json()["message"]["id"]
    api.wait_answered(message_id)
    time.sleep(0.3)

    def lines(process) -> list[dict]:
        found = []
        for raw in process.log_text().splitlines():
            if request_id in raw and raw.startswith("{"):
                found.append(json.loads(raw))
        return found

    web_lines, worker_lines = lines(stack.web), lines(stack.worker)
    accepted = next(line for line in web_lines if line["event"] == "message_accepted")
    assert accepted["user"] == api.user and accepted["message_id"] == message_id
    assert accepted["conversation_id"] == response.json()["conversation_id"]
    answered = next(line for line in worker_lines if line["event"] == "answered")
    assert answered["message_id"] == message_id and answered["user"] == api.user and answered["task_id"]
    assert answered["conversation_id"] == accepted["conversation_id"]


def test_every_request_gets_an_access_line_in_the_combined_log_format(stack) -> None:
    """gunicorn's default access line (Apache's combined format), the same whether the answer is a
    page, an API error or a probe; quotes a client sent are escaped."""
    import re
    import time
    import uuid

    marker = uuid.uuid4().hex
    requests.get(f"{stack.url}/livez?probe={marker}", headers={"User-Agent": f'probe "{marker}"',
                                                                "Referer": "https://example.test/"}, timeout=5)
    requests.get(f"{stack.url}/api/v1/tasks?probe={marker}", timeout=5)
    combined = re.compile(r'(?P<host>\S+) - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
                          r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" '
                          r'"(?P<agent>(?:[^"\\]|\\.)*)"$')
    time.sleep(0.3)
    lines = [combined.match(line) for line in stack.web.log_text().splitlines() if marker in line]
    assert len(lines) == 2 and all(lines), stack.web.log_text()[-2000:]
    probe, tasks = lines
    assert probe["request"] == f"GET /livez?probe={marker} HTTP/1.1" and probe["status"] == "200"
    assert probe["referer"] == "https://example.test/" and probe["agent"] == f'probe \\"{marker}\\"'
    assert int(probe["bytes"]) > 0 and probe["host"] == "127.0.0.1"
    assert tasks["request"] == f"GET /api/v1/tasks?probe={marker} HTTP/1.1" and tasks["status"] == "401"
    assert tasks["referer"] == "-"


def test_every_response_names_its_node_and_carries_the_security_headers(stack, api: Api) -> None:
    """On a page, an API answer, a problem and a probe alike, each header once."""
    answers = [requests.get(stack.url + "/", timeout=5), api.get("/api/v1/tasks"),
               requests.get(stack.url + "/api/v1/tasks", timeout=5), requests.get(stack.url + "/livez", timeout=5)]
    assert [answer.status_code for answer in answers] == [200, 200, 401, 200]
    for answer in answers:
        for name in ("X-Served-By", "Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options",
                     "Referrer-Policy", "X-Request-ID"):
            assert len(answer.raw.headers.getlist(name)) == 1, (answer.url, name)
        assert answer.headers["X-Content-Type-Options"] == "nosniff" and answer.headers["X-Frame-Options"] == "DENY"


def test_a_process_groups_metrics_folder_goes_with_it_even_after_a_sigkill(stack_env) -> None:
    """prometheus-client's multiprocess folder: made by the process group's parent, removed when it
    exits; one left by a group that was killed is removed by the next process that starts."""
    web = Web("metrics-folder-web", stack_env).start()
    assert web.popen is not None
    made = metrics_support.FOLDER / f"web-{web.popen.pid}"
    assert made.is_dir()
    # Its own exit, however busy the machine (Web.stop's 2-s grace ends in a SIGKILL, which leaves
    # the folder: the case below).
    web.kill(signal.SIGQUIT, grace=30)
    assert web.popen.returncode == 0, web.log_text()[-2000:]
    assert not made.exists()
    killed = Worker("metrics-folder-worker", stack_env, concurrency=1).start()
    assert killed.popen is not None
    orphan = metrics_support.FOLDER / f"worker-{killed.popen.pid}"
    killed.kill(signal.SIGKILL)
    assert orphan.is_dir()  # nothing ran at its end
    after = Web("metrics-folder-web-after", stack_env).start()
    try:
        assert not orphan.exists()
    finally:
        after.stop()
