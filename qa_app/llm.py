"""Streaming chat client for an OpenAI-compatible endpoint (httpx), with Ollama's own chat API.

Why Ollama gets its native ``/api/chat``: its ``/v1/chat/completions`` ignores ``options``
(its request type has no such field), so ``options.num_ctx`` sent there has no effect and
Ollama silently cuts any prompt longer than its default window (2048-4096 tokens). The native
endpoint honours ``options.num_ctx``. Ollama is recognised by ``GET {root}/api/version``
(``root`` is ``base_url`` without its ``/v1``), asked once per client. Every other server gets
the plain OpenAI body without ``options``: OpenAI answers 400 to unknown parameters.

Failures become ``LLMError`` with a one-line reason that never contains the API key. Retries
(``settings.retries``, short backoff) happen only before the first token, for connection
errors, 5xx and 429; a read timeout is not retried, so a stalled server costs one
``read_timeout``, not several.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

from .settings import LLMSettings

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
BACKOFF_SECONDS = 0.25  # doubled per retry, capped: a local server either comes back fast or not
MAX_BACKOFF_SECONDS = 2.0
PROBE_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
EXCERPT_CHARS = 200


class LLMError(Exception):
    """The language model could not answer; str() is a one-line human reason."""


class _Retryable(Exception):
    def __init__(self, error: LLMError, delay: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


class _StreamEnded(Exception):
    """The body ended without [DONE] (or Ollama's done) and without a finish reason."""


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` masked (no-op for an empty secret)."""
    return text.replace(secret, "***") if secret else text


def _one_line(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_openai_sse(lines: Iterable[str]) -> Iterator[str]:
    finished = False
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, event:/id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            # llama.cpp's server ends an interrupted answer with [DONE] and no
            # finish_reason: that is a cut, not a complete answer.
            if not finished:
                raise _StreamEnded
            return
        event = _json_event(data)
        if event.get("error"):
            raise LLMError(f"server error in stream: {_error_text(event['error'])}")
        for choice in event.get("choices") or []:  # usage-only chunks have no choices
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield content
            finished = finished or bool(choice.get("finish_reason"))
    if not finished:
        raise _StreamEnded


def _parse_ollama_ndjson(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if not line.strip():
            continue
        event = _json_event(line)
        if event.get("error"):
            raise LLMError(f"server error in stream: {_error_text(event['error'])}")
        content = (event.get("message") or {}).get("content")
        if content:
            yield content
        if event.get("done"):
            return
    raise _StreamEnded


def _json_event(data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        raise LLMError(f"malformed stream event: {_one_line(data, 80)}") from None
    if not isinstance(event, dict):
        raise LLMError(f"malformed stream event: {_one_line(data, 80)}")
    return event


def _error_text(error: Any) -> str:
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


class LLMClient:
    """One endpoint, one model. Thread-safe for concurrent ``stream_chat`` calls."""

    def __init__(
        self,
        settings: LLMSettings,
        api_key: str = "",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._api_key = api_key
        self.base_url = settings.base_url.rstrip("/")
        url = httpx.URL(self.base_url) if self.base_url else None
        # Host and port only: a base_url may carry credentials that must not reach messages.
        self._where = f"{url.host}:{url.port or ''}".rstrip(":") if url else "(none)"
        timeout = httpx.Timeout(
            connect=settings.connect_timeout, read=settings.read_timeout,
            write=settings.read_timeout, pool=settings.connect_timeout,
        )
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._ollama: bool | None = None
        self._model = settings.model

    # -- public ------------------------------------------------------------------------
    @property
    def configured(self) -> bool:
        return bool(self.base_url)

    @property
    def model(self) -> str:
        return self._model

    @property
    def available(self) -> bool:
        return self.probe()["ok"]

    def probe(self) -> dict[str, Any]:
        """GET {base_url}/models with a short timeout: {"ok", "models", "reason"}."""
        if not self.configured:
            return {"ok": False, "models": [], "reason": "no language model endpoint configured"}
        try:
            resp = self._http.get(
                f"{self.base_url}/models", headers=self._headers(), timeout=PROBE_TIMEOUT
            )
        except httpx.HTTPError as exc:
            return {"ok": False, "models": [], "reason": self._describe(exc, started=False)}
        if resp.status_code >= 400:
            reason = f"HTTP {resp.status_code} from {self._where}: {_one_line(resp.text)}"
            return {"ok": False, "models": [], "reason": self._clean(reason)}
        try:
            data = resp.json().get("data") or []
            models = [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
        except (ValueError, AttributeError, TypeError):
            return {"ok": False, "models": [], "reason": f"{self._where} did not list models"}
        if self._model and not _serves(models, self._model):
            listed = ", ".join(models[:8]) or "none"
            reason = f"model {self._model!r} is not served by {self._where} (available: {listed})"
            return {"ok": False, "models": models, "reason": self._clean(reason)}
        if not models and not self._model:
            return {"ok": False, "models": [], "reason": f"{self._where} serves no model"}
        return {"ok": True, "models": models, "reason": ""}

    def stream_chat(self, messages: list[dict[str, str]]) -> Iterator[str]:
        """Yield the answer's content deltas as they arrive. Raises LLMError."""
        if not self.configured:
            raise LLMError("no language model endpoint configured")
        url, body, parse = self._request(messages)
        retries = self.settings.retries
        for attempt in range(retries + 1):
            try:
                yield from self._attempt(url, body, parse)
                return
            except _Retryable as exc:
                if attempt == retries:
                    raise exc.error from None
                backoff = min(BACKOFF_SECONDS * 2**attempt, MAX_BACKOFF_SECONDS)
                time.sleep(min(exc.delay, MAX_BACKOFF_SECONDS) if exc.delay else backoff)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _request(
        self, messages: list[dict[str, str]]
    ) -> tuple[str, dict[str, Any], Callable[[Iterable[str]], Iterator[str]]]:
        s = self.settings
        model = self._model or self._first_model()
        if self._is_ollama():
            options = {"num_ctx": s.context_window, "temperature": s.temperature,
                       "num_predict": s.max_tokens}
            body = {"model": model, "messages": messages, "stream": True, "options": options}
            return f"{self._root()}/api/chat", body, _parse_ollama_ndjson
        body = {"model": model, "messages": messages, "stream": True,
                "temperature": s.temperature, "max_tokens": s.max_tokens}
        return f"{self.base_url}/chat/completions", body, _parse_openai_sse

    def _attempt(
        self, url: str, body: dict[str, Any], parse: Callable[[Iterable[str]], Iterator[str]]
    ) -> Iterator[str]:
        started = False
        try:
            with self._http.stream("POST", url, json=body, headers=self._headers()) as resp:
                if resp.status_code >= 400:
                    raise self._status_error(resp)
                for delta in parse(resp.iter_lines()):
                    started = True
                    yield delta
        except _StreamEnded:
            error = self._error("stream cut: the server closed it before the end of the answer")
            if started:
                raise error from None
            raise _Retryable(error) from None
        except httpx.HTTPError as exc:
            error = self._error(self._describe(exc, started))
            if started or isinstance(exc, httpx.ReadTimeout):
                raise error from None
            raise _Retryable(error) from None
        except LLMError as exc:
            raise self._error(str(exc)) from None

    def _status_error(self, resp: httpx.Response) -> Exception:
        resp.read()
        error = self._error(f"HTTP {resp.status_code} from {self._where}: {_one_line(resp.text)}")
        if resp.status_code in RETRY_STATUS:
            return _Retryable(error, _retry_after(resp))
        return error

    def _describe(self, exc: httpx.HTTPError, started: bool) -> str:
        if started:
            return f"stream cut: connection to {self._where} lost mid-answer ({type(exc).__name__})"
        if isinstance(exc, httpx.ConnectTimeout):
            return f"no connection to {self._where} within {self.settings.connect_timeout:g} s"
        if isinstance(exc, httpx.ReadTimeout):
            return f"no response from {self._where} within {self.settings.read_timeout:g} s"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {self._where}"
        return f"{type(exc).__name__} talking to {self._where}: {_one_line(str(exc), 120)}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _clean(self, message: str) -> str:
        return _one_line(redact(message, self._api_key), 400)

    def _error(self, message: str) -> LLMError:
        return LLMError(self._clean(message))

    def _root(self) -> str:
        return re.sub(r"/v1$", "", self.base_url)

    def _is_ollama(self) -> bool:
        if self._ollama is None:
            try:
                resp = self._http.get(f"{self._root()}/api/version", headers=self._headers(),
                                      timeout=PROBE_TIMEOUT)
            except httpx.HTTPError:
                return False  # unreachable: not cached, the chat request reports the failure
            try:
                payload = resp.json() if resp.status_code == 200 else {}
            except ValueError:
                payload = {}
            self._ollama = isinstance(payload, dict) and "version" in payload
        return self._ollama

    def _first_model(self) -> str:
        """No model configured: use the one the server lists first (a one-model local server)."""
        probe = self.probe()
        if not probe["models"]:
            raise LLMError(probe["reason"] or "no model configured and none listed")
        self._model = probe["models"][0]
        return self._model


def _serves(models: list[str], wanted: str) -> bool:
    # Ollama lists "name:latest" for a model requested as "name".
    return wanted in models or f"{wanted}:latest" in models


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return None
