"""A web process holds hundreds of waiting clients and still answers everything else; past its
limits it refuses new waits at once (docs/api.md, "How many waits a node holds")."""

from __future__ import annotations

import re
import signal
import socket
import threading
import uuid

import pytest
import requests

from tests.support import Api, Stack, Web, token, wait_until

USERS = 60
WAITS_PER_USER = 5  # the per-user cap below: every user holds as many as allowed
MAX_WAITS = USERS * WAITS_PER_USER + 20


class RawWait:
    """A waiting request sent on a plain socket and left unread: costs the test a file descriptor,
    not a thread, so one test can hold hundreds of them."""

    def __init__(self, port: int, path: str, user: str) -> None:
        self.path = path
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token(user)}\r\n\r\n".encode())

    def close(self) -> None:
        self.sock.close()


def waiting_now(web: Web) -> float:
    text = requests.get(web.url + "/metrics", timeout=10).text
    found = re.search(r"^chatq_waiting_requests (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def busy_web(stack: Stack, stack_env):
    web = Web("waits-web", {**stack_env, "MAX_WAITS": str(MAX_WAITS), "MAX_WAITS_PER_USER": str(WAITS_PER_USER),
                            "SSE_HEARTBEAT_SECONDS": "5"}).start()
    held: list[RawWait] = []
    yield web, held
    for wait in held:
        wait.close()
    web.stop()


def test_a_process_holding_hundreds_of_waits_answers_everything_else(busy_web) -> None:
    web, held = busy_web
    users = [Api(web.url) for _ in range(USERS)]
    for n, user in enumerate(users):
        cid = user.post("/api/v1/conversations", json={}).json()["id"]
        for k in range(WAITS_PER_USER):
            # Long-polls for messages that will not come, and event streams, mixed.
            path = (f"/api/v1/conversations/{cid}/events" if (n + k) % 2 else
                    f"/api/v1/conversations/{cid}/messages?after=1000&wait=30")
            held.append(RawWait(web.port, path, user.user))
    wait_until(lambda: waiting_now(web) == USERS * WAITS_PER_USER, timeout=60, what="every wait to be held")

    # While they wait: the process is alive, healthy, and a post is accepted and answered.
    assert requests.get(web.url + "/livez", timeout=10).status_code == 200
    assert requests.get(web.url + "/health", timeout=10).json()["status"] == "healthy"
    other = Api(web.url)
    accepted = other.chat("Add task: answered while hundreds wait")
    reply = other.wait_answered(accepted["message"]["id"])
    assert reply["status"] == "answered" and "answered while hundreds wait" in reply["reply"]["content"]
    assert other.get(accepted["poll_url"]).json()["status"] == "answered"  # a plain read

    # One user past their share: refused at once with 429, not queued.
    mine = users[0].get("/api/v1/conversations").json()["items"][0]["id"]
    over = users[0].get(f"/api/v1/conversations/{mine}/messages", params={"after": 1000, "wait": 30})
    assert over.status_code == 429 and over.headers["Retry-After"]
    assert over.headers["Content-Type"] == "application/problem+json"

    # The node's limit: fill it, then the next wait of a fresh user is refused at once with 503.
    fillers = [Api(web.url) for _ in range(MAX_WAITS - USERS * WAITS_PER_USER)]
    for filler in fillers:
        cid = filler.post("/api/v1/conversations", json={}).json()["id"]
        held.append(RawWait(web.port, f"/api/v1/conversations/{cid}/events", filler.user))
    wait_until(lambda: waiting_now(web) == MAX_WAITS, timeout=60, what="the node to be full")
    late = Api(web.url)
    cid = late.post("/api/v1/conversations", json={}).json()["id"]
    for path in (f"/api/v1/conversations/{cid}/messages?after=0&wait=30", f"/api/v1/conversations/{cid}/events"):
        refused = late.get(path, timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] and refused.json()["status"] == 503
    # ... while a plain read, without wait, is still served.
    assert late.get(f"/api/v1/conversations/{cid}/messages", params={"after": 0}).status_code == 200

    # Streams whose clients went away give their places back (found on their next heartbeat);
    # a long-poll's place is held until its wait ends, as it does not read its socket meanwhile.
    streams = [wait for wait in held if "/events" in wait.path]
    for wait in streams:
        wait.close()
    wait_until(lambda: waiting_now(web) == MAX_WAITS - len(streams), timeout=60, what="closed streams to be let go")
    assert late.get(f"/api/v1/conversations/{cid}/messages", params={"after": 0, "wait": 1}).status_code == 200


def test_a_stream_refused_for_a_missing_conversation_gives_its_place_back(busy_web) -> None:
    web, _ = busy_web
    user = Api(web.url)
    for _ in range(WAITS_PER_USER + 2):  # past the per-user cap, had the places been kept
        missing = user.get(f"/api/v1/conversations/{uuid.uuid4()}/events", timeout=10)
        assert missing.status_code == 404, missing.text
    assert waiting_now(web) == 0


def test_a_client_that_goes_silent_mid_request_is_disconnected(stack: Stack, stack_env) -> None:
    web = Web("slow-web", {**stack_env, "CLIENT_TIMEOUT_SECONDS": "1"}).start()
    offset = len(web.log_text())
    try:
        # Half a request (slowloris), and a body promised but never sent.
        head = socket.create_connection(("127.0.0.1", web.port))
        head.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        body = socket.create_connection(("127.0.0.1", web.port))
        body.sendall(b"POST /api/v1/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token("slow").encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        closed = {}

        def read_until_closed(name: str, sock: socket.socket) -> None:
            sock.settimeout(30)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            closed[name] = data

        readers = [threading.Thread(target=read_until_closed, args=item) for item in (("head", head), ("body", body))]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=40)
        assert set(closed) == {"head", "body"}  # the server hung up on both
        assert b" 500 " not in closed["body"]
        assert requests.get(web.url + "/livez", timeout=10).status_code == 200
        assert "Traceback" not in web.log_text()[offset:]
    finally:
        web.stop()


def test_a_node_told_to_stop_answers_its_waiting_clients_instead_of_cutting_them(stack: Stack, stack_env) -> None:
    # A deploy's SIGTERM: gunicorn lets in-flight requests finish for graceful_timeout (30 s), as
    # long as a long-poll may wait. Draining answers every wait at once; none is cut off.
    web = Web("drain-web", stack_env).start()
    try:
        api = Api(web.url)
        # (Connection: close: an idle keep-alive connection holds a stopping gunicorn up to its
        # graceful timeout; only the waits are the subject here.)
        cid = api.post("/api/v1/conversations", json={}, headers={"Connection": "close"}).json()["id"]
        answers: list[requests.Response | Exception] = []

        def long_poll() -> None:
            try:
                answers.append(api.get(f"/api/v1/conversations/{cid}/messages", params={"after": 99, "wait": 30},
                                       timeout=60))
            except requests.RequestException as error:
                answers.append(error)

        polls = [threading.Thread(target=long_poll) for _ in range(5)]
        for poll in polls:
            poll.start()
        stream = api.http.get(f"{web.url}/api/v1/conversations/{cid}/events", stream=True, timeout=(5, 60))
        lines = stream.iter_lines(decode_unicode=True)
        assert next(lines).startswith("retry:")
        wait_until(lambda: waiting_now(web) == 6, what="the waits to be held")
        assert web.popen is not None
        web.popen.send_signal(signal.SIGTERM)
        for poll in polls:
            poll.join(timeout=60)
        assert [getattr(answer, "status_code", answer) for answer in answers] == [200] * 5
        assert all(answer.json() == {"items": [], "last_seq": 99} for answer in answers)
        rest = list(lines)  # the stream ends (the client resumes elsewhere with Last-Event-ID)
        assert all(line == "" or line.startswith(":") or line.startswith(("event:", "data:", "id:")) for line in rest)
        assert web.popen.wait(timeout=30) == 0
    finally:
        web.kill(signal.SIGKILL)
