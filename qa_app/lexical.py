"""Lexical (BM25) index over the passages, with French/English analysis.

The index is derived from the Chroma collection and cached on disk together with the
collection's ``generation``: whoever opens it checks the generation and rebuilds when
another process (or another ingest) changed the collection.
"""

from __future__ import annotations

import logging
import pickle
import re
import threading
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

from .schema import Passage

log = logging.getLogger(__name__)

_ELISION = re.compile(r"\b(?:l|d|j|m|n|s|t|c|qu|jusqu|lorsqu|puisqu|quoiqu)['’]", re.I)
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)

STOPWORDS = frozenset(
    """
    a au aux avec ce ces cet cette dans de des du elle elles en et eux il ils je la le les leur
    leurs lui ma mais me meme mes moi mon ne nos notre nous on ou par pas pour qu que qui sa se
    ses son sur ta te tes toi ton tu un une vos votre vous c d j l m n s t y ete etre est sont
    ont a été etait fait faire plus comme ainsi si aussi tout tous toute toutes sans sous entre
    dont donc ou quel quelle quels quelles quoi comment pourquoi quand combien selon lors
    the of and or to in on at by for with from as is are was were be been being it its this that
    these those which who whom whose what when where why how do does did has have had not no an
    into about than then there their they them he she his her we our you your i my me
    """.split()
)


def fold(text: str) -> str:
    """Lowercase, accents removed, apostrophes unified."""
    text = unicodedata.normalize("NFKD", text.replace("’", "'").lower())
    return "".join(ch for ch in text if not unicodedata.combining(ch))


@lru_cache(maxsize=2)
def _stemmer(lang: str):
    import Stemmer

    return Stemmer.Stemmer({"fr": "french", "en": "english"}[lang])


def analyze(text: str, lang: str = "fr") -> list[str]:
    """Tokens for BM25: elisions stripped, folded, stop words out, stemmed."""
    text = _ELISION.sub(" ", text.replace("’", "'"))
    words = [w for w in _TOKEN.findall(fold(text)) if w not in STOPWORDS]
    return _stemmer(lang).stemWords(words)


class LexicalIndex:
    """BM25 (bm25s) over passage texts with their title and section."""

    def __init__(self, passages: list[Passage], generation: int = 0) -> None:
        import bm25s

        self.generation = generation
        self.ids = [p.id for p in passages]
        self.sources = np.array([p.source for p in passages], dtype=object)
        self._lock = threading.Lock()
        self._bm25 = None
        if passages:
            corpus = [analyze(p.embedding_text()) for p in passages]
            self._bm25 = bm25s.BM25()
            self._bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, n: int, sources: list[str] | None = None) -> list[tuple[str, float]]:
        if self._bm25 is None:
            return []
        tokens = analyze(query)
        if not tokens:
            return []
        with self._lock:
            scores = self._bm25.get_scores(tokens)
        if sources:
            scores = np.where(np.isin(self.sources, sources), scores, 0.0)
        top = np.argsort(-scores)[:n]
        return [(self.ids[i], float(scores[i])) for i in top if scores[i] > 0]

    # -- cache -----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)  # atomic: a killed process never leaves half a file

    @staticmethod
    def load(path: Path) -> "LexicalIndex | None":
        try:
            with open(path, "rb") as fh:
                index = pickle.load(fh)
            return index if isinstance(index, LexicalIndex) else None
        except Exception:  # noqa: BLE001 - a bad cache is rebuilt
            return None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
