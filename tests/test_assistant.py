"""Every row of the contract's assistant table, in its phrasings, against the running stack."""

from __future__ import annotations

import pytest

from tests.support import Api


def _reply(api: Api, text: str, conversation_id: str | None = None) -> tuple[str, str]:
    conversation_id, answered = api.ask(text, conversation_id)
    return conversation_id, answered["reply"]["content"]


@pytest.mark.parametrize(
    ("phrase", "title"),
    [
        ("Add task: buy milk", "buy milk"),
        ("add buy milk", "buy milk"),
        ("remind me to buy milk", "buy milk"),
        ("ADD TASK: Buy Milk", "Buy Milk"),
        ("Add task A", "task A"),
        ("please add call mom to my list", "call mom"),
    ],
)
def test_add(api: Api, phrase: str, title: str) -> None:
    _, reply = _reply(api, phrase)
    assert title in reply
    assert [task["title"] for task in api.tasks()] == [title]


@pytest.mark.parametrize("question", ["what did I just add?", "What did I add?", "WHAT DID I JUST ADD"])
def test_what_did_i_just_add_names_the_latest_add_in_this_conversation(api: Api, question: str) -> None:
    conversation_id, _ = _reply(api, "Add task: buy milk")
    _reply(api, "remind me to water the plants", conversation_id)
    _reply(api, "show my tasks", conversation_id)
    _, reply = _reply(api, question, conversation_id)
    assert "water the plants" in reply and "buy milk" not in reply


def test_what_did_i_just_add_without_an_add(api: Api) -> None:
    _, reply = _reply(api, "what did I just add?")
    assert "haven't added" in reply


@pytest.mark.parametrize("phrase", ["show my tasks", "list tasks", "what's on my list?", "Show me my tasks"])
def test_list_numbers_open_tasks(api: Api, phrase: str) -> None:
    conversation_id, _ = _reply(api, "Add task: buy milk")
    _reply(api, "add walk the dog", conversation_id)
    _reply(api, "add pay rent", conversation_id)
    _reply(api, "done 2", conversation_id)
    _, reply = _reply(api, phrase, conversation_id)
    assert "1. buy milk" in reply and "2. pay rent" in reply and "walk the dog" not in reply


def test_list_when_empty(api: Api) -> None:
    _, reply = _reply(api, "list tasks")
    assert "empty" in reply


@pytest.mark.parametrize(
    ("phrase", "completed"),
    [("done 2", "walk the dog"), ("complete buy milk", "buy milk"), ("mark it as done", "walk the dog"),
     ("Complete Buy Milk", "buy milk")],
)
def test_complete(api: Api, phrase: str, completed: str) -> None:
    conversation_id, _ = _reply(api, "Add task: buy milk")
    _reply(api, "add walk the dog", conversation_id)
    _, reply = _reply(api, phrase, conversation_id)
    assert completed in reply
    assert [task["title"] for task in api.tasks("done")] == [completed]
    assert completed not in [task["title"] for task in api.tasks("open")]


@pytest.mark.parametrize(("phrase", "deleted"), [("delete buy milk", "buy milk"), ("remove task 1", "buy milk"),
                                                ("remove task 2", "walk the dog")])
def test_delete(api: Api, phrase: str, deleted: str) -> None:
    conversation_id, _ = _reply(api, "Add task: buy milk")
    _reply(api, "add walk the dog", conversation_id)
    _, reply = _reply(api, phrase, conversation_id)
    assert deleted in reply
    assert deleted not in [task["title"] for task in api.tasks("all")]
    assert len(api.tasks("all")) == 1


@pytest.mark.parametrize("phrase", ["rename 1 to buy oat milk", "rename buy milk to buy oat milk"])
def test_rename(api: Api, phrase: str) -> None:
    conversation_id, _ = _reply(api, "Add task: buy milk")
    _, reply = _reply(api, phrase, conversation_id)
    assert "buy oat milk" in reply
    assert [task["title"] for task in api.tasks()] == ["buy oat milk"]


@pytest.mark.parametrize("phrase", ["help", "HELP", "what can you do?"])
def test_help_says_what_it_can_do(api: Api, phrase: str) -> None:
    _, reply = _reply(api, phrase)
    for capability in ("Add task", "show my tasks", "done", "delete", "rename"):
        assert capability in reply


@pytest.mark.parametrize("phrase", ["hello", "How is the weather?", "🙂"])
def test_anything_else_gets_a_friendly_pointer(api: Api, phrase: str) -> None:
    _, reply = _reply(api, phrase)
    assert "todo" in reply and "help" in reply


@pytest.mark.parametrize(
    "phrase", ["complete buy bread", "done 7", "delete nothing-like-this", "rename 3 to x", "mark it as done"]
)
def test_a_task_that_cannot_be_found_gets_a_clear_answer(api: Api, phrase: str) -> None:
    _conversation_id, answered = api.ask(phrase)
    assert answered["status"] == "answered"
    reply = answered["reply"]["content"]
    assert any(words in reply for words in ("couldn't find", "no task", "not sure which", "empty"))
    assert api.tasks("all") == []


def test_tasks_are_per_user(make_api) -> None:
    alice, bob = make_api(), make_api()
    alice.ask("Add task: alice's secret")
    _, answered = bob.ask("complete alice's secret")
    assert "couldn't find" in answered["reply"]["content"]
    assert bob.tasks("all") == [] and [t["title"] for t in alice.tasks()] == ["alice's secret"]
