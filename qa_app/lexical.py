"""Lexical side of retrieval: French/English analysis, BM25, and the derived index.

Analysis (``analyze``): apostrophes unified, elisions (l', d', qu', jusqu'...) stripped,
stop words of both languages dropped, words stemmed by the Snowball stemmer of the text's
language *before* accents are folded (the French stemmer needs its accents:
``sécurité`` -> ``sécur``, which folds to the English stem of ``security``; the stem of the
word typed without accents is added when it differs), acronyms and
tokens with digits kept whole (``CICA`` must not become ``cic`` in French and ``cica`` in
English). ``index_terms`` adds a five-letter "cognate" key per long word so that an English
question meets French words of the same root (``globalization``/``globalisation``).

``LexicalIndex`` is derived from the Chroma collection and cached on disk together with the
collection's ``generation``: whoever opens it checks the generation and rebuilds when
another process (or another ingest) changed the collection. It holds the BM25 index, each
passage's sparse "latent terms" vector when the embedding model has such a head (see
``qa_app.latent``), the corpus's main language and the numbers it mentions. A rebuild
reuses the latent vectors of the passages it already had (keyed by content), so an ingest
only encodes what changed.
"""

from __future__ import annotations

import logging
import pickle
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .language import detect_language
from .schema import Passage

if TYPE_CHECKING:  # pragma: no cover
    from .latent import LatentEncoder

log = logging.getLogger(__name__)

INDEX_VERSION = 7  # bump when the analysis changes: older caches are rebuilt
COGNATE_LETTERS = 5  # length of the cross-language key added for longer words

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'"})
_ELISION = re.compile(
    r"\b(?:l|d|j|m|n|s|t|c|qu|jusqu|lorsqu|puisqu|quoiqu|presqu)'(?=\w)", re.IGNORECASE
)
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)

STOPWORDS = frozenset(
    """
    a au aux avec ce ces cet cette ceci cela ca dans de des du elle elles en et eux il ils je
    la le les leur leurs lui ma mais me meme mes moi mon ne nos notre nous on ou par pas pour
    qu que qui sa se ses son sur ta te tes toi ton tu un une vos votre vous c d j l m n s t y
    ete etre est sont ont avait avaient sera seront serait etait etaient fait faire plus
    comme ainsi si aussi tout tous toute toutes sans sous entre dont donc quel quelle quels
    quelles quoi comment pourquoi quand combien selon lors apres avant depuis chez vers
    lequel laquelle lesquels lesquelles auquel auxquels duquel desquels celui celle ceux
    celles autre autres tel telle tels telles
    the of and or to in on at by for with from as is are was were be been being it its this
    that these those which who whom whose what when where why how do does did has have had
    not no an into about than then there their they them he she his her we our you your i
    my me can could will would shall should may might must also such other any all each
    both more most some only same so too very just over under after before during since
    until while upon according
    """.split()
)


def fold(text: str) -> str:
    """Lowercase, accents removed, apostrophes unified."""
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES).lower())
    return "".join(ch for ch in text if not unicodedata.combining(ch))


@lru_cache(maxsize=4)
def _stemmer(lang: str):
    import Stemmer

    return Stemmer.Stemmer({"fr": "french", "en": "english"}.get(lang, "french"))


def _words(text: str) -> list[str]:
    """Raw word tokens, elisions stripped (case kept, to tell acronyms apart)."""
    text = unicodedata.normalize("NFC", text.translate(_APOSTROPHES))
    return _TOKEN.findall(_ELISION.sub(" ", text))


def _keep_whole(word: str) -> bool:
    """Acronyms (CICA, ONU) and tokens with digits (2006, A/57/...) are not stemmed."""
    return any(ch.isdigit() for ch in word) or (len(word) >= 2 and word.isupper())


def analyze(text: str, lang: str = "fr") -> list[str]:
    """Tokens for BM25: elisions stripped, stop words out, stemmed, accents folded.

    A word is stemmed with its accents, then folded (``sécurité`` -> ``secur``, like the
    English ``security``); when stemming the folded word gives another stem
    (``securite`` -> ``securit``, as typed without accents), that one is added too, so a
    question typed without accents still meets the text."""
    stem = _stemmer(lang).stemWord
    out = []
    for word in _words(text):
        folded = fold(word)
        if folded in STOPWORDS:
            continue
        if _keep_whole(word):
            out.append(folded)
            continue
        accented = fold(stem(word.lower()))
        out.append(accented)
        plain = stem(folded)
        if plain != accented:
            out.append(plain)
    return out


def index_terms(text: str, lang: str = "fr") -> list[str]:
    """``analyze`` plus a cognate key (``~`` and the first letters) for each longer stem."""
    terms = analyze(text, lang)
    return terms + [
        "~" + t[:COGNATE_LETTERS] for t in terms if len(t) > COGNATE_LETTERS and t.isalpha()
    ]


# -- numbers the corpus mentions (for abstention) ------------------------------------
_ORDINALS = {
    "premier": 1, "premiere": 1, "first": 1, "second": 2, "seconde": 2, "deuxieme": 2,
    "third": 3, "troisieme": 3, "fourth": 4, "quatrieme": 4, "fifth": 5, "cinquieme": 5,
    "sixth": 6, "sixieme": 6, "seventh": 7, "septieme": 7, "eighth": 8, "huitieme": 8,
    "ninth": 9, "neuvieme": 9, "tenth": 10, "dixieme": 10, "onzieme": 11, "eleventh": 11,
    "douzieme": 12, "twelfth": 12, "treizieme": 13, "quatorzieme": 14, "quinzieme": 15,
    "seizieme": 16, "vingtieme": 20, "twentieth": 20, "trentieme": 30, "thirtieth": 30,
    "quarantieme": 40, "fortieth": 40, "cinquantieme": 50, "fiftieth": 50,
    "soixantieme": 60, "sixtieth": 60, "centieme": 100, "hundredth": 100,
    "millieme": 1000, "thousandth": 1000,
}
_CARDINALS = {
    "un": 1, "une": 1, "one": 1, "deux": 2, "two": 2, "trois": 3, "three": 3, "quatre": 4,
    "four": 4, "cinq": 5, "five": 5, "six": 6, "sept": 7, "seven": 7, "huit": 8, "eight": 8,
    "neuf": 9, "nine": 9, "dix": 10, "ten": 10, "onze": 11, "eleven": 11, "douze": 12,
    "twelve": 12, "treize": 13, "quatorze": 14, "quinze": 15, "seize": 16, "vingt": 20,
    "twenty": 20, "trente": 30, "thirty": 30, "quarante": 40, "forty": 40, "cinquante": 50,
    "fifty": 50, "soixante": 60, "sixty": 60, "vingts": 20, "cent": 100, "cents": 100,
    "hundred": 100, "mille": 1000, "thousand": 1000,
}
_NUMBER = re.compile(
    r"(?<![\w/])(\d{1,4})(?:\s?(?:er|re|e|ème|eme|è|st|nd|rd|th))?(?![\w/])|"
    r"[^\W\d_]+(?:[-\s](?:et[-\s])?[^\W\d_]+)*",
    re.IGNORECASE,
)
_ORDINAL_SUFFIX = re.compile(r"\d\s?(?:er|re|e|ème|eme|è|st|nd|rd|th)$", re.IGNORECASE)


def _word_number(words: list[str]) -> tuple[int, bool] | None:
    """Value of a (possibly compound) number written in words, and whether it is ordinal:
    ``vingt-cinquième`` -> (25, True), ``quatre-vingt-dix`` -> (90, False),
    ``two hundred`` -> (200, False)."""
    total = current = 0
    ordinal = False
    for w in words:
        if w in ("et", "and"):
            continue
        if ordinal:  # nothing follows an ordinal word: "vingtième cinq" is two numbers
            return None
        value = _ORDINALS.get(w) or _CARDINALS.get(w)
        if value is None:
            return None
        ordinal = w in _ORDINALS
        if value == 1000:
            total += max(current, 1) * 1000
            current = 0
        elif value == 100:
            current = max(current, 1) * 100
        elif value == 20 and current % 100 == 4:  # quatre-vingt(s) = 80
            current += 76
        else:
            current += value
    value = total + current
    return (value, ordinal) if value else None


def numbers(text: str) -> set[tuple[int, bool]]:
    """Numbers that a text mentions, as (value, is_ordinal): digits (``2006``, ``5e``),
    and ordinals or cardinals in French or English words (``cinquième``, ``fifth``,
    ``vingt-cinquième``). A compound counts as one number: ``vingt-cinquième`` is 25,
    not 5."""
    out: set[tuple[int, bool]] = set()
    for m in _NUMBER.finditer(fold(text)):
        if m.group(1):
            out.add((int(m.group(1)), bool(_ORDINAL_SUFFIX.search(m.group(0)))))
            continue
        run = re.split(r"[-\s]+", m.group(0))
        # Scan runs of number words inside a longer phrase ("la vingt-cinquième session").
        i = 0
        while i < len(run):
            j = i
            while j < len(run) and (run[j] in _ORDINALS or run[j] in _CARDINALS
                                    or (run[j] in ("et", "and") and j > i)):
                j += 1
            if j > i:
                value = _word_number(run[i:j])
                if value and not (value[0] == 1 and not value[1]):  # "un"/"one" is an article
                    out.add(value)
                i = j
            else:
                i += 1
    return out


def unknown_numbers(question: str, known: set[tuple[int, bool]]) -> list[int]:
    """Numbers of the question that the corpus never mentions. An ordinal (``fifth``)
    needs the same ordinal in the corpus; a number in digits may appear in any form."""
    values = {v for v, _ in known}
    ordinals = {v for v, o in known if o}
    missing = []
    for value, ordinal in sorted(numbers(question)):
        if (value not in ordinals) if ordinal else (value not in values):
            missing.append(value)
    return missing


class LexicalIndex:
    """BM25 (bm25s) over passage texts with their title and section, plus the passages'
    latent-term vectors when an encoder is given."""

    def __init__(
        self,
        passages: list[Passage],
        generation: int = 0,
        encoder: "LatentEncoder | None" = None,
        previous_latent=None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        import bm25s

        self.version = INDEX_VERSION
        self.generation = generation
        self.ids = [p.id for p in passages]
        self.passages = {p.id: p for p in passages}
        self.sources = np.array([p.source for p in passages], dtype=object)
        self.sections = np.array([p.section for p in passages], dtype=object)
        langs = [detect_language(p.text) for p in passages]
        self.language = Counter(langs).most_common(1)[0][0] if langs else "fr"
        self.numbers: set[tuple[int, bool]] = set()
        for p in passages:
            self.numbers |= numbers(p.embedding_text())
        self._bm25 = None
        if passages:
            from scipy.sparse import csr_matrix

            corpus = [index_terms(p.embedding_text(), lang) for p, lang in zip(passages, langs)]
            bm25 = bm25s.BM25()
            bm25.index(corpus, show_progress=False)
            # bm25s's term-by-passage scores as a sparse matrix: a question's scores are the
            # sum of its terms' rows, one scipy product (bm25s's own loop, without numba, takes
            # ~20-50 ms at 100k passages)
            s = bm25.scores
            self._vocab = dict(bm25.vocab_dict)
            self._bm25 = csr_matrix((s["data"], s["indices"], s["indptr"]),
                                    shape=(len(s["indptr"]) - 1, s["num_docs"]), dtype=np.float32)
        self.latent = None
        if encoder is not None and passages:
            from .latent import LatentMatrix

            self.latent = LatentMatrix.build(passages, encoder, previous_latent, progress)

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, sources: list[str] | None = None,
             sections: list[str] | None = None) -> np.ndarray | None:
        """Boolean mask of the passages inside the filters, None when there is none. A
        section filter matches the heading path or any of its parents ("Annexe" matches
        "Annexe > I")."""
        if not sources and not sections:
            return None
        keep = np.ones(len(self.ids), dtype=bool)
        if sources:
            keep &= np.isin(self.sources, sources)
        if sections:
            keep &= np.array([section_matches(s, sections) for s in self.sections], dtype=bool)
        return keep

    def scores(self, query: str, lang: str | None = None) -> np.ndarray:
        """BM25 score of every passage (0 where nothing matches)."""
        if self._bm25 is None:
            return np.zeros(0, dtype=np.float32)
        tokens = index_terms(query, lang or detect_language(query, self.language))
        ids = [self._vocab[t] for t in tokens if t in self._vocab]
        if not ids:
            return np.zeros(len(self.ids), dtype=np.float32)
        rows, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        return np.asarray(self._bm25[rows].T @ counts.astype(np.float32),
                          dtype=np.float32).ravel()

    def search(self, query: str, n: int, sources: list[str] | None = None,
               sections: list[str] | None = None, lang: str | None = None
               ) -> list[tuple[str, float]]:
        """The n best (passage id, BM25 score), best first; only passages that match."""
        scores = self.scores(query, lang)
        if not len(scores):
            return []
        return top_ids(self.ids, scores, n, self.mask(sources, sections))

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
        except Exception:  # noqa: BLE001 - a bad cache is rebuilt
            return None
        if not isinstance(index, LexicalIndex) or getattr(index, "version", 0) != INDEX_VERSION:
            return None
        return index


def section_matches(section: str, wanted: list[str]) -> bool:
    """Whether a heading path (``Annexe > II. Coopération``) is one of ``wanted`` or lies
    under one of them; compared without case or accents."""
    s = fold(section).strip()
    for w in wanted:
        w = fold(w).strip()
        if w and (s == w or s.startswith(w + " > ")):
            return True
    return False


def top_indices(scores: np.ndarray, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the n best scores inside the mask, best first, zeros included (z-scores
    need the whole window, not only the passages that matched a word). Ties keep index
    order."""
    if not len(scores) or n <= 0:
        return np.zeros(0, dtype=np.int64)
    allowed = np.flatnonzero(mask) if mask is not None else np.arange(len(scores))
    values = scores[allowed]
    if len(values) > n:  # partial selection first: a full sort is ~10 ms at 100k passages
        cut = np.partition(values, len(values) - n)[len(values) - n]
        keep = np.flatnonzero(values >= cut)
        allowed, values = allowed[keep], values[keep]
    return allowed[np.argsort(-values, kind="stable")][:n]


def top_ids(ids: list[str], scores: np.ndarray, n: int,
            mask: np.ndarray | None = None) -> list[tuple[str, float]]:
    """(id, score) of the n highest positive scores, best first; ties keep index order."""
    return [(ids[i], float(scores[i])) for i in top_indices(scores, n, mask) if scores[i] > 0]


def _previous_latent(path: Path):
    """The latent vectors of the index cached at ``path``, whatever its version: they are
    keyed by content and encoder, so they stay valid when the rest of the index does not."""
    try:
        with open(path, "rb") as fh:
            latent = getattr(pickle.load(fh), "latent", None)
    except Exception:  # noqa: BLE001 - nothing to reuse
        return None
    if latent is None or not all(hasattr(latent, a) for a in ("keys", "vectors", "encoder_id")):
        return None
    return latent


def build_index(passages: list[Passage], generation: int, embedder=None,
                path: Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> LexicalIndex:
    """Build the derived index for ``passages`` (reusing the latent vectors that the index
    cached at ``path`` already holds) and save it there. What ingest and the retriever
    both call when the collection's generation moved on. ``progress(done, total)`` follows
    the encoding of new passages' latent terms, the slow part."""
    from .latent import latent_encoder

    encoder = latent_encoder(embedder) if embedder is not None else None
    previous = _previous_latent(path) if (path is not None and encoder is not None) else None
    index = LexicalIndex(passages, generation, encoder=encoder, previous_latent=previous,
                         progress=progress)
    if path is not None:
        try:
            index.save(path)
        except OSError as exc:  # read-only data dir: keep it in memory
            log.warning("cannot cache the lexical index: %s", exc)
    return index
