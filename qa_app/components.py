"""Build the pipeline's components from settings, in one place, lazily.

Tests swap any component by passing it in; nothing loads a model or opens a store
until it is first used.
"""

from __future__ import annotations

from functools import cached_property

from .embedder import Embedder, embedder_from_settings
from .settings import Settings
from .store import PassageStore


class Components:
    def __init__(self, settings: Settings, *, embedder: Embedder | None = None,
                 store: PassageStore | None = None) -> None:
        self.settings = settings
        if embedder is not None:
            self.__dict__["embedder"] = embedder
        if store is not None:
            self.__dict__["store"] = store

    @cached_property
    def embedder(self) -> Embedder:
        return embedder_from_settings(self.settings)

    @cached_property
    def store(self) -> PassageStore:
        return PassageStore(self.settings, self.embedder.model_id, self.embedder.dim)

    @cached_property
    def retriever(self):
        from .retrieve import Retriever

        return Retriever(self.settings, self.embedder, self.store)

    @cached_property
    def indexer(self):
        from ingest.indexer import Indexer

        return Indexer(self.settings, self.embedder, self.store)
