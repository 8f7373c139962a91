"""Bad input: empty, huge or garbled questions, and files that cannot be documents, through the
CLI, the service and the running app. Each gets a clear message and nothing already indexed
is lost (same passage count, a known passage still found).

Already covered elsewhere, not repeated here: skip reasons of the loaders (tests/test_loaders.py),
bad files in a first ingest (tests/test_indexer.py), upload names (safe_upload_name) and
uploading the same file twice (tests/test_app.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import unicodedata
from types import SimpleNamespace

import httpx
import pytest

from conftest import ROOT, make_settings
from qa_app.components import Components
from qa_app.service import QAService
from tests.small_corpus import ANSWER_SOURCE, ANSWER_WORD, QUESTION, free_port, write_corpus

pytestmark = pytest.mark.slow

CAP_MB = 0.05  # upload and ingest size cap for this module: 52 428 bytes
INVALID_UTF8 = "Le café crème de la Conférence, écrit en Latin-1.\n".encode("latin-1") * 3
BINARY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The real app on 127.0.0.1 over three small French documents, no LLM."""
    from gradio_client import Client

    from qa_app.app import launch

    root = tmp_path_factory.mktemp("bad-input")
    corpus = write_corpus(root / "corpus")
    settings = make_settings(root, **{"app.max_upload_mb": CAP_MB,
                                      "ingest.max_file_mb": CAP_MB})
    service = QAService(settings)
    service.ingest(corpus, progress=False)
    demo, url = launch(settings, service, host="127.0.0.1", port=free_port(), block=False,
                       quiet=True)
    try:
        yield SimpleNamespace(url=url, service=service, settings=settings, root=root,
                              corpus=corpus, demo=demo,
                              client=Client(url, verbose=False, download_files=False))
    finally:
        demo.close()


def known_passage_found(service: QAService) -> bool:
    results = service.search(QUESTION, k=3)
    return bool(results) and results[0].passage.source == ANSWER_SOURCE \
        and ANSWER_WORD in results[0].passage.text


def content(message) -> str:
    return json.dumps(message["content"], ensure_ascii=False)


# -- questions -------------------------------------------------------------------------------
@pytest.mark.parametrize("question", ["", "   \n\t ", "\x07\x1b\u200b\u2060"])
def test_cli_empty_question_exits_2_at_once(tmp_path, question):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QA_DATA_DIR": str(tmp_path / "data")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "qa_app.cli", "ask", question], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "the question is empty" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before opening (or creating) anything
    assert time.monotonic() - started < 60


def test_app_empty_question_is_refused_with_a_message(app):
    from gradio_client.exceptions import AppError

    from qa_app.app import EMPTY_QUESTION, build_app

    history, _, cleared = app.client.predict("   ", [], "extractive", 5, [], api_name="/chat")
    assert history == [] and cleared == ""  # nothing added, no error
    with pytest.raises(AppError, match="the question is empty"):
        app.client.predict(" \u200b ", "extractive", 5, [], api_name="/ask_json")
    # The chat handler shows a warning (a toast in the page) with the reason.
    demo = build_app(app.service)
    chat = next(f for f in demo.fns.values() if f.api_name == "chat").fn
    with pytest.warns(UserWarning, match=EMPTY_QUESTION):
        outputs = list(chat("\x00  \x1b", [], "extractive", 5, []))
    assert outputs[-1][0] == []
    # The app still answers.
    history, _, _ = app.client.predict(QUESTION, [], "extractive", 5, [], api_name="/chat")
    assert ANSWER_WORD in content(history[-1])


def test_huge_question_is_cut_with_a_notice(app):
    limit = app.settings.answer.max_question_chars
    huge = QUESTION + " " + "coopération régionale " * 4600  # > 100 000 characters
    assert len(huge) > 100_000
    started = time.monotonic()
    answer = app.service.ask(huge, mode="extractive")
    assert len(answer.question) <= limit
    assert f"cut to its first {limit} characters" in answer.notice
    assert time.monotonic() - started < 60
    # Through the app: the chat shows the question as answered (cut), with the notice.
    history, _, _ = app.client.predict(huge, [], "extractive", 5, [], api_name="/chat")
    assert len(content(history[0])) < limit + 500
    assert f"cut to its first {limit} characters" in content(history[-1])
    answer = app.client.predict(huge, "extractive", 5, [], api_name="/ask_json")
    assert len(answer["question"]) <= limit and "cut to its first" in answer["notice"]


def test_control_characters_are_stripped(app):
    garbled = ("Où\u00a0s'est\ttenu\x00 le premier\x1b Sommet\u200b de la\x7f Conférence\r ?"
               "\ud800")
    answer = app.service.ask(garbled, mode="extractive")
    assert answer.question == "Où s'est tenu le premier Sommet de la Conférence  ?"
    assert not [ch for ch in answer.question
                if unicodedata.category(ch) in ("Cc", "Cf", "Cs")]
    assert answer.citations[0].passage.source == ANSWER_SOURCE
    history, _, _ = app.client.predict("Où s'est tenu\x00 le premier\x07 Sommet\u200b ?", [],
                                       "extractive", 5, [], api_name="/chat")
    shown = content(history[0])
    assert "\\u0000" not in shown and "\\u0007" not in shown and "\u200b" not in shown
    assert "Où s&#x27;est tenu le premier Sommet ?" in shown or \
        "Où s'est tenu le premier Sommet ?" in shown, shown


# -- files -------------------------------------------------------------------------------------
def test_ingest_skips_bad_files_with_reasons_and_loses_nothing(tmp_path, app):
    settings = make_settings(tmp_path, **{"ingest.max_file_mb": CAP_MB})
    comps = Components(settings, embedder=app.service.components.embedder)
    corpus = tmp_path / "corpus"
    shutil.copytree(app.corpus, corpus)
    comps.indexer.run(corpus, progress=False)
    before = comps.store.count()
    (corpus / "latin1.txt").write_bytes(INVALID_UTF8)
    (corpus / "vide.md").write_bytes(b"")
    (corpus / "image.txt").write_bytes(BINARY)
    (corpus / "enorme.txt").write_text("Un paragraphe très long. " * 4000, encoding="utf-8")
    report = comps.indexer.run(corpus, progress=False)
    reasons = dict(report.skipped)
    assert "UTF-8" in reasons["latin1.txt"]
    assert "empty" in reasons["vide.md"]
    assert "binary" in reasons["image.txt"]
    assert "larger than" in reasons["enorme.txt"]
    assert not report.changed and comps.store.count() == before
    results = comps.retriever.search(QUESTION, k=3)
    assert results[0].passage.source == ANSWER_SOURCE


def _upload(app, path):
    from gradio_client import handle_file

    return app.client.predict([handle_file(str(path))], api_name="/upload")[0]


def test_app_upload_refuses_bad_files_and_loses_nothing(app, tmp_path):
    from qa_app.app import ingest_upload, uploads_dir

    before = app.service.store.count()
    cases = {
        "latin1.txt": (INVALID_UTF8, "not valid UTF-8"),
        "image.txt": (BINARY, "binary content"),
        "vide.txt": (b"", "the file is empty"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        report = _upload(app, path)
        assert reason in report and "✗" in report, report
        assert not (uploads_dir(app.settings) / name).exists()
    # Over the size cap: refused by Gradio before the upload, and by the app itself.
    big = tmp_path / "enorme.txt"
    big.write_text("Un paragraphe très long. " * 4000, encoding="utf-8")
    with pytest.raises(ValueError, match="maximum file size"):
        _upload(app, big)
    resp = httpx.post(app.url + "gradio_api/upload", timeout=30,
                      files=[("files", ("enorme.txt", big.read_bytes(), "text/plain"))])
    assert resp.status_code == 413
    result = ingest_upload(app.service, big)
    assert not result.ok and f"over the limit of {CAP_MB:g} MB" in result.message
    assert app.service.store.count() == before and known_passage_found(app.service)
    folder = uploads_dir(app.settings)
    leftovers = {p.name for p in folder.iterdir()} if folder.exists() else set()
    assert not leftovers & {*cases, "enorme.txt"} and not [n for n in leftovers if ".part" in n]


def test_upload_names_with_path_traversal_stay_in_the_uploads_folder(app, tmp_path):
    from qa_app.app import ingest_upload, uploads_dir

    before = app.service.store.count()
    text = ("Note de synthèse\n\nLe secrétariat prépare un rapport sur les zorglubiennes "
            "mesures de confiance adoptées par les vice-ministres.\n")
    # Raw multipart upload with a hostile name, then the app's upload handler on it.
    resp = httpx.post(app.url + "gradio_api/upload", timeout=30,
                      files=[("files", ("../../evasion.txt", text.encode(), "text/plain"))])
    assert resp.status_code == 200
    server_path = resp.json()[0]
    report = app.client.predict(
        [{"path": server_path, "orig_name": "../../evasion.txt",
          "meta": {"_type": "gradio.FileData"}}], api_name="/upload")[0]
    assert "evasion.txt: indexed" in report, report
    # The handler itself, given the hostile name directly.
    path = tmp_path / "note.txt"
    path.write_text(text.replace("zorglubiennes", "quetzales"), encoding="utf-8")
    result = ingest_upload(app.service, path, original_name="../../../../tmp/evasion2.txt")
    assert result.ok and result.name == "evasion2.txt", result
    folder = uploads_dir(app.settings)
    assert {"evasion.txt", "evasion2.txt"} <= {p.name for p in folder.iterdir()}
    assert not (app.root / "evasion.txt").exists() and not (app.root.parent / "evasion.txt").exists()
    added = len(app.service.document("evasion.txt")) + len(app.service.document("evasion2.txt"))
    assert app.service.store.count() == before + added
    assert known_passage_found(app.service)


def test_upload_duplicates_of_an_indexed_document(app, tmp_path):
    from qa_app.app import uploads_dir

    before = app.service.store.count()
    sommet = app.service.document(ANSWER_SOURCE)
    # Same content under another name: nothing to do.
    copy = tmp_path / "copie du sommet.txt"
    shutil.copyfile(app.corpus / ANSWER_SOURCE, copy)
    report = _upload(app, copy)
    assert f"already indexed (as {ANSWER_SOURCE})" in report, report
    assert app.service.store.count() == before
    # Same name, other content: kept apart under a new name, the indexed one untouched.
    other = tmp_path / ANSWER_SOURCE
    other.write_text("Compte rendu\n\nLa réunion des vice-ministres s'est tenue à Bakou en "
                     "avril, sous la présidence de l'Azerbaïdjan.\n", encoding="utf-8")
    report = _upload(app, other)
    assert "sommet-2.txt: indexed" in report, report
    assert [p.text for p in app.service.document(ANSWER_SOURCE)] == [p.text for p in sommet]
    assert known_passage_found(app.service)
    added = len(app.service.document("sommet-2.txt"))
    assert added and app.service.store.count() == before + added
    assert (uploads_dir(app.settings) / "sommet-2.txt").is_file()
    # A broken file under the name of an earlier upload does not replace it.
    kept = [p.text for p in app.service.document("sommet-2.txt")]
    broken = tmp_path / "broken" / "sommet-2.txt"
    broken.parent.mkdir()
    broken.write_bytes(BINARY)
    report = _upload(app, broken)
    assert "sommet-2.txt: not indexed: binary content" in report, report
    assert [p.text for p in app.service.document("sommet-2.txt")] == kept
    assert (uploads_dir(app.settings) / "sommet-2.txt").read_text(encoding="utf-8") == \
        other.read_text(encoding="utf-8")
