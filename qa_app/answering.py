"""Turn a question and its retrieved passages into an Answer, streamed.

Three modes: ``generated`` (the LLM answers from the passages, its [n] markers checked and
grounded), ``extractive`` (no LLM configured or reachable: the passage sentences closest to
the question, each with its [n]) and ``abstained`` (the refusal sentence). An LLM failure
never reaches the caller: it becomes the extractive answer with a one-line notice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from .citations import passage_sentences, resolve_citations
from .language import detect_language
from .llm import LLMClient, LLMError
from .prompting import (
    approx_tokens,
    build_answer_messages,
    build_condense_messages,
    is_refusal,
    refusal_sentence,
)
from .schema import Answer, Citation, ScoredPassage
from .settings import Settings
from .similarity import score, terms

log = logging.getLogger(__name__)

MODES = ("auto", "llm", "extractive")
MIN_SENTENCE_CHARS = 20  # headings and signatures are not answers
LIST_CHARS = 800  # a lead-in ending in ":" brings the list after it, up to this length
PROMPT_MARGIN_TOKENS = 64  # slack for chat-template tokens the estimate does not see
# A label some models put before the rewritten question.
_LABEL = re.compile(r"^(?:standalone question|question autonome|reformulated question|"
                    r"question reformulée|question)\s*:\s*", re.IGNORECASE)

NOTICES = {
    "extractive": {
        "fr": "Réponse extractive : aucun modèle de langue n'a été utilisé.",
        "en": "Extractive answer: no language model was used.",
    },
    "llm_failed": {
        "fr": "Modèle de langue indisponible ({reason}) ; réponse extractive affichée.",
        "en": "Language model unavailable ({reason}); showing an extractive answer.",
    },
    "inferred": {
        "fr": "Le modèle n'a cité aucun passage : "
              "les citations ont été attribuées automatiquement.",
        "en": "The model cited no passage: citations were attributed automatically.",
    },
    "uncited": {
        "fr": "Aucun passage ne confirme clairement cette réponse : "
              "vérifiez-la dans les sources.",
        "en": "No passage clearly supports this answer: check it against the sources.",
    },
    "dropped": {
        "fr": "Citations hors contexte retirées : {markers}.",
        "en": "Citations outside the context removed: {markers}.",
    },
    "truncated": {
        "fr": "Le premier passage a été coupé pour tenir dans le contexte du modèle.",
        "en": "The first passage was cut to fit the model's context.",
    },
    "no_passages": {
        "fr": "Aucun passage trouvé.",
        "en": "No passage found.",
    },
    "not_relevant": {
        "fr": "Aucun passage assez proche de la question n'a été trouvé.",
        "en": "No passage close enough to the question was found.",
    },
    "unknown_number": {
        "fr": "Les documents ne mentionnent jamais : {numbers}.",
        "en": "The documents never mention: {numbers}.",
    },
    "no_amount": {
        "fr": "Aucun des passages trouvés n'indique de montant.",
        "en": "None of the passages found states an amount of money.",
    },
}


def notice(key: str, lang: str, **fields: object) -> str:
    texts = NOTICES[key]
    return texts.get(lang, texts["en"]).format(**fields)


@dataclass(frozen=True)
class Token:
    """A piece of the answer text as the model writes it."""

    text: str


@dataclass(frozen=True)
class Done:
    """The final answer. Its text replaces the streamed tokens: markers are checked, and
    after a failure mid-stream it is the extractive answer."""

    answer: Answer


AnswerEvent = Token | Done


class Answerer:
    def __init__(self, settings: Settings, llm: LLMClient | None, embedder=None,
                 prompts_dir: str | Path | None = None) -> None:
        self.settings = settings
        self.llm = llm
        self.embedder = embedder
        self.prompts_dir = prompts_dir

    def answer(self, question: str, passages: list[ScoredPassage], *, mode: str | None = None,
               lang: str | None = None) -> Answer:
        for event in self.stream(question, passages, mode=mode, lang=lang):
            if isinstance(event, Done):
                return event.answer
        raise AssertionError("stream() ended without Done")  # pragma: no cover

    def stream(self, question: str, passages: list[ScoredPassage], *, mode: str | None = None,
               lang: str | None = None, llm_error: str = "") -> Iterator[AnswerEvent]:
        """``llm_error``: the endpoint already failed for this question (while condensing
        it): answer extractively with that reason instead of trying it again."""
        mode = mode or self.settings.answer.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        start = perf_counter()
        lang = lang or detect_language(question)
        context = passages[: self.settings.answer.context_passages]
        if not context:
            answer = self.abstain(question, lang, notice("no_passages", lang))
        elif mode == "extractive" or (mode == "auto" and not self._llm_configured()):
            answer = self.extractive(question, passages, lang, notice("extractive", lang))
        elif not self._llm_configured() or llm_error:
            reason = llm_error or "no endpoint configured"
            answer = self.extractive(question, passages, lang,
                                     notice("llm_failed", lang, reason=reason))
        else:
            try:
                answer = yield from self._generate(question, passages, lang)
            except Exception as exc:  # noqa: BLE001 - a chat must get an answer, not a trace
                log.exception("answer generation failed")
                answer = self._fallback(question, passages, lang,
                                        f"internal error: {type(exc).__name__}", {})
        answer.timings["total"] = perf_counter() - start
        yield Done(answer)

    def abstain(self, question: str, lang: str | None = None, reason: str = "",
                passages: list[ScoredPassage] | None = None) -> Answer:
        """The refusal sentence; ``reason`` becomes the notice."""
        lang = lang or detect_language(question)
        return Answer(question=question, text=refusal_sentence(lang, self.prompts_dir),
                      mode="abstained", passages=list(passages or []), notice=reason)

    def condense(self, question: str, history: list) -> str:
        """A follow-up rewritten as a standalone question (the question itself when there is
        no history, no LLM, or the rewrite fails)."""
        return self.condense_checked(question, history)[0]

    def condense_checked(self, question: str, history: list) -> tuple[str, str]:
        """(``condense``'s result, the one-line reason the endpoint failed or "")."""
        if not history or not self._llm_configured():
            return question, ""
        messages = build_condense_messages(question, history, prompts_dir=self.prompts_dir)
        try:
            text = "".join(self.llm.stream_chat(messages))
        except LLMError as exc:
            log.warning("condensing the question failed: %s", exc)
            return question, str(exc)
        first = next((line for line in text.splitlines() if line.strip()), "")
        rewritten = _LABEL.sub("", first.strip()).strip(" \"'«»“”")
        if not rewritten or len(rewritten) > 3 * len(question) + 300:
            return question, ""
        return rewritten, ""

    def extractive(self, question: str, passages: list[ScoredPassage], lang: str,
                   reason: str) -> Answer:
        """The sentences of the top passages closest to the question, each with its [n]
        (n = position in ``passages``), in document order within a passage."""
        start = perf_counter()
        context = passages[: self.settings.answer.context_passages]
        units = [((p, s), sentence) for p, sp in enumerate(context)
                 for s, sentence in enumerate(passage_sentences(sp.passage))]
        # Headings and signatures are not answers, unless there is nothing else.
        units = [u for u in units if len(u[1]) >= MIN_SENTENCE_CHARS] or units
        if not units:
            return self.abstain(question, lang, reason, passages)
        owners = [owner for owner, _ in units]
        sentences = [sentence for _, sentence in units]
        totals = score([question], sentences, self.embedder, lang).combined[0]
        # The retriever ranks passages better than word overlap ranks sentences: a sentence
        # of the n-th passage gets answer.rank_prior / n on top of its own score.
        prior = self.settings.answer.rank_prior
        totals = totals + [prior / (p + 1) for p, _ in owners]
        picked, seen = [], set()
        for j in sorted(range(len(sentences)), key=lambda j: -totals[j]):
            key = frozenset(terms(sentences[j])) or sentences[j]
            if key not in seen:
                seen.add(key)
                picked.append(j)
            if len(picked) == self.settings.answer.extractive_sentences:
                break
        by_passage: dict[int, list[int]] = {}
        for j in picked:  # passages in order of their best sentence
            by_passage.setdefault(owners[j][0], []).append(j)
        lines, citations, shown = [], [], set()
        for p, js in by_passage.items():
            citations.append(Citation(marker=p + 1, passage=context[p].passage,
                                      support=sentences[js[0]]))
            all_sentences = passage_sentences(context[p].passage)
            for s in sorted(owners[j][1] for j in js):
                if (p, s) in shown:  # already there as a list item
                    continue
                span = [s]
                if all_sentences[s].rstrip().endswith(":"):  # a lead-in needs its list
                    span = _with_list(all_sentences, s)
                shown.update((p, k) for k in span)
                lines.append("\n".join(all_sentences[k] for k in span) + f" [{p + 1}]")
        return Answer(question=question, text="\n".join(lines), mode="extractive",
                      citations=citations, passages=list(passages), notice=reason,
                      timings={"extractive": perf_counter() - start})

    # -- internals -----------------------------------------------------------------------
    def _llm_configured(self) -> bool:
        return self.llm is not None and self.llm.configured

    def _budget(self, question: str, lang: str) -> int:
        """Passage tokens: the configured budget, less than what the model's window leaves
        once the instructions, the question and the answer are counted."""
        empty, _ = build_answer_messages(question, [], lang, 0, prompts_dir=self.prompts_dir)
        overhead = sum(approx_tokens(m["content"]) for m in empty) + PROMPT_MARGIN_TOKENS
        llm = self.settings.llm
        room = llm.context_window - llm.max_tokens - overhead
        return max(1, min(self.settings.answer.context_budget_tokens, room))

    def _generate(self, question: str, passages: list[ScoredPassage],
                  lang: str) -> Iterator[AnswerEvent]:
        context = passages[: self.settings.answer.context_passages]
        messages, used = build_answer_messages(
            question, context, lang, self._budget(question, lang), prompts_dir=self.prompts_dir)
        timings: dict[str, float] = {}
        start = perf_counter()
        parts: list[str] = []
        try:
            for delta in self.llm.stream_chat(messages):
                if not parts:
                    timings["llm_first_token"] = perf_counter() - start
                parts.append(delta)
                yield Token(delta)
        except LLMError as exc:
            return self._fallback(question, passages, lang, str(exc), timings)
        timings["llm"] = perf_counter() - start
        text = "".join(parts).strip()
        if not text:
            return self._fallback(question, passages, lang, "empty reply", timings)
        if is_refusal(text, self.prompts_dir):
            answer = self.abstain(question, lang, passages=passages)
            answer.model, answer.timings = self.llm.model, timings
            return answer
        start = perf_counter()
        citations, dropped, cleaned = resolve_citations(text, used, self.embedder)
        timings["citations"] = perf_counter() - start
        notes = []
        if used and used[0].passage is not context[0].passage:
            notes.append(notice("truncated", lang))
        if dropped:
            notes.append(notice("dropped", lang, markers=", ".join(f"[{n}]" for n in dropped)))
        if not citations:
            notes.append(notice("uncited", lang))
        elif all(c.inferred for c in citations):
            notes.append(notice("inferred", lang))
        return Answer(question=question, text=cleaned, mode="generated", citations=citations,
                      passages=list(passages), notice=" ".join(notes), dropped_markers=dropped,
                      timings=timings, model=self.llm.model)

    def _fallback(self, question: str, passages: list[ScoredPassage], lang: str, reason: str,
                  timings: dict[str, float]) -> Answer:
        log.warning("language model failed, answering extractively: %s", reason)
        answer = self.extractive(question, passages, lang,
                                 notice("llm_failed", lang, reason=reason))
        answer.timings.update(timings)
        return answer


def _with_list(sentences: list[str], s: int) -> list[int]:
    """Sentence s and the ones after it (its list items), up to LIST_CHARS in all."""
    span, size = [s], len(sentences[s])
    for k in range(s + 1, len(sentences)):
        size += len(sentences[k])
        if size > LIST_CHARS:
            break
        span.append(k)
    return span
