"""The kind of answer a question asks for, when the passages must show it in so many words.

A question about an amount of money ("What did the summit cost?", "Quel est le budget du
secrétariat ?") can only be answered from a passage that states an amount: a figure with a
currency. When none of the retrieved passages holds one, the documents do not say, however
close to the topic they are; the service then abstains instead of quoting them.
"""

from __future__ import annotations

import re

_MONEY_QUESTION = re.compile(
    r"\b(?:costs?|costed|cost\s+of|price[sd]?|budgets?|how\s+much\s+money|spen[dt]|"
    r"co[uû]ts?|co[uû]t[ée]e?s?|montants?|combien\s+d[’']argent|d[ée]pens[ée]e?s?)\b",
    re.IGNORECASE,
)
_MONEY = re.compile(
    r"[$€£¥₸₽]|\b(?:dollars?|euros?|usd|eur|tenge|roubles?|rubles?|yuans?|renminbi|"
    r"francs?|livres\s+sterling|pounds?|yens?)\b|\d\s*(?:millions?|milliards?|billions?|mds?)\b",
    re.IGNORECASE,
)


def asks_for_money(question: str) -> bool:
    return bool(_MONEY_QUESTION.search(question))


def states_money(text: str) -> bool:
    return bool(_MONEY.search(text))


def missing_answer_type(question: str, texts: list[str]) -> str | None:
    """The kind of answer the question needs that none of ``texts`` holds ("money"), or
    None when the texts could hold the answer."""
    if asks_for_money(question) and not any(states_money(t) for t in texts):
        return "money"
    return None
