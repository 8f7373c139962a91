"""LLMClient against a real HTTP server on 127.0.0.1 (tests/llm_server.py)."""

from __future__ import annotations

import socket
import time

import pytest

from qa_app.llm import LLMClient, LLMError, redact
from qa_app.settings import LLMSettings
from tests.llm_server import FakeOpenAIServer

ANSWER = "La sécurité de l'approvisionnement en énergie est prioritaire [1]."
MESSAGES = [{"role": "user", "content": "Quelle question ?"}]


def settings(url: str, **over) -> LLMSettings:
    values = {"base_url": url, "model": "fake-model", "connect_timeout": 1.0,
              "read_timeout": 2.0, "retries": 2, **over}
    return LLMSettings(**values)


@pytest.fixture
def server(request):
    kwargs = getattr(request, "param", {})
    with FakeOpenAIServer(kwargs.pop("answer", ANSWER), **kwargs) as srv:
        yield srv


def collect(client: LLMClient) -> str:
    return "".join(client.stream_chat(MESSAGES))


def test_normal_stream_yields_deltas_and_sends_settings(server):
    client = LLMClient(settings(server.url, temperature=0.3, max_tokens=99))
    deltas = list(client.stream_chat(MESSAGES))
    assert len(deltas) > 3
    assert "".join(deltas) == ANSWER
    body = server.requests[0]
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["temperature"] == 0.3 and body["max_tokens"] == 99
    assert body["messages"] == MESSAGES
    # Not Ollama: no `options`, which OpenAI itself would reject.
    assert "options" not in body
    assert "Authorization" not in server.headers[0]


def test_ollama_gets_native_chat_with_num_ctx():
    with FakeOpenAIServer(ANSWER, ollama=True) as server:
        client = LLMClient(settings(server.url, context_window=16384, max_tokens=77))
        assert collect(client) == ANSWER
        assert "/api/chat" in server.paths
        options = server.requests[0]["options"]
        assert options["num_ctx"] == 16384 and options["num_predict"] == 77


@pytest.mark.parametrize("server", [{"mode": "flaky", "fail_times": 1}], indirect=True)
def test_retries_after_500_then_succeeds(server):
    assert collect(LLMClient(settings(server.url))) == ANSWER
    assert len(server.requests) == 2


@pytest.mark.parametrize("server", [{"mode": "flaky", "fail_times": 1, "fail_status": 429}],
                         indirect=True)
def test_retries_after_429(server):
    assert collect(LLMClient(settings(server.url))) == ANSWER
    assert len(server.requests) == 2


@pytest.mark.parametrize("server", [{"mode": "error500"}], indirect=True)
def test_500_always_fails_after_bounded_retries(server):
    with pytest.raises(LLMError, match="HTTP 500") as info:
        collect(LLMClient(settings(server.url, retries=2)))
    assert len(server.requests) == 3
    assert "\n" not in str(info.value)


def test_connection_refused_is_an_llm_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    client = LLMClient(settings(f"http://127.0.0.1:{port}/v1", retries=1))
    start = time.monotonic()
    with pytest.raises(LLMError, match="cannot connect"):
        collect(client)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("server", [{"mode": "slow", "delay": 5.0}], indirect=True)
def test_read_timeout_is_fast_and_not_retried(server):
    client = LLMClient(settings(server.url, read_timeout=0.3, retries=2))
    start = time.monotonic()
    with pytest.raises(LLMError, match="no response .* within 0.3 s"):
        collect(client)
    assert time.monotonic() - start < 2
    assert len(server.requests) == 1


@pytest.mark.parametrize("server", [{"mode": "cut"}], indirect=True)
def test_stream_cut_midway_raises_after_first_tokens_without_retry(server):
    received = []
    with pytest.raises(LLMError, match="stream cut"):
        for delta in LLMClient(settings(server.url)).stream_chat(MESSAGES):
            received.append(delta)
    assert received and "".join(received) != ANSWER
    assert len(server.requests) == 1


@pytest.mark.parametrize("server", [{"mode": "nodone"}], indirect=True)
def test_stream_ending_without_done_or_finish_reason_is_cut(server):
    with pytest.raises(LLMError, match="stream cut"):
        collect(LLMClient(settings(server.url)))


@pytest.mark.parametrize("server", [{"mode": "badjson"}], indirect=True)
def test_invalid_json_event(server):
    with pytest.raises(LLMError, match="malformed stream event"):
        collect(LLMClient(settings(server.url)))


def test_401_reports_status_and_redacts_the_key():
    with FakeOpenAIServer(ANSWER, api_key="right-key") as server:
        client = LLMClient(settings(server.url), api_key="sk-secret-123456")
        with pytest.raises(LLMError) as info:
            collect(client)
        message = str(info.value)
        assert "401" in message and "Incorrect API key" in message
        assert "sk-secret-123456" not in message and "***" in message
        assert len(server.requests) == 1  # 4xx is not retried
        assert server.headers[0]["Authorization"] == "Bearer sk-secret-123456"
        probe = client.probe()
        assert not probe["ok"] and "401" in probe["reason"]
        assert "sk-secret-123456" not in probe["reason"]


def test_bearer_key_accepted():
    with FakeOpenAIServer(ANSWER, api_key="right-key") as server:
        assert collect(LLMClient(settings(server.url), api_key="right-key")) == ANSWER


def test_models_probe(server):
    probe = LLMClient(settings(server.url)).probe()
    assert probe == {"ok": True, "models": ["fake-model"], "reason": ""}
    assert LLMClient(settings(server.url)).available
    missing = LLMClient(settings(server.url, model="other")).probe()
    assert not missing["ok"] and "'other' is not served" in missing["reason"]


def test_probe_unreachable_and_unconfigured():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    probe = LLMClient(settings(f"http://127.0.0.1:{port}/v1")).probe()
    assert not probe["ok"] and "cannot connect" in probe["reason"]
    client = LLMClient(LLMSettings())
    assert not client.configured and not client.probe()["ok"]
    with pytest.raises(LLMError, match="no language model endpoint"):
        collect(client)


def test_empty_model_uses_the_first_listed(server):
    assert collect(LLMClient(settings(server.url, model=""))) == ANSWER
    assert server.requests[0]["model"] == "fake-model"


def test_redact():
    assert redact("key sk-1 and sk-1", "sk-1") == "key *** and ***"
    assert redact("nothing", "") == "nothing"
