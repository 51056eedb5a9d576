"""A fault-injecting OpenAI-compatible server on 127.0.0.1 for planner-client tests.

Each chat-completions request consumes the next scripted behaviour (the last one repeats).
Every request is recorded so tests can count retries.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    kind: str  # text | tool | tools | status | slow | invalid_json | nested_json | truncated | trickle | flood
    text: str = ""
    tool_name: str = ""
    arguments: str = "{}"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # slow: before answering; trickle: between words
    repeat: int = 1  # flood: chunks of ``text`` sent
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # tools: (id, name, arguments) per call
    split: int = 0  # tools: stream each call's arguments in pieces of this many characters (0: whole)


def text(answer: str) -> Behaviour:
    return Behaviour("text", text=answer)


def tool(name: str, arguments: dict[str, Any] | str) -> Behaviour:
    return Behaviour("tool", tool_name=name, arguments=arguments if isinstance(arguments, str) else json.dumps(arguments))


def status(code: int, **headers: str) -> Behaviour:
    return Behaviour("status", status=code, headers=headers)


def trickle(answer: str, every_s: float) -> Behaviour:
    """One word every ``every_s`` seconds: each read is quick, the whole answer is not."""
    return Behaviour("trickle", text=answer, delay_s=every_s)


def flood(chunk: str, repeat: int) -> Behaviour:
    """``repeat`` content chunks of ``chunk``, whatever max_tokens says."""
    return Behaviour("flood", text=chunk, repeat=repeat)


def tools(*calls: tuple[str, str, dict[str, Any] | str], split: int = 0) -> Behaviour:
    """Several tool calls in one turn, each (id, name, arguments), ids exactly as given; ``split``: arguments
    streamed in pieces of that many characters, one delta each (as vLLM streams them)."""
    return Behaviour("tools", split=split, calls=[
        (call_id, name, arguments if isinstance(arguments, str) else json.dumps(arguments))
        for call_id, name, arguments in calls])


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of connections would overflow it and each
    # dropped SYN is retried a second later, a delay no production server (backlog 2048) adds
    request_queue_size = 1024


class FakeOpenAIServer:
    def __init__(self, behaviours: list[Behaviour], model: str = "fake-model", capacity: int | None = None) -> None:
        """``capacity``: at most this many chat requests are served at once; the rest queue (as in a GPU server)."""
        self.behaviours = list(behaviours)
        self._capacity = threading.BoundedSemaphore(capacity) if capacity else None
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0  # the most slow requests the server held at once
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def _next(self) -> Behaviour:
        with self._lock:
            return self.behaviours.pop(0) if len(self.behaviours) > 1 else self.behaviours[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are separate writes: with Nagle's algorithm each response would wait
            # for the client's delayed ACK (~40 ms), which no real server does
            disable_nagle_algorithm = True

            def log_message(self, *_: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, content_type: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                server.requests.append({"path": self.path, "body": None})
                body = {"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "test"}]}
                self._send(200, json.dumps(body).encode())

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append({"path": self.path, "body": request, "time": time.monotonic(),
                                        "authorization": self.headers.get("Authorization")})
                behaviour = server._next()
                if behaviour.kind == "slow":
                    with server._lock:
                        server.in_flight += 1
                        server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                    try:
                        if server._capacity is not None:
                            with server._capacity:
                                time.sleep(behaviour.delay_s)
                        else:
                            time.sleep(behaviour.delay_s)
                    finally:
                        with server._lock:
                            server.in_flight -= 1
                    behaviour = Behaviour("text", text=behaviour.text or "late")
                if behaviour.kind == "status":
                    error = {"error": {"message": f"injected {behaviour.status}", "type": "injected"}}
                    self._send(behaviour.status, json.dumps(error).encode(), headers=behaviour.headers)
                    return
                self._stream(behaviour)

            def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
                payload = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": server.model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                return f"data: {json.dumps(payload)}\n\n".encode()

            def _stream(self, behaviour: Behaviour) -> None:
                parts: list[bytes] = []
                if behaviour.kind in ("trickle", "flood"):
                    self._paced(behaviour)
                    return
                if behaviour.kind == "tools":
                    parts = []
                    for index, (call_id, name, arguments) in enumerate(behaviour.calls):
                        step = behaviour.split or max(len(arguments), 1)
                        pieces = [arguments[start:start + step] for start in range(0, len(arguments), step)] or [""]
                        first = {"index": index, "id": call_id, "type": "function",
                                 "function": {"name": name, "arguments": pieces[0]}}
                        parts.append(self._chunk({"role": "assistant", "tool_calls": [first]}, None))
                        parts += [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]},
                                              None) for piece in pieces[1:]]
                    parts += [self._chunk({}, "tool_calls"), b"data: [DONE]\n\n"]
                elif behaviour.kind == "invalid_json":
                    parts = [b"data: {this is not json\n\n"]
                elif behaviour.kind == "nested_json":  # deeper than a JSON parser recurses
                    parts = [b"data: " + b"[" * 100_000 + b"\n\n"]
                elif behaviour.kind == "truncated":
                    parts = [self._chunk({"role": "assistant", "content": "half an ans"}, None)]
                elif behaviour.kind == "tool":
                    call = {"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": behaviour.tool_name, "arguments": behaviour.arguments}}
                    parts = [self._chunk({"role": "assistant", "tool_calls": [call]}, None),
                             self._chunk({}, "tool_calls"), b"data: [DONE]\n\n"]
                else:
                    words = behaviour.text.split(" ")
                    parts = [self._chunk({"role": "assistant", "content": word + " "}, None) for word in words]
                    parts += [self._chunk({}, "stop"), b"data: [DONE]\n\n"]
                body = b"".join(parts)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _paced(self, behaviour: Behaviour) -> None:
                """Chunks written one by one (a pause between trickled words), never built whole."""
                if behaviour.kind == "trickle":
                    chunks = [self._chunk({"content": word + " "}, None) for word in behaviour.text.split(" ")]
                    count, pause = len(chunks), behaviour.delay_s
                else:
                    chunks, count, pause = [self._chunk({"content": behaviour.text}, None)], behaviour.repeat, 0.0
                end = self._chunk({}, "stop") + b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(sum(len(c) for c in chunks) * (count // len(chunks)) + len(end)))
                self.end_headers()
                try:
                    for index in range(count):
                        self.wfile.write(chunks[index % len(chunks)])
                        self.wfile.flush()
                        if pause:
                            time.sleep(pause)
                    self.wfile.write(end)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: as intended
                    self.close_connection = True

        return Handler


def main() -> None:
    """Serve slow answers from a process of its own (benchmarks: the client measured alone)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--text", default="No expert was needed for this answer.")
    arguments = parser.parse_args()
    server = FakeOpenAIServer([Behaviour("slow", text=arguments.text, delay_s=arguments.latency)],
                              capacity=arguments.capacity)
    sys.stdout.write(server.url + "\n")
    sys.stdout.flush()
    server._server.serve_forever()


if __name__ == "__main__":
    main()
