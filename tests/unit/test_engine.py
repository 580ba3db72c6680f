"""The built-in assistant, called as the worker calls it — the question, the history before it, the
user's real todo list in Postgres — but in this process: a phrase changed is a phrase tested in
seconds. tests/test_assistant.py proves the same table through the real processes."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.unit.support import NO_QUOTAS
from web.accept import accept_message


@pytest.fixture(scope="module")
def engine_parts():
    # Importing worker/ makes prometheus-client's directory for a worker's process group and puts it
    # in this process's environment; the stacks later tests start leave it out (tests/conftest.py).
    from worker.engine import BuiltinEngine, History, ReplyRequest, TodoTools

    return BuiltinEngine(), History, ReplyRequest, TodoTools


class Conversation:
    """A conversation run in-process: each question answered from the history before it."""

    def __init__(self, parts, db) -> None:
        self.engine, self.history_class, self.request_class, self.tools_class = parts
        self.db, self.user, self.id = db, f"unit-{uuid.uuid4().hex[:10]}", None
        self.rows: list[tuple[int, str, str, str | None]] = []

    def say(self, text: str) -> str:
        """Store the question as web does, answer it as the worker does (the reply itself is kept
        in memory: what the engine reads is the history it is handed)."""
        with Session(self.db) as session:
            accepted = accept_message(session, user=self.user, content=text, request_id="unit", idempotency=None,
                                      conversation_id=self.id, settings=NO_QUOTAS)
        self.id, message_id = accepted.body["conversation_id"], accepted.message_id
        tools = self.tools_class(self.db, self.user, message_id)
        request = self.request_class(user=self.user, conversation_id=self.id, message_id=message_id, content=text,
                                     history=self.history_class(list(self.rows)), tools=tools)
        reply = self.engine.reply(request)
        self.rows.append((len(self.rows) + 1, "user", text, None))
        self.rows.append((len(self.rows) + 1, "assistant", reply.content, json.dumps(reply.tool_calls)))
        return reply.content

    def tasks(self, status: str = "open") -> list[dict[str, Any]]:
        return self.tools_class(self.db, self.user, uuid.uuid4()).list_tasks(status)["tasks"]


@pytest.fixture
def chat(engine_parts, autocommit) -> Conversation:
    return Conversation(engine_parts, autocommit)


@pytest.mark.parametrize(("phrase", "title"), [
    ("Add task: buy milk", "buy milk"), ("add buy milk", "buy milk"), ("remind me to buy milk", "buy milk"),
    ("ADD TASK: Buy Milk", "Buy Milk"), ("Add task A", "task A"), ("please add call mom to my list", "call mom"),
])
def test_add(chat: Conversation, phrase: str, title: str) -> None:
    assert title in chat.say(phrase)
    assert [task["title"] for task in chat.tasks()] == [title]


@pytest.mark.parametrize("question", ["what did I just add?", "What did I add?", "WHAT DID I JUST ADD"])
def test_what_did_i_just_add_reads_the_history(chat: Conversation, question: str) -> None:
    chat.say("Add task: buy milk")
    chat.say("remind me to water the plants")
    chat.say("show my tasks")
    reply = chat.say(question)
    assert "water the plants" in reply and "buy milk" not in reply


@pytest.mark.parametrize("phrase", ["show my tasks", "list tasks", "what's on my list?"])
def test_list_numbers_the_open_tasks(chat: Conversation, phrase: str) -> None:
    chat.say("add buy milk")
    chat.say("add call mom")
    reply = chat.say(phrase)
    assert "1." in reply and "2." in reply and reply.index("buy milk") < reply.index("call mom")


@pytest.mark.parametrize("phrase", ["done 1", "complete buy milk", "mark it as done"])
def test_complete(chat: Conversation, phrase: str) -> None:
    chat.say("add buy milk")
    chat.say(phrase)
    assert chat.tasks() == [] and [task["title"] for task in chat.tasks("done")] == ["buy milk"]


@pytest.mark.parametrize("phrase", ["delete buy milk", "remove task 1"])
def test_delete(chat: Conversation, phrase: str) -> None:
    chat.say("add buy milk")
    chat.say(phrase)
    assert chat.tasks("all") == []


def test_rename(chat: Conversation) -> None:
    chat.say("add buy milk")
    chat.say("rename 1 to buy oat milk")
    assert [task["title"] for task in chat.tasks()] == ["buy oat milk"]


@pytest.mark.parametrize("phrase", ["help", "what's the weather like?"])
def test_help_and_anything_else_say_what_it_can_do(chat: Conversation, phrase: str) -> None:
    reply = chat.say(phrase).lower()
    assert "add" in reply and "list" in reply


@pytest.mark.parametrize("phrase", ["done 7", "delete the moon", "rename 9 to nothing"])
def test_a_task_it_cannot_find_gets_a_clear_answer(chat: Conversation, phrase: str) -> None:
    chat.say("add buy milk")
    reply = chat.say(phrase)
    assert reply and [task["title"] for task in chat.tasks()] == ["buy milk"]
