"""Loaders: every supported format on a tiny synthetic file, and every SkipFile case."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ingest.chunking import chunk_document
from ingest.loaders import SUPPORTED_EXTENSIONS, LoadedDocument, SkipFile, load_document

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: each page shows its lines in Helvetica (WinAnsi text)."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 760 Td"] + [f"({esc(ln)}) Tj T*" for ln in lines] + ["ET"]
        stream = "\n".join(ops).encode("cp1252")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for k, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % k + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


PDF_PAGES = [
    [
        "Rapport annuel",
        "",
        "1. Le comite s'est reuni trois fois au cours de l'annee et a examine",
        "plusieurs propositions relatives au budget.",
        "2. Le comite recommande d'adopter le budget tel que presente par le",
        "secretariat pour l'exercice suivant.",
    ],
    [
        "3. Le president remercie les membres pour leur travail et leur",
        "engagement constant tout au long de la session.",
        "Page 2",
    ],
]


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    p = tmp_path / name
    if isinstance(data, str):
        p.write_text(data, encoding="utf-8", newline="")
    else:
        p.write_bytes(data)
    return p


# --------------------------------------------------------------------------- text


def test_supported_extensions():
    assert set(SUPPORTED_EXTENSIONS) == {".txt", ".md", ".pdf", ".docx", ".html", ".htm"}


@pytest.mark.parametrize("seed", sorted(SEEDS.glob("*.txt")), ids=lambda p: p.name)
def test_seed_text_is_the_file_unchanged(seed: Path):
    doc = load_document(seed)
    assert isinstance(doc, LoadedDocument)
    assert doc.source == seed.name and doc.kind == "txt" and doc.pages == []
    assert doc.text == seed.read_bytes().decode("utf-8")


def test_txt_keeps_crlf_and_strips_bom(tmp_path):
    raw = "Titre\r\n\r\nPremier paragraphe.\r\n"
    doc = load_document(write(tmp_path, "a.txt", b"\xef\xbb\xbf" + raw.encode("utf-8")))
    assert doc.text == raw  # unchanged except the BOM: spans point back into the file


def test_md_kind_and_utf16_with_bom(tmp_path):
    raw = "# Titre\n\nTexte accentué : été, Œuvre.\n"
    doc = load_document(write(tmp_path, "b.md", b"\xff\xfe" + raw.encode("utf-16-le")))
    assert doc.kind == "md" and doc.text == raw


# --------------------------------------------------------------------------- skip cases


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("x.xyz", b"hello", "unsupported type .xyz"),
        ("noext", b"hello", "unsupported type"),
        ("empty.txt", b"", "empty file"),
        ("blank.md", b"  \n\t\r\n  \n", "empty file"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00", "binary content"),
        ("ctrl.txt", bytes(range(1, 9)) * 50 + b"abc", "binary content"),
        ("latin1.txt", "Café crème à la française".encode("cp1252"), "not valid UTF-8 text"),
        ("bad.pdf", b"%PDF-1.4\n1 0 obj garbage\n", "unreadable PDF"),
        ("notzip.docx", b"PK\x03\x04 this is not a zip", "unreadable DOCX"),
    ],
)
def test_skip_reasons(tmp_path, name, data, reason):
    with pytest.raises(SkipFile) as exc:
        load_document(write(tmp_path, name, data))
    msg = str(exc.value)
    assert msg.startswith(reason), msg
    assert "\n" not in msg


def test_too_big(tmp_path):
    p = write(tmp_path, "big.txt", "x" * 2048)
    with pytest.raises(SkipFile, match=r"^larger than"):
        load_document(p, max_bytes=1024)
    with pytest.raises(SkipFile, match=r"^larger than 20 MB$"):
        load_document(write(tmp_path, "huge.txt", b"a" * (20 * 1024 * 1024 + 1)))
    assert load_document(p, max_bytes=4096).text == "x" * 2048


def test_encrypted_pdf(tmp_path):
    from pypdf import PdfReader, PdfWriter

    reader = PdfReader(io.BytesIO(make_pdf([["secret text"]])))
    writer = PdfWriter()
    writer.add_page(reader.pages[0])
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(SkipFile, match=r"^unreadable PDF: encrypted"):
        load_document(write(tmp_path, "enc.pdf", buf.getvalue()))


def test_pdf_without_text(tmp_path):
    with pytest.raises(SkipFile, match="no extractable text"):
        load_document(write(tmp_path, "blank.pdf", make_pdf([[], []])))


# --------------------------------------------------------------------------- PDF


def test_pdf_pages_and_passages(tmp_path):
    doc = load_document(write(tmp_path, "r.pdf", make_pdf(PDF_PAGES)))
    assert doc.kind == "pdf" and len(doc.pages) == 2 and doc.pages[0] == 0
    assert doc.text[doc.pages[1] :].startswith("3. Le president")
    assert "Rapport annuel" in doc.text[: doc.pages[1]]

    ps = chunk_document(doc)
    by_no = {p.para_no: p for p in ps}
    assert [p.para_no for p in ps] == ["1", "2", "3"]
    assert by_no["1"].page == 1 and by_no["3"].page == 2
    assert by_no["1"].text.startswith("1. Le comite") and "plusieurs propositions relatives" in by_no["1"].text
    assert "Page 2" not in by_no["3"].text  # page footer dropped
    assert ps[0].title == "Rapport annuel"
    for p in ps:
        assert doc.text[p.start : p.end].split() == p.text.split()


# --------------------------------------------------------------------------- DOCX


def test_docx(tmp_path):
    import docx

    d = docx.Document()
    d.add_heading("Déclaration de test", level=1)
    d.add_paragraph("Introduction générale au document, qui présente le contexte et les objectifs.")
    d.add_heading("I. Coopération", level=2)
    d.add_paragraph("Les États membres renforceront leur coopération dans les domaines suivants :")
    d.add_paragraph("Économie et commerce;", style="List Bullet")
    d.add_paragraph("Environnement.", style="List Bullet")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "État"
    table.cell(0, 1).text = "Mesure"
    table.cell(1, 0).text = "Iran"
    table.cell(1, 1).text = "Lutte contre la drogue"
    p = tmp_path / "t.docx"
    d.save(p)

    doc = load_document(p)
    assert doc.kind == "docx" and doc.pages == []
    lines = doc.text.splitlines()
    assert "# Déclaration de test" in lines
    assert "## I. Coopération" in lines
    assert "- Économie et commerce;" in lines
    assert "État | Mesure" in lines and "Iran | Lutte contre la drogue" in lines

    ps = chunk_document(doc)
    assert ps[0].title == "Déclaration de test"
    lead = next(p for p in ps if "domaines suivants :" in p.text)
    assert "Économie et commerce;" in lead.text and "Environnement." in lead.text
    assert lead.section == "I. Coopération"
    assert not any(p.text.startswith("#") for p in ps)


# --------------------------------------------------------------------------- HTML


HTML = """<!DOCTYPE html>
<html><head><title>Titre de la page</title>
<style>p { color: red }</style>
<script>var secret = "SCRIPT_CONTENT";</script></head>
<body>
<nav>Accueil | Contact</nav>
<h1>Charte de coopération</h1>
<p>Premier paragraphe avec du <b>gras</b> et un <a href="#">lien</a>
   écrit sur deux lignes dans la source.</p>
<div>Bloc div<br>deuxième ligne du bloc</div>
<h2>Annexe</h2>
<ul><li>point un</li><li>point deux</li></ul>
<table><tr><th>Pays</th><th>Mesure</th></tr><tr><td>Iran</td><td>Drogue</td></tr></table>
<script>alert("SCRIPT_TWO")</script>
</body></html>"""


@pytest.mark.parametrize("ext", [".html", ".htm"])
def test_html(tmp_path, ext):
    doc = load_document(write(tmp_path, "page" + ext, HTML.encode("utf-8")))
    assert doc.kind == "html"
    t = doc.text
    assert "SCRIPT" not in t and "color" not in t and "Accueil" not in t
    blocks = t.strip().split("\n\n")
    assert blocks[0] == "# Charte de coopération"
    assert blocks[1] == "Premier paragraphe avec du gras et un lien écrit sur deux lignes dans la source."
    assert blocks[2] == "Bloc div\ndeuxième ligne du bloc"
    assert "## Annexe" in blocks
    assert "- point un\n- point deux" in blocks
    assert "Pays | Mesure\nIran | Drogue" in blocks
    ps = chunk_document(doc)
    assert ps[0].title == "Charte de coopération"
    assert all("SCRIPT" not in p.text for p in ps)


def test_html_without_text_is_skipped(tmp_path):
    with pytest.raises(SkipFile, match="no text content"):
        load_document(write(tmp_path, "e.html", b"<html><script>var a=1;</script></html>"))


def test_docx_word_auto_numbering_is_printed(tmp_path):
    """UN .docx number paragraphs with Word numbering: the "1." must reach the text."""
    import docx
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    d = docx.Document()
    fmt = {}
    root = d.part.numbering_part.element
    abstract = {a.get(qn("w:abstractNumId")): a for a in root.findall(qn("w:abstractNum"))}
    for num in root.findall(qn("w:num")):
        a = abstract[num.find(qn("w:abstractNumId")).get(qn("w:val"))]
        lvl0 = [lv for lv in a.findall(qn("w:lvl")) if lv.get(qn("w:ilvl")) == "0"][0]
        fmt[num.get(qn("w:numId"))] = lvl0.find(qn("w:numFmt")).get(qn("w:val"))
    num_id = next(k for k, v in fmt.items() if v == "decimal")
    d.add_paragraph("Décisions du comité")
    for t in ("Le comité adopte son ordre du jour provisoire tel qu’il a été distribué.",
              "Le comité décide de se réunir de nouveau au cours de la session suivante."):
        p = d.add_paragraph(t)
        num_pr = OxmlElement("w:numPr")
        for tag, val in (("w:ilvl", "0"), ("w:numId", num_id)):
            el = OxmlElement(tag)
            el.set(qn("w:val"), val)
            num_pr.append(el)
        p._p.get_or_add_pPr().append(num_pr)
    path = tmp_path / "num.docx"
    d.save(path)
    doc = load_document(path)
    assert "1. Le comité adopte" in doc.text and "2. Le comité décide" in doc.text
    assert [p.para_no for p in chunk_document(doc)] == ["1", "2"]
