#!/usr/bin/env python3
"""Retrieval ideas that were measured and not adopted, each next to the default.

usage: .venv/bin/python bench/rejected_ideas.py [--data DIR] [--config FILE]

Every idea is the real ``Retriever`` with one change, scored with eval/score.py on the same
three sets as bench/retrieval_experiments.py (dev, our own 39, the held-out 30), whose
ingest and vector cache it shares (DIR, default /tmp/qa-retrieval-exp). An idea earns its
place only if it helps beyond dev; none of these did (README, "How answers are found").
The abstention columns keep the default threshold, calibrated for the default scores.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_experiments import (  # noqa: E402
    DATASETS, ROOT, CachingEmbedder, run, setup, summary_line,
)

from qa_app.citations import split_sentences  # noqa: E402
from qa_app.embedder import make_embedder  # noqa: E402
from qa_app.evaluation import load_dataset, load_scorer  # noqa: E402
from qa_app.fusion import guarantee, zscore_fusion, zscores  # noqa: E402
from qa_app.language import detect_language  # noqa: E402
from qa_app.latent import QUERY_TERMS  # noqa: E402
from qa_app.lexical import index_terms  # noqa: E402
from qa_app.retrieve import GUARANTEED_WITHIN, Retriever  # noqa: E402
from qa_app.schema import ScoredPassage  # noqa: E402


class View(Retriever):
    """The default retriever plus another dense view of the passages: a fourth run in the
    fusion (``weight``), or only a guaranteed place in the first 5 for its best
    (``guaranteed``). ``vectors`` has one row per unit (a passage, or a sentence of one:
    ``owner`` maps units to passages, a passage scoring its best unit)."""

    def __init__(self, base: Retriever, vectors, owner, query_vector, weight=0.0,
                 guaranteed=0):
        super().__init__(base.settings, base.embedder, base.store)
        self._lexical = base.lexical()
        self.vectors, self.owner, self.query_vector = vectors, np.asarray(owner), query_vector
        self.weight, self.guaranteed = weight, guaranteed

    def view_run(self, question: str, n: int):
        index = self.lexical()
        s = self.vectors @ self.query_vector(question)
        best = np.full(len(index.ids), -np.inf)
        np.maximum.at(best, self.owner, s)
        return [(index.ids[i], float(best[i])) for i in np.argsort(-best)[:n]]

    def runs(self, question, n, sources=None, sections=None):
        runs, weights, hits, index, cosines = super().runs(question, n, sources, sections)
        if self.weight > 0:
            runs["view"] = self.view_run(question, n)
            weights = dict(weights, view=self.weight)
        return runs, weights, hits, index, cosines

    def search(self, question, k=None, sources=None, sections=None):
        out = super().search(question, k, sources, sections)
        if not self.guaranteed:
            return out
        index = self.lexical()
        top = [pid for pid, _ in self.view_run(question, self.guaranteed)]
        by_id = {h.passage.id: h for h in out}
        order = guarantee(list(by_id), top, GUARANTEED_WITHIN)[:len(out)]
        return [by_id.get(pid) or ScoredPassage(index.passages[pid], 0.0, {}) for pid in order]


class PseudoRelevance(Retriever):
    """Rocchio feedback on the dense run: the question's vector moved towards the mean of
    the fused top ``k`` passages' vectors (``beta``), then searched again."""

    def __init__(self, base: Retriever, passage_vectors, k=3, beta=0.3):
        super().__init__(base.settings, base.embedder, base.store)
        self._lexical = base.lexical()
        self.pv, self.k, self.beta = passage_vectors, k, beta

    def runs(self, question, n, sources=None, sections=None):
        runs, weights, hits, index, cosines = super().runs(question, n, sources, sections)
        pos = {pid: i for i, pid in enumerate(index.ids)}
        top = [pid for pid, _, _ in zscore_fusion(
            runs, weights, self.settings.retrieval.fusion_sharpness)[:self.k]]
        q = self.embedder.embed_queries([question])[0]
        q = q + self.beta * self.pv[[pos[p] for p in top]].mean(axis=0)
        s = self.pv @ (q / np.linalg.norm(q))
        runs["dense"] = [(index.ids[i], float(s[i])) for i in np.argsort(-s)[:n]]
        return runs, weights, hits, index, cosines


class Coverage(Retriever):
    """Term-coverage diversification of the first 5: picked greedily, each time with the
    BM25 and latent-term contributions of the question's terms that the passages already
    picked cover discounted by ``gamma`` (multi questions need several facts)."""

    def __init__(self, base: Retriever, latent, gamma=0.5, depth=30):
        super().__init__(base.settings, base.embedder, base.store)
        self._lexical = base.lexical()
        self.latent, self.gamma, self.depth = latent, gamma, depth

    def search(self, question, k=None, sources=None, sections=None):
        r = self.settings.retrieval
        k = k or r.top_k
        runs, weights, _, index, _ = self.runs(question, max(r.candidates, k))
        fused = zscore_fusion(runs, weights, r.fusion_sharpness)
        cand = [pid for pid, _, _ in fused[:self.depth]]
        pos = {pid: i for i, pid in enumerate(index.ids)}
        cols = np.array([pos[pid] for pid in cand])
        contrib = {}
        terms = [index._vocab[t] for t in index_terms(
            question, detect_language(question, index.language)) if t in index._vocab]
        if terms and "lexical" in runs:
            rows, counts = np.unique(terms, return_counts=True)
            contrib["lexical"] = index._bm25[rows][:, cols].toarray() * counts[:, None]
        qi, qv = self.latent.encode(question, QUERY_TERMS, query=True)
        keep = qi < index.latent._postings.shape[0]
        contrib["latent"] = index.latent._postings[qi[keep]][:, cols].toarray() * qv[keep][:, None]
        stats = {}
        for name, run_ in runs.items():
            s = np.array([v for _, v in run_])
            z, floor = zscores(list(s))
            stats[name] = (s.mean(), s.std() or 1.0, floor, dict(zip((p for p, _ in run_), z)))
        total = sum(weights[n] for n in runs)
        cover = {n: np.zeros(c.shape[0]) for n, c in contrib.items()}
        peak = {n: np.maximum(c.max(axis=1), 1e-9) for n, c in contrib.items()}
        chosen: list[int] = []
        for _ in range(min(GUARANTEED_WITHIN, len(cand))):
            def fused_score(j):
                parts = []
                for name, (mean, std, floor, z) in stats.items():
                    if name in contrib and chosen:
                        c = contrib[name][:, j]
                        zj = max(floor, (c.sum() - self.gamma * (c * cover[name]).sum() - mean)
                                 / std)
                    else:
                        zj = z.get(cand[j], floor)
                    parts.append(weights[name] / total * math.exp(r.fusion_sharpness * zj))
                return math.log(sum(parts))
            best = max((j for j in range(len(cand)) if j not in chosen), key=fused_score)
            chosen.append(best)
            for name in contrib:
                cover[name] = np.maximum(cover[name], contrib[name][:, best] / peak[name])
        order = [cand[j] for j in chosen] + [pid for pid, _, _ in fused
                                             if pid not in {cand[j] for j in chosen}]
        order = guarantee(order, [p for p, _ in runs["dense"][:r.dense_guaranteed]],
                          GUARANTEED_WITHIN)
        scored = {h.passage.id: h for h in super().search(question, r.candidates)}
        return [scored.get(pid) or ScoredPassage(index.passages[pid], 0.0, {})
                for pid in order[:k]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "settings.yaml"))
    ap.add_argument("--data", default="/tmp/qa-retrieval-exp")
    args = ap.parse_args(argv)
    settings, real, emb, store, base = setup(args.config, args.data)
    index = base.lexical()
    passages = [index.passages[pid] for pid in index.ids]
    use = CachingEmbedder(make_embedder("use-multilingual", settings.embedding.threads),
                          Path(args.data) / "vectors-use.pkl")
    units = [(i, s) for i, p in enumerate(passages) for s in split_sentences(p.text)
             if len(s) >= 25]
    pv = emb.embed_passages([p.embedding_text() for p in passages])
    e5_query = lambda q: emb.embed_queries([q])[0]  # noqa: E731
    use_query = lambda q: use.embed_queries([q])[0]  # noqa: E731
    use_raw = use.embed_passages([p.text for p in passages])
    every = range(len(passages))

    def mixed_question(q: str):  # "query: q" and "passage: q" averaged
        v = emb.embed_queries([q])[0] + emb.embed_passages([q])[0]
        return v / np.linalg.norm(v)

    ideas = {
        "default": lambda: base,
        "sentence vectors as a 4th retriever": lambda: View(
            base, emb.embed_passages([s for _, s in units]), [i for i, _ in units],
            e5_query, weight=1.0),
        "passages embedded as queries too": lambda: View(
            base, emb.embed_queries([p.embedding_text() for p in passages]), every,
            e5_query, weight=0.5),
        "question as query + as passage": lambda: View(
            base, pv, every, mixed_question, weight=1.0),
        "dense pseudo-relevance feedback": lambda: PseudoRelevance(base, pv),
        "term-coverage diversification": lambda: Coverage(base, emb.latent_encoder()),
        "USE (raw text) as a 4th retriever": lambda: View(
            base, use_raw, every, use_query, weight=0.5),
        "USE (raw text) best guaranteed": lambda: View(
            base, use_raw, every, use_query, guaranteed=1),
    }
    scorer = load_scorer()
    sets = {Path(p).stem: load_dataset(Path(p)) for p in DATASETS}
    for name, make in ideas.items():
        retriever = make()
        print(f"\n{name}")
        for set_name, questions in sets.items():
            summary, _ = scorer.score(questions, run(retriever, questions))
            print(f"  {set_name[:20]:20s} {summary_line(summary)}", flush=True)
        emb.save()
        use.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
