"""Webhooks (contract: "Webhooks"), on real processes: a web node, a worker, a webhooks worker
(`-Q webhooks`), the sweeper, and receivers on loopback (WEBHOOK_ALLOW_PRIVATE here) that verify
every call with the Standard Webhooks spec's own package — not with our signer."""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from standardwebhooks.webhooks import Webhook

from tests.support import ARTIFACTS, Api, Stack, Web, Worker, free_port, isolated_env, wait_until


class WebhooksWorker(Worker):
    """`celery -A worker worker -Q webhooks`, as the Procfile's `webhooks` process."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        super().__init__(name, env)
        self.argv += ["-Q", "webhooks"]


class Receiver:
    """An app's server: answers each call as scripted (status, delay) and keeps what it got."""

    def __init__(self, port: int | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.script: list[tuple[int, float]] = []  # (status, seconds to wait first), then 200s
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    status, delay = receiver.script.pop(0) if receiver.script else (200, 0.0)
                    receiver.calls.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                           "at": time.monotonic(), "wall": time.time(), "status": status})
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/chatq"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every call's payload, each verified (signature and timestamp) by standardwebhooks."""
        with self.lock:
            calls = list(self.calls)
        return [Webhook(secret).verify(call["body"], call["headers"]) for call in calls]


@pytest.fixture(scope="module")
def hooks(stack_env):
    env = isolated_env(stack_env, "webhooks", WEBHOOK_ALLOW_PRIVATE="1",
                       WEBHOOK_BACKOFF_BASE_SECONDS="1", WEBHOOK_BACKOFF_CAP_SECONDS="8", WEBHOOK_TIMEOUT_SECONDS="15")
    running = Stack(env, "webhooks").start()
    deliverer = WebhooksWorker("webhooks-deliverer", env).start()
    state = SimpleNamespace(stack=running, env=env, deliverer=deliverer)
    yield state
    state.deliverer.stop()
    running.stop()


@pytest.fixture
def user(hooks) -> Any:
    """A fresh user; its webhooks are deleted after the test, so that no retry of one test's events
    can reach another test's receiver (a port freed here may be handed out again there)."""
    api = Api(hooks.stack.url)
    yield api
    cleaner = Api(hooks.stack.url, api.user)  # a connection of its own: the test's may have gone idle
    for webhook in cleaner.get("/api/v1/webhooks").json()["items"]:
        cleaner.request("DELETE", f"/api/v1/webhooks/{webhook['id']}")


def register(user: Api, url: str, **body: Any) -> dict[str, Any]:
    response = user.post("/api/v1/webhooks", json={"url": url, **body})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_reply_is_pushed_signed_and_verifies_with_the_specs_own_package(hooks, user: Api) -> None:
    receiver = Receiver()
    try:
        webhook = register(user, receiver.url)
        assert webhook["secret"].startswith("whsec_") and webhook["events"] == sorted(
            ["message.answered", "message.failed", "message.cancelled", "message.expired"])
        assert "secret" not in user.get("/api/v1/webhooks").json()["items"][0]  # shown once
        _, answered = user.ask("Add task: pushed to my server")
        wait_until(lambda: receiver.calls, timeout=20, what="the webhook")
        [event] = receiver.verified(webhook["secret"])
    finally:
        receiver.close()
    assert event["type"] == "message.answered" and event["id"] == receiver.calls[0]["headers"]["webhook-id"]
    assert event["data"]["id"] == answered["id"] and event["data"]["status"] == "answered"
    assert event["data"]["reply"]["content"] == answered["reply"]["content"]
    # The worker records the try once the receiver has answered: a moment after the receiver saw it.
    deliveries = wait_until(lambda: _settled_deliveries(user, webhook["id"]), timeout=10, what="the delivery recorded")
    assert [(d["type"], d["state"], len(d["tries"])) for d in deliveries] == [("message.answered", "delivered", 1)]
    assert deliveries[0]["tries"][0]["status_code"] == 200


def _settled_deliveries(user: Api, webhook_id: str) -> list[dict] | None:
    deliveries = user.get(f"/api/v1/webhooks/{webhook_id}/deliveries").json()["items"]
    return deliveries if deliveries and all(d["state"] != "pending" for d in deliveries) else None


def test_a_receiver_down_for_30_s_then_up_gets_every_event_intact(hooks, user: Api) -> None:
    port = free_port()
    webhook = register(user, f"http://127.0.0.1:{port}/hooks/chatq")  # nothing listens there yet
    conversation_id, first = user.ask("Add task: while you were away 1")
    answered = [first] + [user.ask(f"Add task: while you were away {n}", conversation_id)[1] for n in (2, 3)]
    time.sleep(30)
    user = Api(hooks.stack.url, user.user)  # the server closes a connection idle for 30 s: a new one
    tries = user.get(f"/api/v1/webhooks/{webhook['id']}/deliveries").json()["items"]
    assert all(d["state"] == "pending" and d["tries"] and d["tries"][-1]["error"] for d in tries)
    receiver = Receiver(port)
    try:
        wait_until(lambda: len({c["headers"]["webhook-id"] for c in receiver.calls}) >= 3, timeout=30,
                   what="every event after the receiver came back")
        events = receiver.verified(webhook["secret"])
    finally:
        receiver.close()
    by_message = {event["data"]["id"]: event for event in events}
    assert set(by_message) == {message["id"] for message in answered}
    for message in answered:
        assert by_message[message["id"]]["data"]["reply"]["content"] == message["reply"]["content"]
    # The same webhook-id on every try of one event: retries can be dropped by the receiver.
    ids = {event["id"] for event in events}
    assert len(ids) == 3


def test_500s_are_retried_in_order_with_growing_delays(hooks, user: Api) -> None:
    receiver = Receiver()
    receiver.script = [(500, 0.0)] * 4
    try:
        webhook = register(user, receiver.url, events=["message.answered"])
        user.ask("hello")
        wait_until(lambda: len(receiver.calls) >= 5, timeout=60, what="four 500s and a 200")
        events = receiver.verified(webhook["secret"])
    finally:
        receiver.close()
    assert [call["status"] for call in receiver.calls] == [500, 500, 500, 500, 200]
    assert len({event["id"] for event in events}) == 1 and len({json.dumps(e) for e in events}) == 1
    gaps = [later["at"] - earlier["at"] for earlier, later in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert gaps[-1] > gaps[0] and gaps[-1] >= max(gaps[:-1]) / 2, gaps  # doubling, with jitter
    [delivery] = user.get(f"/api/v1/webhooks/{webhook['id']}/deliveries").json()["items"]
    recorded = delivery["tries"]
    assert [t["status_code"] for t in recorded] == [500, 500, 500, 500, 200] and delivery["state"] == "delivered"
    times = [datetime.fromisoformat(t["attempted_at"].replace("Z", "+00:00")) for t in recorded]
    assert times == sorted(times)
    with (ARTIFACTS / "fault-figures.txt").open("a") as figures:
        figures.write("webhook retries after 500s: gaps " + ", ".join(f"{gap:.1f}s" for gap in gaps) + "\n")


def test_a_webhooks_worker_killed_mid_delivery_loses_nothing(hooks, user: Api) -> None:
    receiver = Receiver()
    receiver.script = [(200, 4.0)]  # the first call hangs while its worker is killed
    try:
        webhook = register(user, receiver.url)
        _, answered = user.ask("Add task: survive a kill")
        wait_until(lambda: receiver.calls, timeout=20, what="the first call")
        children = psutil.Process(hooks.deliverer.popen.pid).children()
        for child in children:  # the pool process running the delivery
            child.send_signal(signal.SIGKILL)
        wait_until(lambda: len(receiver.calls) >= 2, timeout=60, what="the delivery again")
        events = receiver.verified(webhook["secret"])
    finally:
        receiver.close()
    assert {event["data"]["id"] for event in events} == {answered["id"]}
    assert len({event["id"] for event in events}) == 1  # the same webhook-id, at least once


def test_a_slow_receiver_does_not_delay_replies(hooks, user: Api) -> None:
    receiver = Receiver()
    receiver.script = [(200, 10.0)] * 10
    try:
        register(user, receiver.url)
        conversation_id, _ = user.ask("Add task: slow 0")
        for n in range(1, 5):
            _, answered = user.ask(f"Add task: slow {n}", conversation_id)
            assert answered["status"] == "answered"
        # Five replies answered while the receiver, 10 s a call, has finished at most one call.
        assert sum(1 for call in receiver.calls if time.monotonic() - call["at"] > 10) <= 1
    finally:
        receiver.close()


def test_private_and_metadata_addresses_are_refused_unless_allowed(hooks) -> None:
    strict = Web("webhooks-web-strict", {**hooks.env, "WEBHOOK_ALLOW_PRIVATE": ""}).start()
    try:
        user = Api(strict.url)
        for url, why in [("https://127.0.0.1/hook", "loopback"), ("https://10.1.2.3/hook", "private"),
                         ("https://169.254.169.254/latest/meta-data", "metadata"),
                         ("https://localhost/hook", "loopback"), ("http://example.com/hook", "https"),
                         ("https://[::1]/hook", "loopback")]:
            response = user.post("/api/v1/webhooks", json={"url": url})
            assert response.status_code == 422 and why in response.json()["detail"], (url, response.text)
    finally:
        strict.stop()


def test_another_users_webhooks_are_404(hooks) -> None:
    owner, other = Api(hooks.stack.url), Api(hooks.stack.url)
    webhook = register(owner, "http://127.0.0.1:9/never")
    assert other.get(f"/api/v1/webhooks/{webhook['id']}/deliveries").status_code == 404
    assert other.request("DELETE", f"/api/v1/webhooks/{webhook['id']}").status_code == 404
    assert other.get("/api/v1/webhooks").json()["items"] == []
    assert owner.request("DELETE", f"/api/v1/webhooks/{webhook['id']}").status_code == 204
    assert owner.get(f"/api/v1/webhooks/{webhook['id']}/deliveries").status_code == 404


def test_a_cancel_is_pushed_from_the_transaction_that_commits_it(hooks, user: Api) -> None:
    receiver = Receiver()
    try:
        webhook = register(user, receiver.url, events=["message.cancelled"])
        hooks.stack.worker.stop()  # the question stays queued (and no sweep runs: workers run it)
        try:
            message_id = user.chat("never answered")["message"]["id"]
            assert user.post(f"/api/v1/messages/{message_id}/cancel").status_code == 200
        finally:
            hooks.stack.worker = Worker("webhooks-worker", hooks.env).start()
        wait_until(lambda: receiver.calls, timeout=20, what="the cancel's webhook")
        [event] = receiver.verified(webhook["secret"])
    finally:
        receiver.close()
    assert event["type"] == "message.cancelled" and event["data"]["id"] == message_id
    assert event["data"]["status"] == "cancelled"



def test_response_events_in_openais_shape_verify_with_the_sdks_unwrap(hooks, user: Api) -> None:
    """An endpoint that asks for `response.*` events gets OpenAI's event shape (and no message.*
    ones), which OpenAI's own SDK verifies and parses with the endpoint's secret."""
    import openai

    receiver = Receiver()
    try:
        webhook = register(user, receiver.url, events=["response.completed", "response.cancelled"])
        key = user.post("/api/v1/keys", json={"name": "hooks"}).json()["key"]
        client = openai.OpenAI(base_url=hooks.stack.url + "/v1", api_key=key, max_retries=0, timeout=30,
                               webhook_secret=webhook["secret"])
        completed = client.responses.create(model="chatq-assistant", input="Add task: call the plumber")
        hooks.stack.worker.stop()  # the next one stays queued, and is cancelled there
        try:
            queued = client.responses.create(model="chatq-assistant", input="help", background=True)
            assert client.responses.cancel(queued.id).status == "cancelled"
        finally:
            hooks.stack.worker = Worker("webhooks-worker", hooks.env).start()
        wait_until(lambda: len(receiver.calls) >= 2, timeout=20, what="both webhooks")
        time.sleep(1)  # and nothing more: no message.* event goes to this endpoint
        events = [client.webhooks.unwrap(call["body"].decode(), call["headers"]) for call in receiver.calls]
    finally:
        receiver.close()
    assert sorted((event.type, event.data.id) for event in events) == sorted(
        [("response.completed", completed.id), ("response.cancelled", queued.id)])
    assert all(event.object == "event" and event.id.startswith("evt_") for event in events)
    with pytest.raises(openai.InvalidWebhookSignatureError):  # a body changed on the way does not verify
        client.webhooks.unwrap(receiver.calls[0]["body"].decode().replace("resp_", "resp_x"),
                               receiver.calls[0]["headers"])
