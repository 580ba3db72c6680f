"""A long-poll is woken by the notification of its answer, not by its periodic re-check; and a web
process listens only to the channels its own requests wait on (web/waiting/wakeups.py)."""

from __future__ import annotations

import redis

from tests.support import Api, BackgroundPoll, Stack, Web, Worker, subscribers, wait_until


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
        poll = BackgroundPoll(api, message_id)
        poll.start()
        wait_until(lambda: subscribers(broker, channel) == 1, what="the waiting process to subscribe")
        stack.worker = Worker("worker", stack.env).start()
        poll.join(timeout=40)
        assert poll.answer["status"] == "answered"
        assert poll.seconds < 30  # woken before the wait ran out, with the answer
        # ... which the notification carried (the worker's, from its commit): exactly what a read shows.
        read = api.get(f"/api/v1/messages/{message_id}")
        assert poll.answer == read.json() and poll.answer["reply"]["tool_calls"][0]["name"] == "add_task"
        # The wait is over: its process no longer listens to that channel.
        wait_until(lambda: subscribers(broker, channel) == 0, what="the process to unsubscribe")
    finally:
        if stack.worker.popen is None or stack.worker.popen.poll() is not None:
            stack.worker = Worker("worker", stack.env).start()
        web.stop()
