"""A long-poll is woken by the notification of its answer, not by its periodic re-check; and a web
process listens only to the channels its own requests wait on (web/wakeups.py)."""

from __future__ import annotations

import threading
import time

import redis

from tests.conftest import Stack
from tests.support import Api, Web, Worker, wait_until


def test_a_long_poll_is_woken_by_the_answer_and_subscribes_only_while_it_waits(stack: Stack, stack_env) -> None:
    # The re-check interval is longer than the wait itself: only the notification can end the wait
    # with the answer in it.
    web = Web("wakeups-web", {**stack_env, "RECHECK_SECONDS": "60"}).start()
    broker = redis.Redis.from_url(stack_env["REDIS_URL"])
    try:
        api = Api(web.url)
        stack.worker.stop()  # the message stays queued until the poll waits
        message_id = api.chat("Add task: wake me by notification")["message"]["id"]
        channel = f"chatq:message:{message_id}"
        result: dict = {}

        def poll() -> None:
            started = time.monotonic()
            result.update(api.get(f"/api/v1/messages/{message_id}", params={"wait": 30}).json())
            result["seconds"] = time.monotonic() - started

        poller = threading.Thread(target=poll)
        poller.start()
        wait_until(lambda: dict(broker.pubsub_numsub(channel)).get(channel.encode(), 0) == 1,
                   what="the waiting process to subscribe to the message's channel")
        stack.worker = Worker("worker", stack.env).start()
        poller.join(timeout=40)
        assert result["status"] == "answered"
        assert result["seconds"] < 30  # woken before the wait ran out, with the answer
        # The wait is over: its process no longer listens to that channel.
        wait_until(lambda: dict(broker.pubsub_numsub(channel)).get(channel.encode(), 0) == 0,
                   what="the process to unsubscribe")
    finally:
        if stack.worker.popen is None or stack.worker.popen.poll() is not None:
            stack.worker = Worker("worker", stack.env).start()
        web.stop()
