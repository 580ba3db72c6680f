"""The scale test, end to end: three web nodes behind a real nginx, workers added and removed while
messages flow, a web node SIGKILLed mid-conversation — one conversation carries on, nothing lost."""

from __future__ import annotations

import signal
import uuid

import psycopg
import pytest
import requests

from scripts.cluster import nginx_binary, render_nginx_conf
from tests.faults.audit import audit, wait_terminal
from tests.support import ARTIFACTS, Api, Process, Web, Worker, free_port, sign_in, wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(stack_env):
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("no nginx here: `make test` installs Debian's nginx where apt-get can")
    env = {**stack_env, "CHATQ_DEV": "1", "WEB_CONCURRENCY": "1"}
    webs = [Web(f"node{i}", env).start() for i in range(1, 4)]
    port = free_port()
    folder = ARTIFACTS / "cluster-nginx"
    conf = render_nginx_conf([web.port for web in webs], port, folder)
    proxy = Process("nginx", [nginx, "-c", str(conf), "-p", str(folder), "-g", "daemon off;"], env).start()
    url = f"http://127.0.0.1:{port}"
    def serving() -> bool:
        try:
            return requests.get(url + "/livez", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(serving, timeout=15, what="nginx")
    yield {"url": url, "webs": webs, "env": env}
    proxy.kill(signal.SIGTERM)  # nginx: fast shutdown (SIGQUIT would wait out open connections)
    for web in webs:
        web.stop()


def test_one_conversation_across_nodes_survives_a_node_and_worker_churn(cluster, stack, db) -> None:
    user = Api(cluster["url"])
    served_by: list[str] = []

    def send(text: str, conversation_id: str | None) -> dict:
        """As a client should: with an Idempotency-Key, and again on a 502 (a node that died after
        nginx passed it the request, which nginx does not send a POST on to another node)."""
        body = {"message": text, **({"conversation_id": conversation_id} if conversation_id else {})}
        key = {"Idempotency-Key": str(uuid.uuid4())}
        for _ in range(5):
            response = user.post("/api/v1/chat", json=body, headers=key)
            if response.status_code != 502:
                break
        assert response.status_code == 202, response.text
        served_by.append(response.headers["X-Served-By"])
        return response.json()

    first = send("Add task: across nodes 0", None)
    conversation_id = first["conversation_id"]
    accepted = [first["message"]["id"]]
    for n in range(1, 6):
        accepted.append(send(f"Add task: across nodes {n}", conversation_id)["message"]["id"])
    assert len(set(served_by)) == 3, served_by  # consecutive requests landed on every node

    extra = Worker("cluster-worker-added", cluster["env"]).start()  # a worker joins while messages flow
    try:
        cluster["webs"][1].kill(signal.SIGKILL)                   # a web node dies mid-conversation
        for n in range(6, 12):
            accepted.append(send(f"Add task: across nodes {n}", conversation_id)["message"]["id"])
    finally:
        extra.kill(signal.SIGKILL)                                # and a worker leaves, abruptly
    for n in range(12, 15):
        accepted.append(send(f"Add task: across nodes {n}", conversation_id)["message"]["id"])
    assert "node2" not in served_by[6:]

    wait_terminal(lambda: psycopg.connect(db.info.dsn, autocommit=True), accepted, timeout=90)
    figures = audit(db, "cluster-churn", sent=15, ids=accepted)
    figures.extra = f"nodes={sorted(set(served_by))}"
    figures.report().assert_clean()
    titles = {task["title"] for task in user.tasks()}
    assert titles == {f"across nodes {n}" for n in range(15)}


def test_the_chat_page_works_through_the_load_balancer(cluster, browser) -> None:
    page = browser.new_page()
    page.goto(cluster["url"] + "/")
    sign_in(page, "balanced-user")
    for text in ("Add task: balanced", "what did I just add?"):
        page.fill("#message", text)
        page.press("#message", "Enter")
    page.locator(".message.assistant").nth(1).wait_for()
    assert "balanced" in page.locator(".message.assistant").nth(1).inner_text()
    page.reload()
    page.locator(".message.assistant").nth(1).wait_for()
