"""The question-answering service: what the CLI, `qa eval` and the web app all call.

question (+ history) -> standalone question -> retrieve -> relevant? -> answer (stream)
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
import urllib.parse
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

from .answering import Done, notice
from .components import Components
from .language import detect_language
from .schema import Answer, Passage, ScoredPassage
from .settings import Settings
from .similarity import SentenceVectors

log = logging.getLogger(__name__)

PROBE_OK_SECONDS = 15.0  # a reachable endpoint is probed again after this long
PROBE_FAILED_SECONDS = 3.0  # an unreachable one sooner: the status line follows its return
_DROP = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})  # controls, format, surrogates, unassigned


def clean_question(text: str) -> str:
    """A question as typed, made safe: control and invisible format characters (and lone
    surrogates from a broken client) removed, other whitespace (NBSP, tabs…) kept as a
    space, ends stripped. Line breaks stay."""
    out = []
    for ch in str(text or ""):
        if ch == "\n":
            out.append(ch)
        elif ch.isspace():
            out.append(" ")
        elif unicodedata.category(ch) not in _DROP:
            out.append(ch)
    return "".join(out).strip()


def safe_url(url: str, secret: str = "") -> str:
    """``url`` fit for a status line or a log: no user:password@, no query, no secret."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        url = "(invalid URL)"
    return url.replace(secret, "***") if secret else url


@dataclass
class Status:
    llm: str  # "model @ url" or the extractive-mode sentence
    llm_ok: bool
    embedding_model: str
    documents: int
    passages: int
    store: str

    def line(self) -> str:
        return (f"{self.llm} · embeddings: {self.embedding_model} · "
                f"{self.documents} documents, {self.passages} passages · store: {self.store}")


class QAService:
    def __init__(self, settings: Settings, components: Components | None = None) -> None:
        self.settings = settings
        self.components = components or Components(settings)
        self._ingest_lock = threading.Lock()
        self._probe: tuple[float, dict] | None = None

    # -- parts -----------------------------------------------------------------------
    @property
    def store(self):
        return self.components.store

    @property
    def retriever(self):
        return self.components.retriever

    @cached_property
    def llm(self):
        from .llm import LLMClient

        if not self.settings.llm.base_url:
            return None
        return LLMClient(self.settings.llm, api_key=self._api_key())

    def _api_key(self) -> str:
        try:
            return self.settings.llm_api_key
        except ValueError:  # an unreadable secret file: nothing to redact
            return ""

    @cached_property
    def answerer(self):
        from .answering import Answerer

        return Answerer(self.settings, self.llm, SentenceVectors(self.components.embedder))

    # -- status ----------------------------------------------------------------------
    def llm_status(self, max_age: float = PROBE_OK_SECONDS) -> dict:
        """The endpoint's models probe, cached briefly so the UI can poll it. A failed
        probe is kept for a shorter time, so the status follows the endpoint's return.
        (Answers never depend on this cache: every question tries the endpoint.)"""
        if self.llm is None:
            return {"ok": False, "models": [], "reason": "no endpoint configured"}
        now = time.monotonic()
        if self._probe is not None:
            age = now - self._probe[0]
            if age <= (max_age if self._probe[1].get("ok") else min(max_age, PROBE_FAILED_SECONDS)):
                return self._probe[1]
        self._probe = (now, self.llm.probe())
        return self._probe[1]

    def status(self) -> Status:
        probe = self.llm_status()
        if probe.get("ok"):
            where = safe_url(self.settings.llm.base_url, self._api_key())
            llm = f"LLM: {self.settings.llm.model or '(default model)'} @ {where}"
        else:
            llm = "extractive mode: no language model reachable"
        counts = self.store.source_counts()
        st = self.settings.store
        store = "embedded" if st.mode == "embedded" else f"server {st.host}:{st.port}"
        return Status(llm, bool(probe.get("ok")), self.components.embedder.model_id,
                      len(counts), sum(counts.values()), store)

    # -- retrieval -------------------------------------------------------------------
    def search(self, question: str, k: int | None = None,
               sources: list[str] | None = None,
               sections: list[str] | None = None) -> list[ScoredPassage]:
        return self.retriever.search(question, k=k, sources=sources, sections=sections)

    def passage(self, pid: str) -> Passage | None:
        found = self.store.get([pid])
        return found[0] if found else None

    def document(self, source: str) -> list[Passage]:
        return self.store.by_source(source)

    def documents(self) -> list[tuple[str, str, int]]:
        """(source, title, passages) for every indexed document."""
        titles: dict[str, tuple[str, int]] = {}
        for p in self.store.all_passages():
            title, n = titles.get(p.source, (p.title, 0))
            titles[p.source] = (title, n + 1)
        return sorted((s, t, n) for s, (t, n) in titles.items())

    def neighbours(self, pid: str, before: int = 1, after: int = 1) -> list[Passage]:
        p = self.passage(pid)
        if p is None:
            return []
        doc = self.document(p.source)
        i = next(i for i, q in enumerate(doc) if q.id == pid)
        return doc[max(0, i - before) : i + after + 1]

    # -- answers ---------------------------------------------------------------------
    def ask_stream(self, question: str, history: list[dict] | None = None, *,
                   mode: str | None = None, k: int | None = None,
                   sources: list[str] | None = None,
                   sections: list[str] | None = None) -> Iterator:
        """Events from the answerer: text tokens, then Done(answer)."""
        started = time.perf_counter()
        mode = mode or self.settings.answer.mode
        question, cut_notice = self._bounded(question)
        lang = detect_language(question)
        standalone, llm_error = question, ""
        if history and mode != "extractive":
            # A failed rewrite means the endpoint is down or stalled: the answer then goes
            # extractive at once instead of waiting a second time for the same endpoint.
            standalone, llm_error = self.answerer.condense_checked(question, history)
        t0 = time.perf_counter()
        passages = self.search(standalone, k=k, sources=sources, sections=sections)
        retrieval_s = time.perf_counter() - t0
        why = self.retriever.abstention(standalone, passages)
        if why is not None:
            reason = notice(why[0], lang, **why[1])
            events = iter([Done(self.answerer.abstain(question, lang, reason))])
        else:
            n = self.settings.answer.context_passages
            events = self.answerer.stream(question, passages[:n], mode=mode, lang=lang,
                                          llm_error=llm_error)
        for event in events:
            if isinstance(event, Done):
                answer: Answer = event.answer
                answer.passages = passages  # the whole ranking, for the sources panel and eval
                answer.timings["retrieval"] = retrieval_s
                answer.timings["total"] = time.perf_counter() - started
                if cut_notice:
                    answer.notice = " ".join(x for x in (cut_notice, answer.notice) if x)
                if standalone != question:
                    answer.timings["condensed"] = 1.0
            yield event

    def ask(self, question: str, history: list[dict] | None = None, **kw) -> Answer:
        for event in self.ask_stream(question, history, **kw):
            if isinstance(event, Done):
                return event.answer
        raise RuntimeError("the answerer ended without an answer")  # pragma: no cover

    def _bounded(self, question: str) -> tuple[str, str]:
        question = clean_question(question)
        if not question:
            raise ValueError("the question is empty")
        limit = self.settings.answer.max_question_chars
        if len(question) > limit:
            return question[:limit], f"The question was cut to its first {limit} characters."
        return question, ""

    # -- ingest ----------------------------------------------------------------------
    def ingest(self, path: Path | list[Path], **kw):
        with self._ingest_lock:
            return self.components.indexer.run(path, **kw)
