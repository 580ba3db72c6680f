"""A worker told to stop in the middle of a long generation (worker/shutdown.py): signalled as a
whole process group (systemd's default, supervisord's stopasgroup) or as its main process only
(docker stop, Kubernetes), it gives the message back when its grace runs out, and another worker
answers it at once — not after the conversation's lease (40 s here) runs out."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import psycopg
import pytest

from scripts.devstack import libpq_url
from tests.support import ARTIFACTS, Api, Stack, Worker, isolated_env, wait_until
from worker.engine.builtin import FALLBACK

LEASE = 40


@pytest.fixture(scope="module")
def shutdown_stack(stack_env):
    env = isolated_env(stack_env, "shutdown", ENGINE_STREAM_DELAY_MS="300",
                       LEASE_SECONDS=str(LEASE), WORKER_SHUTDOWN_GRACE_SECONDS="2")
    running = Stack(env, "shutdown").start()
    yield SimpleNamespace(stack=running, env=env)
    running.stop()


@pytest.mark.parametrize("signalled", ["process group", "main process"])
def test_a_stopping_worker_gives_a_long_generation_back_and_another_answers_it_at_once(
    shutdown_stack, signalled: str
) -> None:
    user = Api(shutdown_stack.stack.url)
    leaving = shutdown_stack.stack.worker
    message_id = user.chat("hello")["message"]["id"]  # FALLBACK, a word every 300 ms: about 8 s
    wait_until(lambda: user.get(f"/api/v1/messages/{message_id}").json()["status"] == "processing",
               timeout=20, what="the generation to start")
    staying = Worker(f"shutdown-worker-b-{signalled.split()[0]}", shutdown_stack.env).start()
    offset = len(leaving.log_text())
    stopped_at = time.monotonic()
    assert leaving.popen is not None
    if signalled == "process group":
        os.killpg(leaving.popen.pid, signal.SIGTERM)
    else:
        os.kill(leaving.popen.pid, signal.SIGTERM)
    try:
        answered = user.wait_answered(message_id, timeout=LEASE)
        answered_after = time.monotonic() - stopped_at
        assert leaving.popen.wait(timeout=20) == 0  # a warm shutdown, not a crash
    finally:
        shutdown_stack.stack.worker = staying  # the next test's leaving worker
    assert answered["status"] == "answered" and answered["reply"]["content"] == FALLBACK
    assert answered_after < LEASE / 2, answered_after  # given back, not left to the lease
    log = leaving.log_text()[offset:]
    assert "generation_given_back" in log and "WorkerLostError" not in log
    with psycopg.connect(libpq_url(shutdown_stack.env["DATABASE_URL"])) as connection:
        attempts = connection.execute("SELECT attempts FROM messages WHERE id = %s", (message_id,)).fetchone()[0]
    assert attempts == 2
    with (ARTIFACTS / "fault-figures.txt").open("a") as figures:
        figures.write(f"worker stopped ({signalled}) mid-generation: answered by another worker "
                      f"{answered_after:.1f} s after the SIGTERM (grace 2 s, then its own 8 s generation; "
                      f"lease {LEASE} s)\n")
