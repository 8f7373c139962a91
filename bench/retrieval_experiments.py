#!/usr/bin/env python3
"""Retrieval experiments on the seeds: recall/MRR by kind, ablations, abstention, latency.

usage: .venv/bin/python bench/retrieval_experiments.py [--dataset FILE ...] [--ablations]
       [--latency] [--data DIR] [--config FILE]

Ingests the seeds into DIR (default /tmp/qa-retrieval-exp) with an embedder whose vectors
(dense and latent terms) are cached on disk by text hash, so a rerun after a change of
retrieval code costs seconds, not a full ingest. Then runs the real ``Retriever`` on each
dataset (default eval/dev.jsonl and two sets of our own: bench/retrieval_questions.jsonl
and bench/heldout_questions.jsonl, the latter written without sight of the dev set or the
system; the fusion settings were chosen on all three) and scores it with eval/score.py.

--ablations  the same questions with one retriever or feature turned off, and RRF
--latency    median/p95 of Retriever.search with the real (uncached) embedder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qa_app.embedder import make_embedder  # noqa: E402
from qa_app.evaluation import load_dataset, load_scorer  # noqa: E402
from qa_app.fusion import reciprocal_rank_fusion  # noqa: E402
from qa_app.latent import latent_encoder  # noqa: E402
from qa_app.lexical import unknown_numbers  # noqa: E402
from qa_app.retrieve import Retriever  # noqa: E402
from qa_app.settings import load_settings  # noqa: E402
from qa_app.store import PassageStore  # noqa: E402


class CachingEmbedder:
    """The configured embedder, with every vector cached on disk by text hash."""

    def __init__(self, inner, path: Path) -> None:
        self.inner, self.path = inner, path
        self.model_id, self.dim, self.max_tokens = inner.model_id, inner.dim, inner.max_tokens
        self.cache = pickle.loads(path.read_bytes()) if path.is_file() else {}
        self.dirty = False

    def _get(self, kind: str, texts: list[str], compute):
        keys = [(kind, hashlib.sha1(t.encode()).hexdigest()) for t in texts]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            for i, vec in zip(todo, compute([texts[i] for i in todo])):
                self.cache[keys[i]] = vec
            self.dirty = True
        return [self.cache[k] for k in keys]

    def embed_passages(self, texts):
        import numpy as np

        return np.array(self._get("passage", texts, self.inner.embed_passages), np.float32)

    def embed_queries(self, texts):
        import numpy as np

        return np.array(self._get("query", texts, self.inner.embed_queries), np.float32)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def latent_encoder(self):
        inner = latent_encoder(self.inner)
        if inner is None:
            return None
        outer = self

        class Cached:
            encoder_id = inner.encoder_id

            def encode(self, text, top_k, query=False):
                return outer._get(f"{inner.encoder_id}:latent{top_k}:{query}", [text],
                                  lambda ts: [inner.encode(t, top_k, query) for t in ts])[0]

        return Cached()

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(self.cache))
            tmp.replace(self.path)
            self.dirty = False


def run(retriever: Retriever, questions: list[dict], fuse=None) -> list[dict]:
    """Each question through the retriever (or a custom fusion of its runs)."""
    out = []
    for q in questions:
        if fuse is None:
            hits = retriever.search(q["question"], k=10)
            passages = [h.passage for h in hits]
            relevance = retriever.relevance(hits)
            abstained = not retriever.is_relevant(q["question"], hits)
        else:
            runs, weights, hits, index, _ = retriever.runs(q["question"], 50)
            ids = fuse(runs, weights)[:10]
            passages = [index.passages[i] for i in ids if i in index.passages]
            relevance, abstained = float("nan"), False
        out.append({
            "id": q["id"], "kind": q.get("kind", ""), "lang": q.get("lang", ""),
            "retrieved": [{"source": p.source, "text": p.text} for p in passages],
            "abstained": abstained, "relevance": relevance,
            "numbers": unknown_numbers(q["question"], retriever.lexical().numbers),
        })
    return out


def summary_line(summary: dict) -> str:
    kinds = "  ".join(f"{k}={v:.2f}" for k, v in summary["recall@5_by_kind"].items())
    return (f"r@5={summary['recall@5']:.3f} r@10={summary['recall@10']:.3f} "
            f"mrr={summary['mrr@10']:.3f} | {kinds} | abstain unans="
            f"{summary['abstain_when_unanswerable']:.2f} ans={summary['abstain_when_answerable']:.2f}")


def abstention_report(results: list[dict], threshold: float) -> None:
    """Relevance of the best passage, answerable vs unanswerable, and how much room the
    threshold has (margins, leave-one-out choice of the threshold)."""
    ans = sorted((r["relevance"], r["id"]) for r in results
                 if r["kind"] != "unanswerable" and not r["numbers"])
    una = sorted((r["relevance"], r["id"]) for r in results
                 if r["kind"] == "unanswerable" and not r["numbers"])
    by_numbers = [r["id"] for r in results if r["numbers"]]
    print(f"  abstain by unknown number: {by_numbers}")
    print("  answerable, lowest relevance: "
          + ", ".join(f"{i} {v:.2f}" for v, i in ans[:6]))
    print("  unanswerable (not caught by numbers): "
          + ", ".join(f"{i} {v:.2f}" for v, i in una))
    if ans:
        below = [i for v, i in ans if v < threshold]
        print(f"  threshold {threshold:.2f}: answerable below it {below}; margin to the "
              f"lowest answerable {ans[0][0] - threshold:+.2f}")


def fit_threshold(rows: list[tuple[float, bool]]) -> float:
    """The calibration rule: halfway between the lowest answerable relevance and the
    highest unanswerable relevance below it (abstain below the threshold)."""
    lowest = min(v for v, u in rows if not u)
    below = [v for v, u in rows if u and v < lowest]
    return (lowest + max(below)) / 2 if below else lowest


def loo_threshold(rows: list[tuple[float, bool]]) -> tuple[int, int]:
    """Leave-one-out: fit the threshold on the other questions, judge the one left out.
    Returns (answerable wrongly abstained, unanswerable caught)."""
    wrong = caught = 0
    for i, (value, unanswerable) in enumerate(rows):
        t = fit_threshold([r for j, r in enumerate(rows) if j != i])
        if value < t:
            caught += unanswerable
            wrong += not unanswerable
    return wrong, caught


DATASETS = [str(ROOT / "eval" / "dev.jsonl"), str(ROOT / "bench" / "retrieval_questions.jsonl"),
            str(ROOT / "bench" / "heldout_questions.jsonl")]


def setup(config: str, data: str):
    """The seeds ingested into DATA with the caching embedder: (settings, the real
    embedder, the caching one, the store, a Retriever with its derived index built)."""
    from ingest.indexer import Indexer

    settings = load_settings(config, environ={})
    settings.data_dir = Path(data) / "data"
    real = make_embedder(settings.embedding.model, settings.embedding.threads)
    emb = CachingEmbedder(real, Path(data) / f"vectors-{real.model_id.replace(':', '_')}.pkl")
    store = PassageStore(settings, emb.model_id, emb.dim)
    t0 = time.perf_counter()
    report = Indexer(settings, emb, store).run(ROOT / "seeds", progress=False)
    emb.save()
    print(f"ingest: {report.total_passages} passages, {time.perf_counter() - t0:.1f} s "
          f"({report.embedded} embedded)")
    retriever = Retriever(settings, emb, store)
    retriever.lexical()
    emb.save()
    return settings, real, emb, store, retriever


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "settings.yaml"))
    ap.add_argument("--data", default="/tmp/qa-retrieval-exp")
    ap.add_argument("--dataset", action="append")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="latency rounds over the questions")
    args = ap.parse_args(argv)

    settings, real, emb, store, retriever = setup(args.config, args.data)
    scorer = load_scorer()
    datasets = args.dataset or DATASETS
    all_results = []
    for path in datasets:
        questions = load_dataset(Path(path))
        results = run(retriever, questions)
        emb.save()
        all_results += results
        summary, _ = scorer.score(questions, results)
        print(f"\n== {path}\n  {summary_line(summary)}")
        abstention_report(results, settings.retrieval.min_relevance)
        if args.ablations:
            ablations(retriever, settings, questions, scorer)
            emb.save()
    rows = [(r["relevance"], r["kind"] == "unanswerable") for r in all_results
            if not r["numbers"]]
    n_ans = sum(not u for _, u in rows)
    wrong, caught = loo_threshold(rows)
    n_una = sum(u for _, u in rows)
    print(f"\nthreshold fitted on all sets: {fit_threshold(rows):.3f} (configured "
          f"{settings.retrieval.min_relevance}); leave-one-out over the {len(rows)} questions "
          f"without an unknown number: answerable wrongly abstained {wrong}/{n_ans}, "
          f"unanswerable caught {caught}/{n_una}")
    if args.latency:
        latency(settings, real, store, [q for p in datasets for q in load_dataset(Path(p))],
                args.rounds)
    return 0


def ablations(retriever: Retriever, settings, questions, scorer) -> None:
    base = settings.retrieval
    variants = {
        "dense only": dict(lexical_weight=0, crosslingual_lexical_weight=0, latent_weight=0),
        "BM25 only": dict(dense_weight=0, latent_weight=0, crosslingual_lexical_weight=1),
        "latent only": dict(dense_weight=0, lexical_weight=0, crosslingual_lexical_weight=0),
        "no latent (dense+BM25)": dict(latent_weight=0),
        "no BM25 (dense+latent)": dict(lexical_weight=0, crosslingual_lexical_weight=0),
        "no language-aware weight": dict(crosslingual_lexical_weight=base.lexical_weight),
        "weighted mean (sharpness 0)": dict(fusion_sharpness=0),
        "no dense guarantee": dict(dense_guaranteed=0),
        "neither (stop 2's fusion)": dict(fusion_sharpness=0, dense_guaranteed=0),
        "crosslingual BM25 weight 0": dict(crosslingual_lexical_weight=0),
        "candidates 20": dict(candidates=20),
        "candidates 100": dict(candidates=100),
    }
    for name, changes in variants.items():
        s = settings.model_copy(deep=True)
        for key, value in changes.items():
            setattr(s.retrieval, key, value)
        r = Retriever(s, retriever.embedder, retriever.store)
        r._lexical = retriever.lexical()
        summary, _ = scorer.score(questions, run(r, questions))
        print(f"  {name:28s} {summary_line(summary)}")

    def rrf(runs, weights):
        ranked = reciprocal_rank_fusion(
            {n: [pid for pid, s in run if s > 0 or n == "dense"] for n, run in runs.items()},
            weights, k=60)
        return [pid for pid, _ in ranked]

    summary, _ = scorer.score(questions, run(retriever, questions, fuse=rrf))
    print(f"  {'RRF (k=60) instead of z':28s} {summary_line(summary)}")


def latency(settings, real, store, questions, rounds: int) -> None:
    retriever = Retriever(settings, real, store)
    retriever.search(questions[0]["question"])  # warm-up: model, derived index
    times = []
    for _ in range(rounds):
        for q in questions:
            t0 = time.perf_counter()
            retriever.search(q["question"])
            times.append(time.perf_counter() - t0)
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    print(f"\nlatency of Retriever.search over {len(times)} calls: median "
          f"{statistics.median(times) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
          f"max {times[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
