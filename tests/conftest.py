"""Shared fixtures: the real seed corpus, isolated settings, and a real model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

SEEDS = ROOT / "seeds"
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="session")
def seeds_dir() -> Path:
    return SEEDS


def make_settings(tmp_path: Path, **overrides):
    """Settings from the default file, with data under tmp_path and any overrides,
    given as {"section.key": value}."""
    from qa_app.settings import load_settings

    settings = load_settings(ROOT / "config" / "settings.yaml", environ={})
    settings.data_dir = tmp_path / "data"
    for dotted, value in overrides.items():
        section, _, key = dotted.rpartition(".")
        setattr(getattr(settings, section) if section else settings, key, value)
    return settings


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


# -- the running web app (tests/test_app.py, tests/test_app_browser.py) -------------------
# A small document whose text contains HTML: the app must show it as text, never run it.
HTML_DOC_NAME = "note_balisage.txt"
HTML_DOC_TEXT = (
    "Note technique sur le balisage\n\n"
    "Ce paragraphe de contrôle contient du balisage qui doit rester du texte : "
    "<script>alert(1)</script> puis <img src=x onerror=alert(2)> et <b>gras</b>. "
    "Le mot témoin de ce document est quetzalcoatlus.\n"
)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The real app on 127.0.0.1 at a free port, on a temporary data dir holding the seeds
    (and HTML_DOC_NAME) indexed with the default embedder; no LLM. Built once a session."""
    from types import SimpleNamespace

    from qa_app.app import launch
    from qa_app.service import QAService

    tmp = tmp_path_factory.mktemp("app")
    settings = make_settings(tmp)
    extra = tmp / "extra"
    extra.mkdir()
    (extra / HTML_DOC_NAME).write_text(HTML_DOC_TEXT, encoding="utf-8")
    service = QAService(settings)
    service.ingest(SEEDS, progress=False)
    service.ingest(extra / HTML_DOC_NAME, prune=False, progress=False)
    port = _free_port()
    demo, _ = launch(settings, service, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", service=service,
                              settings=settings, html_doc=HTML_DOC_NAME, tmp=tmp)
    finally:
        demo.close()


@pytest.fixture(scope="session")
def llm_app_server(app_server):
    """A second app on the same index (same store and embedder objects), answering with
    tests/llm_server.py's fake OpenAI endpoint, which streams its tokens slowly."""
    from types import SimpleNamespace

    from tests.llm_server import FakeOpenAIServer
    from qa_app.app import launch
    from qa_app.components import Components
    from qa_app.service import QAService

    answer = ("La Thaïlande est membre de la Conférence pour l'interaction et les mesures "
              "de confiance en Asie [1].")
    with FakeOpenAIServer(answer, token_delay=0.12) as fake:
        settings = app_server.settings.model_copy(deep=True)
        settings.llm.base_url = fake.url
        settings.llm.model = "fake-model"
        base = app_server.service.components
        service = QAService(settings, Components(settings, embedder=base.embedder,
                                                 store=base.store))
        port = _free_port()
        demo, _ = launch(settings, service, host="127.0.0.1", port=port, block=False,
                         quiet=True)
        try:
            yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", service=service, fake=fake)
        finally:
            demo.close()
