"""A small but real OpenAI-compatible chat-completions server on 127.0.0.1 for backend tests.

It speaks HTTP through ``http.server`` in a thread, validates each request the way a VLM server
must (one user turn: an ``image_url`` data URL that decodes as an image, then a text part) and
hands the decoded image and text to a test-supplied ``responder``. The responder returns the
reply text, or an ``int`` HTTP status to fail that call, or a ``Raw`` reply for fault tests (any
status, body bytes and headers, a sleep before answering, a connection dropped mid-body). Malformed requests get a 400 and are
recorded in ``problems`` so tests can assert there were none.

``served_labeler`` / ``served_teacher`` build the product's model backends for such a server the
way a stage does (``engine.backends.make_labeler`` / ``make_teacher`` over a ``ChatClient``) and
close their connection pool afterwards.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

from PIL import Image

Responder = Callable[[Image.Image, str, dict], "str | int | Raw"]


@dataclass
class Raw:
    """A reply sent exactly as given: ``status``, ``body`` and ``headers`` (Content-Length is the
    full body's unless ``cut_at`` is set: then only ``body[:cut_at]`` is written and the connection
    is closed, a reply dropped mid-body), after sleeping ``delay_s`` (past the client's timeout...)."""

    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0
    cut_at: int | None = None


@dataclass
class Call:
    model: str
    text: str
    image_size: tuple[int, int]
    params: dict
    authorization: str | None = None
    """The request's ``Authorization`` header (``Bearer <key>``)."""


@dataclass
class FakeOpenAIServer:
    responder: Responder
    calls: list[Call] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    port: int = 0
    """0 picks a free port; a fixed one brings an endpoint back up where a test found it dead."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                with server._lock:
                    server.statuses.append(status)

            def _send_raw(self, raw: "Raw") -> None:
                import time

                if raw.delay_s:
                    time.sleep(raw.delay_s)
                try:
                    self.send_response(raw.status)
                    headers = {"Content-Type": "application/json", **raw.headers}
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(raw.body)))
                    self.end_headers()
                    self.wfile.write(raw.body if raw.cut_at is None else raw.body[:raw.cut_at])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first (timeout, size cap)
                    pass
                if raw.cut_at is not None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                with server._lock:
                    server.statuses.append(raw.status)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                try:
                    req = json.loads(body)
                    image, text = server._parse(req)
                except ValueError as exc:
                    with server._lock:
                        server.problems.append(str(exc))
                    return self._send(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                params = {k: v for k, v in req.items() if k not in ("model", "messages")}
                with server._lock:
                    server.calls.append(Call(req["model"], text, image.size, params, self.headers.get("Authorization")))
                reply = server.responder(image, text, req)
                if isinstance(reply, Raw):
                    return self._send_raw(reply)
                if isinstance(reply, int):
                    return self._send(reply, {"error": {"message": f"scripted {reply}", "type": "server_error"}},
                                      {"retry-after-ms": "5"})
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": req["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @staticmethod
    def _parse(req: dict) -> tuple[Image.Image, str]:
        msgs = req.get("messages")
        if not isinstance(msgs, list) or len(msgs) != 1 or msgs[0].get("role") != "user":
            raise ValueError(f"expected exactly one user message, got {msgs!r:.200}")
        content = msgs[0].get("content")
        if not isinstance(content, list) or len(content) != 2:
            raise ValueError("user content must be [image_url, text]")
        img_part, text_part = content
        if img_part.get("type") != "image_url" or text_part.get("type") != "text":
            raise ValueError(f"content order/types wrong: {[c.get('type') for c in content]}")
        url = img_part["image_url"]["url"]
        prefix = "data:image/png;base64,"
        if not url.startswith(prefix):
            raise ValueError(f"image is not a PNG data URL: {url[:40]!r}")
        try:
            image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):], validate=True)))
            image.load()
        except Exception as exc:
            raise ValueError(f"image data URL does not decode: {exc}") from None
        if not req.get("model"):
            raise ValueError("model is missing")
        return image.convert("RGB"), text_part["text"]

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _base_url(server: "FakeOpenAIServer | str") -> str:
    return server if isinstance(server, str) else server.base_url


@contextmanager
def served_labeler(server: "FakeOpenAIServer | str", model: str, *, box_format: str = "qwen_0_1000",
                   **endpoint: Any) -> Iterator[Any]:
    """The stage's grounding labeler (``ModelGroundingLabeler`` behind a metered ``ChatClient``)
    for ``server`` (or a base URL); ``endpoint`` holds ``EndpointConfig`` fields (``max_retries``...)."""
    from deepperception.config import LabelingStageConfig
    from deepperception.engine import backends
    from deepperception.serving.endpoint import EndpointConfig

    labeler = backends.make_labeler(LabelingStageConfig(
        backend="openai", box_format=box_format,
        endpoint=EndpointConfig(base_url=_base_url(server), model=model, **endpoint)))
    try:
        yield labeler
    finally:
        backends.close(labeler)


@contextmanager
def served_teacher(server: "FakeOpenAIServer | str", model: str, *, temperature: float = 0.7, max_tokens: int = 1024,
                   **endpoint: Any) -> Iterator[Any]:
    """The stage's CoT teacher (``ModelTeacher`` behind a metered ``ChatClient``) for ``server`` (or a base URL)."""
    from deepperception.config import DistillationStageConfig
    from deepperception.engine import backends
    from deepperception.serving.endpoint import EndpointConfig

    cfg = DistillationStageConfig(backend="openai", temperature=temperature, max_tokens=max_tokens,
                                  endpoint=EndpointConfig(base_url=_base_url(server), model=model, **endpoint))
    teacher = backends.make_teacher(cfg, None)  # the entity table only feeds the template teacher
    try:
        yield teacher
    finally:
        backends.close(teacher)
