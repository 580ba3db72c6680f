"""The seed scenario, end to end over HTTP against gunicorn and a separate Celery worker."""

from __future__ import annotations

import threading

from tests.support import Api


def test_add_then_restart_everything_then_recall(stack, api: Api) -> None:
    conversation_id, first = api.ask("Add task: buy milk")
    assert "buy milk" in first["reply"]["content"]
    assert [task["title"] for task in api.tasks()] == ["buy milk"]

    stack.restart()

    _, second = api.ask("What did I just add?", conversation_id)
    assert "buy milk" in second["reply"]["content"]
    assert second["reply"]["seq"] > second["seq"] > first["reply"]["seq"]


def test_three_users_at_once_see_only_their_own_tasks(make_api) -> None:
    users = {name: make_api() for name in "ABC"}
    conversations: dict[str, str] = {}
    replies: dict[str, str] = {}

    def chat(name: str) -> None:  # asserted below: an assert in a thread would only end the thread
        conversations[name], answered = users[name].ask(f"Add task {name}")
        replies[name] = answered["reply"]["content"]

    threads = [threading.Thread(target=chat, args=(name,)) for name in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(conversations.values())) == 3
    assert all(f"task {name}" in replies[name] for name in users), replies
    for name, user in users.items():
        assert [task["title"] for task in user.tasks()] == [f"task {name}"]
