"""Real processes for tests: gunicorn and Celery workers on the test database, the stacks made of
them (`Stack`, `isolated_env` for a stack with a database and Redis database of its own), and an
HTTP client that speaks the API as a user would."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
import redis
import requests

from scripts.devstack import create_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TEST_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def token(user: str, *, secret: str = TEST_SECRET, **claims: Any) -> str:
    payload = {"sub": user, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


class Process:
    """One long-running process with its output in a log file under artifacts/."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = ARTIFACTS / "logs" / STREAM / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL, grace: float = 20) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class Web(Process):
    def __init__(self, name: str, env: Mapping[str, str], *, workers: int = 1) -> None:
        self.port = free_port()
        env = {**env, "PORT": str(self.port), "BIND_HOST": "127.0.0.1", "WEB_CONCURRENCY": str(workers),
               "SERVER_ID": name}
        super().__init__(name, [str(BIN / "gunicorn"), "web:create_app()", "--config", "gunicorn.conf.py"], env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        # SIGQUIT: gunicorn's quick shutdown; open event streams would still hold it up to its
        # graceful timeout, which a test need not wait for.
        self.kill(signal.SIGQUIT, grace=2)

    def start(self) -> Web:
        super().start()

        def live() -> bool:
            assert self.popen is not None and self.popen.poll() is None, self.log_text()[-3000:]
            try:
                return requests.get(self.url + "/livez", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(live, timeout=30, what=f"{self.name} to serve")
        return self


class Worker(Process):
    def __init__(self, name: str, env: Mapping[str, str], *, concurrency: int = 2) -> None:
        self.metrics_port = free_port()
        env = {**env, "WORKER_METRICS_PORT": str(self.metrics_port)}
        argv = [str(BIN / "celery"), "-A", "worker", "worker", "--loglevel=INFO", f"--concurrency={concurrency}",
                "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"]
        super().__init__(name, argv, env)

    def start(self) -> Worker:
        offset = len(self.log_text())
        super().start()

        def ready() -> bool:
            assert self.popen is not None and self.popen.poll() is None, self.log_text()[-3000:]
            return " ready." in self.log_text()[offset:]

        wait_until(ready, timeout=30, what=f"{self.name} to be ready")
        return self


class Beat(Process):
    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        schedule = ARTIFACTS / f"{name}-schedule"
        super().__init__(name, [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel=INFO",
                                "-s", str(schedule)], env)


class Api:
    """The API as one user sees it."""

    def __init__(self, base_url: str, user: str | None = None) -> None:
        self.base_url = base_url
        self.user = user or f"user-{uuid.uuid4().hex[:10]}"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token(self.user)}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 40)
        return self.http.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def chat(self, message: str, conversation_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"message": message}
        if conversation_id:
            body["conversation_id"] = conversation_id
        response = self.post("/api/v1/chat", json=body, **kwargs)
        assert response.status_code == 202, response.text
        return response.json()

    def wait_answered(self, message_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = self.get(f"/api/v1/messages/{message_id}", params={"wait": 10})
            assert response.status_code == 200, response.text
            message = response.json()
            if message["status"] in ("answered", "failed", "cancelled", "expired") or time.monotonic() > deadline:
                return message

    def ask(self, message: str, conversation_id: str | None = None) -> tuple[str, dict[str, Any]]:
        """Send a message and wait for its reply: (conversation id, the answered message)."""
        accepted = self.chat(message, conversation_id)
        answered = self.wait_answered(accepted["message"]["id"])
        assert answered["status"] == "answered", answered
        return accepted["conversation_id"], answered

    def tasks(self, status: str = "open") -> list[dict[str, Any]]:
        response = self.get("/api/v1/tasks", params={"status": status})
        assert response.status_code == 200, response.text
        return response.json()["items"]


class BackgroundPoll(threading.Thread):
    """One long-poll of a message (GET ?wait=) on a thread of its own: what it answered, and after
    how many seconds."""

    def __init__(self, api: Api, message_id: str, wait: int = 30) -> None:
        super().__init__(daemon=True)
        self.api, self.message_id, self.wait = api, message_id, wait
        self.answer: dict[str, Any] = {}
        self.seconds = float("nan")

    def run(self) -> None:
        started = time.monotonic()
        self.answer = self.api.get(f"/api/v1/messages/{self.message_id}", params={"wait": self.wait}).json()
        self.seconds = time.monotonic() - started


def subscribers(client: redis.Redis, channel: str) -> int:
    """How many connections Redis has subscribed to `channel` (PUBSUB NUMSUB)."""
    return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0)


class EventStream:
    """A minimal Server-Sent Events reader over a streaming requests response."""

    def __init__(self, api: Api, path: str, headers: dict[str, str] | None = None) -> None:
        self.response = api.http.get(api.base_url + path, headers=headers or {}, stream=True, timeout=(5, 30))
        assert self.response.status_code == 200, (self.response.status_code, self.response.text)
        self.lines = self.response.iter_lines(decode_unicode=True)
        self.comments = 0

    def next_event(self) -> dict[str, Any]:
        """The next event: {"id": str | None, "event": str, "data": parsed JSON}."""
        event: dict[str, Any] = {"id": None, "event": "message", "data": ""}
        for line in self.lines:
            if line == "":
                if event["data"]:
                    event["data"] = json.loads(event["data"])
                    return event
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                event["data"] += value
            elif field in ("id", "event"):
                event[field] = value
        raise EOFError("the stream ended")

    def until(self, predicate, limit: int = 50) -> list[dict[str, Any]]:
        """Events up to and including the first that satisfies `predicate`."""
        seen = []
        for _ in range(limit):
            seen.append(self.next_event())
            if predicate(seen[-1]):
                return seen
        raise AssertionError(f"no matching event in {limit}: {seen}")

    def close(self) -> None:
        self.response.close()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(2))
    return 0.0


# `make test` runs the suite as two streams (pytest-xdist, `-n 2 --dist loadfile`): all of one
# module's tests run in one stream, so a stack that only one module starts exists once, while the
# stacks several modules share (the session's, the fast tier's, the model stack) run in each stream
# and each needs resources of its own. STREAM is "" outside xdist, else "gw0", "gw1".
STREAM = os.environ.get("PYTEST_XDIST_WORKER", "")
STREAM_INDEX = int(STREAM.removeprefix("gw") or 0)
STREAMS = 2

# Each stack has a Redis database of its own (Redis has 16; database 0 is left to `make run`): one
# table, so that no two can collide. The second stream's shared stacks use the SECOND_STREAM's.
REDIS_DATABASES = {"session": 15, "unit": 14, "llm": 13, "control": 12, "llama": 11, "shutdown": 10, "deploy": 9,
                   "webhooks": 8, "caps": 7, "fair": 6}
SECOND_STREAM = {"session": 5, "unit": 4, "llm": 3}


def redis_database(url: str, name: str, stream: int = STREAM_INDEX) -> str:
    """`url` (a Redis URL, with or without a database number) naming stack `name`'s database in
    test stream `stream`."""
    if stream >= STREAMS:
        raise RuntimeError(f"the tests run as at most {STREAMS} streams (pytest -n {STREAMS}): Redis has no more "
                           "databases")
    number = SECOND_STREAM[name] if stream and name in SECOND_STREAM else REDIS_DATABASES[name]
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))


def database_name(name: str) -> str:
    """The Postgres database of stack `name` in this stream (created beside DATABASE_URL's)."""
    return f"chatq_{name}{f'_{STREAM}' if STREAM_INDEX else ''}"


def sign_in(page: Any, name: str) -> None:
    """The chat page's dev sign-in (a web node in dev mode): signed in as `name`, the app shown."""
    page.fill("#user-name", name)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")


def isolated_env(stack_env: dict[str, str], name: str, **settings: str) -> dict[str, str]:
    """An environment of its own beside the session's stack: a fresh database `chatq_<name>`, built
    by Alembic, and a flushed Redis database (tests/support.py's REDIS_DATABASES[name])."""
    redis_url = redis_database(stack_env["REDIS_URL"], name)
    redis.Redis.from_url(redis_url).flushdb()
    return {**stack_env, "DATABASE_URL": create_database(os.environ["DATABASE_URL"], database_name(name)),
            "REDIS_URL": redis_url, **settings}


class Stack:
    """One web node, one worker and the sweeper (beat), restartable; `prefix` names their logs."""

    def __init__(self, env: dict[str, str], prefix: str = "") -> None:
        self.env = env
        self.prefix = f"{prefix}-" if prefix else ""
        self.web = Web(f"{self.prefix}web", env)
        self.worker = Worker(f"{self.prefix}worker", env)
        self.beat = Beat(f"{self.prefix}beat", env)

    def start(self) -> Stack:
        self.web.start()
        self.worker.start()
        self.beat.start()
        return self

    def stop(self) -> None:
        for process in (self.web, self.worker, self.beat):
            process.stop()

    def restart(self) -> None:
        """Every process stopped and started again, as after a deploy; same port for clients."""
        self.stop()
        port = self.web.port
        self.web = Web(f"{self.prefix}web", self.env)
        self.web.port = port
        self.web.env["PORT"] = str(port)
        self.worker = Worker(f"{self.prefix}worker", self.env)
        self.beat = Beat(f"{self.prefix}beat", self.env)
        self.start()

    @property
    def url(self) -> str:
        return self.web.url
