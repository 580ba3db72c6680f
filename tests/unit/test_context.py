"""What of a conversation a model is sent (worker/engine/context.py): the most recent whole turns
that fit, starting at a question — counted here with the documented estimate."""

from __future__ import annotations

import json

from worker.engine.base import Turn
from worker.engine.context import estimate_tokens, fit, is_overflow, turn_tokens


def turns(*texts: str) -> list[Turn]:
    return [Turn(seq, "user" if seq % 2 else "assistant", text) for seq, text in enumerate(texts, start=1)]


def test_everything_is_sent_when_it_fits() -> None:
    history = turns("hi", "hello", "add milk", "added")
    window = fit(history, budget=10_000, count=estimate_tokens)
    assert window.turns == history and window.total == 4


def test_the_most_recent_turns_that_fit_starting_at_a_question() -> None:
    history = turns("q1 " * 100, "a1 " * 100, "q2 " * 100, "a2 " * 100, "q3", "a3")
    one = turn_tokens(history[0], estimate_tokens)
    window = fit(history, budget=one + 20, count=estimate_tokens)  # q3, a3, a2 fit; a2 has no question
    assert [turn.seq for turn in window.turns] == [5, 6]
    assert window.total == 6
    assert [turn.seq for turn in fit(history, budget=10_000, count=estimate_tokens, at_most=3).turns] == [5, 6]


def test_a_reply_with_tool_calls_counts_its_calls_and_results_as_one_turn() -> None:
    calls = [{"name": "add_task", "arguments": {"title": "milk " * 200}, "result": {"task": {"title": "milk"}}}]
    with_calls = Turn(2, "assistant", "Added.", json.dumps(calls))
    assert turn_tokens(with_calls, estimate_tokens) > turn_tokens(Turn(2, "assistant", "Added."), estimate_tokens) + 300
    history = [Turn(1, "user", "add it"), with_calls, Turn(3, "user", "thanks"), Turn(4, "assistant", "ok")]
    assert [turn.seq for turn in fit(history, budget=50, count=estimate_tokens).turns] == [3, 4]


def test_servers_saying_the_prompt_does_not_fit_are_recognised() -> None:
    assert is_overflow("request (4224 tokens) exceeds the available context size (4096 tokens), try increasing it")
    assert is_overflow("This model's maximum context length is 8192 tokens.")
    assert not is_overflow("unsupported value: 'temperature'")
