"""Markers: parsing, range checks, supporting sentences, inferred attribution; sentences."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qa_app.citations import parse_markers, passage_sentences, resolve_citations, split_sentences
from tests.passages import CICA_DAY, ENERGY, LETTER, TERRORISM, make_passage, scored

TITLE = ("Lettre datée du 3 octobre 2007, adressée au Secrétaire général par la Représentante "
         "permanente du Kazakhstan auprès de l’Organisation des Nations Unies")
BODY = ("D’ordre de mon gouvernement, j’ai l’honneur de demander que soit inscrite une question "
        "additionnelle. Un mémoire explicatif est joint.")


def numbers(text: str) -> list[int]:
    return [n for n, _, _ in parse_markers(text)]


def test_parse_marker_forms():
    assert numbers("a [1] b") == [1]
    assert numbers("a [1, 3] b [1,2,3]") == [1, 3, 1, 2, 3]
    assert numbers("[2-4] and [2–4]") == [2, 3, 4, 2, 3, 4]
    assert numbers("[Passage 2] [source 1; 3]") == [2, 1, 3]


def test_parse_ignores_non_markers():
    assert numbers("[Original : anglais] en [2006], voir [a] et [ ]") == []


def test_parse_spans_cover_the_group():
    text = "Oui [1, 3]."
    assert parse_markers(text) == [(1, 4, 10), (3, 4, 10)]
    assert text[4:10] == "[1, 3]"


def test_split_sentences_french_abbreviations_and_numbers():
    text = ("L'idée est venue du Président, S.E. M. Noursoultan Nazarbayev, le 5 octobre 1992. "
            "Voir art. 3 et p. 12 du texte. (Signé) Yerzhan Kh. Kazykhanov et Madina B. "
            "Jarbussynova ont signé. Fin !")
    assert split_sentences(text) == [
        "L'idée est venue du Président, S.E. M. Noursoultan Nazarbayev, le 5 octobre 1992.",
        "Voir art. 3 et p. 12 du texte.",
        "(Signé) Yerzhan Kh. Kazykhanov et Madina B. Jarbussynova ont signé.",
        "Fin !",
    ]


def test_split_sentences_paragraph_number_markers_and_lists():
    assert split_sentences(CICA_DAY) == [CICA_DAY]  # "23." does not end a sentence
    assert split_sentences("C'est prioritaire. [1] Le 5 octobre est la Journée [2].") == [
        "C'est prioritaire. [1]", "Le 5 octobre est la Journée [2]."]
    assert split_sentences("Rubriques suivantes :\n1. Économie;\n2. Environnement.") == [
        "Rubriques suivantes :", "1. Économie;", "2. Environnement."]


def test_a_heading_line_is_a_sentence_of_its_own():
    passage = replace(make_passage(f"{TITLE}\n{BODY}"), section=f"Lettres > {TITLE}")
    assert split_sentences(passage.text)[0] == f"{TITLE}\n{BODY.split('. ')[0]}."
    assert passage_sentences(passage) == [TITLE, BODY.split(". ")[0] + ".",
                                          "Un mémoire explicatif est joint."]
    # a heading cut short in the section path (…) is still recognised
    cut = replace(passage, section=TITLE[:60] + "…")
    assert passage_sentences(cut)[0] == TITLE
    # no heading, or a first line that is not the heading: the sentences as they are
    for other in (replace(passage, section=""), replace(passage, section="Annexe")):
        assert passage_sentences(other) == split_sentences(other.text)
    assert all(s in passage.text for s in passage_sentences(passage))


def test_valid_markers_get_the_supporting_sentence():
    used = scored(ENERGY, CICA_DAY)
    answer = ("La sécurité de l'approvisionnement en énergie est une question prioritaire [1]. "
              "Le 5 octobre est la Journée du CICA [2].")
    citations, dropped, cleaned = resolve_citations(answer, used)
    assert dropped == [] and cleaned == answer
    assert [c.marker for c in citations] == [1, 2]
    assert citations[0].passage is used[0].passage
    assert citations[0].support.startswith("11. Nous considérons que la sécurité")
    assert citations[1].support == CICA_DAY
    assert not any(c.inferred for c in citations)


def test_support_picks_the_matching_sentence_not_the_first():
    used = scored(TERRORISM)
    citations, _, _ = resolve_citations(
        "La menace terroriste n'a cessé de croître depuis 10 ans [1].", used)
    assert citations[0].support == (
        "La menace que fait peser le terrorisme n'a cessé de croître au cours des 10 dernières "
        "années.")


def test_out_of_range_markers_are_dropped_and_reported():
    used = scored(ENERGY, CICA_DAY)
    citations, dropped, cleaned = resolve_citations(
        "Réponse : l'énergie est prioritaire [1, 7]. Le 5 octobre est la Journée du CICA [9] !",
        used)
    assert dropped == [7, 9]
    assert cleaned == ("Réponse : l'énergie est prioritaire [1]. "
                       "Le 5 octobre est la Journée du CICA !")
    assert [c.marker for c in citations] == [1]


def test_ranges_are_expanded_and_normalised():
    used = scored(ENERGY, CICA_DAY, TERRORISM)
    citations, _, cleaned = resolve_citations("Plusieurs sujets [1-3].", used)
    assert cleaned == "Plusieurs sujets [1][2][3]."
    assert [c.marker for c in citations] == [1, 2, 3]


def test_no_markers_inferred_by_overlap():
    used = scored(LETTER, ENERGY, CICA_DAY)
    answer = ("Les dirigeants ont décidé de faire du 5 octobre la Journée du CICA. "
              "La sécurité de l'approvisionnement en énergie figure parmi les questions "
              "prioritaires de l'ordre du jour international. Bonne journée à vous.")
    citations, dropped, cleaned = resolve_citations(answer, used)
    assert dropped == []
    assert cleaned == (
        "Les dirigeants ont décidé de faire du 5 octobre la Journée du CICA [3]. "
        "La sécurité de l'approvisionnement en énergie figure parmi les questions "
        "prioritaires de l'ordre du jour international [2]. Bonne journée à vous.")
    assert [(c.marker, c.inferred) for c in citations] == [(3, True), (2, True)]
    assert citations[1].support.startswith("11. Nous considérons")


def test_only_invalid_markers_fall_back_to_inference():
    used = scored(ENERGY)
    citations, dropped, cleaned = resolve_citations(
        "La sécurité de l'approvisionnement en énergie est prioritaire [4].", used)
    assert dropped == [4]
    assert cleaned.endswith("prioritaire [1].")
    assert citations[0].inferred


class KeywordEmbed:
    """A toy embedder: one dimension per keyword group, so similarity is known exactly."""

    GROUPS = (("globalization", "mondialisation"), ("terror",), ("october", "octobre"))

    def _embed(self, texts):
        rows = [[1.0 if any(k in t.lower() for k in g) else 0.0 for g in self.GROUPS] + [0.1]
                for t in texts]
        v = np.asarray(rows, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    embed_queries = embed_passages = _embed


def test_embeddings_attribute_across_languages():
    globalisation = "Nous considérons la mondialisation comme un défi pour notre temps."
    used = scored(ENERGY, LETTER, globalisation, TERRORISM)
    answer = "The Act describes globalization as a challenge of our time."
    no_embed, _, _ = resolve_citations(answer, used)
    assert no_embed == []  # English words do not overlap the French text enough
    citations, _, cleaned = resolve_citations(answer, used, embed=KeywordEmbed())
    assert cleaned == "The Act describes globalization as a challenge of our time [3]."
    assert citations[0].support == globalisation and citations[0].inferred
