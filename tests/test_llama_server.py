"""ENGINE=openai against a real model server nobody here wrote: llama.cpp's `llama-server` serving
SmolLM2-135M-Instruct (scripts/llama.py builds it once per machine; `make test` runs that first).

Answers are deterministic (temperature 0, one seed), and the model is tiny: these tests check what
chatq does with a real server's protocol — streamed and plain answers, a streamed tool call, a
conversation past the context window, an answer cut at max_tokens, the server killed mid-stream —
not what the model knows.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import requests

from scripts import llama
from tests.support import Api, EventStream, Process, Stack, Worker, free_port, isolated_env, wait_until

pytestmark = pytest.mark.llama
CONTEXT = 2048
MAX_TOKENS = 48
# SmolLM2 was not trained for tools: shown the call format once, it uses it.
TOOL_PROMPT = ("You call tools. Example: user: Add task: walk dog\nassistant: <tool_call>\n"
               '{"name": "add_task", "arguments": {"title": "walk dog"}}\n</tool_call>')


def start_llama(server: llama.LlamaServer, port: int) -> Process:
    process = Process("llama-server", server.argv(port, context=CONTEXT), os.environ).start()

    def ready() -> bool:
        assert process.popen is not None and process.popen.poll() is None, process.log_text()[-2000:]
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(ready, timeout=60, what="llama-server")
    return process


@pytest.fixture(scope="module")
def real(stack_env):
    server = llama.find()
    if server is None:
        pytest.skip("llama-server is not built on this machine: `python scripts/llama.py build` says why")
    port = free_port()
    process = start_llama(server, port)
    env = isolated_env(stack_env, "llama", ENGINE="openai", LLM_BASE_URL=f"http://127.0.0.1:{port}/v1",
                       LLM_MODEL="smollm2", LLM_MAX_TOKENS=str(MAX_TOKENS), LEASE_SECONDS="20",
                       LLM_COOLDOWN_SECONDS="0.2")
    running = Stack(env, "llama")
    running.worker = Worker("llama-worker", env, concurrency=1)  # one generation at a time: a small CPU
    running.start()
    state = SimpleNamespace(stack=running, env=env, server=server, port=port, process=process)
    yield state
    running.stop()
    state.process.stop()


@pytest.fixture
def user(real) -> Api:
    return Api(real.stack.url)


def swap_worker(real, **env: str) -> None:
    """The stack's worker, restarted with other settings."""
    real.stack.worker.stop()
    real.stack.worker = Worker("llama-worker", {**real.env, **env}, concurrency=1).start()


def test_a_streamed_answer_then_a_plain_one_with_usage(real, user: Api) -> None:
    conversation_id = user.post("/api/v1/conversations", json={}).json()["id"]
    stream = EventStream(user, f"/api/v1/conversations/{conversation_id}/events")
    try:
        question = user.chat("Say hello to me.", conversation_id)["message"]["id"]
        events = stream.until(lambda e: e["event"] == "message" and e["data"].get("reply_to") == question, limit=200)
    finally:
        stream.close()
    reply = events[-1]["data"]
    deltas = [e["data"]["text"] for e in events if e["event"] == "delta"]
    assert reply["content"] and "".join(deltas) == reply["content"]
    assert reply["finish"] in ("stop", "length") and reply["usage"]["prompt_tokens"] > 0
    assert reply["context"] == {"messages_sent": 0, "messages_total": 0}

    swap_worker(real, LLM_STREAM="0")
    try:
        _, plain = user.ask("Say goodbye to me.", conversation_id)
    finally:
        swap_worker(real)
    assert plain["reply"]["content"] and plain["reply"]["usage"]["completion_tokens"] > 0
    assert plain["context"] == {"messages_sent": 2, "messages_total": 2}


def test_a_streamed_tool_call_runs_the_tool(real, user: Api) -> None:
    swap_worker(real, LLM_SYSTEM_PROMPT=TOOL_PROMPT)
    try:
        message_id = user.chat("Add task: buy milk")["message"]["id"]
        wait_until(lambda: "buy milk" in [task["title"] for task in user.tasks()], timeout=60,
                   what="the model's add_task call to run")
        final = user.wait_answered(message_id, timeout=120)
    finally:
        swap_worker(real)
    # What a 135M model says after its tool call is its own affair; that the call ran, and the reply
    # was stored with it, is chatq's. (Its second call here has arguments that are not JSON: they
    # are answered as a tool error and sent back as {}, which llama.cpp can parse.)
    assert final["status"] == "answered", final
    assert [call["name"] for call in final["reply"]["tool_calls"]][:1] == ["add_task"]


def test_a_conversation_longer_than_the_context_window_keeps_being_answered(user: Api) -> None:
    paragraph = ("The quick brown fox jumps over the lazy dog while the farmer counts his sheep. " * 18).strip()
    conversation_id = None
    for turn in range(5):  # each question ~300 tokens, each reply up to 48: past 2,048 by the fourth
        conversation_id, answered = user.ask(f"Turn {turn}. {paragraph}", conversation_id)
        assert answered["status"] == "answered"
    sent = answered["context"]
    assert sent["messages_total"] == 8 and 0 < sent["messages_sent"] < 8


def test_an_answer_cut_at_max_tokens_says_so(user: Api) -> None:
    _, answered = user.ask("Write a very long story about a dragon who lives in a castle.")
    reply = answered["reply"]
    assert reply["finish"] == "length" and reply["usage"]["completion_tokens"] == MAX_TOKENS


def test_the_server_killed_mid_stream_and_started_again(real, user: Api) -> None:
    swap_worker(real, LLM_MAX_TOKENS="200")
    try:
        message_id = user.chat("Write a very long story about a brave knight and a dragon.")["message"]["id"]
        wait_until(lambda: (user.get(f"/api/v1/messages/{message_id}").json().get("partial") or {})
                   .get("pieces", 0) >= 3, timeout=60, what="the answer to stream")
        real.process.kill(signal.SIGKILL)
        waiting = wait_until(lambda: (m := user.get(f"/api/v1/messages/{message_id}").json())["error"] and m,
                             timeout=60, what="the cause to be kept")
        assert "http://127.0.0.1" in waiting["error"], waiting["error"]  # it names the server
        # A pool that is down says so: a new question waits in the queue (nothing generates it),
        # its error naming the server, never `processing` for a slot wait after another.
        later = user.chat("Are you back?")["message"]["id"]
        seen, processing_since, longest = [], None, 0.0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            read = user.get(f"/api/v1/messages/{later}").json()
            now = time.monotonic()
            seen.append(read["status"])
            processing_since = (processing_since or now) if read["status"] == "processing" else None
            longest = max(longest, now - processing_since if processing_since else 0.0)
            if read["status"] == "queued" and "waiting for one to answer again" in (read["error"] or ""):
                break
            time.sleep(0.1)
        assert read["status"] == "queued" and f"127.0.0.1:{real.port}" in read["error"], (read, seen)
        assert "every model server is down" in read["error"], read["error"]
        assert longest < 5, (longest, seen)  # never held `processing` for a slot wait (30 s)
        real.process = start_llama(real.server, real.port)
        answered = user.wait_answered(message_id, timeout=180)
        assert user.wait_answered(later, timeout=180)["status"] == "answered"
    finally:
        swap_worker(real)
    assert answered["status"] == "answered" and answered["error"] is None
    assert answered["reply"]["content"]


def _busy_slots(port: int) -> int:
    """How many of a llama-server's own slots are processing a request now (its GET /slots)."""
    try:
        slots = requests.get(f"http://127.0.0.1:{port}/slots", timeout=1).json()
    except (requests.RequestException, ValueError):
        return 0
    return sum(1 for slot in slots if slot.get("is_processing") or slot.get("state") == 1)


def test_two_servers_as_one_pool_keep_each_conversation_on_its_server_and_lose_nothing_when_one_dies(
        real, user: Api) -> None:
    """Two llama-servers of one slot each, behind three worker processes (three conversations,
    three turns each, 48 tokens at most): neither ever runs two
    requests (its own /slots, sampled), each conversation's turns land on one server while both
    are up, and with one killed mid-reply every message is still answered, by the other."""
    other_port = free_port()
    other = start_llama(real.server, other_port)
    pool = [{"url": f"http://127.0.0.1:{real.port}/v1", "model": "smollm2-a", "slots": 1, "pin_slots": True},
            {"url": f"http://127.0.0.1:{other_port}/v1", "model": "smollm2-b", "slots": 1, "pin_slots": True}]
    real.stack.worker.stop()
    real.stack.worker = Worker("llama-worker-pool", {**real.env, "LLM_SERVERS": json.dumps(pool),
                                                     "LLM_AFFINITY_WAIT_SECONDS": "30"},
                               concurrency=3).start()
    most = {real.port: 0, other_port: 0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for port in most:
                most[port] = max(most[port], _busy_slots(port))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        users = [Api(real.stack.url) for _ in range(3)]
        firsts = [u.chat("Say hello.") for u in users]
        conversations = [first["conversation_id"] for first in firsts]
        pending = [first["message"]["id"] for first in firsts]
        models: dict[str, list[str]] = {cid: [] for cid in conversations}
        for turn in range(3):
            if turn:
                question = "Say a word." if turn == 1 else "Write a very long story about a brave knight."
                pending = [u.chat(question, cid)["message"]["id"] for u, cid in zip(users, conversations, strict=True)]
            if turn == 2:  # server b dies while it answers one of the last turns
                wait_until(lambda: _busy_slots(other_port) > 0, timeout=60, interval=0.02,
                           what="server b to be answering")
                other.kill(signal.SIGKILL)
            for u, cid, message_id in zip(users, conversations, pending, strict=True):
                answered = u.wait_answered(message_id, timeout=120)
                assert answered["status"] == "answered", answered
                models[cid].append(answered["reply"]["model"])
    finally:
        sampling.set()
        sampler.join()
        other.stop()
        swap_worker(real)
    assert most[real.port] <= 1 and most[other_port] <= 1, most  # never past a server's slots
    assert max(most.values()) == 1  # and the sampling saw them used
    # Both servers answered, and while both were up each conversation stayed on its own.
    assert {model for turns in models.values() for model in turns[:2]} == {"smollm2-a", "smollm2-b"}, models
    assert all(turns[0] == turns[1] for turns in models.values()), models
    # After b died, a answered every last turn (also the one b was answering).
    assert [turns[2] for turns in models.values()] == ["smollm2-a"] * 3, models


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# The app's own instructions teach the model its tool, as TOOL_PROMPT teaches chatq's.
WEATHER_PROMPT = ("You call tools. Example: user: weather in Oslo\nassistant: <tool_call>\n"
                  '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')


def test_the_apps_function_tool_called_by_the_real_model_and_answered(real, user: Api) -> None:
    """OpenAI's SDK against the real llama.cpp server: the app's tool and instructions reach the
    model, its call of the tool ends the response as a function_call item, and the app's output
    continues it through previous_response_id to a stored answer."""
    import openai

    key = user.post("/api/v1/keys", json={"name": "llama-tools"}).json()["key"]
    client = openai.OpenAI(base_url=real.stack.url + "/v1", api_key=key, max_retries=0, timeout=120)
    first = client.responses.create(model="smollm2", input="weather in Paris", tools=[WEATHER],
                                    instructions=WEATHER_PROMPT)
    calls = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and [call.name for call in calls] == ["get_weather"], first.output
    # A few words are enough to see the output continue the response (the suite's time: a 135M
    # model rambles on to its cap).
    second = client.responses.create(model="smollm2", previous_response_id=first.id, tools=[WEATHER],
                                     instructions=WEATHER_PROMPT, max_output_tokens=16, input=[
                                         {"type": "function_call_output", "call_id": calls[0].call_id,
                                          "output": '{"sky": "sunny", "celsius": 21}'}])
    assert second.status in ("completed", "incomplete"), second
    assert second.output, second  # the 135M model's words (or another call) are its own affair
