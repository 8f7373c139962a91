"""Server mode: the whole pipeline against a real `chroma run` server on 127.0.0.1.

One server and one seed ingest per module (the default embedder takes ~30 s on the seeds).
Several clients share the server the way several app processes would: a second
Components instance with its own data_dir (its own lexical cache) and a separate Python
process, both started before another client re-ingests, must see the change.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from conftest import ROOT, SEEDS, make_settings
from qa_app.components import Components
from qa_app.schema import Passage
from qa_app.service import QAService
from qa_app.store import PassageStore, StoreError

pytestmark = pytest.mark.slow

CHROMA = Path(sys.executable).with_name("chroma")
THAILAND = "Quand la Thaïlande a-t-elle adhéré à la CICA ?"
CHANGED = "003_08fd0699280038d4.txt"  # the smallest seed: re-embedding it is quick
NEW_WORD = "zorglubienne"
NEW_PARAGRAPH = (f"\n\n30. Les États membres saluent la coopération {NEW_WORD} en matière de "
                 f"sécurité alimentaire et décident de la poursuivre au niveau des experts.\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_heartbeat(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"chroma run exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=10)
    pytest.fail(f"chroma run gave no heartbeat within {timeout:.0f} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(CHROMA), "run", "--path", str(folder / "db"), "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
    try:
        wait_for_heartbeat(port, proc, log)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def http_settings(root: Path, port: int, **overrides):
    return make_settings(root, **{"store.mode": "http", "store.port": port, **overrides})


@pytest.fixture(scope="module")
def served(chroma_port, tmp_path_factory):
    """The seeds (a copy: the test changes a file) ingested once through the server."""
    root = tmp_path_factory.mktemp("writer")
    corpus = root / "corpus"
    shutil.copytree(SEEDS, corpus)
    settings = http_settings(root, chroma_port)
    comps = Components(settings)
    report = comps.indexer.run(corpus, progress=False)
    return SimpleNamespace(root=root, corpus=corpus, settings=settings, comps=comps,
                           report=report, port=chroma_port)


def fingerprint(comps: Components) -> dict[str, dict[str, str]]:
    """source -> {passage id: content hash}."""
    out: dict[str, dict[str, str]] = {}
    for p in comps.store.all_passages():
        out.setdefault(p.source, {})[p.id] = p.hash
    return out


def test_ingest_and_search_through_the_server(served):
    assert len(served.report.added) == 4 and not served.report.skipped
    assert served.comps.store.count() == served.report.total_passages > 0
    # The passages live in the server, not in a local store.
    assert not (served.settings.resolve(served.settings.data_dir) / "chroma").exists()
    results = served.comps.retriever.search(THAILAND, k=5)
    top = [(r.passage.source, r.passage.para_no) for r in results[:3]]
    assert ("001_15cd4e670d3e8e09.txt", "22") in top


def test_unchanged_reingest_embeds_nothing(served):
    generation = served.comps.store.generation()
    started = time.perf_counter()
    again = served.comps.indexer.run(served.corpus, progress=False)
    assert again.embedded == 0 and not again.changed
    assert sorted(again.unchanged) == sorted(served.report.added)
    assert served.comps.store.generation() == generation
    assert time.perf_counter() - started < 5


def test_extractive_answer_through_the_server(served):
    answer = QAService(served.settings, components=served.comps).ask(THAILAND, mode="extractive")
    assert answer.mode == "extractive"
    assert answer.citations
    assert any(c.passage.source == "001_15cd4e670d3e8e09.txt" for c in answer.citations)
    assert answer.timings["retrieval"] > 0


READER_SCRIPT = r"""
import json, sys
from qa_app.components import Components
from qa_app.settings import load_settings
comps = Components(load_settings())
for line in sys.stdin:
    hits = comps.retriever.lexical().search(line.strip(), 5)
    print(json.dumps({"generation": comps.store.generation(), "hits": [h for h, _ in hits]}),
          flush=True)
"""


def test_reingest_of_a_changed_file_is_seen_by_every_client(served, tmp_path):
    # Two readers started before the change, each with its own data_dir (lexical cache):
    # one in this process, one in another process.
    reader = Components(http_settings(tmp_path / "reader", served.port))
    assert reader.retriever.lexical().search(NEW_WORD, 5) == []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QA_STORE__MODE": "http",
           "QA_STORE__PORT": str(served.port), "QA_DATA_DIR": str(tmp_path / "process"),
           "QA_CONFIG": str(ROOT / "config" / "settings.yaml")}
    proc = subprocess.Popen([sys.executable, "-c", READER_SCRIPT], env=env, cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def ask_process(word: str) -> dict:
            proc.stdin.write(word + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"reader process died: {proc.stderr.read()[-2000:]}")
            return json.loads(line)

        before_process = ask_process(NEW_WORD)
        assert before_process["hits"] == []

        before = fingerprint(served.comps)
        generation = served.comps.store.generation()
        path = served.corpus / CHANGED
        path.write_text(path.read_text(encoding="utf-8") + NEW_PARAGRAPH, encoding="utf-8")
        report = served.comps.indexer.run(served.corpus, progress=False)
        assert report.updated == [CHANGED] and not report.added and not report.removed
        assert report.embedded == report.passages_by_file[CHANGED]

        # Exactly that file's passages changed.
        after = fingerprint(served.comps)
        assert set(after) == set(before)
        for source in before:
            if source != CHANGED:
                assert after[source] == before[source], source
        assert after[CHANGED] != before[CHANGED]
        assert any(NEW_WORD in p.text for p in served.comps.store.by_source(CHANGED))

        # The other clients notice the new generation and rebuild their lexical index.
        new_generation = served.comps.store.generation()
        assert new_generation > generation
        assert reader.store.generation() == new_generation
        hits = reader.retriever.lexical().search(NEW_WORD, 5)
        assert hits and all(pid.startswith(CHANGED) for pid, _ in hits)
        assert reader.retriever.lexical().generation == new_generation
        full = reader.retriever.search(f"coopération {NEW_WORD}", k=3)
        assert full[0].passage.source == CHANGED and NEW_WORD in full[0].passage.text

        after_process = ask_process(NEW_WORD)
        assert after_process["generation"] == new_generation
        assert after_process["hits"] and all(h.startswith(CHANGED) for h in after_process["hits"])
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _passages(n: int, source: str = "doc.txt") -> list[Passage]:
    return [Passage(id=f"{source}#{i:04d}", source=source, title="T", section="", para_no="",
                    text=f"paragraphe numéro {i}", start=0, end=1, position=i) for i in range(n)]


def test_rebuild_by_another_client_is_noticed(chroma_port, tmp_path):
    """A rebuild deletes the collection and makes a new one: a client holding the old one
    reopens it, and the generation never goes back to a number a cache may hold."""
    settings = http_settings(tmp_path, chroma_port, **{"store.collection": "rebuild-check"})
    writer, reader = PassageStore(settings, "m", 8), PassageStore(settings, "m", 8)
    rng = np.random.default_rng(0)
    writer.add(_passages(3), rng.random((3, 8)))
    first = writer.bump_generation()
    assert reader.count() == 3 and reader.generation() == first

    writer.reset()
    writer.add(_passages(1, "other.txt"), rng.random((1, 8)))
    second = writer.bump_generation()
    assert second > first
    assert reader.count() == 1  # not "collection does not exist"
    assert reader.generation() == second
    assert [h.passage.source for h in reader.query(rng.random(8), 5)] == ["other.txt"]


def test_server_down_is_a_clear_store_error(tmp_path):
    settings = http_settings(tmp_path, free_port())  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach the Chroma server") as err:
        PassageStore(settings, "m", 8)
    assert time.monotonic() - started < 10
    assert "chroma run" in str(err.value) and f":{settings.store.port}" in str(err.value)


def test_server_down_cli_exits_with_the_message(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QA_STORE__MODE": "http",
           "QA_STORE__PORT": str(free_port()), "QA_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "qa_app.cli", "search", "CICA"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "cannot reach the Chroma server" in done.stderr and "Traceback" not in done.stderr


def test_token_header_follows_the_settings(tmp_path, monkeypatch):
    from qa_app.store import _auth_headers

    settings = http_settings(tmp_path, 8000)
    monkeypatch.delenv(settings.store.auth_token_env, raising=False)
    assert _auth_headers(settings) == {}
    monkeypatch.setenv(settings.store.auth_token_env, "s3cret")
    assert _auth_headers(settings) == {"Authorization": "Bearer s3cret"}
    settings.store.auth_header = "X-Chroma-Token"
    assert _auth_headers(settings) == {"X-Chroma-Token": "s3cret"}
