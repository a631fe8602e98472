"""A fault-injecting OpenAI chat-completions server on loopback, for client and stage tests and
the labeling concurrency benchmark.

It is a real HTTP/1.1 server (``http.server`` on its own threads), so the client's sockets,
timeouts, keep-alive and connection errors are the real ones. Each request is identified by its
last user text part (tests make those unique per item); ``plan[text]`` lists the faults its
successive attempts get (attempt 1 -> ``plan[text][0]``, ...), after which it answers normally.
Every request is recorded (arrival time, text, attempt number), and ``max_in_flight`` counts
the most requests the server was handling at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass(frozen=True)
class Fault:
    """What one attempt gets. ``kind``: ok | status | hang | malformed_json | empty_choices |
    missing_content | missing_choices | disconnect."""

    kind: str = "ok"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    text: str | None = None

    @classmethod
    def ok(cls, text: str | None = None) -> "Fault":
        return cls("ok", text=text)

    @classmethod
    def http(cls, status: int, retry_after: str | None = None) -> "Fault":
        return cls("status", status=status, headers=(("Retry-After", retry_after),) if retry_after is not None else ())

    @classmethod
    def hang(cls, seconds: float) -> "Fault":
        return cls("hang", seconds=seconds)

    @classmethod
    def malformed(cls) -> "Fault":
        return cls("malformed_json")

    @classmethod
    def empty_choices(cls) -> "Fault":
        return cls("empty_choices")

    @classmethod
    def missing_content(cls) -> "Fault":
        return cls("missing_content")

    @classmethod
    def disconnect(cls) -> "Fault":
        return cls("disconnect")


@dataclass
class Arrival:
    t: float
    text: str
    attempt: int
    model: str
    n_images: int
    image_urls: list[str]
    body: dict


def default_reply(text: str, n_images: int) -> str:
    return "<answer>(100,200),(300,400)</answer>"


def usage_for(text: str, n_images: int, reply: str) -> dict:
    """Deterministic token counts the tests can recompute: words + 10 per image, reply words."""
    p = len(text.split()) + 10 * n_images
    c = len(reply.split())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


@dataclass
class FaultServer:
    plan: dict[str, list[Fault]] = field(default_factory=dict)
    reply: Callable[[str, int], str] = default_reply
    latency_s: float = 0.0
    """Added to every request before it is answered (a model's generation time)."""
    port: int = 0

    def __post_init__(self) -> None:
        self.arrivals: list[Arrival] = []
        self.attempts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, data: bytes, headers: tuple = ()) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._handle(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _handle(self, raw: bytes) -> None:
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, b'{"error": {"message": "no route"}}')
                req = json.loads(raw)
                content = req["messages"][-1]["content"]
                if isinstance(content, str):
                    text, urls = content, []
                else:
                    text = [p["text"] for p in content if p["type"] == "text"][-1]
                    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
                with server._lock:
                    server.attempts[text] += 1
                    n = server.attempts[text]
                    server.arrivals.append(Arrival(time.monotonic(), text, n, req.get("model"), len(urls), urls, req))
                    faults = server.plan.get(text, [])
                    fault = faults[n - 1] if n <= len(faults) else Fault.ok()
                if server.latency_s:
                    server._stop.wait(server.latency_s)
                if fault.kind == "status":
                    body = json.dumps({"error": {"message": f"scripted {fault.status}", "type": "server_error"}}).encode()
                    return self._send(fault.status, body, fault.headers)
                if fault.kind == "hang":
                    server._stop.wait(fault.seconds)
                    self.close_connection = True
                    return self._send(200, b'{"choices": []}')
                if fault.kind == "disconnect":
                    self.close_connection = True
                    return
                if fault.kind == "malformed_json":
                    return self._send(200, b'{"id": "x", "choices": [{"message": {"content": "trunc')
                reply = fault.text if fault.text is not None else server.reply(text, len(urls))
                usage = usage_for(text, len(urls), reply)
                if fault.kind == "empty_choices":
                    return self._send(200, json.dumps({"id": "x", "choices": [], "usage": usage}).encode())
                if fault.kind == "missing_content":
                    choice = {"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}
                    return self._send(200, json.dumps({"id": "x", "choices": [choice], "usage": usage}).encode())
                choice = {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                self._send(200, json.dumps({"id": "x", "object": "chat.completion", "model": req.get("model"),
                                            "choices": [choice], "usage": usage}).encode())

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # 32+ clients connect at once; the default backlog (5) drops SYNs

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
