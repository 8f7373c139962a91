"""Chroma collection of passages: embedded PersistentClient or a Chroma server.

Chroma is the source of truth for passages. Its collection metadata records the
embedding model (a mismatch is refused) and a ``generation`` counter that every
ingest which changes something bumps, so any process sharing the store can tell that
its derived caches (the lexical index) are stale.

The counter starts at the collection's creation time in milliseconds, and a rebuild
(``reset``) carries it over, so two collections (a rebuilt one, or one on another
server read through the same data_dir) never share a generation number: a lexical
cache keyed by the generation cannot be mistaken for another collection's.

In server mode (``store.mode: http``) several processes share one collection. Each
one notices another's rebuild (the collection is deleted and created again under a
new id) and reopens it instead of failing on the old id. Network failures become a
``StoreError`` naming the server, and no request waits forever.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from contextlib import contextmanager
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


# Server mode: how long to wait for the server to accept a connection, and for a reply.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 120.0  # a big upsert or the first query after a restart can be slow


def server_url(settings: Settings) -> str:
    st = settings.store
    return f"{'https' if st.ssl else 'http'}://{st.host}:{st.port}"


def _auth_headers(settings: Settings) -> dict[str, str]:
    st = settings.store
    token = os.environ.get(st.auth_token_env, "")
    if not token:
        return {}
    if st.auth_header == "X-Chroma-Token":
        return {"X-Chroma-Token": token}
    return {"Authorization": f"Bearer {token}"}


def _check_server(settings: Settings, headers: dict[str, str]) -> None:
    """One bounded heartbeat before handing the server to chromadb, whose own HTTP
    session has no timeout: a dead or firewalled server fails here, in seconds."""
    import httpx

    st = settings.store
    url = server_url(settings)
    hint = (f"Start it with `chroma run --path DIR --host {st.host} --port {st.port}`, "
            f"or set store.mode: embedded.")
    try:
        resp = httpx.get(f"{url}/api/v2/heartbeat", headers=headers,
                         timeout=httpx.Timeout(CONNECT_TIMEOUT_S))
    except httpx.TimeoutException:
        raise StoreError(f"the Chroma server at {url} did not answer within "
                         f"{CONNECT_TIMEOUT_S:.0f} s. {hint}") from None
    except httpx.HTTPError as exc:
        raise StoreError(f"cannot reach the Chroma server at {url}: {_short(exc)}. {hint}") from None
    if resp.status_code in (401, 403):
        raise StoreError(
            f"the Chroma server at {url} refused the credentials (HTTP {resp.status_code}): "
            f"put its token in the environment variable {st.auth_token_env} "
            f"(sent as {st.auth_header})."
        )
    if resp.status_code != 200:
        raise StoreError(f"{url} does not answer like a Chroma server (HTTP {resp.status_code} "
                         f"on /api/v2/heartbeat); check store.host, store.port and store.ssl.")


def make_client(settings: Settings):
    """The Chroma client the settings ask for, with telemetry off."""
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb

    st = settings.store
    if st.mode == "http":
        headers = _auth_headers(settings)
        _check_server(settings, headers)
        try:
            client = chromadb.HttpClient(
                host=st.host, port=st.port, ssl=st.ssl, headers=dict(headers),
                settings=_chroma_settings(),
            )
        except Exception as exc:
            raise StoreError(
                f"cannot reach the Chroma server at {server_url(settings)}: {_short(exc)}. "
                f"Start it with `chroma run --path DIR --host {st.host} --port {st.port}` "
                f"or set store.mode: embedded."
            ) from None
        _bound_timeouts(client)
        return client
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


def _bound_timeouts(client) -> None:
    """chromadb's HTTP session waits forever by default; bound it. Private attribute:
    if a future chromadb moves it, the client keeps its own default."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)


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


def _is_not_found(exc: BaseException) -> bool:
    from chromadb.errors import NotFoundError

    return isinstance(exc, NotFoundError)


def _is_network(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError)


class PassageStore:
    """Passages with their vectors in one Chroma collection."""

    def __init__(self, settings: Settings, model_id: str, dim: int, client=None) -> None:
        self.settings = settings
        self.model_id = model_id
        self.dim = dim
        self.client = client or make_client(settings)
        self.name = settings.store.collection
        self._collection = None
        self._max_batch: int | None = None
        self._generation_floor = 0  # set by reset(): the rebuilt collection counts on

    # -- errors ----------------------------------------------------------------------
    @contextmanager
    def _guard(self, action: str):
        """A lost server becomes a StoreError that says which server and what failed."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            if _is_network(exc):
                raise StoreError(
                    f"lost the Chroma server at {server_url(self.settings)} while {action}: "
                    f"{_short(exc)}"
                ) from None
            raise

    def _run(self, action: str, fn):
        """``fn(collection)``. When another process sharing the server rebuilt the
        collection (deleted, then created under a new id), reopen it by name once."""
        with self._guard(action):
            try:
                return fn(self.collection)
            except Exception as exc:
                if not _is_not_found(exc):
                    raise
                log.info("collection '%s' was recreated elsewhere; reopening it", self.name)
                self._collection = None
                return fn(self.collection)

    # -- collection ------------------------------------------------------------------
    @property
    def collection(self):
        if self._collection is None:
            first = max(self._generation_floor, int(time.time() * 1000))
            try:
                with self._guard("opening the collection"):
                    col = self.client.get_or_create_collection(
                        self.name,
                        configuration={"hnsw": {"space": "cosine"}},
                        metadata={"embedding_model": self.model_id, "dim": self.dim,
                                  "generation": first},
                        embedding_function=None,
                    )
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"cannot open collection '{self.name}': {_short(exc)}") from None
            self._check_model(col.metadata or {})
            self._collection = col
        return self._collection

    def _check_model(self, meta: dict[str, Any]) -> None:
        stored = meta.get("embedding_model")
        if stored and stored != self.model_id:
            raise ModelMismatchError(
                f"the index in collection '{self.name}' was built with the embedding model "
                f"'{stored}', but the configured model is '{self.model_id}'. Rebuild it with "
                f"`qa ingest --rebuild` (or set embedding.model back to '{stored}')."
            )

    def metadata(self) -> dict[str, Any]:
        # Fetched fresh: another process may have bumped the generation, or rebuilt the
        # collection (a new id: the handle held here is dropped and reopened).
        try:
            with self._guard("reading the collection"):
                try:
                    col = self.client.get_collection(self.name, embedding_function=None)
                except Exception as exc:
                    if not _is_not_found(exc):
                        raise
                    self._collection = None  # absent, or being rebuilt elsewhere: create
                    col = self.collection
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot read collection '{self.name}': {_short(exc)}") from None
        if self._collection is not None and col.id != self._collection.id:
            log.info("collection '%s' was rebuilt elsewhere; reopening it", self.name)
            self._collection = None
            self._check_model(col.metadata or {})
        return dict(col.metadata or {})

    def generation(self) -> int:
        return int(self.metadata().get("generation", 0))

    def bump_generation(self) -> int:
        # Called after the ingest's writes, so any reader that sees the new number also
        # sees the passages it stands for. Two ingests bumping at once may both write the
        # same number; both wrote their passages before reading it, so nothing is missed.
        meta = self.metadata()
        # Chroma replaces the whole metadata on modify, so write all keys back.
        meta["generation"] = int(meta.get("generation", 0)) + 1
        meta["updated_at"] = time.time()
        meta.setdefault("embedding_model", self.model_id)
        self._run("updating the collection", lambda c: c.modify(metadata=meta))
        return meta["generation"]

    def reset(self) -> None:
        with self._guard("dropping the collection"):
            try:
                old = self.client.get_collection(self.name, embedding_function=None)
                # The rebuilt collection counts on from here: no cache keyed by an old
                # generation number can match it.
                self._generation_floor = int((old.metadata or {}).get("generation", 0)) + 1
                self.client.delete_collection(self.name)
            except Exception as exc:  # noqa: BLE001 - absent collection is fine for a rebuild
                if _is_network(exc):
                    raise
        self._collection = None

    # -- writes ----------------------------------------------------------------------
    def _batch_size(self) -> int:
        if self._max_batch is None:
            try:
                self._max_batch = int(self.client.get_max_batch_size())
            except Exception:  # noqa: BLE001 - older servers do not say
                self._max_batch = 5000
        return max(1, min(self.settings.store.batch_size, self._max_batch))

    def add(self, passages: list[Passage], vectors: np.ndarray) -> None:
        if len(passages) != len(vectors):
            raise ValueError("one vector per passage")
        step = self._batch_size()
        for i in range(0, len(passages), step):
            chunk = passages[i : i + step]
            embeddings = np.asarray(vectors[i : i + step], dtype=np.float32)
            self._run("writing passages", lambda c: c.upsert(
                ids=[p.id for p in chunk],
                embeddings=embeddings,
                documents=[p.text for p in chunk],
                metadatas=[p.to_metadata() for p in chunk],
            ))

    def delete_source(self, source: str) -> None:
        self._run("deleting passages", lambda c: c.delete(where={"source": source}))

    # -- reads -----------------------------------------------------------------------
    def count(self) -> int:
        return self._run("counting passages", lambda c: c.count())

    def _passages(self, got: dict[str, Any]) -> list[Passage]:
        return [
            Passage.from_metadata(pid, doc, meta)
            for pid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"])
        ]

    def get(self, ids: Iterable[str]) -> list[Passage]:
        ids = list(ids)
        if not ids:
            return []
        got = self._run("reading passages",
                        lambda c: c.get(ids=ids, include=["documents", "metadatas"]))
        by_id = {p.id: p for p in self._passages(got)}
        return [by_id[i] for i in ids if i in by_id]

    def by_source(self, source: str) -> list[Passage]:
        got = self._run("reading passages", lambda c: c.get(
            where={"source": source}, include=["documents", "metadatas"]))
        return sorted(self._passages(got), key=lambda p: p.position)

    def all_passages(self, page: int = 5000) -> list[Passage]:
        out: list[Passage] = []
        offset = 0
        while True:
            got = self._run("reading passages", lambda c: c.get(
                include=["documents", "metadatas"], limit=page, offset=offset))
            batch = self._passages(got)
            out.extend(batch)
            if len(batch) < page:
                return out
            offset += page

    def source_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        offset, page = 0, 10000
        while True:
            got = self._run("reading passages", lambda c: c.get(
                include=["metadatas"], limit=page, offset=offset))
            for meta in got["metadatas"]:
                counts[meta["source"]] = counts.get(meta["source"], 0) + 1
            if len(got["ids"]) < page:
                return counts
            offset += page

    def query(
        self, vector: np.ndarray, n: int, sources: list[str] | None = None
    ) -> list[Hit]:
        # No count() first: Chroma 1.x returns what it has when n exceeds it (nothing for
        # an empty collection), and a count costs a scan per query on a large collection.
        where = None
        if sources:
            where = {"source": sources[0]} if len(sources) == 1 else {"source": {"$in": sources}}
        got = self._run("searching", lambda c: c.query(
            query_embeddings=np.asarray(vector, dtype=np.float32).reshape(1, -1),
            n_results=max(1, n),
            where=where,
            include=["documents", "metadatas", "distances"],
        ))
        hits = []
        for pid, doc, meta, dist in zip(
            got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0]
        ):
            hits.append(Hit(Passage.from_metadata(pid, doc, meta), 1.0 - float(dist)))
        return hits


def data_path(settings: Settings, *parts: str) -> Path:
    return settings.resolve(settings.data_dir).joinpath(*parts)
