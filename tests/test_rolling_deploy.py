"""A deploy nobody notices: two web nodes behind nginx, three workers and the sweeper, 20 users
chatting, while every process is restarted one at a time — two workers signalled as a process
group (systemd's default, supervisord's stopasgroup), the third as a single process (docker stop,
Kubernetes). Nothing is lost, duplicated or out of order; a client that retries with
its Idempotency-Key never keeps a 5xx; no reply takes longer than 10 s. The settings are the
defaults (LEASE_SECONDS, SWEEP_INTERVAL_SECONDS, WORKER_SHUTDOWN_GRACE_SECONDS)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

import psycopg
import pytest
import requests

from scripts.cluster import nginx_binary, render_nginx_conf
from scripts.devstack import libpq_url
from tests.faults.audit import audit, wait_terminal
from tests.support import ARTIFACTS, Api, Beat, Process, Web, Worker, free_port, isolated_env, wait_until

pytestmark = pytest.mark.cluster
USERS = 20
SLOWEST_REPLY_SECONDS = 10.0


class Chatter(threading.Thread):
    """One user: a message, its reply, the next message ... in one conversation, as a client that
    retries a POST with the same Idempotency-Key and re-asks a long-poll after any error."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.api, self.stop = Api(url), stop
        self.accepted: list[str] = []
        self.unanswered_5xx = 0  # a POST whose every retry failed: would be an error a user keeps
        self.conversation_id: str | None = None

    def _retrying(self, call: Callable[[], requests.Response], tries: int = 40) -> requests.Response | None:
        for _ in range(tries):
            try:
                response = call()
                if response.status_code < 500 and response.status_code != 429:
                    return response
            except requests.RequestException:
                pass
            time.sleep(0.25)
        return None

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key, body = str(uuid.uuid4()), {"message": f"Add task: deploy {n}"}
            if self.conversation_id:
                body["conversation_id"] = self.conversation_id
            response = self._retrying(partial(self.api.post, "/api/v1/chat", json=body, timeout=10,
                                              headers={"Idempotency-Key": key}))
            if response is None or response.status_code != 202:
                self.unanswered_5xx += 1
                continue
            accepted = response.json()
            self.conversation_id = accepted["conversation_id"]
            message_id = accepted["message"]["id"]
            self.accepted.append(message_id)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                polled = self._retrying(partial(self.api.get, f"/api/v1/messages/{message_id}",
                                                params={"wait": 5}, timeout=15))
                if polled is not None and polled.json().get("status") in ("answered", "failed"):
                    break
            n += 1


@pytest.fixture(scope="module")
def deployment(stack_env):
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("no nginx here: `make test` installs Debian's nginx where apt-get can")
    defaults = {key: value for key, value in stack_env.items()
                if key not in ("LEASE_SECONDS", "SWEEP_INTERVAL_SECONDS")}
    env = isolated_env(defaults, "deploy", WEB_CONCURRENCY="1")
    webs = [Web(f"deploy-web-{n}", env).start() for n in (1, 2)]
    workers = [Worker(f"deploy-worker-{n}", env).start() for n in (1, 2, 3)]
    beat = Beat("deploy-beat", env).start()
    port = free_port()
    folder = ARTIFACTS / "deploy-nginx"
    conf = render_nginx_conf([web.port for web in webs], port, folder)
    proxy = Process("deploy-nginx", [nginx, "-c", str(conf), "-p", str(folder), "-g", "daemon off;"], env).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _serves(url), timeout=15, what="nginx")
    state = {"url": url, "env": env, "webs": webs, "workers": workers, "beat": beat}
    yield state
    proxy.kill(signal.SIGTERM)
    for process in [*state["webs"], *state["workers"], state["beat"]]:
        process.stop()


def _serves(url: str) -> bool:
    try:
        return requests.get(url + "/livez", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _restart_web(state, index: int) -> None:
    old = state["webs"][index]
    old.kill(signal.SIGTERM, grace=40)  # drains: waits answered, idle connections closed
    new = Web(old.name, state["env"])
    new.port = old.port
    new.env["PORT"] = str(old.port)
    state["webs"][index] = new.start()


def _restart_worker(state, index: int, *, whole_group: bool) -> None:
    old = state["workers"][index]
    assert old.popen is not None
    if whole_group:
        os.killpg(old.popen.pid, signal.SIGTERM)
    else:
        os.kill(old.popen.pid, signal.SIGTERM)
    # The replacement starts while the old one finishes (as a rolling update surges one pod).
    state["workers"][index] = Worker(old.name, state["env"]).start()
    assert old.popen.wait(timeout=60) == 0, old.log_text()[-2000:]  # a warm shutdown


def test_every_process_restarted_one_at_a_time_under_load(deployment) -> None:
    stop = threading.Event()
    users = [Chatter(deployment["url"], stop) for _ in range(USERS)]
    for user in users:
        user.start()
    time.sleep(3)
    steps = [("web 1", lambda: _restart_web(deployment, 0)), ("web 2", lambda: _restart_web(deployment, 1))]
    # Each process once, as a rolling update does: two workers told to stop as a platform does (the
    # whole process group), the third through its main process only (its pool is told by Celery).
    steps += [(f"worker {n + 1} (group)", lambda n=n: _restart_worker(deployment, n, whole_group=True))
              for n in range(2)]
    steps += [("beat", lambda: _restart_beat(deployment))]
    steps += [("worker 3 (main process)", lambda: _restart_worker(deployment, 2, whole_group=False))]
    for _name, step in steps:
        step()
        time.sleep(1.5)
    stop.set()
    for user in users:
        user.join(timeout=90)

    accepted = [message_id for user in users for message_id in user.accepted]
    dsn = libpq_url(deployment["env"]["DATABASE_URL"])
    wait_terminal(lambda: psycopg.connect(dsn, autocommit=True), accepted, timeout=60)
    with psycopg.connect(dsn, autocommit=True) as connection:
        figures = audit(connection, "rolling-deploy", sent=len(accepted), ids=accepted)
        latencies = sorted(row[0] for row in connection.execute(
            "SELECT extract(epoch FROM r.created_at - q.created_at) FROM messages q "
            "JOIN messages r ON r.reply_to_id = q.id WHERE q.id = ANY(%s::uuid[])", (accepted,)))
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    figures.extra = (f"users={USERS} restarts={len(steps)} reply_latency_p50={p50:.2f}s p99={p99:.2f}s "
                     f"max={latencies[-1]:.2f}s 5xx_kept={sum(u.unanswered_5xx for u in users)}")
    figures.report().assert_clean()
    assert len(accepted) > 10 * USERS  # the load went on throughout
    assert sum(user.unanswered_5xx for user in users) == 0
    assert latencies[-1] < SLOWEST_REPLY_SECONDS, figures.line()


def _restart_beat(state) -> None:
    state["beat"].stop()
    state["beat"] = Beat("deploy-beat", state["env"]).start()
