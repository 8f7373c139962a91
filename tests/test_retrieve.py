"""Hybrid retrieval: fusion of dense + BM25 + latent terms, filters, language-aware weights,
abstention; and one test on the real seeds with the real default model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import SEEDS, make_settings
from qa_app.lexical import analyze
from qa_app.retrieve import Retriever
from qa_app.schema import Passage, ScoredPassage, passage_id
from qa_app.store import PassageStore


def make(text: str, source: str, position: int, section: str = "") -> Passage:
    return Passage(id=passage_id(source, position), source=source, title="Déclaration",
                   section=section, para_no="", text=text, start=0, end=len(text),
                   position=position)


PASSAGES = [
    make("Nous condamnons le terrorisme sous toutes ses formes et manifestations.",
         "a.txt", 0, "Annexe > I. Sécurité"),
    make("La sécurité énergétique est une priorité pour les États membres.",
         "a.txt", 1, "Annexe > II. Économie"),
    make("Le tourisme fera renaître la tradition de la Route de la soie.",
         "a.txt", 2, "Annexe > II. Économie"),
    make("La Thaïlande a adhéré à la Conférence en 2004, puis la Corée en 2006.",
         "b.txt", 0, "Lettre"),
    make("Les ministres des affaires étrangères se réuniront tous les deux ans.",
         "b.txt", 1, "Annexe > IV. Structure"),
    make("Le secrétariat assure le suivi administratif des réunions ordinaires.",
         "b.txt", 2, "Annexe > IV. Structure"),
]


class FakeLatent:
    encoder_id = "fake-latent"

    def encode(self, text, top_k, query=False):
        feats = sorted({hash(w[:5]) % 4093 for w in analyze(text, "fr") + analyze(text, "en")})
        return np.array(feats, np.int32), np.ones(len(feats), np.float32)


class FakeEmbedder:
    """Bag of stems hashed into 256 dimensions: deterministic, no model to load."""

    model_id = "fake-bag-of-stems"
    dim = 256
    max_tokens = 512

    def _vec(self, text: str) -> np.ndarray:
        v = np.full(self.dim, 0.05, np.float32)  # a floor, so no cosine is exactly 0
        for w in analyze(text, "fr") + analyze(text, "en"):
            v[hash(w[:5]) % self.dim] += 1.0
        return v / np.linalg.norm(v)

    def embed_passages(self, texts):
        return np.array([self._vec(t) for t in texts], np.float32)

    embed_queries = embed_passages

    def count_tokens(self, text):
        return len(text.split())

    def latent_encoder(self):
        return FakeLatent()


@pytest.fixture
def retriever(tmp_path):
    settings = make_settings(tmp_path)
    emb = FakeEmbedder()
    store = PassageStore(settings, emb.model_id, emb.dim)
    store.add(PASSAGES, emb.embed_passages([p.embedding_text() for p in PASSAGES]))
    store.bump_generation()
    return Retriever(settings, emb, store)


def ids(results):
    return [r.passage.id for r in results]


def test_search_fuses_three_retrievers(retriever):
    results = retriever.search("Quand la Thaïlande a-t-elle adhéré ?", k=3)
    assert ids(results)[0] == "b.txt#0000"
    best = results[0].scores
    assert {"dense", "lexical", "latent", "latent_cos", "z_dense", "z_lexical",
            "z_latent"} <= set(best)
    b = retriever.settings.retrieval.fusion_sharpness
    assert b > 0  # the default: soft maximum of the z-scores
    assert results[0].score == pytest.approx(math.log(sum(
        math.exp(b * best[f"z_{name}"]) for name in ("dense", "lexical", "latent")) / 3) / b,
        abs=1e-3)
    retriever.settings.retrieval.dense_guaranteed = 0
    plain = retriever.search("Quand la Thaïlande a-t-elle adhéré ?", k=5)
    assert [r.score for r in plain] == sorted((r.score for r in plain), reverse=True)


def test_dense_best_always_in_the_first_five(retriever, monkeypatch):
    r = retriever.settings.retrieval
    fillers = [make(f"Paragraphe de remplissage numéro {i} sur la coopération.", "c.txt", i)
               for i in range(6)]
    retriever.store.add(fillers, retriever.embedder.embed_passages(
        [p.embedding_text() for p in fillers]))
    retriever.store.bump_generation()
    real_runs = retriever.runs
    all_ids = [p.id for p in PASSAGES + fillers]

    def buried(question, n, sources=None, sections=None):
        # the dense model's best two are the ones BM25 and the latent terms rank last
        runs, weights, hits, index, cosines = real_runs(question, n, sources, sections)
        dense = [pid for pid, _ in runs["dense"]]
        others = [pid for pid in all_ids if pid not in dense[:2]] + dense[:2]
        runs["lexical"] = [(pid, float(len(others) - i)) for i, pid in enumerate(others)]
        runs["latent"] = list(runs["lexical"])
        return runs, weights, hits, index, cosines

    monkeypatch.setattr(retriever, "runs", buried)
    r.lexical_weight = r.latent_weight = 20.0  # and the dense vote alone cannot lift them
    question = "Quand la Thaïlande a-t-elle adhéré ?"
    dense_best = [pid for pid, _ in real_runs(question, r.candidates)[0]["dense"][:2]]
    r.dense_guaranteed = 0
    assert not set(dense_best) & set(ids(retriever.search(question, k=10)[:5]))
    r.dense_guaranteed = 2
    assert set(dense_best) <= set(ids(retriever.search(question, k=10)[:5]))
    assert set(dense_best) == set(ids(retriever.search(question, k=2)))
    r.dense_guaranteed = 1
    assert dense_best[0] in ids(retriever.search(question, k=10)[:5])


def test_document_and_section_filters(retriever):
    assert set(r.passage.source for r in retriever.search("sécurité", sources=["b.txt"])) == {
        "b.txt"}
    under = retriever.search("réunions", sections=["Annexe > IV. Structure"])
    assert set(ids(under)) == {"b.txt#0001", "b.txt#0002"}
    parent = retriever.search("sécurité", sections=["annexe"])  # a parent, any case
    assert set(r.passage.section.split(" > ")[0] for r in parent) == {"Annexe"}
    assert "b.txt#0000" not in ids(parent)  # "Lettre"
    both = retriever.search("économie", sources=["a.txt"], sections=["Annexe > II. Économie"])
    assert set(ids(both)) == {"a.txt#0001", "a.txt#0002"}
    assert retriever.search("économie", sources=["b.txt"], sections=["Annexe > II"]) == []


def test_language_aware_weights(retriever):
    r = retriever.settings.retrieval
    r.lexical_weight, r.crosslingual_lexical_weight = 1.0, 0.25
    assert retriever.weights("fr", "fr")["lexical"] == 1.0
    assert retriever.weights("en", "fr")["lexical"] == 0.25
    assert retriever.weights("en", "en")["lexical"] == 1.0
    _, weights_en, *_ = retriever.runs("When did Thailand join?", 10)
    assert weights_en["lexical"] == 0.25 and weights_en["dense"] == 1.0
    _, weights_fr, *_ = retriever.runs("Quand la Thaïlande a-t-elle adhéré ?", 10)
    assert weights_fr["lexical"] == 1.0
    r.crosslingual_lexical_weight = 0.0
    runs, *_ = retriever.runs("When did Thailand join?", 10)
    assert "lexical" not in runs and {"dense", "latent"} <= set(runs)


def test_index_follows_the_collection(retriever):
    assert retriever.search("quetzalcoatlus", k=3)[0].scores.get("lexical", 0) == 0
    extra = make("Le mot témoin est quetzalcoatlus.", "c.txt", 0)
    retriever.store.add([extra], retriever.embedder.embed_passages([extra.embedding_text()]))
    retriever.store.bump_generation()
    assert ids(retriever.search("quetzalcoatlus", k=3))[0] == "c.txt#0000"


# -- abstention on hand-made score lists ----------------------------------------------------
def scored(*pairs) -> list[ScoredPassage]:
    out = []
    for i, (dense, latent) in enumerate(pairs):
        scores = {}
        if dense is not None:
            scores["dense"] = dense
        if latent is not None:
            scores["latent_cos"] = latent
        out.append(ScoredPassage(PASSAGES[i], 1.0 - i / 10, scores))
    return out


def test_is_relevant_threshold(retriever):
    retriever.settings.retrieval.min_relevance = 0.98
    q = "Quel est le rôle du secrétariat ?"
    assert retriever.relevance(scored((0.85, 0.20), (0.80, 0.25))) == pytest.approx(1.10)
    assert retriever.is_relevant(q, scored((0.85, 0.20)))
    assert retriever.is_relevant(q, scored((0.78, 0.10), (0.80, 0.18)))  # 0.80 + 0.18
    assert not retriever.is_relevant(q, scored((0.80, 0.10), (0.75, 0.15)))  # 0.95
    assert not retriever.is_relevant(q, scored((None, 0.10)))  # no dense hit: 0 + 0.10
    assert not retriever.is_relevant(q, [])
    # No latent terms (a model without a sparse head): the threshold is not applied.
    assert retriever.relevance(scored((0.30, None))) is None
    assert retriever.is_relevant(q, scored((0.30, None)))


def test_is_relevant_unknown_numbers(retriever):
    good = scored((0.95, 0.40))
    assert retriever.is_relevant("Qui a adhéré en 2004 ?", good)
    assert not retriever.is_relevant("Qui a adhéré en 2019 ?", good)  # 2019: in no document
    assert not retriever.is_relevant("Who hosted the fifth meeting?", good)
    retriever.settings.retrieval.abstain_on_unknown_numbers = False
    assert retriever.is_relevant("Qui a adhéré en 2019 ?", good)


def test_is_relevant_money_needs_an_amount(retriever):
    good = scored((0.95, 0.40))  # on topic, and none of PASSAGES states an amount of money
    assert not retriever.is_relevant("Quel a été le coût des réunions du secrétariat ?", good)
    assert retriever.is_relevant("Quel est le rôle du secrétariat ?", good)
    retriever.settings.retrieval.abstain_on_missing_answer_type = False
    assert retriever.is_relevant("Quel a été le coût des réunions du secrétariat ?", good)


# -- the real seeds with the real default model ----------------------------------------------
@pytest.fixture(scope="module")
def seeds_retriever(tmp_path_factory):
    from qa_app.components import Components

    settings = make_settings(tmp_path_factory.mktemp("seeds"))
    comps = Components(settings)
    comps.indexer.run(SEEDS, progress=False)
    return comps.retriever


def in_top(results, source: str, words: str, k: int = 5) -> bool:
    return any(r.passage.source == source and words in r.passage.text for r in results[:k])


@pytest.mark.slow
def test_real_seeds_french_and_crosslingual(seeds_retriever):
    r = seeds_retriever
    fr = r.search("Combien de conventions internationales contre le terrorisme les États "
                  "sont-ils invités à rejoindre ?")
    assert in_top(fr, "001_15cd4e670d3e8e09.txt", "13 conventions internationales")
    en = r.search("When did the CICA secretariat start operating?")
    assert in_top(en, "004_b25a437aa36ad68a.txt", "est devenu opérationnel à Almaty")
    assert r.is_relevant("When did the CICA secretariat start operating?", en)
    off = "How many calories are in a banana?"
    assert not r.is_relevant(off, r.search(off))
    only = r.search("terrorisme", sources=["002_a329dce9da1eed87.txt"])
    assert only and {x.passage.source for x in only} == {"002_a329dce9da1eed87.txt"}
