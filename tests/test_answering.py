"""Answerer end to end against the fake OpenAI server: generated, inferred, abstained,
dropped markers, LLM failures, extractive answers, condensing."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from qa_app.answering import Answerer, Done, Token
from qa_app.llm import LLMClient
from qa_app.prompting import refusal_sentence
from qa_app.settings import AnswerSettings, LLMSettings, Settings
from tests.llm_server import FakeOpenAIServer
from tests.passages import CICA_DAY, ENERGY, LETTER, TERRORISM, scored

QUESTION = "Que décident les dirigeants au paragraphe 23 de la déclaration ?"
TERROR_Q = ("Selon l'Acte d'Almaty, sur quelle période la menace du terrorisme n'a-t-elle "
            "cessé de croître ?")
TERROR_SENTENCE = ("La menace que fait peser le terrorisme n'a cessé de croître au cours des 10 "
                   "dernières années.")


def make_answerer(url: str = "", **llm) -> Answerer:
    values = {"connect_timeout": 1.0, "read_timeout": 2.0, "retries": 1, **llm}
    llm_settings = LLMSettings(base_url=url, model="fake-model", **values)
    settings = Settings(llm=llm_settings, answer=AnswerSettings(extractive_sentences=2))
    return Answerer(settings, LLMClient(llm_settings) if url else None)


def run(answerer: Answerer, question: str, passages, **kw) -> tuple[str, object]:
    events = list(answerer.stream(question, passages, **kw))
    assert isinstance(events[-1], Done) and sum(isinstance(e, Done) for e in events) == 1
    streamed = "".join(e.text for e in events if isinstance(e, Token))
    return streamed, events[-1].answer


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_generated_answer_with_markers_is_streamed_and_grounded():
    reply = "Les dirigeants décident de faire du 5 octobre la Journée du CICA [1]."
    with FakeOpenAIServer(reply) as server:
        streamed, answer = run(make_answerer(server.url), QUESTION, scored(CICA_DAY, ENERGY))
        prompt = server.requests[0]["messages"][1]["content"]
    assert streamed == reply
    assert answer.mode == "generated" and answer.text == reply
    assert answer.model == "fake-model" and answer.notice == ""
    assert [(c.marker, c.inferred) for c in answer.citations] == [(1, False)]
    assert answer.citations[0].support == CICA_DAY
    assert len(answer.passages) == 2
    assert {"llm_first_token", "llm", "citations", "total"} <= set(answer.timings)
    assert CICA_DAY in prompt and ENERGY in prompt and QUESTION in prompt


def test_only_context_passages_go_to_the_model():
    with FakeOpenAIServer("Réponse [1].") as server:
        answerer = make_answerer(server.url)
        answerer.settings.answer.context_passages = 1
        run(answerer, QUESTION, scored(CICA_DAY, ENERGY))
        prompt = server.requests[0]["messages"][1]["content"]
    assert CICA_DAY in prompt and ENERGY not in prompt


def test_model_without_markers_gets_inferred_citations():
    reply = ("La sécurité de l'approvisionnement en énergie est l'une des questions "
             "prioritaires de l'ordre du jour international.")
    with FakeOpenAIServer(reply) as server:
        _, answer = run(make_answerer(server.url),
                        "Quelle question énergétique est prioritaire ?", scored(LETTER, ENERGY))
    assert answer.mode == "generated"
    assert answer.text == reply[:-1] + " [2]."
    assert [(c.marker, c.inferred) for c in answer.citations] == [(2, True)]
    assert "attribuées automatiquement" in answer.notice


def test_model_refusal_becomes_abstained():
    with FakeOpenAIServer(refusal_sentence("fr")) as server:
        _, answer = run(make_answerer(server.url), "Combien a coûté le Sommet ?",
                        scored(CICA_DAY, ENERGY))
    assert answer.mode == "abstained" and answer.abstained
    assert answer.text == refusal_sentence("fr") and answer.citations == []


def test_english_refusal_with_loose_punctuation():
    with FakeOpenAIServer("the provided documents do not contain the answer to this question") \
            as server:
        _, answer = run(make_answerer(server.url), "What did the summit cost?", scored(ENERGY))
    assert answer.mode == "abstained" and answer.text == refusal_sentence("en")


def test_out_of_range_marker_is_dropped_and_reported():
    reply = "Le 5 octobre devient la Journée du CICA [1][4]."
    with FakeOpenAIServer(reply) as server:
        _, answer = run(make_answerer(server.url), QUESTION, scored(CICA_DAY, ENERGY))
    assert answer.text == "Le 5 octobre devient la Journée du CICA [1]."
    assert answer.dropped_markers == [4]
    assert [c.marker for c in answer.citations] == [1]
    assert "[4]" in answer.notice


def test_llm_down_gives_extractive_answer_with_reason():
    start = time.monotonic()
    _, answer = run(make_answerer(f"http://127.0.0.1:{closed_port()}/v1"), TERROR_Q,
                    scored(LETTER, ENERGY, TERRORISM))
    assert time.monotonic() - start < 5
    assert answer.mode == "extractive"
    assert answer.notice.startswith("Modèle de langue indisponible (cannot connect to 127.0.0.1")
    assert answer.notice.endswith("réponse extractive affichée.")
    assert f"{TERROR_SENTENCE} [3]" in answer.text


@pytest.mark.parametrize("mode", ["error500", "cut", "badjson", "slow"])
def test_llm_failures_never_raise(mode):
    reply = "Les dirigeants décident de faire du 5 octobre la Journée du CICA [1]."
    with FakeOpenAIServer(reply, mode=mode, delay=3.0) as server:
        start = time.monotonic()
        _, answer = run(make_answerer(server.url, read_timeout=0.5), QUESTION,
                        scored(CICA_DAY, ENERGY))
    assert time.monotonic() - start < 3
    assert answer.mode == "extractive" and "Modèle de langue indisponible" in answer.notice
    assert f"{CICA_DAY} [1]" in answer.text.splitlines()


def test_extractive_contains_the_answering_sentence():
    passages = scored(LETTER, ENERGY, TERRORISM)
    answer = make_answerer().answer(TERROR_Q, passages, mode="extractive")
    assert answer.mode == "extractive"
    assert answer.notice == "Réponse extractive : aucun modèle de langue n'a été utilisé."
    assert f"{TERROR_SENTENCE} [3]" in answer.text.splitlines()
    cited = {c.marker: c for c in answer.citations}
    assert cited[3].passage is passages[2].passage and cited[3].support == TERROR_SENTENCE
    assert len(answer.text.splitlines()) <= 2
    assert "extractive" in answer.timings


def test_extractive_cites_every_passage_it_quotes():
    passages = scored(CICA_DAY, TERRORISM)
    answer = make_answerer().answer("Journée du CICA et terrorisme : que décident-ils ?",
                                    passages, mode="extractive")
    assert [c.marker for c in answer.citations] == [1, 2]
    assert f"{CICA_DAY} [1]" in answer.text.splitlines()
    assert all(f"[{c.marker}]" in answer.text for c in answer.citations)


def test_extractive_keeps_document_order_and_deduplicates():
    duplicate = scored(ENERGY, ENERGY)
    answer = make_answerer().answer("Pourquoi la sécurité énergétique est-elle essentielle ?",
                                    duplicate, mode="extractive", lang="en")
    lines = answer.text.splitlines()
    assert len(lines) == len(set(line.rsplit(" [", 1)[0] for line in lines))
    first = [line.removesuffix(" [1]") for line in lines if line.endswith("[1]")]
    assert len(first) == 2
    assert first == sorted(first, key=ENERGY.index)  # document order within a passage
    assert answer.notice == "Extractive answer: no language model was used."


def test_extractive_prefers_the_retrievers_top_passage():
    # Word overlap alone prefers the second passage's sentence (0.57 vs 0.43); the rank
    # prior (answer.rank_prior) lets the retriever's first choice win.
    question = "Quelle journée commémore la sécurité énergétique ?"
    answerer = make_answerer()
    answerer.settings.answer.extractive_sentences = 1
    passages = scored(ENERGY, CICA_DAY)
    assert answerer.settings.answer.rank_prior == 1.0
    assert [c.marker for c in answerer.answer(question, passages).citations] == [1]
    answerer.settings.answer.rank_prior = 0.0
    assert [c.marker for c in answerer.answer(question, passages).citations] == [2]


def test_extractive_lead_in_brings_its_list():
    text = ("Les États membres ont examiné les mesures de confiance dans le cadre des rubriques "
            "suivantes :\n1. Économie;\n2. Environnement;\n3. Action humanitaire.")
    answer = make_answerer().answer("Sous quelles rubriques les mesures de confiance "
                                    "ont-elles été examinées ?", scored(text, LETTER))
    expected = "suivantes :\n1. Économie;\n2. Environnement;\n3. Action humanitaire. [1]"
    assert expected in answer.text


def test_no_llm_auto_mode_is_extractive_and_llm_mode_says_why():
    answerer = make_answerer()
    assert answerer.answer(QUESTION, scored(CICA_DAY)).mode == "extractive"
    forced = answerer.answer(QUESTION, scored(CICA_DAY), mode="llm")
    assert forced.mode == "extractive" and "no endpoint configured" in forced.notice


def test_no_passages_abstains_and_abstain_helper():
    answer = make_answerer().answer("What is CICA Day?", [])
    assert answer.mode == "abstained" and answer.text == refusal_sentence("en")
    assert answer.notice == "No passage found."
    explicit = make_answerer().abstain("Qui ?", "fr", "rien de pertinent")
    assert explicit.text == refusal_sentence("fr") and explicit.notice == "rien de pertinent"


def test_condense_uses_the_llm_and_falls_back_to_the_question():
    history = [("Qu'est-ce que l'Acte d'Almaty ?", "Un document signé en 2002 [1].")]
    with FakeOpenAIServer("Question autonome : Qui a signé l'Acte d'Almaty ?") as server:
        assert make_answerer(server.url).condense("Qui l'a signé ?", history) == \
            "Qui a signé l'Acte d'Almaty ?"
        assert make_answerer(server.url).condense("Qui l'a signé ?", []) == "Qui l'a signé ?"
    assert make_answerer().condense("Qui l'a signé ?", history) == "Qui l'a signé ?"
    down = make_answerer(f"http://127.0.0.1:{closed_port()}/v1")
    assert down.condense("Qui l'a signé ?", history) == "Qui l'a signé ?"


def test_sentence_vectors_are_remembered_and_batched():
    from qa_app.similarity import SentenceVectors

    class Counting:
        def __init__(self):
            self.calls = []

        def embed_queries(self, texts):
            self.calls.append(("q", list(texts)))
            return np.array([[len(t), 1.0] for t in texts], np.float32)

        def embed_passages(self, texts):
            self.calls.append(("p", list(texts)))
            return np.array([[len(t), 2.0] for t in texts], np.float32)

    inner = Counting()
    vecs = SentenceVectors(inner, max_items=3)
    assert vecs.embed_passages(["a", "bb", "a"]).tolist() == [[1, 2], [2, 2], [1, 2]]
    assert inner.calls == [("p", ["a", "bb"])]  # one call, each text once
    vecs.embed_passages(["bb", "ccc"])
    assert inner.calls[-1] == ("p", ["ccc"])  # "bb" remembered
    assert vecs.embed_queries(["a"]).tolist() == [[1, 1]]  # queries apart from passages
    vecs.embed_passages(["a"])  # evicted (max 3 items): computed again
    assert inner.calls[-1] == ("p", ["a"])
