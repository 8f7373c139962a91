"""A real HTTP server on 127.0.0.1 speaking the OpenAI streaming chat protocol, for tests.

    with FakeOpenAIServer("Réponse [1].") as server:
        client = LLMClient(LLMSettings(base_url=server.url, model="fake-model"))

Modes: ok, error500 (always 500), flaky (``fail_times`` answers with ``fail_status``, then ok),
slow (waits ``delay`` seconds before answering), cut (closes the socket halfway through the
stream), nodone (a clean end without [DONE] nor finish_reason), badjson (an invalid event).
``answer`` is a string or a function of the request body. ``port`` fixes the port, so that a
test can ``stop()`` the server and ``start()`` it again where the client expects it. With ``ollama=True`` it also
answers Ollama's ``/api/version`` and native ``/api/chat`` (NDJSON). ``api_key`` set: requests
without that Bearer token get a 401 whose body echoes the token they sent, as some servers do.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("ok", "error500", "flaky", "slow", "cut", "nodone", "badjson")


class FakeOpenAIServer:
    def __init__(
        self,
        answer: str | Callable[[dict[str, Any]], str] = "Bonjour [1].",
        *,
        mode: str = "ok",
        token_delay: float = 0.0,
        delay: float = 2.0,
        fail_times: int = 1,
        fail_status: int = 500,
        api_key: str = "",
        models: tuple[str, ...] = ("fake-model",),
        ollama: bool = False,
        port: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.answer, self.mode, self.token_delay, self.delay = answer, mode, token_delay, delay
        self.fail_times, self.fail_status, self.api_key = fail_times, fail_status, api_key
        self.models, self.ollama = models, ollama
        self.port = port  # 0: any free port; a fixed one lets a test stop and restart it
        self.requests: list[dict[str, Any]] = []  # JSON bodies of chat requests, in order
        self.headers: list[dict[str, str]] = []  # their headers
        self.paths: list[str] = []  # every path requested, in order
        self._lock = threading.Lock()
        self._conns: set[Any] = set()  # open client sockets, closed by stop() like a real exit
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._stop.clear()
        self._server = _QuietServer(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping in slow mode
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:  # keep-alive connections die with the server, as in a real stop
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, path: str, headers: dict[str, str], body: dict[str, Any] | None) -> int:
        """Record a request; return how many chat requests came before it."""
        with self._lock:
            self.paths.append(path)
            if body is None:
                return len(self.requests)
            self.requests.append(body)
            self.headers.append(headers)
            return len(self.requests) - 1

    def _text_for(self, body: dict[str, Any]) -> str:
        return self.answer(body) if callable(self.answer) else self.answer


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up
            super().handle_error(request, client_address)


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) or [""]


def _handler(fake: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked streams, as real servers send them

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def setup(self) -> None:
            super().setup()
            with fake._lock:
                fake._conns.add(self.connection)

        def finish(self) -> None:
            with fake._lock:
                fake._conns.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def do_GET(self) -> None:
            fake._record(self.path, dict(self.headers), None)
            if not self._authorised():
                return
            if self.path == "/v1/models":
                data = [{"id": m, "object": "model", "owned_by": "test"} for m in fake.models]
                self._json(200, {"object": "list", "data": data})
            elif self.path == "/api/version" and fake.ollama:
                self._json(200, {"version": "0.0.0-fake"})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"_raw": raw.decode("utf-8", "replace")}
            index = fake._record(self.path, dict(self.headers), body)
            if not self._authorised():
                return
            native = fake.ollama and self.path == "/api/chat"
            if self.path != "/v1/chat/completions" and not native:
                self._json(404, {"error": "not found"})
                return
            mode = fake.mode
            if mode == "error500" or (mode == "flaky" and index < fake.fail_times):
                status = 500 if mode == "error500" else fake.fail_status
                self._json(status, {"error": {"message": "model crashed", "code": status}})
                return
            if mode == "slow" and fake._stop.wait(fake.delay):
                return
            self._stream(fake._text_for(body), native, mode)

        # -- helpers -------------------------------------------------------------------
        def _authorised(self) -> bool:
            if not fake.api_key:
                return True
            sent = self.headers.get("Authorization", "")
            if sent == f"Bearer {fake.api_key}":
                return True
            token = sent.removeprefix("Bearer ")
            self._json(401, {"error": {"message": f"Incorrect API key provided: {token}"}})
            return False

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _chunk(self, text: str) -> None:
            data = text.encode("utf-8")
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _stream(self, answer: str, native: bool, mode: str) -> None:
            self.send_response(200)
            kind = "application/x-ndjson" if native else "text/event-stream"
            self.send_header("Content-Type", kind)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            tokens = _tokens(answer)
            for i, token in enumerate(tokens):
                if mode == "cut" and i >= max(1, len(tokens) // 2):
                    self.close_connection = True  # no terminating chunk: a broken body
                    return
                if mode == "badjson" and i == 1:
                    self._chunk("data: {not json\n\n")
                    continue
                self._chunk(_event(token, None, native))
                if fake.token_delay:
                    time.sleep(fake.token_delay)
            if mode != "nodone":
                self._chunk(_event("", "stop", native))
                if not native:
                    self._chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")

    return Handler


def _event(content: str, finish: str | None, native: bool) -> str:
    if native:
        done = finish is not None
        line = {"model": "fake-model", "message": {"role": "assistant", "content": content},
                "done": done, **({"done_reason": finish} if done else {})}
        return json.dumps(line) + "\n"
    chunk = {
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
        "choices": [{"index": 0, "delta": {"content": content} if content else {},
                     "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
