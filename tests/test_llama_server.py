"""Our client and the whole answering pipeline against a real local LLM server:
llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) running a tiny
random-weight llama model that tests/tiny_gguf.py writes (its words are meaningless).

llama-cpp-python compiles llama.cpp when installed, so it is not in the ``test`` extra:
``make llama`` installs it (``make test`` does it first). Without it these tests FAIL, so CI
cannot pass them by skipping; set QA_SKIP_LLAMA=1 to skip them on a machine without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import _free_port, make_settings
from tests.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.slow

MODEL = "tiny-random-llama"
N_CTX = 4096
START_TIMEOUT = 120.0  # seconds for the server to load the model and answer /v1/models

DOCS = {
    "rapport_eau.txt": (
        "Rapport sur la gestion de l'eau dans la vallée du Verdon\n\n"
        "1. Le syndicat intercommunal a adopté en mars 2021 un plan de sobriété qui réduit de "
        "quinze pour cent les prélèvements agricoles pendant les mois d'été.\n\n"
        "2. Les communes riveraines financent ensemble une station de mesure installée à "
        "Castellane, qui publie chaque jour le débit de la rivière.\n\n"
        "3. Le comité de suivi se réunit deux fois par an et rend compte de ses travaux au "
        "conseil départemental.\n"
    ),
    "note_bibliotheque.txt": (
        "Note sur le réseau des bibliothèques municipales\n\n"
        "1. La médiathèque centrale ouvre désormais le dimanche de dix heures à dix-huit "
        "heures, grâce au recrutement de quatre agents supplémentaires.\n\n"
        "2. Le fonds patrimonial, qui compte douze mille manuscrits, sera numérisé d'ici à "
        "2026 avec le concours de la région.\n\n"
        "3. Les lecteurs peuvent emprunter jusqu'à quinze documents pour une durée de quatre "
        "semaines.\n"
    ),
}
QUESTION = "Où est installée la station de mesure du débit de la rivière ?"


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        message = ("llama_cpp is not importable: run `make llama` (it installs "
                   "llama-cpp-python[server] and gguf into the venv)")
        if os.environ.get("QA_SKIP_LLAMA") == "1":
            pytest.skip(message + "; skipped because QA_SKIP_LLAMA=1")
        pytest.fail(message + ", or set QA_SKIP_LLAMA=1 to skip these tests", pytrace=False)


def _bounded(fn, seconds: float):
    """fn() in a thread; fail (instead of hanging the suite) if it takes over ``seconds``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds:g} s: something hangs")
    if "error" in box:
        raise box["error"]
    return box["value"]


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 at a free port, as a subprocess."""

    def __init__(self, model: Path, log: Path, *extra: str) -> None:
        self.port = _free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.log = log
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
               "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(self.port),
               "--n_ctx", str(N_CTX), "--n_threads", "1", "--n_threads_batch", "1", *extra]
        with open(log, "w", encoding="utf-8") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            self.models = self._wait()
        except BaseException:
            self.stop()
            raise

    def _wait(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited {self.proc.returncode}:\n{self.tail()}",
                            pytrace=False)
            try:
                resp = httpx.get(self.url + "/models", timeout=5, trust_env=False)
                if resp.status_code == 200:
                    return resp.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        pytest.fail(f"llama_cpp.server did not answer within {START_TIMEOUT:g} s:\n"
                    f"{self.tail()}", pytrace=False)

    def idle(self, seconds: float = 60.0) -> None:
        """Wait until the server answers /v1/models again (it takes the model's lock)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/models", timeout=5, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server stayed busy for {seconds:g} s:\n{self.tail()}", pytrace=False)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    _require_llama_cpp()
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama_server(tiny_model, tmp_path_factory):
    """The server with its default settings (as a user would start it)."""
    server = LlamaServer(tiny_model, tmp_path_factory.mktemp("llama") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def queueing_llama_server(tiny_model, tmp_path_factory):
    """The server with --interrupt_requests False: a second request waits for the first one
    to finish instead of cutting it short, so the server can be made busy on purpose."""
    server = LlamaServer(tiny_model, tmp_path_factory.mktemp("llama") / "server.log",
                         "--interrupt_requests", "False")
    yield server
    server.stop()


def _client(server: LlamaServer, **overrides):
    from qa_app.llm import LLMClient
    from qa_app.settings import LLMSettings

    fields = dict(base_url=server.url, model=MODEL, max_tokens=16, temperature=0.1,
                  read_timeout=30.0, connect_timeout=3.0, retries=0)
    fields.update(overrides)
    return LLMClient(LLMSettings(**fields))


MESSAGES = [{"role": "system", "content": "Réponds en français."},
            {"role": "user", "content": "Où est la station de mesure ?"}]


def test_probe_lists_the_served_model(llama_server):
    assert [m["id"] for m in llama_server.models["data"]] == [MODEL]
    with _client(llama_server) as client:
        probe = client.probe()
    assert probe == {"ok": True, "models": [MODEL], "reason": ""}
    with _client(llama_server, model="another-model") as client:
        probe = client.probe()
    assert not probe["ok"] and "another-model" in probe["reason"] and MODEL in probe["reason"]


def test_stream_chat_streams_tokens_from_the_real_server(llama_server):
    with _client(llama_server) as client:
        started = time.perf_counter()
        deltas = _bounded(lambda: list(client.stream_chat(MESSAGES)), 60)
        elapsed = time.perf_counter() - started
    print(f"\n{len(deltas)} deltas in {elapsed:.2f} s: {''.join(deltas)!r}")
    # The tiny model never writes </s> (tests/tiny_gguf.py): it writes max_tokens pieces.
    assert len(deltas) >= 8 and all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas).strip()


def test_no_model_configured_uses_the_one_listed(llama_server):
    with _client(llama_server, model="", max_tokens=4) as client:
        deltas = _bounded(lambda: list(client.stream_chat(MESSAGES)), 60)
        assert client.model == MODEL and deltas


def test_read_timeout_while_the_server_is_busy(queueing_llama_server):
    """The server works on a long answer for someone else; our request waits in its queue
    and must fail after read_timeout, not hang until the server is free."""
    from qa_app.llm import LLMError

    server = queueing_llama_server
    first = threading.Event()
    busy: dict = {}

    def long_answer():
        started = time.perf_counter()
        try:
            with _client(server, max_tokens=2000, read_timeout=120.0) as client:
                for n, _ in enumerate(client.stream_chat(MESSAGES), 1):
                    first.set()
                    busy["tokens"] = n
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            busy["error"] = exc
        finally:
            busy["seconds"] = time.perf_counter() - started
            first.set()

    blocker = threading.Thread(target=long_answer, daemon=True)
    blocker.start()
    assert first.wait(60), "the long answer did not start"
    read_timeout = 1.0
    with _client(server, read_timeout=read_timeout) as client:
        started = time.perf_counter()
        with pytest.raises(LLMError) as info:
            _bounded(lambda: list(client.stream_chat(MESSAGES)), 30)
        waited = time.perf_counter() - started
    blocker.join(180)
    assert not blocker.is_alive(), "the long answer never ended"
    print(f"\nLLMError after {waited:.2f} s: {info.value}; the busy answer: "
          f"{busy.get('tokens')} tokens in {busy['seconds']:.1f} s")
    assert "error" not in busy, busy.get("error")
    assert busy["seconds"] > waited, "the server was not busy for longer than the timeout"
    assert "within 1 s" in str(info.value) and "127.0.0.1" in str(info.value)
    assert waited < read_timeout + 3.0
    server.idle()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A few small documents indexed with the default embedder in a temporary data dir."""
    from qa_app.components import Components

    tmp = tmp_path_factory.mktemp("llama-index")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    settings = make_settings(tmp)
    components = Components(settings)
    components.indexer.run(corpus, progress=False)
    return SimpleNamespace(settings=settings, components=components)


def _service(indexed, server: LlamaServer, **overrides):
    from qa_app.components import Components
    from qa_app.service import QAService

    settings = indexed.settings.model_copy(deep=True)
    settings.llm.base_url = server.url
    settings.llm.model = MODEL
    settings.llm.max_tokens = 16
    settings.llm.read_timeout = 30.0
    settings.llm.context_window = N_CTX
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        setattr(getattr(settings, section), key, value)
    base = indexed.components
    return QAService(settings, Components(settings, embedder=base.embedder, store=base.store))


def test_service_answers_through_the_real_server(llama_server, indexed):
    from qa_app.answering import Done, Token

    service = _service(indexed, llama_server)
    events = _bounded(lambda: list(service.ask_stream(QUESTION)), 120)
    tokens = [e.text for e in events if isinstance(e, Token)]
    answer = events[-1].answer
    assert isinstance(events[-1], Done)
    print(f"\nmode={answer.mode} notice={answer.notice!r}\ntext={answer.text!r}")
    assert answer.passages and answer.passages[0].passage.source.endswith("rapport_eau.txt")
    # Whatever the model wrote, the user gets an answer: generated, or extractive with the
    # reason. The random model never writes "[n]", so citations, if any, were inferred.
    assert answer.mode in ("generated", "extractive"), answer.mode
    if answer.mode == "generated":
        assert tokens and answer.text.strip() and answer.model == MODEL
        assert answer.notice  # uncited, or citations attributed automatically
        assert all(c.inferred for c in answer.citations)
    else:
        assert answer.notice and answer.text.strip()
    json.dumps(answer.to_dict())  # what the app and `qa ask --json` send out


def test_service_falls_back_when_the_prompt_exceeds_the_window(llama_server, indexed):
    """A question longer than the server's context window: the server refuses the prompt,
    the user still gets the extractive answer with the reason, after no long wait."""
    service = _service(indexed, llama_server, **{"answer.max_question_chars": 20000})
    question = QUESTION + " " + "x" * (N_CTX + 500)  # one token per "x": over the window
    started = time.perf_counter()
    answer = _bounded(lambda: service.ask(question), 120)
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.2f} s mode={answer.mode} notice={answer.notice!r}")
    assert answer.mode == "extractive" and answer.notice and answer.citations
    assert "Castellane" in answer.text
    llama_server.idle()


def test_answer_cut_by_another_request_is_not_taken_as_complete(llama_server):
    """Any request, even the status probe, makes this server end a streaming answer early
    with [DONE] and no finish_reason: that must surface as an error (then the extractive
    fallback with a notice), not as a complete but truncated answer."""
    from qa_app.llm import LLMError

    first = threading.Event()
    result: dict = {"tokens": 0}

    def long_answer():
        try:
            with _client(llama_server, max_tokens=N_CTX, read_timeout=120.0) as client:
                for _ in client.stream_chat(MESSAGES):
                    result["tokens"] += 1
                    first.set()
        except LLMError as exc:
            result["error"] = exc
        finally:
            first.set()

    thread = threading.Thread(target=long_answer, daemon=True)
    thread.start()
    assert first.wait(60), "the long answer did not start"
    with _client(llama_server) as client:
        probe = _bounded(client.probe, 30)
    thread.join(180)
    assert not thread.is_alive()
    llama_server.idle()
    print(f"\nprobe: {probe}; the answer stopped after {result['tokens']} tokens: "
          f"{result.get('error')!r}")
    assert probe["ok"]
    assert result["tokens"] < N_CTX - 200, "the probe did not interrupt the answer"
    assert isinstance(result.get("error"), LLMError), "a cut answer was taken as complete"
