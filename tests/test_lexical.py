"""French/English analysis, numbers, section filters and the derived lexical index."""

from __future__ import annotations

import numpy as np

from qa_app.lexical import (
    LexicalIndex, analyze, build_index, fold, index_terms, numbers, section_matches,
    unknown_numbers,
)
from qa_app.schema import Passage, passage_id


def make(text: str, source: str = "a.txt", position: int = 0, section: str = "",
         title: str = "Déclaration") -> Passage:
    return Passage(id=passage_id(source, position), source=source, title=title,
                   section=section, para_no="", text=text, start=0, end=len(text),
                   position=position)


# -- analysis ----------------------------------------------------------------------------
def test_elisions_are_stripped_with_either_apostrophe():
    tokens = analyze("L'Acte d’Almaty, qu'il cite jusqu'à l’ONU, s'applique")
    assert {"acte", "almaty", "onu"} <= set(tokens)
    assert not {"l", "d", "qu", "jusqu", "s"} & set(tokens)
    assert analyze("l’adhésion") == analyze("l'adhésion") == analyze("adhésion")


def test_accents_are_folded_and_unaccented_typing_still_matches():
    assert fold("Sécurité énergétique À") == "securite energetique a"
    accented = set(analyze("sécurité énergétique Thaïlande"))
    for plain in ("securite", "energetique", "Thailande"):
        assert set(analyze(plain)) & accented, plain
    assert "thailand" in accented


def test_french_stemming_joins_inflections():
    assert analyze("déclarations") == analyze("déclaration")
    assert analyze("coopération")[0] == analyze("coopérer")[0]
    assert analyze("terroristes")[0] == analyze("terroriste")[0]


def test_stop_words_of_both_languages_are_dropped():
    assert analyze("le la les de des du et que qui dans pour") == []
    assert analyze("the of and what is which were does", "en") == []
    assert analyze("Quel est le rôle de la CICA ?") == ["rol", "cica"]


def test_english_stemming_meets_french_stems():
    fr = set(analyze("la sécurité et le terrorisme, une déclaration", "fr"))
    en = set(analyze("security and terrorism, a declaration", "en"))
    assert {"secur", "terror", "declar"} <= fr & en
    assert analyze("members", "en") == ["member"]  # the English stemmer, not the French one


def test_acronyms_and_numbers_are_not_stemmed():
    assert analyze("CICA", "fr") == analyze("CICA", "en") == ["cica"]
    assert analyze("CIMCA ONU 2006 A/62/190") == ["cimca", "onu", "2006", "62", "190"]


def test_cognate_keys_cross_languages():
    fr, en = set(index_terms("la mondialisation, la globalisation")), set(
        index_terms("globalization", "en"))
    assert "~globa" in fr & en
    assert "~mondi" in fr and "~mondi" not in en
    assert not any(t.startswith("~") for t in index_terms("ONU 2006 paix"))


# -- numbers -----------------------------------------------------------------------------
def test_numbers_in_digits_and_words():
    found = numbers("le 5 octobre 2006, la cinquième réunion, the fifth meeting, 3e session, "
                    "60th session, quatre ans, un pays, A/62/190")
    assert {(5, False), (2006, False), (5, True), (3, True), (60, True), (4, False)} <= found
    assert (1, False) not in found  # "un" is an article
    assert (62, False) not in found and (190, False) not in found  # document symbols


def test_compound_ordinal_is_one_number():
    assert numbers("le vingt-cinquième anniversaire") == {(25, True)}
    assert numbers("la soixante-douzième session") == {(72, True)}


def test_unknown_numbers():
    corpus = numbers("Le vingt-cinquième anniversaire, le 5 octobre 2006, la deuxième réunion.")
    assert unknown_numbers("Quel pays présidait la CICA en 2014 ?", corpus) == [2014]
    assert unknown_numbers("Qui a accueilli la cinquième réunion ?", corpus) == [5]  # 25th, not 5th
    assert unknown_numbers("What happened at the fifth meeting?", corpus) == [5]
    assert unknown_numbers("Que s'est-il passé le 5 octobre 2006 ?", corpus) == []
    assert unknown_numbers("La deuxième réunion, the second meeting?", corpus) == []
    assert unknown_numbers("Quel est le rôle de la CICA ?", corpus) == []


# -- sections ------------------------------------------------------------------------------
def test_section_matches_path_and_parents():
    assert section_matches("Annexe > II. Coopération", ["Annexe"])
    assert section_matches("Annexe > II. Coopération", ["annexe > ii. cooperation"])
    assert not section_matches("Annexe > II. Coopération", ["Annexe > I"])
    assert not section_matches("Annexes", ["Annexe"])
    assert not section_matches("", ["Annexe"])
    assert not section_matches("Annexe", [""])


# -- the index -----------------------------------------------------------------------------
PASSAGES = [
    make("Nous condamnons le terrorisme sous toutes ses formes.", "a.txt", 0, "Annexe > I"),
    make("La sécurité énergétique est une priorité.", "a.txt", 1, "Annexe > II"),
    make("La Thaïlande a adhéré à la Conférence en 2004.", "b.txt", 0, "Lettre"),
    make("Le tourisme fera renaître la Route de la soie.", "b.txt", 1, "Annexe"),
]


class FakeLatent:
    """Latent terms = hashed folded words; counts what it encodes."""

    encoder_id = "fake-latent"

    def __init__(self):
        self.encoded = []

    def encode(self, text, top_k, query=False):
        self.encoded.append(text)
        feats = sorted({hash(w) % 997 for w in analyze(text)})
        return np.array(feats, np.int32), np.ones(len(feats), np.float32)


class FakeEmbedder:
    def __init__(self):
        self.latent = FakeLatent()

    def latent_encoder(self):
        return self.latent


def test_search_ranks_and_filters():
    index = LexicalIndex(PASSAGES, generation=7)
    assert index.language == "fr" and len(index) == 4
    assert index.search("terrorisme", 5)[0][0] == "a.txt#0000"
    assert index.search("energetique", 5)[0][0] == "a.txt#0001"  # typed without accents
    assert index.search("When did Thailand join?", 5, lang="en")[0][0] == "b.txt#0000"
    assert index.search("terrorisme", 5, sources=["b.txt"]) == []
    assert [pid for pid, _ in index.search("annexe", 5, sections=["Annexe"])] != []
    assert {pid for pid, _ in index.search("annexe", 5, sections=["Annexe > II"])} == {
        "a.txt#0001"}
    assert index.search("le la les", 5) == []
    assert (2004, False) in index.numbers


def test_cache_round_trip_and_version(tmp_path):
    path = tmp_path / "lexical.pkl"
    LexicalIndex(PASSAGES, generation=3).save(path)
    loaded = LexicalIndex.load(path)
    assert loaded.generation == 3 and loaded.search("tourisme", 1)[0][0] == "b.txt#0001"
    loaded.version = -1
    loaded.save(path)
    assert LexicalIndex.load(path) is None  # an index built by other analysis is rebuilt
    path.write_bytes(b"not a pickle")
    assert LexicalIndex.load(path) is None


def test_build_index_encodes_only_new_passages(tmp_path):
    path = tmp_path / "lexical.pkl"
    emb = FakeEmbedder()
    first = build_index(PASSAGES[:3], 1, emb, path)
    assert first.latent is not None and len(emb.latent.encoded) == 3
    emb.latent.encoded.clear()
    steps = []
    second = build_index(PASSAGES, 2, emb, path, progress=lambda i, n: steps.append((i, n)))
    assert emb.latent.encoded == [PASSAGES[3].embedding_text()]  # the other three reused
    assert steps == [(1, 1)]
    assert LexicalIndex.load(path).generation == 2
    q = emb.latent.encode("le tourisme et la soie", 256)
    scores = second.latent.scores(q)
    assert int(np.argmax(scores)) == 3
    cos = second.latent.cosines(q, scores)
    assert 0 < cos[3] <= 1.0 and cos[0] == 0.0


def test_latent_scores_are_dot_products():
    from qa_app.latent import LatentMatrix

    m = LatentMatrix([(np.array([1, 5], np.int32), np.array([1.0, 2.0], np.float32)),
                      (np.array([5, 7], np.int32), np.array([3.0, 1.0], np.float32)),
                      (np.array([], np.int32), np.array([], np.float32))], ["a", "b", "c"], "x")
    q = (np.array([5, 7, 9], np.int32), np.array([1.0, 10.0, 1.0], np.float32))
    assert m.scores(q).tolist() == [2.0, 13.0, 0.0]
    assert m.scores((np.array([], np.int32), np.array([], np.float32))).tolist() == [0, 0, 0]


def test_compound_cardinals_multiply():
    assert numbers("quatre-vingt-dix") == {(90, False)}
    assert numbers("deux cents") == {(200, False)}
    assert numbers("mille neuf cent quatre-vingt-douze") == {(1992, False)}
    assert numbers("two hundred and five") == {(205, False)}


def test_scores_equal_bm25s_own():
    """The sparse-matrix scoring gives bm25s's scores (repeated question words count twice)."""
    import bm25s

    from qa_app.lexical import index_terms

    index = LexicalIndex(PASSAGES)
    ref = bm25s.BM25()
    ref.index([index_terms(p.embedding_text(), "fr") for p in PASSAGES], show_progress=False)
    for q in ("tourisme et route de la soie", "sécurité sécurité énergétique", "xyzzy"):
        tokens = index_terms(q, "fr")
        known = [t for t in tokens if t in ref.vocab_dict]
        want = ref.get_scores(known) if known else np.zeros(len(PASSAGES))
        assert np.allclose(index.scores(q, "fr"), want, atol=1e-5)
