"""Paragraph chunker, against the real seeds and small synthetic documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.chunking import chunk_document, default_count_tokens, derive_title
from ingest.loaders import LoadedDocument, load_document
from qa_app.schema import Passage, passage_id

SEEDS = Path(__file__).resolve().parents[1] / "seeds"
SEED_FILES = sorted(SEEDS.glob("*.txt"))


def seed(prefix: str) -> LoadedDocument:
    return load_document(next(SEEDS.glob(prefix + "_*.txt")))


_CACHE: dict[tuple, list[Passage]] = {}


def chunks(prefix: str, **kw) -> list[Passage]:
    key = (prefix, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = chunk_document(seed(prefix), **kw)
    return _CACHE[key]


def doc(text: str, source: str = "synthetic.txt") -> LoadedDocument:
    return LoadedDocument(source=source, text=text, pages=[], kind="txt")


def _compact(s: str) -> str:
    return re.sub(r"[\s*#]", "", s)


def assert_span_ok(d: LoadedDocument, p: Passage) -> None:
    """doc.text[start:end] holds the passage's words in order (whitespace/markdown aside)."""
    assert 0 <= p.start < p.end <= len(d.text), p
    src = _compact(d.text[p.start : p.end])
    cursor = 0
    for w in p.text.split():
        w = _compact(w)
        k = src.find(w, cursor)
        assert k >= 0, f"{p.id}: {w!r} not found in order in its span"
        cursor = k + len(w)
    # the span starts and ends on the passage's own first and last characters
    assert _compact(p.text)[:1] == src[:1] and _compact(p.text)[-1:] == src[-1:], p.id


# --------------------------------------------------------------------------- seeds: paragraphs


@pytest.mark.parametrize("prefix, last", [("001", 25), ("002", 35)])
def test_numbered_paragraphs_are_own_passages_in_order(prefix, last):
    ps = chunks(prefix)
    heads = [p for p in ps if re.match(r"\d+\. ", p.text)]
    numbers = [int(p.text.split(".")[0]) for p in heads]
    assert numbers == list(range(1, last + 1))
    for p in heads:
        n = p.text.split(".")[0]
        assert p.para_no == n, (p.para_no, p.text[:40])
    # never two numbered paragraphs in one passage
    for p in ps:
        assert len(re.findall(r"(?m)^\d{1,2}\. [A-ZÀ-Ý]", p.text)) <= 1, p.text[:80]
    # and no paragraph number is lost inside another passage's text
    body = " ".join(p.text for p in ps if p not in heads)
    assert not re.search(r"(?:^|\n)\s*\d{1,2}\. Nous", body)


def test_paragraph_numbers_as_printed_and_continuations():
    ps = chunks("001")
    p23 = next(p for p in ps if p.text.startswith("23."))
    assert p23.para_no == "23" and p23.section == "Annexe > IV"
    assert "la quarante-septième session" in p23.text  # the wrapped line with a stray indent
    # the unnumbered paragraphs that follow "4." belong to paragraph 4 (UN numbering)
    p = next(p for p in ps if p.text.startswith("Le terrorisme ne peut ni ne doit"))
    assert p.para_no == "4"
    # a paragraph whose blank line was lost at a page break is still its own passage
    p = next(p for p in ps if p.text.startswith("Nous notons qu’en cette ère de mondialisation"))
    assert "Alliance des civilisations" not in p.text and p.para_no == "13"


def test_reflow_joins_wrapped_lines():
    ps = chunks("001")
    p1 = next(p for p in ps if p.text.startswith("1. "))
    assert "\n" not in p1.text and "  " not in p1.text
    assert "pour faire de la Conférence un forum de dialogue politique" in p1.text


def test_paragraph_cut_by_a_page_break_is_glued_back():
    ps = chunks("002")
    p15 = next(p for p in ps if p.text.startswith("15. "))
    assert "conformément à la Charte des Nations Unies et au droit international); les ingérences" in p15.text
    assert not any(p.text.startswith(("au droit international", "le règlement des différends")) for p in ps)


def test_long_paragraph_split_keeps_number_and_section():
    ps = chunks("002")
    pieces = [p for p in ps if p.para_no == "16"]
    assert len(pieces) >= 2 and pieces[0].text.startswith("16. ")
    assert len({p.section for p in pieces}) == 1
    assert all(default_count_tokens(p.text) <= 256 for p in pieces)
    assert all(p.text.rstrip()[-1] in ".;:!?" for p in pieces)  # cut at sentence ends


# --------------------------------------------------------------------------- seeds: structure


def test_headings_become_sections_not_passages():
    p12 = next(p for p in chunks("002") if p.text.startswith("12. "))
    assert p12.section == "Annexe > II. Risques d'atteinte à la sécurité"
    p29 = next(p for p in chunks("002") if p.text.startswith("29. "))
    assert p29.section == "Annexe > IV. Structure et institutions de la CICA > 1. Réunions ordinaires"
    p33 = next(p for p in chunks("002") if p.text.startswith("33. "))
    assert p33.section.endswith("> 2. Réunions spécialisées")  # sibling replaces sibling
    pre = next(p for p in chunks("002") if p.text.startswith("Réunis à Almaty"))
    assert pre.section == "Annexe > Préambule"
    p7 = next(p for p in chunks("003") if p.text.startswith("7. Nous sommes déterminés"))
    assert p7.section == "Annexe > II"
    eco = next(p for p in chunks("004") if p.text.startswith("1. Coopération en vue de promouvoir"))
    assert eco.section == "Pièce jointe > Domaines de coopération prioritaires > Économie"
    env = next(p for p in chunks("004") if p.text.startswith("1. Échange d’informations sur les meilleures"))
    assert env.section.endswith("> Environnement")
    memo = next(p for p in chunks("004") if p.text.startswith("9. Nous estimons"))
    assert memo.section == "Annexe I > Mémoire explicatif"  # a new annex resets the path
    heading_texts = {"I", "II", "IV", "Annexe", "Annexe I", "Préambule", "Acte d'Almaty", "Mémoire explicatif",
                     "Économie", "Introduction", "Pièce jointe"}
    for prefix in ("001", "002", "003", "004"):
        for p in chunks(prefix):
            assert p.text.strip() not in heading_texts


@pytest.mark.parametrize("prefix", ["001", "002", "003", "004"])
def test_no_markdown_or_artefacts_in_text(prefix):
    for p in chunks(prefix):
        assert "**" not in p.text and "*Signé*" not in p.text
        assert not re.search(r"(?m)^#", p.text)
        assert p.text == p.text.strip() and p.text


def test_list_stays_with_its_lead_in():
    ps = chunks("004")
    p = next(p for p in ps if "rubriques suivantes :" in p.text)
    assert p.text.endswith("4. Nouveaux défis et nouvelles menaces.")
    assert "1. Économie;\n2. Environnement;\n3. Action humanitaire;" in p.text
    lead = next(p for p in ps if "Les modalités en sont les suivantes :" in p.text)
    assert "a) D’une part" in lead.text
    # over the cap, the list is cut between items, before the nested lead-in "b) … :"
    nxt = ps[lead.position + 1]
    assert nxt.text.startswith("b) D’autre part :")
    assert "– Les documents de travail seront examinés" in nxt.text
    assert nxt.section == lead.section


def test_table_rows_stay_together():
    ps = chunks("004")
    t = next(p for p in ps if p.text.startswith("État Membre Mesures de confiance spécifiques"))
    # the long heading over the table is a passage of its own: searchable and citable
    caption = ps[t.position - 1]
    assert caption.text.startswith("Liste des États membres qui se sont proposés comme pays")
    assert caption.text.endswith("dans des domaines tels que l’économie, l’environnement, "
                                 "l’action humanitaire et les nouveaux défis et nouvelles menaces")
    assert "Turquie Nouveaux défis et nouvelles menaces" in t.text and "Kazakhstan À déterminer" in t.text
    assert t.section.startswith("Pièce jointe > Liste des États membres")


def test_signatures_are_their_own_passage():
    p = next(p for p in chunks("001") if "(Signé)" in p.text)
    assert p.text == ("Le Représentant permanent du Kazakhstan auprès de l’Organisation des Nations Unies\n"
                      "(Signé) Yerzhan Kh. Kazykhanov")
    p = next(p for p in chunks("002") if "(Signé)" in p.text)
    assert p.text.endswith("(Signé) Madina B. Jarbussynova") and p.text.startswith("La Représentante permanente")
    sigs = [p for p in chunks("003") if "(Signé)" in p.text]
    assert [s.text.split("(Signé) ")[1] for s in sigs] == ["Wu Haitao", "Kairat Umarov"]
    sigs = [p for p in chunks("004") if "(Signé)" in p.text]
    assert len(sigs) == 2
    assert sigs[1].text.startswith("Le Ministre des affaires étrangères de la République du Kazakhstan")


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ("001", "Déclaration adoptée à l’issue du deuxième Sommet de la Conférence pour l’interaction"),
        ("002", "Acte d'Almaty"),
        ("003", "Déclaration des ministres des affaires étrangères des États membres de la Conférence"),
        ("004", "Octroi du statut d’observateur à la Conférence sur l’interaction"),
    ],
)
def test_titles(prefix, expected):
    d = seed(prefix)
    title = derive_title(d.text, d.source)
    assert title.startswith(expected)
    if prefix == "002":
        assert title == expected
    assert {p.title for p in chunks(prefix)} == {title}
    assert "\n" not in title and "**" not in title


def test_derive_title_fallbacks():
    assert derive_title("# Mon guide\n\nDu texte ici.\n", "x.md") == "Mon guide"
    assert derive_title("Un texte sans titre qui commence directement.\n", "y.txt").startswith("Un texte sans")
    assert derive_title("12\n\n---\n", "rapport-2020.txt") == "rapport-2020"


# --------------------------------------------------------------------------- seeds: invariants


@pytest.mark.parametrize("seed_file", SEED_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("max_tokens", [256, 64])
def test_spans_caps_ids(seed_file, max_tokens):
    d = load_document(seed_file)
    ps = chunk_document(d, max_tokens=max_tokens)
    assert ps
    for i, p in enumerate(ps):
        assert p.position == i and p.id == passage_id(d.source, i) and p.source == d.source
        assert p.text.strip() and p.page == 0
        assert default_count_tokens(p.text) <= max_tokens, (p.id, len(p.text))
        assert_span_ok(d, p)
    starts = [p.start for p in ps]
    assert starts == sorted(starts)
    # stable: same input, same ids and texts
    again = chunk_document(load_document(seed_file), max_tokens=max_tokens)
    assert [(p.id, p.text, p.start, p.end) for p in again] == [(p.id, p.text, p.start, p.end) for p in ps]


@pytest.mark.parametrize("prefix", ["001", "002"])
def test_small_cap_still_keeps_every_paragraph_number(prefix):
    ps = chunks(prefix, max_tokens=48)
    heads = [int(p.para_no) for p in ps if re.match(r"\d+\. ", p.text)]
    assert heads == list(range(1, 26 if prefix == "001" else 36))
    assert all(default_count_tokens(p.text) <= 48 for p in ps)


@pytest.mark.parametrize("prefix", ["001", "002", "003", "004"])
def test_small_fragments_are_merged(prefix):
    ps = chunks(prefix)
    for k, p in enumerate(ps):
        if len(p.text) >= 60 or p.para_no or "(Signé)" in p.text:
            continue
        neighbours = [q for q in (ps[k - 1] if k else None, ps[k + 1] if k + 1 < len(ps) else None) if q]
        mergeable = [q for q in neighbours if q.section == p.section and "(Signé)" not in q.text]
        assert not mergeable, f"tiny passage left alone: {p.text!r}"
    if prefix == "001":
        orig = next(p for p in ps if "[Original : anglais]" in p.text)
        assert orig.text.startswith("[Original : anglais]\nNous, chefs d’État")


def test_custom_token_counter_is_used():
    calls = []

    def count(s: str) -> int:
        calls.append(s)
        return len(s)  # one "token" per character

    ps = chunk_document(seed("002"), max_tokens=300, count_tokens=count)
    assert calls and all(len(p.text) <= 300 for p in ps)
    assert [p.para_no for p in ps if re.match(r"\d+\. ", p.text)] == [str(i) for i in range(1, 36)]


# --------------------------------------------------------------------------- synthetic documents

UN_PAGED = """A/61/123
S/2006/456


 Lettre datée du 1er juillet 2006, adressée au Secrétaire général
par le Représentant permanent de la Ruritanie


 1. Nous considérons que la coopération régionale est essentielle pour la paix et
la sécurité et nous engageons à la renforcer dans tous les domaines pertinents du
développement durable et de la protection de l’environnement de la région.

 2. Nous rappelons les principes suivants :

 a) Le respect de la souveraineté des États;

 b) Le règlement pacifique des différends;

 c) La non-ingérence dans les affaires intérieures.

 3. Les États membres conviennent de poursuivre leurs consultations et de tenir
une réunion annuelle afin d’examiner les progrès accomplis dans la mise en œuvre
\f
06-42125 (F)    230606    230606
*0642125*
…/…
A/61/123
S/2006/456

2

de la présente déclaration et de proposer de nouvelles mesures.

 4. Le texte sera distribué comme document officiel de l’Assemblée générale.

A/61/123
S/2006/456

3
"""


def test_page_break_artefacts_removed_and_paragraph_glued():
    d = doc(UN_PAGED)
    ps = chunk_document(d)
    assert [p.para_no for p in ps] == ["1", "2", "3", "4"]
    text = "\n".join(p.text for p in ps)
    for junk in ("A/61/123", "S/2006/456", "06-42125", "0642125", "…/…", "230606"):
        assert junk not in text
    assert not re.search(r"(?m)^\d+$", text)
    p3 = ps[2]
    assert p3.text.endswith("dans la mise en œuvre de la présente déclaration et de proposer de nouvelles mesures.")
    assert ps[1].text == ("2. Nous rappelons les principes suivants :\na) Le respect de la souveraineté des États;\n"
                          "b) Le règlement pacifique des différends;\nc) La non-ingérence dans les affaires intérieures.")
    assert ps[0].title.startswith("Lettre datée du 1er juillet 2006")
    for p in ps:
        assert_span_ok(d, p)


def test_running_header_repeated_at_page_tops_is_dropped():
    page = "Rapport du Comité spécial\n\n{body}\n\nPage {n}\n"
    bodies = [
        "Le comité a tenu sa première séance le 3 mars et a élu son bureau à l’unanimité des membres.",
        "Le comité a examiné les propositions du secrétariat concernant le programme de travail annuel.",
        "Le comité a adopté son rapport à la dernière séance et l’a transmis à l’Assemblée générale.",
    ]
    text = "\f".join(page.format(body=b, n=i + 1) for i, b in enumerate(bodies))
    ps = chunk_document(doc(text))
    assert [p.text for p in ps] == bodies


def test_markdown_document_with_headings_and_crlf():
    text = (
        "# Guide de l’utilisateur\r\n\r\nCe guide explique comment installer le logiciel et le configurer "
        "pour un usage quotidien.\r\n\r\n## Installation\r\n\r\nAvant de commencer, suivez ces étapes dans "
        "l’ordre indiqué :\r\n\r\n- vérifier la version de Python installée sur la machine;\r\n- créer un "
        "environnement virtuel;\r\n- installer les dépendances.\r\n\r\n## Configuration\r\n\r\n"
        "Le fichier de configuration se trouve dans le dossier config et contient toutes les options.\r\n\r\n"
        "### Options avancées\r\n\r\nLes options **avancées** permettent de régler le cache et le nombre "
        "de processus utilisés.\r\n"
    )
    d = LoadedDocument(source="guide.md", text=text, pages=[], kind="md")
    ps = chunk_document(d)
    assert ps[0].title == "Guide de l’utilisateur"
    assert [p.section for p in ps] == ["", "Installation", "Configuration", "Configuration > Options avancées"]
    assert ps[1].text.startswith("Avant de commencer") and ps[1].text.endswith("- installer les dépendances.")
    assert "avancées permettent" in ps[3].text and "**" not in ps[3].text
    for p in ps:
        assert_span_ok(d, p)
        assert "\r" not in p.text


def test_plain_prose():
    paras = [
        "The quick survey of regional cooperation shows a steady increase in joint projects over the last "
        "decade, with most of the growth concentrated in transport and energy.",
        "Observers note that the institutional framework remains thin. Meetings are irregular and the "
        "secretariat has few staff. Nonetheless the participants consider the process worthwhile.",
        "A final remark concerns funding, which has come mostly from two member states over the period.",
    ]
    d = doc("\n\n".join(paras) + "\n")
    ps = chunk_document(d)
    assert [p.text for p in ps] == paras
    assert all(p.section == "" and p.para_no == "" for p in ps)


def test_long_paragraph_split_at_sentences():
    sentences = [f"Phrase numéro {i} décrit une mesure de confiance entre les États membres." for i in range(40)]
    text = "Titre\n\n7. " + " ".join(sentences) + "\n"
    d = doc(text)
    ps = chunk_document(d, max_tokens=60)
    assert len(ps) > 3
    assert ps[0].text.startswith("7. Phrase numéro 0")
    assert all(p.para_no == "7" for p in ps)
    assert all(p.text.endswith(".") and default_count_tokens(p.text) <= 60 for p in ps)
    assert " ".join(p.text for p in ps).split() == ("7. " + " ".join(sentences)).split()
    sizes = [default_count_tokens(p.text) for p in ps]
    assert min(sizes) >= max(sizes) // 3  # balanced: no tiny tail piece
    for p in ps:
        assert_span_ok(d, p)


def test_long_list_split_between_items():
    items = [f"– Élément {i} de la liste, avec une explication assez longue pour compter;" for i in range(12)]
    text = "Les mesures suivantes sont proposées :\n\n" + "\n\n".join(items) + "\n"
    ps = chunk_document(doc(text), max_tokens=50)
    assert len(ps) > 1 and ps[0].text.startswith("Les mesures suivantes sont proposées :\n– Élément 0")
    joined = "\n".join(p.text for p in ps)
    assert joined.count("Les mesures suivantes") == 1  # nothing repeated
    for p in ps:
        assert all(line.startswith(("– ", "Les mesures")) for line in p.text.split("\n"))  # items intact
        assert default_count_tokens(p.text) <= 50


def test_numbered_fragments_never_merged_together():
    text = "Décisions\n\n1. Adopte.\n\n2. Décide.\n\n3. Prie le Secrétaire général.\n"
    ps = chunk_document(doc(text))
    assert [(p.para_no, p.text) for p in ps] == [("1", "1. Adopte."), ("2", "2. Décide."),
                                                   ("3", "3. Prie le Secrétaire général.")]


def test_empty_and_whitespace_documents():
    assert chunk_document(doc("")) == []
    assert chunk_document(doc("\n \n\t\n")) == []
