"""The one data model that flows end to end: Passage -> Citation -> Answer.

Ingest produces Passages, retrieval returns ScoredPassages, answering returns an
Answer whose Citations point at Passages. Nothing is re-parsed on the way.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

AnswerMode = Literal["generated", "extractive", "abstained"]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def passage_id(source: str, position: int) -> str:
    """Stable id: the same document and paragraph position give the same id."""
    return f"{source}#{position:04d}"


@dataclass(frozen=True)
class Passage:
    id: str  # passage_id(source, position)
    source: str  # file name as ingested, e.g. "001_15cd4e670d3e8e09.txt"
    title: str  # document title derived from the text, e.g. "Acte d'Almaty"
    section: str  # heading path, e.g. "Annexe > II. Coopération" ("" when none)
    para_no: str  # paragraph number as printed, e.g. "23" ("" when none)
    text: str  # the paragraph, reflowed, without the heading
    start: int  # character span [start, end) in the decoded source text
    end: int
    position: int  # order of the passage in its document (0-based), for neighbours
    hash: str = ""  # content_hash(text)
    page: int = 0  # 1-based page for paged formats (PDF), 0 when not paged

    def __post_init__(self) -> None:
        if not self.hash:
            object.__setattr__(self, "hash", content_hash(self.text))

    @property
    def label(self) -> str:
        """Human reference, e.g. "Acte d'Almaty, § 12" or "Acte d'Almaty, Annexe"."""
        parts = [self.title or self.source]
        if self.para_no:
            parts.append(f"§ {self.para_no}")
        elif self.section:
            parts.append(self.section.split(" > ")[-1])
        if self.page:
            parts.append(f"p. {self.page}")
        return ", ".join(parts)

    @property
    def opening_heading(self) -> str:
        """The last heading of the section path when the text opens with it (a letter's
        title line; a heading cut short with "…" counts), else ""."""
        heading = self.section.split(" > ")[-1].rstrip("…")
        return heading if heading and self.text.startswith(heading) else ""

    def embedding_text(self) -> str:
        """What is embedded: the passage with its document and section as context (a heading
        that the passage itself opens with is not repeated)."""
        section = self.section.split(" > ")
        if self.opening_heading:
            section.pop()
        header = " — ".join(x for x in (self.title, " > ".join(section)) if x)
        return f"{header}\n{self.text}" if header else self.text

    def to_metadata(self) -> dict[str, Any]:
        """Flat metadata for Chroma (no None values allowed there)."""
        d = asdict(self)
        d.pop("text")
        d.pop("id")
        return d

    @classmethod
    def from_metadata(cls, pid: str, text: str, meta: dict[str, Any]) -> "Passage":
        keys = {f for f in cls.__dataclass_fields__ if f not in ("id", "text")}
        return cls(id=pid, text=text, **{k: meta[k] for k in keys if k in meta})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = self.label
        return d


@dataclass
class ScoredPassage:
    passage: Passage
    score: float  # fused score, higher is better
    scores: dict[str, float] = field(default_factory=dict)  # per retriever, for display/debug

    def to_dict(self) -> dict[str, Any]:
        return {**self.passage.to_dict(), "score": self.score, "scores": self.scores}


@dataclass
class Citation:
    marker: int  # the n of [n] in the answer text
    passage: Passage
    support: str  # the sentence (or span) of the passage that supports the claim
    inferred: bool = False  # True when attributed by similarity, not written by the model

    def to_dict(self) -> dict[str, Any]:
        return {
            "marker": self.marker,
            "inferred": self.inferred,
            "support": self.support,
            "passage": self.passage.to_dict(),
        }


@dataclass
class Answer:
    question: str
    text: str  # with [n] markers
    mode: AnswerMode
    citations: list[Citation] = field(default_factory=list)
    passages: list[ScoredPassage] = field(default_factory=list)  # the retrieved context
    notice: str = ""  # one-line notice, e.g. "no language model was used" or an LLM failure
    dropped_markers: list[int] = field(default_factory=list)  # [n] outside the context
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    model: str = ""  # LLM model that generated, "" when none

    @property
    def abstained(self) -> bool:
        return self.mode == "abstained"

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "text": self.text,
            "mode": self.mode,
            "abstained": self.abstained,
            "notice": self.notice,
            "model": self.model,
            "dropped_markers": self.dropped_markers,
            "timings": self.timings,
            "citations": [c.to_dict() for c in self.citations],
            "passages": [p.to_dict() for p in self.passages],
        }
