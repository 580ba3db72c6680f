"""A local stand-in for an OpenAI-compatible model server, scripted per test. It speaks the real
Chat Completions wire protocol: JSON answers, `text/event-stream` chunks ending in `data: [DONE]`,
`tool_calls` (streamed by index), `finish_reason` (`length` past `max_tokens`), `usage` (in the last
chunk when asked with `stream_options.include_usage`), and error bodies with their status codes —
including llama.cpp's 400 for a prompt past its context window, which it reports at `GET /props`
like llama.cpp does. Tokens are counted as a word each (answers) and 4 characters each (prompts)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONTEXT_TOKENS = 4096


def prompt_tokens(body: dict[str, Any]) -> int:
    return len(json.dumps(body["messages"]) + json.dumps(body.get("tools", []))) // 4


class FakeModelServer:
    def __init__(self) -> None:
        self.script: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.streaming = threading.Event()  # set when a streamed answer has begun
        self.hung_up = threading.Event()  # set when a client closed a stream before its end
        self.lock = threading.Lock()
        self.active = 0  # completions being answered now, and the most at once since the last reset
        self.most_active = 0
        self.tokenize_calls = 0  # asked to count tokens (answered 404, as a server without a tokenizer)
        self.default: dict[str, Any] = {"content": "OK"}  # the answer when the script is used up
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                if self.path != "/v1/chat/completions":  # no tokenizer here (llama.cpp has /tokenize)
                    if self.path == "/tokenize":
                        with server.lock:
                            server.tokenize_calls += 1
                    server.json_answer(self, 404, {"error": {"message": "not found"}})
                    return
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "authorization": self.headers.get("Authorization")})
                    step = server.script.pop(0) if server.script else dict(server.default)
                    server.active += 1
                    server.most_active = max(server.most_active, server.active)
                try:
                    server.answer(self, body, step)
                finally:
                    with server.lock:
                        server.active -= 1

            def do_GET(self) -> None:
                if self.path == "/props":
                    server.json_answer(self, 200, {"default_generation_settings": {"n_ctx": CONTEXT_TOKENS}})
                elif self.path == "/v1/models":
                    server.json_answer(self, 200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    server.json_answer(self, 404, {"error": {"message": "not found"}})

            def log_message(self, *_args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()

    def reset(self, *steps: dict[str, Any]) -> None:
        with self.lock:
            self.script = list(steps)
            self.requests = []
            self.most_active = self.active
            self.tokenize_calls = 0
            self.default = {"content": "OK"}
        self.streaming.clear()
        self.hung_up.clear()

    # The wire protocol ---------------------------------------------------------------------------

    @staticmethod
    def json_answer(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], step: dict[str, Any]) -> None:
        used = prompt_tokens(body)
        if used + (body.get("max_tokens") or 0) > CONTEXT_TOKENS and "status" not in step:
            with self.lock:
                self.script.insert(0, step)  # not consumed: the retry with less history gets it
            step = {"status": 400, "code": 400, "message": "the request exceeds the available context size, "
                    f"try increasing it (n_prompt_tokens={used}, n_ctx={CONTEXT_TOKENS})"}
        if "status" in step:
            payload = json.dumps({"error": {"message": step.get("message", "scripted failure"),
                                            "type": "invalid_request_error" if step["status"] < 500 else "server_error",
                                            "code": step.get("code")}}).encode()
            handler.send_response(step["status"])
            handler.send_header("Content-Type", "application/json")
            if "retry_after" in step:
                handler.send_header("Retry-After", str(step["retry_after"]))
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        calls = [{"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                  "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])
                               if not isinstance(call["arguments"], str) else call["arguments"]}}
                 for call in step.get("tool_calls", [])]
        finish = "tool_calls" if calls else "stop"
        content = step.get("content")
        prefill = body["messages"][-1] if body["messages"][-1]["role"] == "assistant" else None
        if prefill and content and content.startswith(prefill["content"] or ""):
            content = content[len(prefill["content"]):]  # the server continues the assistant's text
        if content and body.get("max_tokens") and len(content.split(" ")) > body["max_tokens"]:
            content, finish = " ".join(content.split(" ")[: body["max_tokens"]]), "length"
        usage = step.get("usage") or {"prompt_tokens": used,
                                      "completion_tokens": len((content or "").split()) + 10 * len(calls),
                                      }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            message = {"role": "assistant", "content": content if not calls else None}
            if calls:
                message["tool_calls"] = calls
            payload = json.dumps({"id": completion_id, "object": "chat.completion", "created": int(time.time()),
                                  "model": body["model"], "choices": [{"index": 0, "message": message,
                                                                       "finish_reason": finish}],
                                  "usage": usage}).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        def send(data: str) -> None:
            raw = f"data: {data}\n\n".encode()
            handler.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            handler.wfile.flush()

        try:
            send(json.dumps(chunk({"role": "assistant", "content": ""})))
            self.streaming.set()
            for index, call in enumerate(calls):
                arguments = call["function"]["arguments"]
                half = len(arguments) // 2
                send(json.dumps(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                       "function": {"name": call["function"]["name"],
                                                                    "arguments": arguments[:half]}}]})))
                send(json.dumps(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]})))
            for count, piece in enumerate(_pieces(content or "") if not calls else []):
                if count == step.get("break_after"):  # the connection drops mid-answer
                    handler.close_connection = True
                    handler.wfile.flush()
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    return
                time.sleep(step.get("chunk_delay", 0))
                send(json.dumps(chunk({"content": piece})))
            send(json.dumps(chunk({}, finish)))
            if (body.get("stream_options") or {}).get("include_usage"):
                send(json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                                 "model": body["model"], "choices": [], "usage": usage}))
            send("[DONE]")
            handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.hung_up.set()  # the worker died, or hung up on a cancel, mid-stream


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]
