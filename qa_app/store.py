"""Chroma collection of passages: embedded PersistentClient or a Chroma server.

Chroma is the source of truth for passages. Its collection metadata records the
embedding model (a mismatch is refused) and a ``generation`` counter that every
ingest which changes something bumps, so any process sharing the store can tell that
its derived caches (the lexical index) are stale.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .schema import Passage
from .settings import Settings

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A store problem with a message fit for the user."""


class ModelMismatchError(StoreError):
    pass


@dataclass
class Hit:
    passage: Passage
    similarity: float  # cosine similarity, 1 = identical direction


def _chroma_settings():
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=True)


def make_client(settings: Settings):
    """The Chroma client the settings ask for, with telemetry off."""
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb

    st = settings.store
    if st.mode == "http":
        headers = {}
        token = os.environ.get(st.auth_token_env, "")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return chromadb.HttpClient(
                host=st.host, port=st.port, ssl=st.ssl, headers=headers,
                settings=_chroma_settings(),
            )
        except Exception as exc:
            scheme = "https" if st.ssl else "http"
            raise StoreError(
                f"cannot reach the Chroma server at {scheme}://{st.host}:{st.port}: "
                f"{_short(exc)}. Start it with `chroma run --path DIR --host {st.host} "
                f"--port {st.port}` or set store.mode: embedded."
            ) from None
    path = settings.resolve(settings.data_dir) / "chroma"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the data directory {path}: {exc.strerror}") from None
    _lock_store(path)
    try:
        return chromadb.PersistentClient(path=str(path), settings=_chroma_settings())
    except Exception as exc:
        raise StoreError(f"cannot open the Chroma store in {path}: {_short(exc)}") from None


_HELD_LOCKS: dict[str, Any] = {}


def _lock_store(path: Path) -> None:
    """One process at a time on an embedded store: a second one gets a clear error
    instead of racing on SQLite files. The lock lives as long as the process."""
    import fcntl

    key = str(path.resolve())
    if key in _HELD_LOCKS:
        return
    try:
        fh = open(path / "qa.lock", "a+")
    except OSError as exc:
        raise StoreError(f"cannot use the data directory {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StoreError(
            f"the index in {path} is in use by another process (an app or an ingest). "
            f"Stop it first, or share the index between processes with a Chroma server "
            f"(store.mode: http; see README, 'Server mode')."
        ) from None
    _HELD_LOCKS[key] = fh


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class PassageStore:
    """Passages with their vectors in one Chroma collection."""

    def __init__(self, settings: Settings, model_id: str, dim: int, client=None) -> None:
        self.settings = settings
        self.model_id = model_id
        self.dim = dim
        self.client = client or make_client(settings)
        self.name = settings.store.collection
        self._collection = None

    # -- collection ------------------------------------------------------------------
    @property
    def collection(self):
        if self._collection is None:
            try:
                col = self.client.get_or_create_collection(
                    self.name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={"embedding_model": self.model_id, "dim": self.dim, "generation": 0},
                    embedding_function=None,
                )
            except Exception as exc:
                raise StoreError(f"cannot open collection '{self.name}': {_short(exc)}") from None
            meta = col.metadata or {}
            stored = meta.get("embedding_model")
            if stored and stored != self.model_id:
                raise ModelMismatchError(
                    f"the index in collection '{self.name}' was built with the embedding model "
                    f"'{stored}', but the configured model is '{self.model_id}'. Rebuild it with "
                    f"`qa ingest --rebuild` (or set embedding.model back to '{stored}')."
                )
            self._collection = col
        return self._collection

    def metadata(self) -> dict[str, Any]:
        # Fetched fresh: another process may have bumped the generation.
        try:
            return dict(self.client.get_collection(self.name).metadata or {})
        except Exception as exc:
            raise StoreError(f"cannot read collection '{self.name}': {_short(exc)}") from None

    def generation(self) -> int:
        return int(self.metadata().get("generation", 0))

    def bump_generation(self) -> int:
        meta = self.metadata()
        # Chroma replaces the whole metadata on modify, so write all keys back.
        meta["generation"] = int(meta.get("generation", 0)) + 1
        meta["updated_at"] = time.time()
        meta.setdefault("embedding_model", self.model_id)
        self.collection.modify(metadata=meta)
        return meta["generation"]

    def reset(self) -> None:
        try:
            self.client.delete_collection(self.name)
        except Exception:  # noqa: BLE001 - absent collection is fine for a rebuild
            pass
        self._collection = None

    # -- writes ----------------------------------------------------------------------
    def _batch_size(self) -> int:
        try:
            limit = int(self.client.get_max_batch_size())
        except Exception:  # noqa: BLE001 - older servers do not say
            limit = 5000
        return max(1, min(self.settings.store.batch_size, limit))

    def add(self, passages: list[Passage], vectors: np.ndarray) -> None:
        if len(passages) != len(vectors):
            raise ValueError("one vector per passage")
        step = self._batch_size()
        for i in range(0, len(passages), step):
            chunk = passages[i : i + step]
            self.collection.upsert(
                ids=[p.id for p in chunk],
                embeddings=np.asarray(vectors[i : i + step], dtype=np.float32),
                documents=[p.text for p in chunk],
                metadatas=[p.to_metadata() for p in chunk],
            )

    def delete_source(self, source: str) -> None:
        self.collection.delete(where={"source": source})

    # -- reads -----------------------------------------------------------------------
    def count(self) -> int:
        return self.collection.count()

    def _passages(self, got: dict[str, Any]) -> list[Passage]:
        return [
            Passage.from_metadata(pid, doc, meta)
            for pid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"])
        ]

    def get(self, ids: Iterable[str]) -> list[Passage]:
        ids = list(ids)
        if not ids:
            return []
        got = self.collection.get(ids=ids, include=["documents", "metadatas"])
        by_id = {p.id: p for p in self._passages(got)}
        return [by_id[i] for i in ids if i in by_id]

    def by_source(self, source: str) -> list[Passage]:
        got = self.collection.get(where={"source": source}, include=["documents", "metadatas"])
        return sorted(self._passages(got), key=lambda p: p.position)

    def all_passages(self, page: int = 5000) -> list[Passage]:
        out: list[Passage] = []
        offset = 0
        while True:
            got = self.collection.get(
                include=["documents", "metadatas"], limit=page, offset=offset
            )
            batch = self._passages(got)
            out.extend(batch)
            if len(batch) < page:
                return out
            offset += page

    def source_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        offset, page = 0, 10000
        while True:
            got = self.collection.get(include=["metadatas"], limit=page, offset=offset)
            for meta in got["metadatas"]:
                counts[meta["source"]] = counts.get(meta["source"], 0) + 1
            if len(got["ids"]) < page:
                return counts
            offset += page

    def query(
        self, vector: np.ndarray, n: int, sources: list[str] | None = None
    ) -> list[Hit]:
        total = self.count()
        if total == 0:
            return []
        where = None
        if sources:
            where = {"source": sources[0]} if len(sources) == 1 else {"source": {"$in": sources}}
        got = self.collection.query(
            query_embeddings=np.asarray(vector, dtype=np.float32).reshape(1, -1),
            n_results=min(n, total),
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        hits = []
        for pid, doc, meta, dist in zip(
            got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0]
        ):
            hits.append(Hit(Passage.from_metadata(pid, doc, meta), 1.0 - float(dist)))
        return hits


def data_path(settings: Settings, *parts: str) -> Path:
    return settings.resolve(settings.data_dir).joinpath(*parts)
