"""Chat messages for answering and for condensing a follow-up, from the templates in prompts/.

The passages go into the user message as quoted data between ``<passage>`` tags, with ``<``
and ``>`` escaped so a passage cannot close its own tag; the system message depends only on
the answer language, never on passage text. The refusal sentence is exact so code can detect
it (``is_refusal``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from .citations import strip_markers
from .language import detect_language
from .schema import ScoredPassage

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
LANGUAGE_NAMES = {"fr": "French", "en": "English"}
TRUNCATION_MARK = " […]"
HISTORY_TURNS = 6  # the last turns are enough to resolve a reference
HISTORY_CHARS = 600  # per turn: long answers add tokens, not meaning, to a rewrite


@dataclasses.dataclass(frozen=True)
class Prompts:
    answer_system: str
    answer_user: str
    condense: str
    refusals: dict[str, str]


@lru_cache(maxsize=8)
def load_prompts(prompts_dir: str | Path | None = None) -> Prompts:
    folder = Path(prompts_dir) if prompts_dir else PROMPTS_DIR

    def read(name: str) -> str:
        return (folder / name).read_text(encoding="utf-8").strip()

    return Prompts(
        answer_system=read("answer_system.txt"),
        answer_user=read("answer_user.txt"),
        condense=read("condense.txt"),
        refusals=json.loads(read("refusal.json")),
    )


def approx_tokens(text: str) -> int:
    """A conservative token estimate (about 3 characters a token for French and English)."""
    return math.ceil(len(text) / 3)


def refusal_sentence(lang: str, prompts_dir: str | Path | None = None) -> str:
    refusals = load_prompts(prompts_dir).refusals
    return refusals.get(lang, refusals["en"])


def is_refusal(text: str, prompts_dir: str | Path | None = None) -> bool:
    """True when ``text`` is the refusal sentence of any language, give or take case,
    accents, punctuation, markers and a few stray words."""
    said = _loose(text)
    for sentence in load_prompts(prompts_dir).refusals.values():
        refusal = _loose(sentence)
        if refusal and refusal in said and len(said.replace(refusal, " ").split()) <= 3:
            return True
    return False


def _loose(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"\[[^\]]*\]", " ", text)
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def render_passage(n: int, sp: ScoredPassage) -> str:
    source = _escape(sp.passage.label).replace('"', "'")
    return f'<passage id="{n}" source="{source}">\n{_escape(sp.passage.text)}\n</passage>'


def fit_passages(
    passages: list[ScoredPassage],
    budget_tokens: int,
    count_tokens: Callable[[str], int] = approx_tokens,
) -> list[ScoredPassage]:
    """Whole passages, by rank, while they fit the budget; one that does not fit is skipped.

    The first passage is always kept: if it alone exceeds the budget, its text is cut at a
    word and ends with " […]", and the returned ScoredPassage carries that shorter text (same
    passage id), so callers see exactly what the model saw.
    """
    used: list[ScoredPassage] = []
    spent = 0
    for sp in passages:
        cost = count_tokens(render_passage(len(used) + 1, sp) + "\n")
        if spent + cost <= budget_tokens:
            used.append(sp)
            spent += cost
        elif not used:
            used.append(_truncated(sp, budget_tokens, count_tokens))
            log.warning("passage %s cut to fit a %d-token context", sp.passage.id, budget_tokens)
            break
    return used


def _truncated(
    sp: ScoredPassage, budget_tokens: int, count_tokens: Callable[[str], int]
) -> ScoredPassage:
    text = sp.passage.text
    keep = len(text)
    while keep > 0:
        keep = int(keep * 0.9)
        cut = text[:keep].rsplit(None, 1)[0] if " " in text[:keep] else text[:keep]
        candidate = dataclasses.replace(sp.passage, text=cut + TRUNCATION_MARK)
        shorter = ScoredPassage(candidate, sp.score, dict(sp.scores))
        if count_tokens(render_passage(1, shorter)) <= budget_tokens:
            return shorter
    return ScoredPassage(dataclasses.replace(sp.passage, text=TRUNCATION_MARK.strip()),
                         sp.score, dict(sp.scores))


def build_answer_messages(
    question: str,
    passages: list[ScoredPassage],
    lang: str,
    budget_tokens: int,
    count_tokens: Callable[[str], int] | None = None,
    prompts_dir: str | Path | None = None,
) -> tuple[list[dict[str, str]], list[ScoredPassage]]:
    """(messages, used_passages): passage n in the prompt is used_passages[n - 1]."""
    prompts = load_prompts(prompts_dir)
    used = fit_passages(passages, budget_tokens, count_tokens or approx_tokens)
    fields = {
        "language": LANGUAGE_NAMES.get(lang, "the language of the question"),
        "refusal": refusal_sentence(lang, prompts_dir),
    }
    block = "\n".join(render_passage(n, sp) for n, sp in enumerate(used, 1))
    user = prompts.answer_user.format(passages=block, question=question.strip(), **fields)
    messages = [
        {"role": "system", "content": prompts.answer_system.format(**fields)},
        {"role": "user", "content": user},
    ]
    return messages, used


def build_condense_messages(
    question: str,
    history: list,
    lang: str | None = None,
    prompts_dir: str | Path | None = None,
) -> list[dict[str, str]]:
    """One user message asking for ``question`` rewritten without the need of ``history``.

    ``history`` holds {"role", "content"} messages or (user, assistant) pairs, oldest first.
    """
    lang = lang or detect_language(question)
    lines = [f"{role}: {_squash(content)}" for role, content in _turns(history)]
    prompt = load_prompts(prompts_dir).condense.format(
        language=LANGUAGE_NAMES.get(lang, "the language of the question"),
        history=_escape("\n".join(lines[-HISTORY_TURNS:])),
        question=question.strip(),
    )
    return [{"role": "user", "content": prompt}]


def _turns(history: list) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    for item in history:
        if isinstance(item, dict):
            if item.get("content") and item.get("role") in ("user", "assistant"):
                turns.append((str(item["role"]).capitalize(), str(item["content"])))
        else:
            user, assistant = item
            turns += [(r, str(c)) for r, c in (("User", user), ("Assistant", assistant)) if c]
    return turns


def _squash(text: str) -> str:
    text = strip_markers(text)
    return text if len(text) <= HISTORY_CHARS else text[:HISTORY_CHARS] + "…"
