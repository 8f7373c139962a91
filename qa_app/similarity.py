"""How well one sentence matches another: stemmed word overlap, plus embeddings when given.

Used to pick the sentence of a passage that supports a claim, to attribute uncited answer
sentences, and to rank sentences for an extractive answer. Words are normalised by
``lexical.analyze`` (lowercase, accents folded, elisions l'/d'/qu' stripped, stop words out,
Snowball stems) and then cut to their first five letters, so that derived and cognate forms
meet: énergétique/énergie, security/sécurité, terrorism/terrorisme.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from .language import detect_language
from .lexical import analyze

log = logging.getLogger(__name__)

PREFIX_LETTERS = 5
# Weight of the cosine z-score next to the word-overlap share (0-1); tuned on eval/dev.jsonl
# with the answer passage ranked third: 0.2-0.5 all found 18/26 evidence sentences, 0 found 16.
COSINE_WEIGHT = 0.25
MIN_CANDIDATES_FOR_Z = 4  # a z-score over fewer candidates means little
MIN_SHARED_WORDS = 2  # one common word ("journée") is chance, not support


def terms(text: str, lang: str | None = None) -> list[str]:
    return [t[:PREFIX_LETTERS] for t in analyze(text, lang or detect_language(text))]


@dataclass
class Scores:
    """Query-by-candidate matrices.

    ``lexical[i, j]``: share of query i's words (idf-weighted over the candidates) found in
    candidate j, in [0, 1]. ``cosine``: embedding similarities, or None without an embedder.
    """

    lexical: np.ndarray
    cosine: np.ndarray | None
    shared: np.ndarray  # number of query words found in the candidate

    @property
    def cosine_z(self) -> np.ndarray | None:
        """Cosines as z-scores within each query's row: raw levels differ from one model to
        another (e5 packs everything into 0.7-0.9), how far a candidate stands out does not."""
        if self.cosine is None:
            return None
        c = self.cosine
        return (c - c.mean(axis=1, keepdims=True)) / (c.std(axis=1, keepdims=True) + 1e-6)

    @property
    def combined(self) -> np.ndarray:
        z = self.cosine_z
        return self.lexical if z is None else self.lexical + COSINE_WEIGHT * z

    def confident(self, i: int, j: int, min_lexical: float, min_z: float) -> bool:
        """Is candidate j a real match for query i, not just the least bad one? Enough shared
        words, or a cosine clearly above the other candidates' (among enough of them)."""
        if self.lexical[i, j] >= min_lexical and self.shared[i, j] >= MIN_SHARED_WORDS:
            return True
        z = self.cosine_z
        return z is not None and z.shape[1] >= MIN_CANDIDATES_FOR_Z and z[i, j] >= min_z


def score(queries: list[str], candidates: list[str], embed=None, lang: str | None = None) -> Scores:
    """Scores of every query against every candidate. ``lang`` is the queries' language
    (guessed per query when None); candidates are analysed in their own guessed language."""
    q_terms = [set(terms(q, lang)) for q in queries]
    c_terms = [set(terms(c)) for c in candidates]
    df = Counter(t for ts in c_terms for t in ts)
    n = len(candidates)
    lexical = np.zeros((len(queries), n), dtype=np.float32)
    shared = np.zeros((len(queries), n), dtype=np.int32)
    for i, qs in enumerate(q_terms):
        weights = {t: math.log(1 + (n + 1) / (df[t] + 0.5)) for t in qs}
        total = sum(weights.values())
        if not total:
            continue
        for j, cs in enumerate(c_terms):
            common = qs & cs
            lexical[i, j] = sum(weights[t] for t in common) / total
            shared[i, j] = len(common)
    cosine = None
    if embed is not None and queries and candidates:
        try:
            cosine = np.asarray(embed.embed_queries(queries)) @ np.asarray(
                embed.embed_passages(candidates)).T
        except Exception as exc:  # noqa: BLE001 - embeddings only refine; words suffice
            log.warning("embedding failed, using word overlap only: %s", exc)
    return Scores(lexical, cosine, shared)


class SentenceVectors:
    """An embedder's vectors for sentence matching, remembered (least recently used out):
    the sentences of a passage come back with every question that retrieves it, and one
    call per batch of new sentences replaces one per sentence list."""

    def __init__(self, embedder, max_items: int = 50_000) -> None:
        self.embedder = embedder
        self.max_items = max_items
        self._lock = threading.Lock()
        self._vectors: OrderedDict[tuple[bool, str], np.ndarray] = OrderedDict()

    def _get(self, texts: list[str], query: bool) -> np.ndarray:
        keys = [(query, t) for t in texts]
        with self._lock:
            known = {k: self._vectors[k] for k in keys if k in self._vectors}
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        if missing:
            embed = self.embedder.embed_queries if query else self.embedder.embed_passages
            known.update(zip(missing, np.asarray(embed([t for _, t in missing]), np.float32)))
        with self._lock:
            for k in keys:
                self._vectors[k] = known[k]
                self._vectors.move_to_end(k)
            while len(self._vectors) > self.max_items:
                self._vectors.popitem(last=False)
        return np.stack([known[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._get(texts, True)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._get(texts, False)
