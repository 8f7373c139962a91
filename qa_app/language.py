"""Tiny French/English language guess by stop-word counts.

Enough to pick the answer language, the refusal sentence and fusion weights; the
corpus and the questions are French or English.
"""

from __future__ import annotations

import re

_FR = set(
    "le la les un une des du de d l au aux et est sont que qui quoi quel quelle quels quelles "
    "dans pour par sur avec ce cette ces il elle ils elles nous vous leur leurs son sa ses "
    "pas ne plus a-t-il a-t-elle comment pourquoi quand où combien été était selon lors "
    "entre depuis sont ont qu n s c j m t y en".split()
)
_EN = set(
    "the a an of and is are was were what which who whom whose when where why how does do did "
    "in on for by with this that these those it its they their them to from at as be been "
    "has have had not or according during between since about into".split()
)
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*", re.UNICODE)


def detect_language(text: str, default: str = "fr") -> str:
    """Return "fr" or "en"."""
    words = [w.lower() for w in _WORD.findall(text.replace("’", "'").replace("'", " "))]
    fr = sum(w in _FR for w in words)
    en = sum(w in _EN for w in words)
    # Accented letters are a strong French signal in short questions.
    fr += sum(ch in "éèêàçùâîôûœ" for ch in text.lower()) * 0.5
    if fr == en:
        return default
    return "fr" if fr > en else "en"
