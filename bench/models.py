"""Many model servers as one (issue 25): two real llama.cpp servers behind chatq's pool.

    .venv/bin/python bench/models.py [--turns 20] [--rounds 2] [--load-seconds 24]

Starts two llama-servers (SmolLM2-135M, two slots each: `python scripts/llama.py build` first), a
timing proxy in front of each (it notes when a chat completion arrives and when its first content
token leaves the model server), and one gunicorn + one Celery worker (3 processes) of this
checkout with ENGINE=openai, streaming, LLM_SERVERS naming the two proxies. Then:

1. prefix affinity: a --turns-turn conversation, one turn at a time, its event stream open, and
   before each of its turns one turn of another conversation (the servers serve others too); the
   time to first token (POST sent -> the client's first `delta`) at turns 10..20, mean and p50,
   with the pool's routing (a conversation goes back to its last server) and with random routing
   (the bench deletes both conversations' remembered servers before each turn, so an idle pool
   picks either), --rounds alternated rounds; with, from llama-server's own `timings` in each
   answer's last chunk, the prompt tokens it evaluated, those it took from its cache, and its
   prefill time — what affinity can save at most;
2. what the queue costs the first token (the same turns): POST sent -> the model server receives
   the request, and the model's first token leaves the server -> the client's first `delta`;
3. failover: 4 users, each in a conversation of their own, post one message after another for
   --load-seconds; one of the two servers is SIGKILLed halfway: failed messages, and the reply
   p99 before and after the kill (against LLM_TIMEOUT_S);
4. slots: both servers' own GET /slots, sampled every 50 ms over everything above: the most
   busy at once, against the two slots each is configured with.

Figures print; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
CONTEXT = 4096
TIMEOUT_S = 20


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


class TimingProxy:
    """Forwards chat completions to one model server, streaming its answer back as it comes, and
    notes (monotonic) when each request arrived and when its first content token came out."""

    def __init__(self, upstream: str) -> None:
        import requests

        self.arrivals: list[float] = []
        self.first_tokens: list[float] = []
        self.timings: list[dict[str, Any]] = []  # llama-server's, from each streamed answer's last chunk
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                answer = requests.get(upstream + self.path, timeout=5)
                self._reply(answer.status_code, answer.content, answer.headers.get("Content-Type", ""))

            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.endswith("/chat/completions"):
                    proxy.arrivals.append(arrived)
                try:
                    answer = requests.post(upstream + self.path, data=body, stream=True, timeout=TIMEOUT_S,
                                           headers={"Content-Type": "application/json"})
                except requests.RequestException:
                    self._reply(502, b'{"error": {"message": "upstream down"}}', "application/json")
                    return
                if "text/event-stream" not in answer.headers.get("Content-Type", ""):
                    self._reply(answer.status_code, answer.content, answer.headers.get("Content-Type", ""))
                    return
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                noted = False
                try:
                    for line in answer.iter_lines():
                        if not noted and b'"content":"' in line and b'"content":""' not in line:
                            proxy.first_tokens.append(time.monotonic())
                            noted = True
                        if b'"timings"' in line:
                            proxy.timings.append(json.loads(line.removeprefix(b"data: "))["timings"])
                        raw = line + b"\n"
                        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (requests.RequestException, OSError):
                    self.close_connection = True

            def _reply(self, status: int, raw: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a worker that hung up (a cancel, the killed server's retry): not the bench's news

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class TcpTimingProxy:
    """A TCP proxy in front of one model server that looks at the bytes as they pass, without
    parsing HTTP: when a chat completion's request has come through whole (its headers and
    Content-Length bytes of body), and when the first chunk carrying generated text went back.
    Seen from outside every process, where TimingProxy's marks are its own HTTP reads."""

    def __init__(self, upstream_port: int) -> None:
        import socket

        self.upstream = ("127.0.0.1", upstream_port)
        self.arrivals: list[float] = []
        self.first_tokens: list[float] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: Any, upstream: Any) -> None:
        import select

        request, waiting_for_text = b"", False
        peers = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [])
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    now = time.monotonic()
                    peers[sock].sendall(data)
                    if sock is client:
                        request += data
                        head, separator, body = request.partition(b"\r\n\r\n")
                        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length:")), 0)
                        if separator and len(body) >= length:
                            if b"/chat/completions" in head:
                                self.arrivals.append(now)
                                waiting_for_text = True
                            request = body[length:]
                    elif waiting_for_text and b'"content":"' in data.replace(b'"content":""', b""):
                        self.first_tokens.append(now)
                        waiting_for_text = False
        except OSError:
            return
        finally:
            client.close()
            upstream.close()


def _prefill(figures: list[tuple[float, float, float, dict[str, Any]]]) -> str:
    """What llama-server says it did before the first token: tokens evaluated, from its cache."""
    timings = [f[3] for f in figures]
    return (f"prompt tokens evaluated mean {statistics.mean(t['prompt_n'] for t in timings):.0f}, from the cache "
            f"{statistics.mean(t.get('cache_n', 0) for t in timings):.0f}, prefill "
            f"{statistics.mean(t['prompt_ms'] for t in timings):.1f} ms")


def busy_slots(port: int) -> int:
    import requests

    try:
        return sum(1 for slot in requests.get(f"http://127.0.0.1:{port}/slots", timeout=1).json()
                   if slot.get("is_processing") or slot.get("state") == 1)
    except (requests.RequestException, ValueError):
        return 0


def conversation(api: Any, redis_client: Any, proxies: list[TimingProxy], turns: int,
                 sticky: bool) -> list[tuple[float, float, float, dict[str, Any]]]:
    """Per turn: (time to first token at the client, POST -> the server has the request, the
    model's first token -> the client's first delta), in seconds, and llama-server's timings."""
    from tests.support import EventStream

    cid = api.post("/api/v1/conversations", json={}).json()["id"]
    other = api.post("/api/v1/conversations", json={}).json()["id"]
    stream = EventStream(api, f"/api/v1/conversations/{cid}/events")
    figures = []
    try:
        for turn in range(turns):
            if not sticky:
                redis_client.delete(f"chatq:llm:affinity:{other}")
            api.ask(f"Turn {turn}: name a colour.", other)
            if not sticky:
                redis_client.delete(f"chatq:llm:affinity:{cid}")
            marks = [len(proxy.arrivals) for proxy in proxies]
            sent = time.monotonic()
            question = api.chat(f"Turn {turn}: tell me one fact about the sea.", cid)["message"]["id"]
            first_delta = None
            while True:
                event = stream.next_event()
                if event["event"] == "delta" and first_delta is None:
                    first_delta = time.monotonic()
                if event["event"] == "message" and event["data"].get("reply_to") == question:
                    break
            served = next(proxy for proxy, mark in zip(proxies, marks, strict=True) if len(proxy.arrivals) > mark)
            arrived, token = served.arrivals[-1], served.first_tokens[-1]
            assert first_delta is not None
            figures.append((first_delta - sent, arrived - sent, first_delta - token, served.timings[-1]))
    finally:
        stream.close()
    return figures


def steady_load(url: str, seconds: float, kill: Any) -> tuple[list[tuple[float, float, str]], float]:
    """4 users posting one message after another; `kill()` halfway. ((sent, latency, status), kill time)."""
    from tests.support import Api

    results: list[tuple[float, float, str]] = []
    lock = threading.Lock()
    started = time.monotonic()
    killed_at = started + seconds / 2

    def user() -> None:
        api, cid = Api(url), None
        while time.monotonic() - started < seconds:
            sent = time.monotonic()
            accepted = api.chat("Say a word.", cid)
            cid = accepted["conversation_id"]
            answered = api.wait_answered(accepted["message"]["id"], timeout=120)
            with lock:
                results.append((sent, time.monotonic() - sent, answered["status"]))

    # A user whose post or wait fails (Api asserts) fails the bench here, not silently in its thread.
    with ThreadPoolExecutor(max_workers=4) as pool:
        users = [pool.submit(user) for _ in range(4)]
        time.sleep(seconds / 2)
        kill()
        for running in users:
            running.result()
    return results, killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load-seconds", type=float, default=24.0)
    args = parser.parse_args()

    import os
    import signal

    import redis
    import requests

    from bench.environment import bench_environment
    from scripts import devstack, llama
    from tests.support import TEST_SECRET, Api, Process, Web, Worker, free_port, wait_until

    server = llama.find()
    if server is None:
        sys.exit("llama-server is not built: run `python scripts/llama.py build` first")
    ports = [free_port(), free_port()]
    def argv(port: int) -> list[str]:
        line = server.argv(port, context=2 * CONTEXT)  # two slots of CONTEXT tokens each
        line[line.index("--parallel") + 1] = "2"
        return line

    llamas = [Process(f"bench-llama-{n}", argv(port), os.environ).start() for n, port in enumerate(ports)]
    for port in ports:
        wait_until(lambda port=port: _up(requests, port), timeout=60, what="llama-server")
    proxies = [TimingProxy(f"http://127.0.0.1:{port}") for port in ports]
    pool = [{"url": proxy.url + "/v1", "model": f"smollm2-{name}", "slots": 2, "pin_slots": True}
            for proxy, name in zip(proxies, "ab", strict=True)]
    base = devstack.environment()
    env = bench_environment("models", "chatq_models", TEST_SECRET, ENGINE="openai", LLM_SERVERS=json.dumps(pool),
                            LLM_MAX_TOKENS="48", LLM_CONTEXT_TOKENS=str(CONTEXT), LLM_TIMEOUT_S=str(TIMEOUT_S),
                            LLM_STREAM="1")
    redis_client = redis.Redis.from_url(env["REDIS_URL"])
    most = dict.fromkeys(ports, 0)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for port in ports:
                most[port] = max(most[port], busy_slots(port))
            time.sleep(0.05)

    web = Web("bench-models-web", env, workers=1).start()
    worker = Worker("bench-models-worker", env, concurrency=3).start()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        api = Api(web.url)
        api.ask("warm up")
        by_routing: dict[str, list[tuple[float, float, float, dict[str, Any]]]] = {"pool": [], "random": []}
        for _round in range(args.rounds):
            for routing in ("pool", "random"):
                figures = conversation(api, redis_client, proxies, args.turns, sticky=routing == "pool")
                late = figures[9:]
                by_routing[routing] += late
                print(f"  {routing:6s} routing: time to first token at turns 10-{args.turns} mean "
                      f"{statistics.mean(f[0] for f in late) * 1000:.0f} ms, p50 "
                      f"{statistics.median(f[0] for f in late) * 1000:.0f} ms; {_prefill(late)}")
        for name, measure in (("mean", statistics.mean), ("p50", statistics.median)):
            pool_ttft = measure(f[0] for f in by_routing["pool"])
            random_ttft = measure(f[0] for f in by_routing["random"])
            print(f"prefix affinity: time to first token at turns 10-{args.turns} ({name}), pool "
                  f"{pool_ttft * 1000:.0f} ms / random {random_ttft * 1000:.0f} ms = {pool_ttft / random_ttft:.2f}x")
        for routing, figures in by_routing.items():
            print(f"prefill at turns 10-{args.turns}, {routing} routing: {_prefill(figures)}")
        every = by_routing["pool"] + by_routing["random"]
        for name, index in (("POST sent -> the model server has the request", 1),
                            ("the model's first token leaves the server -> the client's first delta", 2)):
            values = [f[index] for f in every]
            print(f"{name}: p50 {_p(values, 0.5) * 1000:.1f} ms, p95 {_p(values, 0.95) * 1000:.1f} ms "
                  f"({len(values)} turns)")
        overhead = [f[1] + f[2] for f in every]
        print(f"what chatq adds to the time to first token: p50 {_p(overhead, 0.5) * 1000:.1f} ms, "
              f"p95 {_p(overhead, 0.95) * 1000:.1f} ms")

        results, killed_at = steady_load(web.url, args.load_seconds, lambda: llamas[1].kill(signal.SIGKILL))
        failed = [r for r in results if r[2] != "answered"]
        before = [r[1] for r in results if r[0] + r[1] < killed_at]
        after = [r[1] for r in results if r[0] + r[1] >= killed_at]
        print(f"failover: {len(results)} messages, {len(failed)} not answered; reply p99 before the kill "
              f"{_p(before, 0.99):.2f} s ({len(before)}), after {_p(after, 0.99):.2f} s ({len(after)}); "
              f"rise {_p(after, 0.99) - _p(before, 0.99):+.2f} s against a request timeout of {TIMEOUT_S} s")
    finally:
        sampling.set()
        sampler.join()
        print(f"slots: most busy at once on each server's own /slots: {list(most.values())} (configured: 2 each)")
        worker.stop()
        web.stop()
        for process in llamas:
            process.stop()
        for proxy in proxies:
            proxy.httpd.shutdown()
        redis_client.flushdb()
        import psycopg

        from scripts.devstack import libpq_url

        with psycopg.connect(libpq_url(base["DATABASE_URL"]), autocommit=True) as db:
            db.execute('DROP DATABASE IF EXISTS "chatq_models" WITH (FORCE)')


def _up(requests: Any, port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    main()
