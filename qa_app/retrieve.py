"""Hybrid retrieval: dense search in Chroma + BM25, fused into one ranking."""

from __future__ import annotations

import logging
import threading

from .embedder import Embedder
from .fusion import reciprocal_rank_fusion
from .lexical import LexicalIndex
from .schema import ScoredPassage
from .settings import Settings
from .store import PassageStore, data_path

log = logging.getLogger(__name__)


class Retriever:
    def __init__(self, settings: Settings, embedder: Embedder, store: PassageStore) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self._lexical: LexicalIndex | None = None
        self._lock = threading.Lock()
        self.cache_path = data_path(settings, f"lexical-{settings.store.collection}.pkl")

    def lexical(self) -> LexicalIndex:
        """The lexical index, rebuilt when the collection's generation moved on."""
        generation = self.store.generation()
        with self._lock:
            if self._lexical is not None and self._lexical.generation == generation:
                return self._lexical
            cached = LexicalIndex.load(self.cache_path)
            if cached is None or cached.generation != generation:
                log.info("rebuilding the lexical index (generation %s)", generation)
                cached = LexicalIndex(self.store.all_passages(), generation)
                try:
                    cached.save(self.cache_path)
                except OSError as exc:  # read-only data dir: keep it in memory
                    log.warning("cannot cache the lexical index: %s", exc)
            self._lexical = cached
            return cached

    def search(
        self, question: str, k: int | None = None, sources: list[str] | None = None
    ) -> list[ScoredPassage]:
        r = self.settings.retrieval
        k = k or r.top_k
        n = max(r.candidates, k)
        qvec = self.embedder.embed_queries([question])[0]
        dense = self.store.query(qvec, n, sources)
        lexical = self.lexical().search(question, n, sources)
        fused = reciprocal_rank_fusion(
            {"dense": [h.passage.id for h in dense], "lexical": [pid for pid, _ in lexical]},
            {"dense": r.dense_weight, "lexical": r.lexical_weight},
            k=r.rrf_k,
        )[:k]
        by_id = {h.passage.id: h for h in dense}
        missing = [pid for pid, _ in fused if pid not in by_id]
        passages = {p.id: p for p in self.store.get(missing)}
        lex = dict(lexical)
        out = []
        for pid, score in fused:
            hit = by_id.get(pid)
            passage = hit.passage if hit else passages.get(pid)
            if passage is None:
                continue
            scores = {"lexical": lex.get(pid, 0.0)}
            if hit:
                scores["dense"] = hit.similarity
            out.append(ScoredPassage(passage, score, scores))
        return out

    def is_relevant(self, question: str, results: list[ScoredPassage]) -> bool:
        """Whether the best passage is relevant enough to answer from (else abstain)."""
        if not results:
            return False
        best = max(r.scores.get("dense", -1.0) for r in results)
        return best >= self.settings.retrieval.min_relevance
