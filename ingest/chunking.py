"""Paragraph chunker: LoadedDocument -> list[Passage].

Pipeline (every step keeps a map from output characters to offsets in ``doc.text``, so each
passage carries an exact span [start, end) in the loaded text):

1. lines: split on \\n, \\r\\n, \\r and form feeds (page breaks); drop page-break artefacts
   (page numbers, UN document symbols "A/61/123", job numbers "06-42125 (F)", lone "…/…",
   running headers/footers repeated at page edges); clean markdown (``#`` prefixes, ``**``/``*``).
2. units: blank lines separate blocks; a block is split again where a hard-wrapped page lost its
   blank line (an indented line starting a new sentence, a list marker, a "(Signé)" line...).
   Lines of a unit are reflowed into one paragraph.
3. classification: heading (markdown ``#``, bold-only line, "Annexe…", roman numerals,
   short unpunctuated lines), signature, body; cover metadata ("Distr. générale", "Original :
   anglais") and datelines ("Fait à Almaty, le 4 juin 2002") are body, never headings.
4. structure: a paragraph cut by a page break is glued back; signatures take their title lines;
   headings become the " > "-joined ``section`` path; lists stay with their lead-in; runs of
   short rows after a heading become one table passage; unnumbered paragraphs after "8." inherit
   ``para_no`` "8" (UN numbering: they belong to paragraph 8).
5. size: pieces over ``max_tokens`` are split at sentence boundaries (langchain
   RecursiveCharacterTextSplitter with ``length_function=count_tokens``); fragments shorter than
   ``min_chars`` are merged into a neighbour of the same section (never two numbered paragraphs,
   never into or out of a signature).
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Callable, Iterable

from qa_app.schema import Passage, passage_id

from .loaders import LoadedDocument

__all__ = ["chunk_document", "derive_title", "default_count_tokens"]

CountTokens = Callable[[str], int]


def default_count_tokens(text: str) -> int:
    """Rough token estimate for multilingual subword tokenizers: words x 1.3."""
    return math.ceil(len(text.split()) * 1.3)


# --------------------------------------------------------------------------- patterns

_UP = "A-ZÀ-ÖØ-ÞŒ"
_TERMINAL = ".!?;:,"  # a heading never ends with these
_SENT_END = ".!?:;»)"  # a line ending with these may end a paragraph

_PAGE_NO_RE = re.compile(
    r"^\s*(?:[-–—]\s*)?(?:(?:page|p\.)\s*)?\d{1,4}(?:\s*(?:/|sur|of|de)\s*\d{1,4})?(?:\s*[-–—])?\s*$",
    re.I,
)
_DOC_SYMBOL_RE = re.compile(r"^\s*(?:[A-Z]{1,4}/(?:[A-Z0-9.\-]+/)*[A-Z0-9.\-]+(?:\s*\([A-Z0-9.\-]+\))?\s*)+$")
_JOB_RE = re.compile(r"^\s*(?:\d{2}-\d{4,6}(?:\s*\([A-Z]\))?(?:\s+\d{6}){0,3}|\*\d{7,}\*)\s*$")
_CONT_RE = re.compile(r"^\s*(?:(?:\.\.\.|…)\s*/\s*(?:\.\.\.|…)|/\s*(?:\.\.\.|…))\s*$")
_HR_RE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,}|={3,})\s*$")
_ATX_RE = re.compile(r"^(#{1,6})\s+")
_NUM_RE = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){0,3})\.\s+(?=\S)")
_LIST_RE = re.compile(
    r"^(?:[-–—•▪◦·●○■□➢►✓*+](?=\s)|\(?[a-z]\)|\(?(?:i{1,3}|iv|vi{0,3}|ix|x{1,2}i{0,3})\)|\(\d{1,3}\)|\d{1,3}\))\s*"
)
_SIGN_RE = re.compile(r"^\(?\s*(?:Signé|Signée|Signed|Signature)\s*\)", re.I)
_ANNEX_RE = re.compile(
    r"^(?:Annexes?|Annex|Appendices?|Appendix|Appendice|Pi[eè]ces? jointes?|Enclosures?|Attachments?"
    r"|Additif|Addendum)\b(?:\s+(?:[IVXLC]+|\d{1,3}|[A-Z])\b)?",
)
_ROMAN_RE = re.compile(
    r"^(?P<num>M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3}))"
    r"(?:\.\s*|\s*[-–—]\s+|\s+|$)(?P<rest>.*)$"
)
_LETTER_HEAD_RE = re.compile(rf"^[A-H]\.\s+[{_UP}]")
_ARABIC_HEAD_RE = re.compile(rf"^\d{{1,2}}(?:\.\d{{1,2}})*\.?\s+[{_UP}«\"]")
_KEYWORD_HEAD_RE = re.compile(
    r"^(?:Préambule|Preamble|Introduction|Conclusions?|Résumé|Summary|Abstract|Contexte|Background"
    r"|Recommandations?|Recommendations?|Observations finales)$",
    re.I,
)
_META_RES = [
    re.compile(p, re.I)
    for p in (
        r"^Distr\.?(?:\s+(?:générale|limitée|restreinte|general|limited|restricted))?\.?$",
        r"^\[?\s*Original\s*:.*\]?$",
        r"^\[?(?:Français|Anglais|Espagnol|Russe|Arabe|Chinois|English|French|Spanish|Russian|Arabic|Chinese)\]?$",
        r"^\d{1,2}(?:er)?\s+[a-zéû]+\s+\d{4}$",
        r"^(?:Assemblée générale|Conseil de sécurité|Conseil économique et social|General Assembly"
        r"|Security Council|Economic and Social Council|Nations Unies|United Nations)$",
        r"^[\w’'-]+\s+(?:session|année|year)(?:\s+extraordinaire)?$",
        r"^Points?\s.*\bde l.ordre du jour\b.*$",
        r"^(?:Agenda\s+)?items?\s.*\bagenda\b.*$",
    )
]
_DATELINE_RE = re.compile(
    rf"^(?:Fait à\s+|Done at\s+)?[{_UP}][\w .’'()-]{{1,40}},\s+(?:le\s+)?\d{{1,2}}(?:er)?\s+\w+\s+\d{{4}}\.?$"
)
_DOC_TYPE_RE = re.compile(
    r"^(?:Déclaration|Acte|Charte|Traité|Convention|Accord|Protocole|Résolution|Communiqué|Statuts?"
    r"|Programme d.action|Plan d.action|Pacte|Mémorandum|Declaration|Act|Charter|Treaty|Agreement"
    r"|Protocol|Resolution|Communiqu[eé]|Statute|Covenant|Memorandum)\b"
)
_LETTER_RE = re.compile(r"^(?:Lettres? (?:identiques )?datée?s?|Note verbale|(?:Identical )?[Ll]etters? dated)\b")
_SENT_SEPARATORS = [
    "\n\n",
    "\n",
    # sentence ends, but not after an initial ("M. X") or a paragraph number ("23. Nous")
    r"(?<=[.!?…])(?<!\b[A-Z]\.)(?<!\b\d\.)(?<!\b\d\d\.)(?<!\b\d\d\d\.)\s+",
    r"(?<=[;:])\s+",
    r"(?<=,)\s+",
    r"\s+",
]

_SECTION_ELEMENT_MAX = 80
_TITLE_MAX = 240


def _is_meta(s: str) -> bool:
    s = s.strip()
    return bool(s) and any(r.match(s) for r in _META_RES)


def _norm(s: str) -> str:
    return " ".join(s.replace("’", "'").split()).casefold()


# --------------------------------------------------------------------------- mapped text


class _MText:
    """Text plus a map from each character to an offset in the source string.

    Stored as runs (text_start, source_start, length, linear): a linear run maps character
    i to source_start + (i - text_start); a non-linear run (an inserted separator) maps every
    character to source_start.
    """

    __slots__ = ("parts", "runs", "length", "_text")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.runs: list[tuple[int, int, int, bool]] = []
        self.length = 0
        self._text: str | None = ""

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = "".join(self.parts)  # parts stay aligned one-to-one with runs
        return self._text

    def add(self, s: str, src: int, linear: bool = True) -> None:
        if not s:
            return
        if self.runs and linear:
            t0, s0, n, lin = self.runs[-1]
            if lin and s0 + n == src:  # contiguous in the source: extend the last run
                self.runs[-1] = (t0, s0, n + len(s), True)
                self.parts[-1] += s
                self.length += len(s)
                self._text = None
                return
        self.parts.append(s)
        self.runs.append((self.length, src, len(s), linear))
        self.length += len(s)
        self._text = None

    def extend(self, other: "_MText") -> None:
        for (t0, s0, n, lin), part in zip(other.runs, other.parts):
            self.add(part, s0, lin) if lin else self._append_run(part, s0)

    def _append_run(self, part: str, s0: int) -> None:
        self.parts.append(part)
        self.runs.append((self.length, s0, len(part), False))
        self.length += len(part)
        self._text = None

    def src(self, i: int) -> int:
        starts = [r[0] for r in self.runs]
        k = bisect.bisect_right(starts, i) - 1
        t0, s0, n, lin = self.runs[max(k, 0)]
        return s0 + (i - t0) if lin else s0

    def sub(self, a: int, b: int) -> "_MText":
        out = _MText()
        for (t0, s0, n, lin), part in zip(self.runs, self.parts):
            lo, hi = max(a, t0), min(b, t0 + n)
            if lo < hi:
                out.add(part[lo - t0 : hi - t0], s0 + (lo - t0) if lin else s0, lin)
        return out

    def strip(self) -> "_MText":
        t = self.text
        a = len(t) - len(t.lstrip())
        b = len(t.rstrip())
        return self.sub(a, b) if (a, b) != (0, len(t)) else self

    def span(self) -> tuple[int, int]:
        return self.src(0), self.src(self.length - 1) + 1

    @staticmethod
    def join(items: Iterable["_MText"], sep: str) -> "_MText":
        out = _MText()
        for it in items:
            if not it.length:
                continue
            if out.length:
                out.add(sep, it.src(0), False)
            out.extend(it)
        return out


# --------------------------------------------------------------------------- lines


@dataclass
class _Line:
    start: int  # offset of the raw line in the source
    raw: str
    blank: bool = False
    artefact: bool = False
    hr: bool = False
    indent: int = 0
    md_level: int = 0
    page_break: bool = False  # a page boundary lies just before this line
    text: _MText = field(default_factory=_MText)
    junctions: list[int] = field(default_factory=list)  # "****" joints between bold runs

    @property
    def plain(self) -> str:
        return self.text.text


_LINE_RE = re.compile(r"([^\r\n\f]*)(\r\n|[\r\n\f]|\Z)")
_ODD_SPACE_RE = re.compile(r"[^\S ]|  ")
_TOKEN_RE = re.compile(r"\*+|[ \t\u00a0\u2000-\u200b\u202f\u3000]+|[^\s*]+|\s+")


def _clean_line(line: _Line) -> None:
    raw = line.raw
    stripped = raw.lstrip()
    line.indent = len(raw[: len(raw) - len(stripped)].expandtabs(4))
    pos = len(raw) - len(stripped)
    content = stripped.rstrip()
    m = _ATX_RE.match(content)
    if m:
        line.md_level = len(m.group(1))
        pos += m.end()
        content = content[m.end() :]
        content = re.sub(r"\s+#+$", "", content)
    elif content.startswith(">"):
        k = 2 if content.startswith("> ") else 1
        pos += k
        content = content[k:]
    out = _MText()
    if "*" not in content and not _ODD_SPACE_RE.search(content):
        out.add(content, line.start + pos)  # fast path: nothing to clean
        line.text = out
        return
    tokens = list(_TOKEN_RE.finditer(content))
    for i, tok in enumerate(tokens):
        s = tok.group()
        src = line.start + pos + tok.start()
        if s[0] == "*":
            prev_space = i == 0 or tokens[i - 1].group()[0].isspace()
            next_space = i + 1 >= len(tokens) or tokens[i + 1].group()[0].isspace()
            if s == "*" and i == 0 and next_space:
                out.add(s, src)  # "* item" bullet
            elif prev_space and next_space and i > 0:
                out.add(s, src)  # "2 * 3"
            elif len(s) >= 4 and not prev_space and not next_space:
                line.junctions.append(out.length)
                out.add(" ", src, False)
            continue
        if s[0].isspace():
            if out.length and not out.parts[-1][-1:].isspace():
                out.add(" ", src)
            continue
        out.add(s, src)
    line.text = out.strip() if out.length else out


def _split_lines(text: str, pages: list[int]) -> list[_Line]:
    lines: list[_Line] = []
    page_starts = set(pages[1:])
    pending_break = False
    for m in _LINE_RE.finditer(text):
        i = m.start()
        line = _Line(start=i, raw=m.group(1))
        if i in page_starts:
            pending_break = True
        if line.raw.strip():
            line.page_break = pending_break
            pending_break = False
        else:
            line.blank = True
        lines.append(line)
        term = m.group(2)
        if not term:
            break
        if term == "\f":
            pending_break = True
    return lines


def _mark_artefacts(lines: list[_Line]) -> None:
    for ln in lines:
        if ln.blank:
            continue
        s = ln.raw.strip()
        if _HR_RE.match(s):
            ln.hr = True
        elif _PAGE_NO_RE.match(s) or _DOC_SYMBOL_RE.match(s) or _JOB_RE.match(s) or _CONT_RE.match(s):
            if not (_DOC_SYMBOL_RE.match(s) and not re.search(r"\d", s)):
                ln.artefact = True
    # Running headers/footers: the same short line (digits masked) at the edge of many pages.
    # (Unpaged text has no reliable edges; its UN symbols and page numbers are caught above.)
    def key(ln: _Line) -> str:
        return re.sub(r"\d+", "#", " ".join(ln.raw.split()).casefold())

    content = [k for k, ln in enumerate(lines) if not ln.blank and not ln.artefact and not ln.hr]
    page_idx = [k for k in content if lines[k].page_break]
    counts: dict[str, list[int]] = {}
    if len(page_idx) >= 2:
        # first two and last two content lines of every page
        bounds = [content[0]] + page_idx
        where = {k: n for n, k in enumerate(content)}
        for b, first in enumerate(bounds):
            pos = where[first]
            nxt = where[bounds[b + 1]] if b + 1 < len(bounds) else len(content)
            page_lines = content[pos:nxt]
            for k in page_lines[:2] + page_lines[-2:]:
                if len(lines[k].raw.strip()) <= 80 and not _LIST_RE.match(lines[k].raw.strip()):
                    counts.setdefault(key(lines[k]), [])
                    if k not in counts[key(lines[k])]:
                        counts[key(lines[k])].append(k)
        threshold = max(3, math.ceil(0.4 * len(bounds)))
    else:
        threshold = 0
    for ks in counts.values():
        if len(ks) >= threshold:
            for k in ks:
                lines[k].artefact = True


# --------------------------------------------------------------------------- units


@dataclass
class _Unit:
    lines: list[_Line]
    text: _MText
    gap_break: bool = False  # page break or removed artefact between this and the previous unit
    blank_before: bool = True
    kind: str = "body"  # heading | body | signature | table
    rank: int = 9
    explicit: bool = False  # markdown or bold heading
    parts: list[str] = field(default_factory=list)  # heading texts (bold runs may hold several)
    para_no: str = ""
    numbered: bool = False
    marker: bool = False
    meta: bool = False
    dateline: bool = False
    bold: bool = False
    section: str = ""
    heading_before: bool = False  # a heading separates this unit from the previous body unit

    @property
    def plain(self) -> str:
        return self.text.text

    @property
    def indent(self) -> int:
        return self.lines[0].indent


def _reflow(lines: list[_Line], sep_signature: bool = True) -> _MText:
    out = _MText()
    for ln in lines:
        t = ln.text
        if not t.length:
            continue
        if out.length:
            prev = out.parts[-1]
            if sep_signature and _SIGN_RE.match(ln.plain):
                out.add("\n", t.src(0), False)
            elif prev.endswith("-") and len(prev) >= 2 and prev[-2].isalpha() and ln.plain[:1].islower():
                pass  # "quarante-\nseptième" -> "quarante-septième"
            else:
                out.add(" ", t.src(0), False)
        out.extend(t)
    return out


@dataclass
class _Stats:
    width: float
    indented: bool


def _doc_stats(blocks: list[list[_Line]]) -> _Stats:
    lens = sorted(len(ln.raw.rstrip()) for b in blocks if len(b) > 1 for ln in b)
    width = float(lens[int(0.9 * (len(lens) - 1))]) if lens else float("inf")
    multi = [b for b in blocks if len(b) > 1]
    indented = bool(multi) and sum(1 for b in multi if b[0].indent >= 1) / len(multi) >= 0.5
    return _Stats(width=width, indented=indented)


def _split_block(block: list[_Line], st: _Stats) -> list[list[_Line]]:
    if len(block) == 1:
        return [block]
    if all("|" in ln.plain for ln in block):
        return [block]  # table: kept whole
    base = min(ln.indent for ln in block[1:])
    first_marker = bool(_LIST_RE.match(block[0].plain) or _NUM_RE.match(block[0].plain))
    maxlen = max(len(ln.raw.rstrip()) for ln in block)
    out = [[block[0]]]
    for prev, ln in zip(block, block[1:]):
        p, t = prev.plain, ln.plain
        starts_low = t[:1].islower()
        prev_end = p.rstrip("*")[-1:]
        prev_short = len(prev.raw.rstrip()) < 0.7 * min(st.width, maxlen)
        marker = bool(_LIST_RE.match(t) or _NUM_RE.match(t))
        new = False
        if _SIGN_RE.match(p):
            new = True  # nothing continues a "(Signé) X" line
        elif ln.md_level or prev.md_level:
            new = True
        elif ln.indent > base and not starts_low and (
            prev_end in _SENT_END or prev_short or ln.indent >= base + 2
        ):
            new = True  # indented line starting a sentence: the blank line was lost at a page break
        elif marker and (prev_end in _SENT_END or (first_marker and _LIST_RE.match(t))):
            new = True
        elif (
            len(block) >= 3
            and len(out[-1]) == 1
            and len(p) < 0.6 * maxlen
            and p.rstrip("*")[-1:] not in _TERMINAL
            and not p[:1].islower()
            and not starts_low
        ):
            new = True  # a short title line glued on top of a paragraph (PDF extraction)
        elif (
            len(block) >= 3
            and maxlen >= 40
            and prev_end in ".!?:"
            and len(prev.raw.rstrip()) < 0.75 * maxlen
            and not starts_low
        ):
            new = True  # wrapped text without blank lines between paragraphs (PDF)
        if new:
            out.append([ln])
        else:
            out[-1].append(ln)
    return out


def _bold_only(lines: list[_Line]) -> bool:
    raw = " ".join(ln.raw.strip() for ln in lines)
    raw = _ATX_RE.sub("", raw)
    return len(raw) > 4 and raw.startswith("**") and raw.endswith("**") and raw.count("**") % 2 == 0


def _heading_parts(u: _Unit) -> list[str]:
    """Split a heading made of several bold runs ("**A****B**") into its parts."""
    t = u.plain
    cuts: list[int] = []
    offset = 0
    for ln in u.lines:
        k = u.plain.find(ln.plain, offset)
        if k < 0:
            continue
        cuts.extend(k + j for j in ln.junctions)
        offset = k + len(ln.plain)
    parts, prev = [], 0
    for c in cuts:
        parts.append(t[prev:c])
        prev = c + 1
    parts.append(t[prev:])
    return [" ".join(p.split()) for p in parts if p.strip()]


def _line_pieces(u: _Unit) -> list[str]:
    """Every line of a unit, also cut at bold joints: what the cover-metadata test looks at."""
    out = []
    for ln in u.lines:
        t, prev = ln.plain, 0
        for j in ln.junctions + [len(t)]:
            if t[prev:j].strip():
                out.append(" ".join(t[prev:j].split()))
            prev = j + 1
    return out


def _heading_rank(text: str) -> int | None:
    """Rank from the text itself: annex 0, roman 2, keyword 2, letter 3, arabic 4; None if no signal."""
    if _ANNEX_RE.match(text):
        return 0
    m = _ROMAN_RE.match(text)
    if m and m.group("num") and (not m.group("rest") or m.group("rest")[0].isupper() or not m.group("rest")[0].isalpha()):
        num = m.group("num")
        if len(num) > 1 or num in "IVX":
            return 2
    if _KEYWORD_HEAD_RE.match(text):
        return 2
    if _LETTER_HEAD_RE.match(text):
        return 3
    if _ARABIC_HEAD_RE.match(text):
        return 4
    return None


def _looks_like_heading(u: _Unit, st: _Stats) -> bool:
    t = u.plain
    if not t or len(t) > 300 or len(u.lines) > 4:
        return False
    if len(u.lines) == 1 and len(t) > 200:
        return False
    m = _ROMAN_RE.match(t)
    roman_only = bool(m and m.group("num") and not m.group("rest"))
    if t[-1] in _TERMINAL and not roman_only:
        return False
    if t[0].islower() or _LIST_RE.match(t):
        return False
    if _NUM_RE.match(t) and len(t) > 80:
        return False
    if len(u.lines) >= 2 and st.width != float("inf"):
        if any(len(ln.raw.rstrip()) > 0.92 * st.width for ln in u.lines):
            return False  # full-width wrapped lines: a paragraph that lacks its full stop
    return True


def _analyse(text: str, pages: list[int] | None = None) -> tuple[list[_Unit], _Stats]:
    lines = _split_lines(text, list(pages or []))
    _mark_artefacts(lines)
    for ln in lines:
        if not ln.blank and not ln.artefact and not ln.hr:
            _clean_line(ln)
            if not ln.text.length:
                ln.blank = True  # e.g. a line holding only "**"
    # setext headings: "Title\n=====" / "Title\n-----"
    for k in range(1, len(lines)):
        ln, prev = lines[k], lines[k - 1]
        if ln.hr and not prev.blank and not prev.artefact and not prev.hr and not prev.md_level:
            s = ln.raw.strip()
            if s[0] in "=-" and (k < 2 or lines[k - 2].blank):
                prev.md_level = 1 if s[0] == "=" else 2

    # blocks separated by blank lines / rules; artefacts are transparent inside a block
    blocks: list[list[_Line]] = []
    meta: list[tuple[bool, bool]] = []  # (gap_break, blank_before) for each block
    cur: list[_Line] = []
    gap = False
    blank_before = True
    for ln in lines:
        if ln.artefact:
            gap = True
            continue
        if ln.blank or ln.hr:
            if cur:
                blocks.append(cur)
                cur = []
            blank_before = True
            continue
        if ln.page_break:
            gap = True
        if ln.md_level and cur:
            blocks.append(cur)
            cur = []
        if not cur:
            meta.append((gap, blank_before))
            gap = False
            blank_before = False
        cur.append(ln)
    if cur:
        blocks.append(cur)
    st = _doc_stats(blocks)

    units: list[_Unit] = []
    for block, (gap_break, blank) in zip(blocks, meta):
        for k, sub in enumerate(_split_block(block, st)):
            table = len(sub) > 1 and all("|" in ln.plain for ln in sub)
            mt = _MText.join([ln.text for ln in sub], "\n") if table else _reflow(sub)
            u = _Unit(lines=sub, text=mt, gap_break=gap_break if k == 0 else False, blank_before=blank and k == 0)
            if table:
                u.kind = "table"
            units.append(u)
    for u in units:
        _classify(u, st)
    return units, st


def _classify(u: _Unit, st: _Stats) -> None:
    t = u.plain
    if u.kind == "table":
        return
    u.bold = _bold_only(u.lines)
    m = _NUM_RE.match(t)
    if m:
        u.numbered, u.para_no = True, m.group(1)
    u.marker = bool(_LIST_RE.match(t))
    md = u.lines[0].md_level
    if any(_SIGN_RE.match(ln.plain) for ln in u.lines):
        u.kind = "signature"
        return
    if _DATELINE_RE.match(t):
        u.dateline = True
        return
    if md:
        u.kind, u.explicit = "heading", True
        u.parts = _heading_parts(u)
        rank = _heading_rank(u.parts[-1] if u.parts else t)
        u.rank = md if rank is None else rank  # refined in _resolve_md_levels
        u.numbered, u.para_no, u.marker = False, "", False
        return
    if all(_is_meta(p) for p in _line_pieces(u)):
        u.meta = True
        return
    if u.bold and not t.endswith((",", ";")) and not (u.numbered and len(t) > 120) and all(
        len(p) <= 300 for p in _heading_parts(u)
    ):
        u.kind, u.explicit = "heading", True
        u.parts = _heading_parts(u)
    elif _ANNEX_RE.match(t) and len(u.lines) <= 4 and t[-1] not in ".;,":
        u.kind, u.parts = "heading", [" ".join(t.split())]
    elif _looks_like_heading(u, st):
        u.kind, u.parts = "heading", [" ".join(t.split())]
    else:
        return
    u.numbered, u.para_no, u.marker = False, "", False
    rank = _heading_rank(u.parts[-1] if len(u.parts) == 1 else u.parts[0])
    if rank is None:
        rank = 1 if (u.explicit or not st.indented or u.indent >= 2) else 5
    u.rank = rank


def _resolve_md_levels(units: list[_Unit]) -> None:
    """Trust markdown levels unless numbered headings of one kind sit at several levels."""
    levels: dict[int, set[int]] = {}
    for u in units:
        if u.kind == "heading" and u.lines[0].md_level:
            r = _heading_rank(u.parts[-1] if u.parts else u.plain)
            if r:
                levels.setdefault(r, set()).add(u.lines[0].md_level)
    trusted = all(len(v) == 1 for v in levels.values())
    for u in units:
        if u.kind == "heading" and u.lines[0].md_level:
            r = _heading_rank(u.parts[-1] if u.parts else u.plain)
            if trusted:
                u.rank = u.lines[0].md_level
            else:
                u.rank = r if r is not None else min(u.lines[0].md_level, 1)


def _structure(units: list[_Unit], st: _Stats) -> list[_Unit]:
    _resolve_md_levels(units)

    # Runs of >= 4 weak heading candidates after the text has started are table rows.
    started = False
    k = 0
    while k < len(units):
        u = units[k]
        if u.kind == "body" and not u.meta:
            started = True
        if u.kind != "heading" or not started:
            k += 1
            continue
        run = [k]
        while run[-1] + 1 < len(units) and units[run[-1] + 1].kind == "heading":
            run.append(run[-1] + 1)
        weak = [i for i in run if not units[i].explicit and units[i].rank in (1, 5) and (
            units[i].rank == 5 or not st.indented)]
        if len(run) >= 4 and len(weak) >= 3:
            followed = run[-1] + 1 < len(units)
            for i in weak:
                if followed and i == run[-1]:
                    continue
                units[i].kind, units[i].parts = "table", []
                units[i].text = _MText.join([ln.text for ln in units[i].lines], " ")
        k = run[-1] + 1

    # A heading needs something under it: trailing "headings" are content.
    for u in reversed(units):
        if u.kind == "heading" and u.rank != 0 and not u.explicit:
            u.kind, u.parts = "body", []
        break

    # Glue paragraphs cut by a page break (the continuation starts in lower case or follows a
    # removed page artefact, and the paragraph did not end with a full stop).
    out: list[_Unit] = []
    for u in units:
        prev = out[-1] if out else None
        if (
            prev is not None
            and u.kind == "body"
            and prev.kind == "body"
            and not (u.meta or u.dateline or u.numbered or u.marker)
            and not (prev.meta or prev.dateline)
            and prev.plain[-1:] not in ".!?:"
            and (u.plain[:1].islower() or (u.gap_break and not u.plain[:1].isdigit()))
        ):
            prev.text = _MText.join([prev.text, u.text], " ")
            prev.lines = prev.lines + u.lines
            continue
        out.append(u)
    units = out

    # A signature takes the title lines just before it ("Le Représentant permanent…").
    out = []
    for u in units:
        if u.kind == "signature":
            taken: list[_Unit] = []
            while out and len(taken) < 2:
                c = out[-1]
                short = (
                    c.kind in ("heading", "body")
                    and not c.explicit
                    and c.rank != 0
                    and not (c.numbered or c.marker or c.meta or c.dateline)
                    and len(c.lines) <= 3
                    and all(len(ln.plain) <= 80 for ln in c.lines)
                    and c.plain[-1:] not in ".;:!?"
                )
                if not short:
                    break
                taken.insert(0, out.pop())
            if taken:
                titles = _MText.join([c.text for c in taken], " ")
                u.text = _MText.join([titles, u.text], "\n" if _SIGN_RE.match(u.plain) else " ")
                u.lines = [ln for c in taken for ln in c.lines] + u.lines
        out.append(u)
    return out


# --------------------------------------------------------------------------- title


def _short(s: str, limit: int) -> str:
    s = " ".join(s.split())
    if len(s) <= limit:
        return s
    cut = s[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:–-")
    return cut + "…"


def _title_from_units(units: list[_Unit], source: str) -> str:
    heads: list[tuple[int, str, _Unit]] = []
    first_body = next((i for i, u in enumerate(units) if u.kind in ("body", "signature") and not u.meta), len(units))
    for i, u in enumerate(units):
        if u.kind == "heading":
            for p in u.parts:
                if p and not _is_meta(p):
                    heads.append((i, p, u))
    def plain_head(p: str) -> bool:
        return not (_ANNEX_RE.match(p) or _LETTER_RE.match(p) or _KEYWORD_HEAD_RE.match(p)
                    or _heading_rank(p) in (2, 3, 4))
    # 1. an annexed declaration/act: first document-type heading after an annex heading
    annex_at = next((i for i, p, _ in heads if _ANNEX_RE.match(p)), None)
    if annex_at is not None:
        for i, p, _ in heads:
            if i > annex_at and _DOC_TYPE_RE.match(p):
                return _short(p, _TITLE_MAX)
    # 2. a document-type heading on the cover (before the text starts)
    for i, p, _ in heads:
        if i < first_body and _DOC_TYPE_RE.match(p):
            return _short(p, _TITLE_MAX)
    # 3. the subject line just before a cover letter heading ("Octroi du statut…" / "Lettre datée…")
    for k, (i, p, _) in enumerate(heads):
        if _LETTER_RE.match(p):
            if k > 0 and heads[k - 1][0] < first_body and plain_head(heads[k - 1][1]):
                return _short(heads[k - 1][1], _TITLE_MAX)
            break
    # 4. the first ordinary heading, 5. a letter heading
    for i, p, _ in heads:
        if plain_head(p) and len(p) >= 3:
            return _short(p, _TITLE_MAX)
    for i, p, _ in heads:
        if _LETTER_RE.match(p):
            return _short(p, _TITLE_MAX)
    # 6. the first meaningful line
    for u in units:
        for ln in u.lines:
            s = ln.plain.strip()
            if len(re.findall(r"[^\W\d_]", s)) >= 3 and not _is_meta(s) and not _SIGN_RE.match(s):
                return _short(s, 100)
    # 7. the file name
    stem = PurePath(source).stem if source else ""
    return stem or source or "Sans titre"


def derive_title(text: str, source: str) -> str:
    """Document title from its text: an annexed declaration/act title beats the cover letter,
    then the letter's subject line, the first heading, the first meaningful line, the file stem."""
    units, st = _analyse(text)
    return _title_from_units(_structure(units, st), source)


# --------------------------------------------------------------------------- pieces


@dataclass
class _Piece:
    text: _MText
    section: str
    para_no: str
    kind: str  # body | list | table | signature
    numbered_head: bool = False  # the text starts with its printed number
    after_heading: bool = False  # a heading lies between this piece and the previous one
    unit: int = -1  # pieces cut from the same paragraph share this


def _section_label(full: str) -> str:
    m = _ANNEX_RE.match(full)
    if m:
        return " ".join(m.group(0).split())
    return _short(full, _SECTION_ELEMENT_MAX)


def _assign_sections(units: list[_Unit], title: str) -> None:
    stack: list[tuple[int, str]] = []
    tnorm = _norm(title).rstrip("…")
    heading_seen = False
    for u in units:
        if u.kind == "heading":
            for p in u.parts:
                if _is_meta(p):
                    continue
                # "Annexe II" > "Projet de résolution" > "Octroi du statut…": a short heading right
                # under an annex heading, followed at once by another, is a label for it: nest.
                nest = (
                    heading_seen
                    and len(stack) >= 2
                    and stack[-2][0] == 0
                    and stack[-1][0] == u.rank
                    and len(stack[-1][1].split()) <= 4
                    and len(p.split()) > len(stack[-1][1].split())
                )
                while not nest and stack and stack[-1][0] >= u.rank:
                    stack.pop()
                stack.append((u.rank, p))
            heading_seen = True
            continue
        path = [_section_label(p) for r, p in stack if not (tnorm and _norm(p).startswith(tnorm))]
        u.section = " > ".join(path)
        u.heading_before = heading_seen
        heading_seen = False


def _split_text(mt: _MText, max_tokens: int, count: CountTokens) -> list[_MText]:
    """Split at sentence boundaries so that every piece is within max_tokens."""
    text = mt.text
    total = count(text)
    if total <= max_tokens:
        return [mt]
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    n = math.ceil(total / max_tokens)
    best: list[tuple[int, int]] | None = None
    # a balanced target first (no tiny tail piece), then the cap itself; keep the fewest pieces
    for size in (min(max_tokens, math.ceil(total / n * 1.1)), max_tokens):
        splitter = RecursiveCharacterTextSplitter(
            chunk_size=max(size, 1),
            chunk_overlap=0,
            length_function=count,
            separators=_SENT_SEPARATORS,
            is_separator_regex=True,
            keep_separator="end",
            strip_whitespace=True,
        )
        pieces = []
        cursor = 0
        for chunk in splitter.split_text(text):
            k = text.find(chunk, cursor)
            if k < 0:  # should not happen: chunks are stripped substrings
                k = cursor
            pieces.append((k, k + len(chunk)))
            cursor = k + len(chunk)
        if all(count(text[a:b]) <= max_tokens for a, b in pieces) and (best is None or len(pieces) < len(best)):
            best = pieces
    pieces = best if best is not None else pieces
    out: list[tuple[int, int]] = []
    for a, b in pieces:
        if count(text[a:b]) <= max_tokens:
            out.append((a, b))
            continue
        # last resort: greedy by words
        words = [m.span() for m in re.finditer(r"\S+", text[a:b])]
        s = None
        e = None
        for wa, wb in words:
            if s is None:
                s, e = wa, wb
            elif count(text[a + s : a + wb]) <= max_tokens:
                e = wb
            else:
                out.append((a + s, a + e))
                s, e = wa, wb
        if s is not None:
            out.append((a + s, a + e))
    return [mt.sub(a, b).strip() for a, b in out if text[a:b].strip()]


def _pack(items: list[_MText], max_tokens: int, count: CountTokens, sep: str = "\n") -> list[_MText]:
    """Pack consecutive items (list items, table rows) into pieces within max_tokens.

    When the whole does not fit, cut first before a nested lead-in ("b) D'autre part :"), so that
    a sub-list stays with its own lead-in; otherwise pack items greedily.
    """
    whole = _MText.join(items, sep)
    if count(whole.text) <= max_tokens:
        return [whole]
    segments: list[list[_MText]] = [[]]
    for k, it in enumerate(items):
        if k > 0 and it.text.rstrip("*").endswith(":"):
            segments.append([])
        segments[-1].append(it)
    if len(segments) > 1:
        joined = [_MText.join(seg, sep) for seg in segments]
        if all(count(j.text) <= max_tokens for j in joined):
            return _greedy(joined, max_tokens, count, sep)
    return _greedy(items, max_tokens, count, sep)


def _greedy(items: list[_MText], max_tokens: int, count: CountTokens, sep: str) -> list[_MText]:
    out: list[_MText] = []
    cur: list[_MText] = []
    for it in items:
        if cur and count(_MText.join(cur + [it], sep).text) > max_tokens:
            out.append(_MText.join(cur, sep))
            cur = []
        if count(it.text) > max_tokens:
            if cur:
                out.append(_MText.join(cur, sep))
                cur = []
            out.extend(_split_text(it, max_tokens, count))
            continue
        cur.append(it)
    if cur:
        out.append(_MText.join(cur, sep))
    return out


def _build_pieces(units: list[_Unit], max_tokens: int, count: CountTokens,
                  title: str = "") -> list[_Piece]:
    pieces: list[_Piece] = []
    i = 0
    current_no = ""  # para_no inherited by unnumbered paragraphs that follow a numbered one
    current_section = None
    caption: _MText | None = None  # a long heading waiting for the text under it
    tnorm = _norm(title).rstrip("…")
    while i < len(units):
        u = units[i]
        if u.kind == "heading":
            current_no = ""
            # A heading too long for the section label ("Liste des États membres qui se sont
            # proposés… dans des domaines tels que…") says what follows: it opens the next passage
            # so that its words are searchable and citable, not only shown clipped. The title is
            # not repeated: every passage carries it already.
            last = u.parts[-1] if u.parts else ""
            long = (len(last) > _SECTION_ELEMENT_MAX and not _ANNEX_RE.match(last)
                    and not (tnorm and _norm(last).startswith(tnorm)))
            caption = _find_part(u.text, last) if long else None
            i += 1
            continue
        # the caption opens the first passage under it, or stands alone before a signature or
        # a table (whose rows it would blur for the embedding model)
        lead = [caption] if caption is not None else []
        if lead and u.kind in ("signature", "table"):
            pieces.append(_Piece(caption, u.section, "", "body", after_heading=u.heading_before))
            lead = []
        caption = None
        if u.section != current_section or u.heading_before:
            current_no = ""
            current_section = u.section
        after = u.heading_before
        if u.kind == "signature":
            for mt in _split_text(u.text, max_tokens, count):
                pieces.append(_Piece(mt, u.section, "", "signature", after_heading=after))
            current_no = ""
            i += 1
            continue
        if u.kind == "table":
            j = i
            rows: list[_MText] = []
            while j < len(units) and units[j].kind == "table" and (j == i or not units[j].heading_before):
                rows.append(units[j].text)
                j += 1
            for k, mt in enumerate(_pack(rows, max_tokens, count)):
                pieces.append(_Piece(mt, u.section, "", "table", after_heading=after and k == 0))
            i = j
            continue
        # body: a lead-in ending with ":" (or a run of list items) keeps its items
        j = i + 1
        lead_in = u.plain.rstrip("*").endswith(":")
        if lead_in or u.marker:
            k = j
            while k < len(units) and units[k].kind == "body" and not units[k].heading_before and units[k].marker:
                k += 1
            # short numbered items after a lead-in ("1. Économie; 2. Environnement; …")
            if lead_in and k == j:
                run = j
                while (run < len(units) and units[run].kind == "body" and not units[run].heading_before
                       and units[run].numbered and len(units[run].plain) <= 150
                       and units[run].plain[-1:] in ".;,"):
                    run += 1
                if run - j >= 2 and units[j].para_no == "1":
                    k = run
            j = k
        group = units[i:j]
        if len(group) > 1:
            kind = "list"
            para = u.para_no if u.numbered else current_no
            mts = _pack(lead + [g.text for g in group], max_tokens, count)
            for k, mt in enumerate(mts):
                pieces.append(_Piece(mt, u.section, para, kind, numbered_head=u.numbered and k == 0,
                                     after_heading=after and k == 0))
            if u.numbered:
                current_no = u.para_no
        else:
            if u.numbered and not u.meta:
                current_no = u.para_no
                para, head = u.para_no, True
            else:
                para, head = ("" if (u.meta or u.dateline) else current_no), False
            text = _MText.join(lead + [u.text], "\n")
            for k, mt in enumerate(_split_text(text, max_tokens, count)):
                pieces.append(_Piece(mt, u.section, para, "body", numbered_head=head and k == 0,
                                     after_heading=after and k == 0, unit=i))
        i = j
    return pieces


def _find_part(mt: _MText, part: str) -> _MText | None:
    """The stretch of a heading's text that holds one of its parts (whitespace may differ)."""
    m = re.search(r"\s+".join(map(re.escape, part.split())), mt.text)
    return mt.sub(m.start(), m.end()) if m else None


def _merge_small(pieces: list[_Piece], min_chars: int, max_tokens: int, count: CountTokens) -> list[_Piece]:
    def can(frag: _Piece, target: _Piece, frag_first: bool) -> bool:
        if target.kind == "signature" or frag.section != target.section:
            return False
        if frag.numbered_head:
            # a numbered paragraph stays at the head of its passage: only its own continuation
            # may be appended to it
            if not frag_first or target.numbered_head or target.para_no != frag.para_no:
                return False
        elif target.para_no and frag.para_no and target.para_no != frag.para_no:
            return False
        elif frag_first and target.numbered_head:
            return False  # would push "23." away from the start of its passage
        joined = frag.text.text + _sep(frag, target) + target.text.text
        return count(joined) <= max_tokens

    def _sep(a: _Piece, b: _Piece) -> str:
        return " " if a.unit >= 0 and a.unit == b.unit else "\n"

    idx = 0
    while idx < len(pieces):
        p = pieces[idx]
        if p.kind == "signature" or len(p.text.text) >= min_chars:
            idx += 1
            continue
        prev = pieces[idx - 1] if idx > 0 else None
        nxt = pieces[idx + 1] if idx + 1 < len(pieces) else None
        if prev is not None and not p.numbered_head and can(p, prev, frag_first=False):
            prev.text = _MText.join([prev.text, p.text], _sep(prev, p))  # prev keeps its para_no
            del pieces[idx]
            idx = max(idx - 1, 0)  # the grown piece may still be small
            continue
        if nxt is not None and can(p, nxt, frag_first=True):
            nxt.text = _MText.join([p.text, nxt.text], _sep(p, nxt))
            nxt.numbered_head = p.numbered_head
            nxt.para_no = nxt.para_no or p.para_no
            nxt.after_heading = p.after_heading
            del pieces[idx]
            continue
        idx += 1
    return pieces


# --------------------------------------------------------------------------- entry point


def chunk_document(
    doc: LoadedDocument,
    *,
    max_tokens: int = 256,
    min_chars: int = 60,
    count_tokens: CountTokens | None = None,
) -> list[Passage]:
    """Cut a loaded document into paragraph passages (see the module docstring)."""
    count = count_tokens or default_count_tokens
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    units, st = _analyse(doc.text, doc.pages)
    units = _structure(units, st)
    title = _title_from_units(units, doc.source)
    _assign_sections(units, title)
    pieces = _build_pieces(units, max_tokens, count, title)
    pieces = _merge_small(pieces, min_chars, max_tokens, count)

    passages: list[Passage] = []
    for piece in pieces:
        mt = piece.text.strip()
        if not mt.length or not mt.text.strip():
            continue
        start, end = mt.span()
        pos = len(passages)
        passages.append(
            Passage(
                id=passage_id(doc.source, pos),
                source=doc.source,
                title=title,
                section=piece.section,
                para_no=piece.para_no,
                text=mt.text,
                start=start,
                end=end,
                position=pos,
                page=doc.page_of(start) if doc.pages else 0,
            )
        )
    return passages
