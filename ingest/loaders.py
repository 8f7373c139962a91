"""Load one file into a LoadedDocument: decoded text plus page offsets.

Rules (see also SkipFile reasons below):
- .txt / .md: the text is the file's decoded content, unchanged (a BOM is stripped), so that
  passage spans point straight back into the file. UTF-8 is required; UTF-16/32 is accepted when a
  BOM announces it. There is deliberately no silent cp1252/latin-1 fallback: a file that is not
  valid UTF-8 is skipped with a reason that says so (re-save it as UTF-8).
- .pdf (pypdf), .docx (python-docx), .html/.htm (BeautifulSoup): the text is the *extracted* text,
  with paragraphs separated by blank lines and headings written as markdown "#" lines, so the same
  chunker handles every format. Spans refer to this extracted text. PDF pages are separated by a
  form feed and `pages` holds the offset where each page starts.

Nothing here loads a model or touches the network.
"""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".md", ".pdf", ".docx", ".html", ".htm")

DEFAULT_MAX_BYTES = 20 * 1024 * 1024

_KIND = {".txt": "txt", ".md": "md", ".pdf": "pdf", ".docx": "docx", ".html": "html", ".htm": "html"}


class SkipFile(Exception):
    """The file cannot be ingested; str(exc) is a one-line human reason."""


@dataclass
class LoadedDocument:
    source: str  # file name, e.g. "001_x.txt"
    text: str  # full decoded text; Passage.start/end are offsets into exactly this string
    pages: list[int] = field(default_factory=list)  # offset where each page starts ([] if not paged)
    kind: str = "txt"  # "txt", "md", "pdf", "docx", "html"

    def page_of(self, offset: int) -> int:
        """1-based page holding `offset`, 0 when the document is not paged."""
        if not self.pages:
            return 0
        page = 0
        for i, start in enumerate(self.pages):
            if start <= offset:
                page = i + 1
            else:
                break
        return max(page, 1)


def _size_text(n: int) -> str:
    mb = n / (1024 * 1024)
    return f"{mb:g} MB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def load_document(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedDocument:
    """Load `path`; raise SkipFile with a one-line reason when it cannot be ingested."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _KIND:
        raise SkipFile(f"unsupported type {ext or '(no extension)'}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SkipFile(f"unreadable file: {exc.strerror or exc}") from None
    if size == 0:
        raise SkipFile("empty file")
    if size > max_bytes:
        raise SkipFile(f"larger than {_size_text(max_bytes)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SkipFile(f"unreadable file: {exc.strerror or exc}") from None

    kind = _KIND[ext]
    pages: list[int] = []
    if kind in ("txt", "md"):
        text = decode_text(data)
    elif kind == "pdf":
        text, pages = _pdf_text(data)
    elif kind == "docx":
        text = _docx_text(data)
    else:
        text = _html_text(data)
    if not text.strip():
        raise SkipFile("empty file" if kind in ("txt", "md") else f"no text content in {kind.upper()}")
    return LoadedDocument(source=path.name, text=text, pages=pages, kind=kind)


# --------------------------------------------------------------------------- plain text

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# C0 controls that never occur in text (tab, LF, VT, FF, CR and ESC excluded), plus DEL.
_BINARY_BYTES = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13, 27)) + b"\x7f"


def decode_text(data: bytes) -> str:
    """Decode text bytes strictly; raise SkipFile for empty, binary or non-UTF-8 content."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise SkipFile(f"not valid {encoding.upper()} text despite its BOM (offset {exc.start})") from None
            _check_text(text)
            return text
    if b"\x00" in data:
        raise SkipFile("binary content")
    sample = data[:65536]
    if sample and sum(sample.count(bytes([b])) for b in _BINARY_BYTES) / len(sample) > 0.01:
        raise SkipFile("binary content")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkipFile(
            f"not valid UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); re-save it as UTF-8"
        ) from None
    _check_text(text)
    return text


def _check_text(text: str) -> None:
    if not text.strip():
        raise SkipFile("empty file")
    sample = text[:65536]
    bad = sum(1 for c in sample if unicodedata.category(c) == "Cc" and c not in "\t\n\r\x0b\x0c\x1b")
    if "\x00" in sample or bad / len(sample) > 0.01:
        raise SkipFile("binary content")


# --------------------------------------------------------------------------- PDF


def _pdf_text(data: bytes) -> tuple[str, list[int]]:
    try:
        from pypdf import PdfReader
    except ImportError:  # pragma: no cover - pypdf is a dependency
        raise SkipFile("unreadable PDF: pypdf is not installed") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception as exc:  # missing crypto backend, bad key...
                raise SkipFile(f"unreadable PDF: encrypted ({_one_line(exc)})") from None
            if not ok:
                raise SkipFile("unreadable PDF: encrypted (password required)")
        page_objs = list(reader.pages)
    except SkipFile:
        raise
    except Exception as exc:
        raise SkipFile(f"unreadable PDF: {_one_line(exc)}") from None
    if not page_objs:
        raise SkipFile("unreadable PDF: no pages")
    parts: list[str] = []
    pages: list[int] = []
    offset = 0
    for page in page_objs:
        try:
            t = page.extract_text() or ""
        except Exception:
            t = ""  # one broken page should not lose the whole document
        t = _clean_extracted(t).strip("\n")
        if parts:
            parts.append("\f")
            offset += 1
        pages.append(offset)
        parts.append(t)
        offset += len(t)
    text = "".join(parts)
    if not text.replace("\f", "").strip():
        raise SkipFile("no extractable text in PDF (scanned or image-only?)")
    return text, pages


def _clean_extracted(t: str) -> str:
    t = t.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    t = t.replace("\u00ad", "")  # soft hyphens
    return "".join(c for c in t if c in "\n\t" or unicodedata.category(c) != "Cc")


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg[:200]


# --------------------------------------------------------------------------- DOCX

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _docx_text(data: bytes) -> str:
    try:
        import docx  # python-docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph
    except ImportError:  # pragma: no cover
        raise SkipFile("unreadable DOCX: python-docx is not installed") from None
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise SkipFile(f"unreadable DOCX: {_one_line(exc)}") from None

    numbering = _DocxNumbering(document)
    blocks: list[str] = []
    for el in document.element.body.iterchildren():
        if el.tag == _W + "p":
            line = _docx_paragraph(Paragraph(el, document), numbering)
            if line:
                blocks.append(line)
        elif el.tag == _W + "tbl":
            rows = _docx_table(Table(el, document))
            if rows:
                blocks.append("\n".join(rows))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _docx_paragraph(p, numbering: "_DocxNumbering") -> str:
    text = " ".join(p.text.split())
    if not text:
        return ""
    style = (p.style.name if p.style is not None else "") or ""
    low = style.lower()
    m = re.match(r"(heading|titre)\s*(\d)", low)
    if m:
        return "#" * min(int(m.group(2)), 6) + " " + text
    if low in ("title", "titre"):
        return "# " + text
    if low in ("subtitle", "sous-titre"):
        return "## " + text
    prefix = numbering.prefix(p)
    if prefix is None and "list" in low:
        prefix = "- "
    return (prefix or "") + text


def _docx_table(table) -> list[str]:
    rows = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            t = " ".join(cell.text.split())
            if not cells or t != cells[-1]:  # merged cells repeat their text
                cells.append(t)
        if any(cells):
            rows.append(" | ".join(cells))
    return rows


class _DocxNumbering:
    """Best-effort rendering of Word auto-numbering ("1.", "a)", "•") as printed text.

    UN documents number their paragraphs with Word numbering, so the printed "23." is not in
    the paragraph text itself; without this the chunker could not recover paragraph numbers.
    """

    def __init__(self, document) -> None:
        self.formats: dict[tuple[str, int], tuple[str, str, int]] = {}
        self.counters: dict[tuple[str, int], int] = {}
        try:
            root = document.part.numbering_part.element
        except Exception:
            return
        abstract: dict[str, dict[int, tuple[str, str, int]]] = {}
        for an in root.findall(_W + "abstractNum"):
            levels = {}
            for lvl in an.findall(_W + "lvl"):
                ilvl = int(lvl.get(_W + "ilvl", "0"))
                fmt = lvl.find(_W + "numFmt")
                txt = lvl.find(_W + "lvlText")
                start = lvl.find(_W + "start")
                levels[ilvl] = (
                    fmt.get(_W + "val") if fmt is not None else "decimal",
                    txt.get(_W + "val") if txt is not None else "%1.",
                    int(start.get(_W + "val")) if start is not None else 1,
                )
            abstract[an.get(_W + "abstractNumId")] = levels
        for num in root.findall(_W + "num"):
            ref = num.find(_W + "abstractNumId")
            if ref is None:
                continue
            for ilvl, spec in abstract.get(ref.get(_W + "val"), {}).items():
                self.formats[(num.get(_W + "numId"), ilvl)] = spec

    def prefix(self, p) -> str | None:
        ppr = p._p.pPr
        numpr = ppr.numPr if ppr is not None else None
        if numpr is None or numpr.numId is None:
            return None
        num_id = str(numpr.numId.val)
        ilvl = int(numpr.ilvl.val) if numpr.ilvl is not None else 0
        spec = self.formats.get((num_id, ilvl))
        if spec is None:
            return "- "
        fmt, lvl_text, start = spec
        if fmt == "bullet" or fmt == "none":
            return "- "
        key = (num_id, ilvl)
        n = self.counters.get(key, start - 1) + 1
        self.counters[key] = n
        for k in list(self.counters):  # deeper levels restart
            if k[0] == num_id and k[1] > ilvl:
                del self.counters[k]
        rendered = re.sub(r"%\d", _render_number(n, fmt), lvl_text, count=1)
        rendered = re.sub(r"%\d", "", rendered)
        return rendered.strip() + " " if rendered.strip() else "- "


def _render_number(n: int, fmt: str) -> str:
    if fmt in ("lowerLetter", "upperLetter"):
        s = ""
        while n > 0:
            n, r = divmod(n - 1, 26)
            s = chr(97 + r) + s
        return s.upper() if fmt == "upperLetter" else s
    if fmt in ("lowerRoman", "upperRoman"):
        vals = [(1000, "m"), (900, "cm"), (500, "d"), (400, "cd"), (100, "c"), (90, "xc"), (50, "l"),
                (40, "xl"), (10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i")]
        s = ""
        for v, sym in vals:
            while n >= v:
                s += sym
                n -= v
        return s.upper() if fmt == "upperRoman" else s
    return str(n)


# --------------------------------------------------------------------------- HTML

_DROP_TAGS = {"script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "head", "nav",
              "button", "select", "option", "input", "textarea"}
_BLOCK_TAGS = {"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "blockquote",
               "ul", "ol", "dl", "dt", "dd", "figure", "figcaption", "form", "fieldset", "address",
               "center", "details", "summary", "body", "html", "caption", "hr"}


def _html_text(data: bytes) -> str:
    try:
        from bs4 import BeautifulSoup, Comment, Doctype, Declaration, ProcessingInstruction
    except ImportError:  # pragma: no cover
        raise SkipFile("unreadable HTML: beautifulsoup4 is not installed") from None
    try:
        soup = BeautifulSoup(data, "html.parser")
    except Exception as exc:
        raise SkipFile(f"unreadable HTML: {_one_line(exc)}") from None

    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    skip_types = (Comment, Doctype, Declaration, ProcessingInstruction)
    blocks: list[str] = []
    inline: list[str] = []

    def flush() -> None:
        # source newlines are plain whitespace; <br> (U+2028 here) is a line break in the paragraph
        lines = [" ".join(part.split()) for part in "".join(inline).split("\u2028")]
        inline.clear()
        t = "\n".join(line for line in lines if line)
        if t:
            blocks.append(t)

    def walk(node) -> None:
        for child in node.children:
            name = getattr(child, "name", None)
            if name is None:
                if not isinstance(child, skip_types):
                    inline.append(str(child))
                continue
            if name in _DROP_TAGS:
                continue
            if name == "br":
                inline.append("\u2028")
            elif re.fullmatch(r"h[1-6]", name):
                flush()
                t = " ".join(child.get_text(" ").split())
                if t:
                    blocks.append("#" * int(name[1]) + " " + t)
            elif name == "li":
                flush()
                nested = [c for c in child.find_all(["ul", "ol"], recursive=False)]
                for c in nested:
                    c.extract()
                t = " ".join(child.get_text(" ").split())
                if t:
                    blocks.append("- " + t)
                for c in nested:
                    walk_block(c)
            elif name == "table":
                flush()
                rows = []
                for tr in child.find_all("tr"):
                    cells = [" ".join(c.get_text(" ").split()) for c in tr.find_all(["td", "th"])]
                    if any(cells):
                        rows.append(" | ".join(cells))
                if rows:
                    blocks.append("\n".join(rows))
            elif name == "pre":
                flush()
                t = "\n".join(line.rstrip() for line in child.get_text().strip("\n").splitlines())
                if t.strip():
                    blocks.append(t)
            elif name in _BLOCK_TAGS:
                walk_block(child)
            else:
                walk(child)

    def walk_block(node) -> None:
        flush()
        walk(node)
        flush()

    walk_block(soup)
    # List items of one list form one block (one item a line), like markdown.
    out: list[str] = []
    for b in blocks:
        if b.startswith("- ") and out and out[-1].split("\n")[-1].startswith("- "):
            out[-1] += "\n" + b
        else:
            out.append(b)
    if title and not any(b.startswith("# ") for b in out):
        out.insert(0, "# " + " ".join(title.split()))
    return "\n\n".join(out) + "\n" if out else ""
