"""What the OpenAI-compatible API (`/v1`) costs against chatq's own (`/api/v1`), in one run.

    .venv/bin/python bench/openai_api.py [--turns 20] [--messages 200] [--rounds 3] [--resumes 60]

1. the first token (needs llama.cpp: `python scripts/llama.py build`): one llama-server
   (SmolLM2-135M) behind bench/models.py's HTTP timing proxy, and in front of that a TCP proxy that
   marks the bytes at chatq's door; one gunicorn and one Celery worker with ENGINE=openai. --turns
   questions each way, alternated: a POST to /api/v1 with the conversation's event stream open,
   and a streamed `/v1/responses` create. What chatq adds to the first token, all of it seen from
   outside chatq's processes = (POST sent -> the request through the door) + (the first generated
   text through the door -> the client's first delta); p50 each, and the second part also from the
   HTTP proxy's own mark, as bench/models.py takes it.
2. web CPU per message (the built-in engine, 100 ms a reply; ONE gunicorn process): --messages
   messages as a POST + long-poll (`?wait=30`) on /api/v1, and as a background `/v1/responses`
   create + a `GET /v1/responses/{id}` every --poll-ms (500) until final; --rounds alternated
   rounds, the ratio of the medians.
3. resuming a 2,000-piece response on a web node that never saw it: a reply stored with 2,000
   pieces (Postgres), and one being written with 2,000 pieces so far (Redis); --resumes resumes of
   each after a random `starting_after`, the time from the request to its last event, p50 and p95.
4. what the events cost: bytes per piece of the stored reply's `pieces` (Postgres) and of the
   attempt's stream (Redis's own MEMORY USAGE), and statements per piece.

Figures print; nothing is asserted. Not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from bench.models import TcpTimingProxy, TimingProxy, _p, _up  # noqa: E402

PIECES = 2000


def first_token(turns: int) -> None:
    import os

    import requests

    from bench.environment import bench_environment
    from scripts import llama
    from tests.support import TEST_SECRET, Api, EventStream, Process, Web, Worker, free_port, wait_until

    server = llama.find()
    if server is None:
        print("1. first token: skipped — llama-server is not built (python scripts/llama.py build)")
        return
    port = free_port()
    model = Process("bench-openai-llama", server.argv(port, context=2048), os.environ).start()
    try:
        wait_until(lambda: _up(requests, port), timeout=60, what="llama-server")
        # chatq -> a TCP proxy that marks bytes at chatq's door -> the HTTP timing proxy -> llama-server.
        http_proxy = TimingProxy(f"http://127.0.0.1:{port}")
        proxy = TcpTimingProxy(http_proxy.httpd.server_address[1])
        env = bench_environment("openai", "chatq_openai_llm", TEST_SECRET, ENGINE="openai",
                                LLM_BASE_URL=proxy.url + "/v1", LLM_MODEL="smollm2", LLM_MAX_TOKENS="16",
                                LLM_STREAM="1")
        web, worker = Web("bench-openai-web", env).start(), Worker("bench-openai-worker", env).start()
        try:
            import openai

            api = Api(web.url)
            client = openai.OpenAI(base_url=web.url + "/v1", api_key=api.post("/api/v1/keys", json={"name": "b"})
                                   .json()["key"], max_retries=0, timeout=120)
            api.ask("warm up")
            # Per API: POST sent -> the request through the proxy's door; the first generated text
            # through it -> the client's first delta; and that second figure from the HTTP proxy's
            # own mark, as bench/models.py takes it.
            added: dict[str, dict[str, list[float]]] = {
                name: {"in": [], "out": [], "out (HTTP proxy's mark)": []} for name in ("/api/v1", "/v1/responses")}

            def note(name: str, sent: float, seen: float) -> None:
                added[name]["in"].append(proxy.arrivals[-1] - sent)
                added[name]["out"].append(seen - proxy.first_tokens[-1])
                added[name]["out (HTTP proxy's mark)"].append(seen - http_proxy.first_tokens[-1])

            for turn in range(turns):
                conversation = api.post("/api/v1/conversations", json={}).json()["id"]
                stream = EventStream(api, f"/api/v1/conversations/{conversation}/events")
                try:
                    sent = time.monotonic()
                    api.chat(f"Say a word about the number {turn}.", conversation)
                    stream.until(lambda event: event["event"] == "delta", limit=500)
                    note("/api/v1", sent, time.monotonic())
                finally:
                    stream.close()
                sent = time.monotonic()
                for event in client.responses.create(model="smollm2", input=f"Say a word about {turn}.",
                                                     stream=True):
                    if event.type == "response.output_text.delta":
                        note("/v1/responses", sent, time.monotonic())
                        break
            for name, figures in added.items():
                parts = ", ".join(f"{part} p50 {_p(values, 0.5) * 1000:.1f} ms" for part, values in figures.items())
                total = [a + b for a, b in zip(figures["in"], figures["out"], strict=True)]
                print(f"1. what chatq adds to the first token, {name}: {_p(total, 0.5) * 1000:.1f} ms p50 "
                      f"(p95 {_p(total, 0.95) * 1000:.1f}) = POST -> the model server has the request + its "
                      f"first text -> the client's first delta; {parts} ({turns} turns)")
        finally:
            web.kill()
            worker.kill()
    finally:
        model.kill()


def web_cpu(messages: int, rounds: int, poll_ms: int) -> None:
    import psutil

    from bench.environment import bench_environment
    from tests.support import TEST_SECRET, Api, Web, Worker

    env = bench_environment("openai", "chatq_openai_cpu", TEST_SECRET, ENGINE_DELAY_MS="100", RATE_LIMIT="",
                            READ_RATE_LIMIT="")
    web, worker = Web("bench-openai-cpu-web", env, workers=1).start(), Worker("bench-openai-cpu-worker", env).start()
    try:
        assert web.popen is not None
        process = psutil.Process(web.popen.pid).children()[0]
        api = Api(web.url)
        key = api.post("/api/v1/keys", json={"name": "cpu"}).json()["key"]
        v1 = Api(web.url, api.user)
        v1.http.headers["Authorization"] = f"Bearer {key}"

        def chatq(count: int) -> None:
            cid = api.post("/api/v1/conversations", json={}).json()["id"]
            for n in range(count):
                accepted = api.post(f"/api/v1/conversations/{cid}/messages", json={"content": f"add {n}"}).json()
                while api.get(accepted["poll_url"], params={"wait": 30}).json()["status"] not in (
                        "answered", "failed", "cancelled"):
                    pass

        def openai_background(count: int) -> None:
            previous = None
            for n in range(count):
                body = {"model": "chatq-assistant", "input": f"add {n}", "background": True,
                        **({"previous_response_id": previous} if previous else {})}
                response = v1.post("/v1/responses", json=body).json()
                while response["status"] in ("queued", "in_progress"):
                    time.sleep(poll_ms / 1000)
                    response = v1.get(f"/v1/responses/{response['id']}").json()
                previous = response["id"]

        def cpu_per_message(send: Any, count: int) -> float:
            before = sum(process.cpu_times()[:2])
            send(count)
            return (sum(process.cpu_times()[:2]) - before) * 1000 / count

        cpu_per_message(chatq, 20)
        cpu_per_message(openai_background, 20)  # warm up both paths
        figures: dict[str, list[float]] = {"/api/v1 POST + long-poll": [], "/v1/responses background + polls": []}
        for round_ in range(rounds):
            for (name, values), send in zip(figures.items(), (chatq, openai_background), strict=True):
                values.append(cpu_per_message(send, messages))
                print(f"2. round {round_ + 1}, {name}: {values[-1]:.2f} ms of web CPU per message", flush=True)
        medians = [statistics.median(values) for values in figures.values()]
        print(f"2. web CPU per message, medians: /api/v1 {medians[0]:.2f} ms, /v1/responses {medians[1]:.2f} ms "
              f"({medians[1] / medians[0]:.2f}x), polled every {poll_ms} ms")
    finally:
        web.kill()
        worker.kill()


def resume(resumes: int) -> None:
    import psycopg
    import redis
    import requests

    from bench.environment import bench_environment
    from models.coordination.messaging import piece_id
    from models.coordination.signals import pieces_key
    from scripts.devstack import libpq_url
    from tests.support import TEST_SECRET, Api, Web

    # Each resume of the response being written is left open once its last event came: the node
    # notices at its next re-read, so one user may hold all of them meanwhile.
    env = bench_environment("openai", "chatq_openai_resume", TEST_SECRET, RATE_LIMIT="", READ_RATE_LIMIT="",
                            MAX_WAITS_PER_USER=str(resumes + 10))
    first = Web("bench-openai-resume-a", env).start()
    api = Api(first.url)
    key = api.post("/api/v1/keys", json={"name": "resume"}).json()["key"]
    first.kill()
    # Two responses of 2,000 pieces of 1 to 9 characters (a model's tokens), written straight
    # where chatq keeps them.
    pieces = ["".join(random.choices("abcdefghij ", k=random.randint(1, 9))) for _ in range(PIECES)]
    stored, writing = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(libpq_url(env["DATABASE_URL"]), autocommit=True) as db:
        for question in (stored, writing):
            conversation = uuid.uuid4()
            db.execute("INSERT INTO conversations (id, user_id, title, last_seq, lease_version) "
                       "VALUES (%s, %s, 'bench', 2, 1)", (conversation, api.user))
            db.execute("INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, attempts) "
                       "VALUES (%s, %s, %s, 1, 'user', 'tell me a long story', %s, 1)",
                       (question, conversation, api.user, "answered" if question == stored else "processing"))
        db.execute("INSERT INTO messages (id, conversation_id, user_id, seq, role, content, reply_to_id, attempts, "
                   "finish, pieces) SELECT gen_random_uuid(), conversation_id, user_id, 2, 'assistant', %s, id, 0, "
                   "'stop', %s FROM messages WHERE id = %s", ("".join(pieces), [len(p) for p in pieces], stored))
        column = db.execute("SELECT pg_column_size(pieces) FROM messages WHERE reply_to_id = %s",
                            (stored,)).fetchone()[0]
    client = redis.Redis.from_url(env["REDIS_URL"])
    stream_key = pieces_key(writing, 1)
    with client.pipeline(transaction=False) as pipe:
        for index, text in enumerate(pieces):
            pipe.xadd(stream_key, {"i": index, "t": text}, id=piece_id(index))  # as the worker writes it
        pipe.expire(stream_key, 3600)
        pipe.execute()
    redis_bytes = client.memory_usage(stream_key)
    web = Web("bench-openai-resume-b", env).start()  # a node that never saw either
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        for question, name, last in ((stored, "stored (Postgres)", PIECES + 7), (writing, "being written (Redis)",
                                                                                   PIECES + 3)):
            times = []
            for _ in range(resumes):
                after = random.randrange(0, last)
                started = time.monotonic()
                with session.get(f"{web.url}/v1/responses/resp_{question.hex}",
                                 params={"stream": "true", "starting_after": after}, stream=True, timeout=30) as got:
                    assert got.status_code == 200, got.text
                    for line in got.iter_lines():
                        if line.startswith(b"data: ") and json.loads(line[6:])["sequence_number"] == last:
                            times.append(time.monotonic() - started)
                            break
            print(f"3. resume a {PIECES}-piece response {name} after a random number: "
                  f"p50 {_p(times, 0.5) * 1000:.1f} ms, p95 {_p(times, 0.95) * 1000:.1f} ms ({len(times)} resumes)")
    finally:
        web.kill()
        client.delete(stream_key)
    print(f"4. events' storage: Postgres {column / PIECES:.2f} bytes a piece (messages.pieces, {column} bytes for "
          f"{PIECES}), no statement a piece (the reply's one commit carries them); Redis {redis_bytes / PIECES:.1f} "
          f"bytes a piece while written (the attempt's stream, an hour), one round trip a piece (XADD, EXPIRE, "
          f"PUBLISH), as for /api/v1's event stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resumes", type=int, default=60)
    parser.add_argument("--poll-ms", type=int, default=500, help="how often a background response is polled")
    parser.add_argument("--only", choices=("resume", "cpu", "first-token"), help="one part only")
    args = parser.parse_args()
    from bench.environment import private_tmpdir

    private_tmpdir("openai")
    if args.only in (None, "resume"):
        resume(args.resumes)
    if args.only in (None, "cpu"):
        web_cpu(args.messages, args.rounds, args.poll_ms)
    if args.only in (None, "first-token"):
        first_token(args.turns)


if __name__ == "__main__":
    main()
