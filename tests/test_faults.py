"""Faults: the LLM endpoint down, stalled or broken; the Chroma server down at start or lost
mid-session; a full disk or a read-only data directory during an ingest; two processes on one
embedded store. Each time the user gets a clear message (or the extractive answer with a
one-line reason), nothing hangs past its timeout, and everything recovers when the fault
goes away.

All servers listen on 127.0.0.1 only (the fake OpenAI server, `chroma run`, the app).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from conftest import ROOT, make_settings
from ingest.indexer import manifest_path
from ingest.manifest import Manifest
from qa_app.components import Components
from qa_app.service import PROBE_FAILED_SECONDS, QAService
from qa_app.store import StoreError
from tests.llm_server import FakeOpenAIServer
from tests.small_corpus import ANSWER_SOURCE, ANSWER_WORD, QUESTION, free_port, write_corpus

pytestmark = pytest.mark.slow

CHROMA = Path(sys.executable).with_name("chroma")
GENERATED = "Le premier Sommet s'est tenu à Almaty en 2002 [1]."
FAILED = re.compile(r"(Language model unavailable|Modèle de langue indisponible)")


# -- a small real index, shared by the module ---------------------------------------------
@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Three small French documents indexed with the default embedder (no LLM)."""
    root = tmp_path_factory.mktemp("faults")
    corpus = write_corpus(root / "corpus")
    settings = make_settings(root)
    comps = Components(settings)
    comps.indexer.run(corpus, progress=False)
    return SimpleNamespace(root=root, corpus=corpus, settings=settings, comps=comps)


def llm_service(index, port: int, **llm) -> QAService:
    """A service on the shared index whose LLM endpoint is 127.0.0.1:port."""
    settings = index.settings.model_copy(deep=True)
    settings.llm.base_url = f"http://127.0.0.1:{port}/v1"
    settings.llm.model = "fake-model"
    settings.llm.retries = 1
    settings.llm.connect_timeout = 2.0
    for key, value in llm.items():
        setattr(settings.llm, key, value)
    comps = Components(settings, embedder=index.comps.embedder, store=index.comps.store)
    return QAService(settings, comps)


def timed_ask(service: QAService, question: str = QUESTION, **kw):
    started = time.monotonic()
    answer = service.ask(question, **kw)
    return answer, time.monotonic() - started


def assert_extractive_with_reason(answer, reason: str) -> None:
    assert answer.mode == "extractive", answer
    assert FAILED.search(answer.notice) and reason in answer.notice, answer.notice
    assert "\n" not in answer.notice  # one line
    assert answer.citations and any(c.passage.source == ANSWER_SOURCE for c in answer.citations)


# -- the LLM endpoint ----------------------------------------------------------------------
def test_llm_down_then_back_on_the_same_port(index):
    port = free_port()
    service = llm_service(index, port)
    # Nothing listens: extractive answer at once, with the reason.
    answer, took = timed_ask(service)
    assert_extractive_with_reason(answer, f"cannot connect to 127.0.0.1:{port}")
    assert took < 15
    assert not service.status().llm_ok
    fake = FakeOpenAIServer(GENERATED, port=port).start()
    try:
        answer, _ = timed_ask(service)
        assert answer.mode == "generated" and ANSWER_WORD in answer.text
        # The status line follows too: a failed probe is not kept for long.
        time.sleep(PROBE_FAILED_SECONDS + 0.2)
        assert service.status().llm_ok
    finally:
        fake.stop()
    answer, _ = timed_ask(service)
    assert_extractive_with_reason(answer, "cannot connect")
    with FakeOpenAIServer(GENERATED, port=port):
        assert timed_ask(service)[0].mode == "generated"


@pytest.mark.parametrize("mode,reason", [
    ("error500", "HTTP 500"),
    ("cut", "stream cut"),
    ("nodone", "stream cut"),
    ("badjson", "malformed stream event"),
])
def test_llm_failures_give_the_extractive_answer_and_a_reason(index, mode, reason):
    with FakeOpenAIServer(GENERATED, mode=mode) as fake:
        port = int(fake.url.rsplit(":", 1)[1].split("/")[0])
        service = llm_service(index, port)
        events = list(service.ask_stream(QUESTION))
        answer = events[-1].answer
        assert_extractive_with_reason(answer, reason)
        # the streamed tokens of a cut answer are replaced by the final text
        assert "Almaty" in answer.text and "[1]" in answer.text


def test_llm_slower_than_the_read_timeout_costs_one_timeout(index):
    """A stalled endpoint: the answer comes after one read timeout, even for a follow-up
    (whose rewrite fails first: the answer does not wait for the same endpoint again)."""
    with FakeOpenAIServer(GENERATED, mode="slow", delay=30) as fake:
        port = int(fake.url.rsplit(":", 1)[1].split("/")[0])
        service = llm_service(index, port, read_timeout=2.0)
        answer, took = timed_ask(service)
        assert_extractive_with_reason(answer, "within 2 s")
        assert 2.0 <= took < 15 and len(fake.requests) == 1  # not retried
        history = [{"role": "user", "content": "Parlez-moi de la Conférence."},
                   {"role": "assistant", "content": "La Conférence réunit des États [1]."}]
        answer, took = timed_ask(service, "Et où s'est tenu son premier Sommet ?",
                                 history=history)
        assert_extractive_with_reason(answer, "within 2 s")
        assert len(fake.requests) == 2, "the follow-up waited twice for a stalled endpoint"
        assert took < 15


def test_app_llm_down_then_back(index):
    """Through the running app's chat API: the extractive answer with the reason, then a
    generated one once the endpoint is back on its port."""
    from gradio_client import Client

    from qa_app.app import launch

    port = free_port()
    service = llm_service(index, port)
    demo, url = launch(service.settings, service, host="127.0.0.1", port=free_port(),
                       block=False, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=False)
        history, _, _ = client.predict(QUESTION, [], "auto", 5, [], api_name="/chat")
        text = json.dumps(history[-1]["content"], ensure_ascii=False)
        assert FAILED.search(text) and "cannot connect" in text and "extractive" in text
        with FakeOpenAIServer(GENERATED, port=port) as fake:
            history, _, _ = client.predict(QUESTION, [], "auto", 5, [], api_name="/chat")
            text = json.dumps(history[-1]["content"], ensure_ascii=False)
            assert "generated by fake-model" in text and "Almaty" in text
            assert fake.requests
            time.sleep(PROBE_FAILED_SECONDS + 0.2)
            assert client.predict(api_name="/status_json")["llm_ok"] is True
    finally:
        demo.close()


# -- the Chroma server ---------------------------------------------------------------------
class ChromaServer:
    """`chroma run` on 127.0.0.1:port over a folder; stop() and start() again at will."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port, self.proc = folder, port, None

    def start(self, timeout: float = 90) -> "ChromaServer":
        log = open(self.folder / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(CHROMA), "run", "--path", str(self.folder / "db"), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chroma run exited: {(self.folder / 'server.log').read_text()[-1500:]}")
            try:
                url = f"http://127.0.0.1:{self.port}/api/v2/heartbeat"
                if httpx.get(url, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail("chroma run gave no heartbeat in time")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


def cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    env.pop("QA_APP_AUTH", None)
    return subprocess.run([sys.executable, "-m", "qa_app.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_chroma_down_at_start_cli_names_the_server_and_how_to_start_it(tmp_path, index):
    port = free_port()  # nothing listens there
    env = {"QA_STORE__MODE": "http", "QA_STORE__PORT": str(port),
           "QA_DATA_DIR": str(tmp_path / "data"), "QA_CORPUS_DIR": str(index.corpus)}
    for args in (["serve", "--port", str(free_port()), "-q"], ["ask", QUESTION, "--no-llm"]):
        started = time.monotonic()
        done = cli(args, env, tmp_path)
        assert done.returncode == 1, (args, done.stderr[-2000:])
        assert f"127.0.0.1:{port}" in done.stderr and "chroma run" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert time.monotonic() - started < 120


def test_chroma_lost_mid_session_then_back(tmp_path, index):
    """The app keeps running while the server is away, says so in the chat (no error toast,
    no traceback) and answers again once the server is back on the same port."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from qa_app.app import launch

    server = ChromaServer(tmp_path, free_port()).start()
    demo = None
    try:
        settings = make_settings(tmp_path, **{"store.mode": "http", "store.port": server.port})
        comps = Components(settings, embedder=index.comps.embedder)
        comps.indexer.run(index.corpus, progress=False)
        service = QAService(settings, comps)
        demo, url = launch(settings, service, host="127.0.0.1", port=free_port(),
                           block=False, quiet=True)
        client = Client(url, verbose=False, download_files=False)
        history, sources, _ = client.predict(QUESTION, [], "extractive", 5, [], api_name="/chat")
        assert ANSWER_WORD in json.dumps(history[-1]["content"], ensure_ascii=False)

        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"Chroma server at http://127.0.0.1:{server.port}"):
            service.ask(QUESTION, mode="extractive")
        history, _, _ = client.predict(QUESTION, [], "extractive", 5, [], api_name="/chat")
        text = json.dumps(history[-1]["content"], ensure_ascii=False)
        assert "The index is unavailable" in text and f"127.0.0.1:{server.port}" in text, text
        assert "Traceback" not in text
        with pytest.raises(AppError, match="Chroma server"):
            client.predict(QUESTION, "extractive", 5, [], api_name="/ask_json")
        assert "unavailable" in client.predict("Almaty", "", api_name="/lookup")
        assert time.monotonic() - started < 60  # every failure came back quickly

        server.start()
        answer = service.ask(QUESTION, mode="extractive")
        assert any(c.passage.source == ANSWER_SOURCE for c in answer.citations)
        history, _, _ = client.predict(QUESTION, [], "extractive", 5, [], api_name="/chat")
        text = json.dumps(history[-1]["content"], ensure_ascii=False)
        assert ANSWER_WORD in text and "unavailable" not in text
        assert client.predict(api_name="/status_json")["passages"] == comps.store.count()
    finally:
        if demo is not None:
            demo.close()
        server.stop()


# -- a full disk, a read-only data directory ------------------------------------------------
NEW_DOC = ("Déclaration sur les transports\n\n"
           + "".join(f"{i}. La Conférence souligne l'importance des corridors ferroviaires "
                     f"numéro {i} entre les pays d'Asie centrale et le reste du continent.\n\n"
                     for i in range(1, 30)))


def _mount_works(target: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)],
                          capture_output=True)
    if done.returncode != 0:
        return False
    subprocess.run(["umount", str(target)], check=True)
    return True


def assert_index_intact(comps: Components, settings, before_count: int) -> None:
    """The documents indexed before still answer, and the manifest is valid and lists them."""
    assert comps.store.count() >= before_count
    results = comps.retriever.search(QUESTION, k=3)
    assert results[0].passage.source == ANSWER_SOURCE
    raw = json.loads(manifest_path(settings).read_text(encoding="utf-8"))  # valid JSON
    manifest = Manifest.load(manifest_path(settings))
    assert {"sommet.txt", "energie.txt", "eau.md"} <= set(manifest.files), raw
    assert "*" not in manifest.pending


def test_disk_full_during_ingest_real_tmpfs(tmp_path, index):
    """A real full disk: the data directory is a small tmpfs, filled up after a first ingest.
    Both writes that can hit it are exercised: the manifest's (disk completely full) and
    Chroma's (a few KB left: the manifest fits, the passages do not). Every step is a `qa`
    process with a timeout, as a user would run it: Chroma's embedded engine may hang on a
    write after a failed one in the same process (the indexer refuses that write instead,
    see test_disk_full_simulated), and a new process opens the store cleanly."""
    data = tmp_path / "data"
    data.mkdir()
    if not _mount_works(data):
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN; "
                    "test_disk_full_simulated covers the same path")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(data)], check=True)
    try:
        env = {"QA_DATA_DIR": str(data)}
        corpus = tmp_path / "corpus"
        shutil.copytree(index.corpus, corpus)
        done = cli(["ingest", str(corpus), "-q"], env, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        filler = data / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        (corpus / "transport.txt").write_text(NEW_DOC, encoding="utf-8")
        messages = []
        # 0 KB left: Chroma cannot even open its database; 48 KB: it opens, then a write
        # fails part-way (the manifest's or Chroma's, depending on what opening used).
        for leave_kb in (0, 48):
            os.truncate(filler, filler.stat().st_size - leave_kb * 1024)
            done = cli(["ingest", str(corpus), "-q"], env, tmp_path)
            message = done.stderr
            assert done.returncode == 1 and "Traceback" not in message, message[-2000:]
            assert message.startswith("error: ") and str(data) in message
            assert re.search(r"No space left on device|disk is full", message), message
            messages.append(message)
            manifest = Manifest.load(manifest_path(make_settings(tmp_path)))  # valid JSON
            assert {"sommet.txt", "energie.txt", "eau.md"} <= set(manifest.files)
            assert not (data / "manifest-passages.json.tmp").exists()
        print("\n".join(messages))
        assert "cannot open the Chroma store" in messages[0]
        assert "ingest stopped" in messages[1]
        assert "transport.txt is redone by the next run" in messages[1]
        filler.unlink()
        done = cli(["ingest", str(corpus), "-q", "--json"], env, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout)
        assert "transport.txt" in report["added"] and report["unchanged"]
        done = cli(["ask", QUESTION, "--no-llm", "--json"], env, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        answer = json.loads(done.stdout)
        assert answer["citations"][0]["passage"]["source"] == ANSWER_SOURCE
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_disk_full_simulated(tmp_path, index, monkeypatch):
    """The same without mounts (for machines where they are not allowed): the two writes
    raise what a full disk makes them raise, at the narrowest point — the manifest file's
    write (OSError ENOSPC) and Chroma's upsert (its 'database or disk is full' error)."""
    from chromadb.errors import InternalError

    import ingest.manifest as manifest_module

    settings = make_settings(tmp_path)
    comps = Components(settings, embedder=index.comps.embedder)
    corpus = tmp_path / "corpus"
    shutil.copytree(index.corpus, corpus)
    comps.indexer.run(corpus, progress=False)
    before = comps.store.count()
    (corpus / "transport.txt").write_text(NEW_DOC, encoding="utf-8")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(manifest_module.os, "fsync", no_space)
        with pytest.raises(StoreError, match="No space left on device"):
            comps.indexer.run(corpus, progress=False)
    assert_index_intact(comps, settings, before)

    collection = comps.store.collection

    def full_upsert(*a, **kw):
        raise InternalError("Query error: Database error: error returned from database: "
                            "(code: 13) database or disk is full")

    with monkeypatch.context() as m:
        m.setattr(type(collection), "upsert", full_upsert)
        with pytest.raises(StoreError, match="disk is full") as err:
            comps.indexer.run(corpus, progress=False)
    assert "transport.txt is redone by the next run" in str(err.value)
    assert_index_intact(comps, settings, before)
    assert Manifest.load(manifest_path(settings)).pending == ["transport.txt"]
    # This process does not write to the embedded store again (Chroma may hang there)...
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot be written again by this process"):
        comps.indexer.run(corpus, progress=False)
    assert time.monotonic() - started < 5
    assert_index_intact(comps, settings, before)  # ...but it still answers.
    # A new indexer (a restarted process) repairs the interrupted file.
    fresh = Components(settings, embedder=index.comps.embedder, store=comps.store)
    report = fresh.indexer.run(corpus, progress=False)
    assert report.added == ["transport.txt"] and report.repaired == ["transport.txt"]


def test_read_only_data_directory(tmp_path, index):
    """`qa ingest` on a read-only data directory (a read-only bind mount of a real index):
    exit code 1 with a clear message, and the index behind it unchanged."""
    settings = make_settings(tmp_path)
    comps = Components(settings, embedder=index.comps.embedder)
    corpus = tmp_path / "corpus"
    shutil.copytree(index.corpus, corpus)
    comps.indexer.run(corpus, progress=False)
    before = comps.store.count()
    data = settings.resolve(settings.data_dir)
    view = tmp_path / "ro"
    view.mkdir()
    if not _mount_works(view):
        pytest.skip("bind mounts need root with CAP_SYS_ADMIN")
    subprocess.run(["mount", "--bind", str(data), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        (corpus / "transport.txt").write_text(NEW_DOC, encoding="utf-8")
        done = cli(["ingest", str(corpus), "-q"], {"QA_DATA_DIR": str(view)}, tmp_path)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "Read-only file system" in done.stderr and str(view) in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)
    assert comps.store.count() == before
    assert_index_intact(comps, settings, before)


# -- two processes on one embedded store -----------------------------------------------------
def test_serve_while_an_ingest_runs_is_a_clear_error_not_a_hang(tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"doc{i:02d}.txt").write_text(
            f"Déclaration {i}\n\n" + "".join(
                f"{n}. Les États membres examinent la question numéro {i}-{n} et décident "
                f"de poursuivre les consultations au niveau des experts.\n\n"
                for n in range(1, 6)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QA_DATA_DIR": str(tmp_path / "data"),
           "QA_CORPUS_DIR": str(corpus)}
    env.pop("QA_APP_AUTH", None)
    ingest = subprocess.Popen([sys.executable, "-m", "qa_app.cli", "ingest", "-q"], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        manifest = tmp_path / "data" / "manifest-passages.json"
        deadline = time.monotonic() + 180
        while not manifest.is_file():  # written once the ingest holds the store
            assert ingest.poll() is None, ingest.stderr.read()[-1000:]
            assert time.monotonic() < deadline, "the ingest did not start"
            time.sleep(0.1)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "qa_app.cli", "serve", "-q", "--port",
                               str(free_port())], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert ingest.poll() is None, "the ingest ended before serve was tried: make it longer"
        assert done.returncode == 1, done.stderr[-2000:]
        assert "in use by another process" in done.stderr and "server" in done.stderr
        assert "Traceback" not in done.stderr
        assert time.monotonic() - started < 120
    finally:
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait(timeout=30)
