"""Find, check and ground the [n] markers of an answer.

``[n]`` refers to the n-th passage given to the model (1-based). Markers outside 1..n are
removed from the text and reported. Each citation gets the sentence of its passage that best
supports the answer sentence carrying the marker. An answer with no marker at all (small
models often write none) has each sentence attributed to the passage sentence that supports
it best, when the match is clear; those citations are marked ``inferred``.
"""

from __future__ import annotations

import re

from .schema import Citation, Passage, ScoredPassage
from .similarity import Scores, score

# [1], [1, 3], [1;2], [2-4], [2–4], [passage 2], [Source 1, 3]; 1-3 digits, so years are not
# markers; "[Original : anglais]" has no number and is left alone.
_NUM = r"(?:(?:passages?|sources?|docs?|documents?)\s*)?\d{1,3}(?:\s*[-–]\s*\d{1,3})?"
_MARKER = re.compile(rf"\[\s*({_NUM}(?:\s*[,;]\s*{_NUM})*)\s*\]", re.IGNORECASE)
_SPACED_MARKER = re.compile(r"[ \t]*" + _MARKER.pattern, re.IGNORECASE)  # with the space before
MAX_RANGE = 20  # [1-999] is not a citation of 999 passages

MIN_LEXICAL = 0.35  # share of an answer sentence's words found in a passage sentence
MIN_Z = 2.0  # or a cosine this many standard deviations above the other candidates'
MIN_CLAIM_CHARS = 12  # shorter fragments ("Oui.") are not attributed

_ABBREVIATIONS = frozenset(
    """m mm mme mmes mlle mlles mr mrs ms dr pr prof st ste art arts al cf chap ch p pp par
    para paras n no nos nº vol ex env fig sect réf ref doc éd ed trad coll op cit ibid
    gén gen col lt etc vs av apr""".split()
) - {"etc"}  # "etc." usually ends a sentence
_END = re.compile(r"[.!?…]+[\"»”’)\]]*(?:\s*\[[^\]\n]{1,20}\])*(?=\s|$)")
_LIST_ITEM = re.compile(r"\s*(?:[-–•*]|\(?[0-9a-zA-Z]{1,3}[.)])\s")


def parse_markers(text: str) -> list[tuple[int, int, int]]:
    """(marker, start, end) for every number in every [..] group; numbers of one group share
    the group's span. Ranges are expanded: [2-4] gives 2, 3 and 4."""
    found: list[tuple[int, int, int]] = []
    for m in _MARKER.finditer(text):
        for part in re.split(r"[,;]", m.group(1)):
            numbers = [int(x) for x in re.findall(r"\d+", part)]
            if len(numbers) == 2 and 0 <= numbers[1] - numbers[0] < MAX_RANGE:
                numbers = list(range(numbers[0], numbers[1] + 1))
            found.extend((n, m.start(), m.end()) for n in numbers)
    return found


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence, trailing markers included, surrounding spaces not."""
    spans: list[tuple[int, int]] = []
    for block_start, block_end in _blocks(text):
        start = block_start
        for m in _END.finditer(text, block_start, block_end):
            if _is_boundary(text, m, block_start):
                spans.append((start, m.end()))
                start = m.end()
        spans.append((start, block_end))
    return [s for s in (_strip(text, a, b) for a, b in spans) if s[1] > s[0]]


def split_sentences(text: str) -> list[str]:
    """Sentences of French or English text; abbreviations (S.E. M., art. 3, p. 12), initials
    (Kh., B.) and a leading paragraph number ("23. Nous ...") do not end a sentence."""
    return [text[a:b] for a, b in sentence_spans(text)]


def passage_sentences(passage: Passage) -> list[str]:
    """The sentences of a passage, the heading line it may open with as one of its own (a
    letter's title line would otherwise run into its first sentence, as PDF text has no
    blank line after it). Each is a substring of the passage's text."""
    sentences = split_sentences(passage.text)
    if sentences and passage.opening_heading:
        first, _, rest = sentences[0].partition("\n")
        if rest.strip():
            sentences[:1] = [first.strip(), rest.strip()]
    return sentences


def _blocks(text: str) -> list[tuple[int, int]]:
    """Line runs that cannot share a sentence: split at blank lines, after a line ending in
    . ; : ! ? and before a list item."""
    blocks, start, pos = [], 0, 0
    lines = text.splitlines(keepends=True)
    for k, line in enumerate(lines):
        pos += len(line)
        following = lines[k + 1] if k + 1 < len(lines) else ""
        last = line.rstrip()[-1:]
        if (not line.strip() or not following.strip() or (last and last in ".;:!?")
                or _LIST_ITEM.match(following)):
            blocks.append((start, pos))
            start = pos
    if start < len(text):
        blocks.append((start, len(text)))
    return blocks


def _is_boundary(text: str, m: re.Match, block_start: int) -> bool:
    after = text[m.end():].lstrip()
    if after and after[0].islower():
        return False  # "p. ex. la", "etc. et": the sentence goes on
    if "." not in m.group() or any(c in m.group() for c in "!?…"):
        return True
    before = text[block_start:m.start()]
    word = re.sub(r"^[(«\"“'‘\[]+", "", before.rsplit(None, 1)[-1]) if before.strip() else ""
    if word.lower() in _ABBREVIATIONS:
        return False
    if re.fullmatch(r"(?:[^\W\d_]\.)*[^\W\d_]|[A-Z][a-z]", word):
        return False  # an initial or dotted abbreviation: "B.", "Kh.", "S.E."
    if word.isdigit() and before.strip() == word:
        return False  # a paragraph number at the start of the block
    return True


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def strip_markers(text: str) -> str:
    """The text without its [n] markers (nor the space before them), on one line."""
    return " ".join(_SPACED_MARKER.sub("", text).split())


def resolve_citations(
    answer_text: str, used_passages: list[ScoredPassage], embed=None
) -> tuple[list[Citation], list[int], str]:
    """(citations in order of first use, dropped out-of-range markers, cleaned text)."""
    cleaned, dropped = _clean_markers(answer_text, len(used_passages))
    if not parse_markers(cleaned):  # none written, or none valid
        citations, cleaned = _infer(cleaned, used_passages, embed)
        return citations, dropped, cleaned
    claims: dict[int, list[str]] = {}
    spans = sentence_spans(cleaned)
    for n, start, _ in parse_markers(cleaned):
        claims.setdefault(n, []).append(_claim_at(cleaned, spans, start))
    citations = []
    for n, texts in claims.items():
        passage = used_passages[n - 1].passage
        sentences = passage_sentences(passage) or [passage.text]
        scores = score(texts, sentences, embed)
        best = int(scores.combined.max(axis=0).argmax())
        citations.append(Citation(marker=n, passage=passage, support=sentences[best]))
    return citations, dropped, cleaned


def _clean_markers(text: str, n_passages: int) -> tuple[str, list[int]]:
    dropped: list[int] = []

    def rewrite(m: re.Match) -> str:
        kept: list[int] = []
        for n, _, _ in parse_markers(m.group()):
            if 1 <= n <= n_passages:
                if n not in kept:
                    kept.append(n)
            elif n not in dropped:
                dropped.append(n)
        if not kept:  # the space before goes too: "prioritaire [7]." -> "prioritaire."
            return ""
        space = m.group()[: len(m.group()) - len(m.group().lstrip(" \t"))]
        return space + "".join(f"[{n}]" for n in kept)

    return _SPACED_MARKER.sub(rewrite, text).strip(), dropped


def _claim_at(text: str, spans: list[tuple[int, int]], pos: int) -> str:
    """The sentence carrying the marker at ``pos``, or the one before when the marker
    stands alone."""
    index = next((i for i, (a, b) in enumerate(spans) if a <= pos < b), len(spans) - 1)
    claim = strip_markers(text[spans[index][0]:spans[index][1]])
    if len(claim) < MIN_CLAIM_CHARS and index > 0:
        claim = strip_markers(text[spans[index - 1][0]:spans[index - 1][1]])
    return claim


def _infer(text: str, used: list[ScoredPassage], embed) -> tuple[list[Citation], str]:
    spans = [s for s in sentence_spans(text) if len(text[s[0]:s[1]]) >= MIN_CLAIM_CHARS]
    owners: list[tuple[int, int]] = []  # (passage index, sentence index) per candidate
    candidates: list[str] = []
    for p, sp in enumerate(used):
        for s, sentence in enumerate(passage_sentences(sp.passage) or [sp.passage.text]):
            owners.append((p, s))
            candidates.append(sentence)
    if not spans or not candidates:
        return [], text
    scores: Scores = score([text[a:b] for a, b in spans], candidates, embed)
    combined = scores.combined
    best_support: dict[int, tuple[float, str]] = {}
    inserts: list[tuple[int, int]] = []  # (position, marker)
    for i, (a, b) in enumerate(spans):
        j = int(combined[i].argmax())
        if not scores.confident(i, j, MIN_LEXICAL, MIN_Z):
            continue
        p = owners[j][0]
        inserts.append((_marker_position(text, a, b), p + 1))
        if combined[i, j] > best_support.get(p, (-1.0, ""))[0]:
            best_support[p] = (float(combined[i, j]), candidates[j])
    for pos, n in sorted(inserts, reverse=True):
        text = f"{text[:pos]} [{n}]{text[pos:]}"
    order = list(dict.fromkeys(n for _, n in inserts))
    citations = [Citation(marker=n, passage=used[n - 1].passage,
                          support=best_support[n - 1][1], inferred=True) for n in order]
    return citations, text


def _marker_position(text: str, a: int, b: int) -> int:
    """Before the sentence's final punctuation: "… énergie [1]."."""
    end = b
    while end > a and text[end - 1] in ".!?…»\"”’) ":
        end -= 1
    return end
