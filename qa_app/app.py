"""The web app (Gradio Blocks): chat with cited answers, citation lookup, uploads, status.

Everything the page shows that comes from a document or a user is escaped here with
``html.escape`` before it becomes HTML: a passage containing ``<script>`` shows those
characters and never runs them. The page loads nothing from outside the app: system
fonts, local CSS and JavaScript, analytics off, no share link.

Citation markers ``[n]`` link to the passage's permalink (``/?passage=<id>``); a small
script (static/app.js) turns a plain click into "open the passage in its document" inside
the app, and opening the permalink in a new tab works too.
"""

from __future__ import annotations

import html
import logging
import os
import re
import shutil
import unicodedata
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

# Must be set before gradio is imported: it reads the variable at import time.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import gradio as gr  # noqa: E402

from .schema import Answer, Passage, ScoredPassage  # noqa: E402
from .service import QAService, clean_question  # noqa: E402
from .settings import Settings  # noqa: E402
from .store import StoreError  # noqa: E402

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
UPLOAD_TYPES = (".txt", ".md", ".pdf", ".docx")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MODES = [
    ("Auto: language model when reachable, else extractive", "auto"),
    ("Language model (LLM)", "llm"),
    ("Extractive: quote the documents, no LLM", "extractive"),
]
EXAMPLES = [
    "Quand la Thaïlande a-t-elle adhéré à la CICA ?",
    "Que décident les dirigeants au paragraphe 23 de la déclaration du deuxième Sommet de la CICA ?",
    "What does the Almaty Act say about the threat of terrorism?",
    "Which energy issue does the 2006 CICA summit declaration call a priority?",
]
PLACEHOLDER = (
    "**Ask a question about the documents**, in French or English. Every answer cites "
    "its sources: click a marker such as [1] to read the passage in its document."
)
EMPTY_QUESTION = "Type a question first: the message was empty."
_MARKER = re.compile(r"\[(\d{1,3})\]")
_TAG = re.compile(r"<[^>]*>")


# -- small pure helpers (tested directly) ---------------------------------------------
def esc(text: Any) -> str:
    return html.escape(str(text if text is not None else ""), quote=True)


def permalink(pid: str) -> str:
    """Relative permalink of a passage: resolves to http://host:port/?passage=<id>."""
    return "?passage=" + urllib.parse.quote(pid, safe="")


def parse_passage_ref(ref: str) -> str:
    """A passage id from an id, a permalink or a URL with ?passage=..."""
    ref = (ref or "").strip()
    if "passage=" in ref:
        query = ref.split("?", 1)[-1]
        values = urllib.parse.parse_qs(query).get("passage")
        if values:
            return values[0].strip()
    return urllib.parse.unquote(ref) if "%" in ref else ref


def message_text(content: Any) -> str:
    """Plain text of a chat message's content: a string, one part, or a list of parts
    (Gradio 6 gives ``[{"type": "text", "text": ...}, ...]``). HTML is removed."""
    if content is None:
        return ""
    if isinstance(content, str):
        text = content
    elif isinstance(content, dict):
        text = content.get("text") or content.get("content") or ""
        if not isinstance(text, str):
            text = message_text(text)
    elif isinstance(content, (list, tuple)):
        text = "\n".join(t for t in (message_text(c) for c in content) if t)
    else:
        text = str(getattr(content, "text", "") or "")
    if "<" in text:
        text = _TAG.sub(" ", text.replace("<br>", "\n").replace("<br/>", "\n"))
        text = re.sub(r"[ \t]+", " ", text)
    return html.unescape(text).strip()


def history_for_service(history: Iterable[dict] | None) -> list[dict]:
    """Chat history as [{role, content: str}] for QAService (notices and badges removed)."""
    out = []
    for msg in history or []:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role not in ("user", "assistant"):
            continue
        content = msg.get("content")
        if role == "assistant" and isinstance(content, str) and "qa-answer" in content:
            # only the answer body, not the mode badge or notice lines
            content = content.split('<div class="qa-meta">', 1)[0]
        text = message_text(content)
        if text:
            out.append({"role": role, "content": text})
    return out


def _text_html(text: str) -> str:
    """Escaped text with line breaks; also defuses Markdown syntax around it."""
    out = esc(text)
    for ch, ent in (("[", "&#91;"), ("]", "&#93;"), ("*", "&#42;"), ("_", "&#95;"),
                    ("`", "&#96;"), ("$", "&#36;"), ("\\", "&#92;"), ("~", "&#126;")):
        out = out.replace(ch, ent)
    return out.replace("\r\n", "\n").replace("\n", "<br>")


def find_support(text: str, support: str) -> tuple[int, int] | None:
    """Span of ``support`` inside ``text``: exact, then whitespace-insensitive, then the
    sentence sharing most words with it."""
    support = (support or "").strip()
    if not support or not text:
        return None
    i = text.find(support)
    if i >= 0:
        return i, i + len(support)
    words = support.split()
    m = re.search(r"\s+".join(re.escape(w) for w in words), text)
    if m:
        return m.start(), m.end()
    want = {w.lower().strip(".,;:!?«»\"'()") for w in words}
    want.discard("")
    best, best_span = 0.0, None
    for m in re.finditer(r"[^.!?;\n]+[.!?;]?", text):
        got = {w.lower().strip(".,;:!?«»\"'()") for w in m.group(0).split()}
        overlap = len(want & got) / max(1, len(want))
        if overlap > best:
            best, best_span = overlap, (m.start(), m.end())
    if best >= 0.5 and best_span:
        start, end = best_span
        while start < end and text[start].isspace():
            start += 1
        return start, end
    return None


def highlight_html(text: str, support: str = "", whole: bool = False) -> str:
    """The passage as escaped text with the supporting span in <mark>."""
    if whole:
        return f"<mark>{esc(text)}</mark>"
    span = find_support(text, support)
    if span is None:
        return esc(text)
    a, b = span
    return f"{esc(text[:a])}<mark>{esc(text[a:b])}</mark>{esc(text[b:])}"


def answer_html(text: str, links: dict[int, Passage] | None = None, *, mode: str = "",
                notice: str = "", model: str = "", streaming: bool = False) -> str:
    """An answer as one HTML block: escaped text, [n] markers as links to the passages."""
    links = links or {}
    parts, pos = [], 0
    for m in _MARKER.finditer(text):
        parts.append(_text_html(text[pos:m.start()]))
        n = int(m.group(1))
        p = links.get(n)
        if p is not None:
            label = esc(p.label)
            parts.append(f'<a class="cite" href="{esc(permalink(p.id))}" title="{label}" '
                         f'aria-label="Source {n}: {label}">&#91;{n}&#93;</a>')
        else:
            parts.append(f'<span class="cite-plain">&#91;{n}&#93;</span>')
        pos = m.end()
    parts.append(_text_html(text[pos:]))
    body = "".join(parts) or ("…" if streaming else "")
    meta = []
    if not streaming:
        badge = {"generated": f"generated by {model}" if model else "generated",
                 "extractive": "extractive: quoted from the documents",
                 "abstained": "no answer in the documents"}.get(mode, mode)
        if badge:
            meta.append(f'<span class="qa-mode">{esc(badge)}</span>')
        if notice:
            meta.append(f'<span class="qa-notice-text">{_text_html(notice)}</span>')
    meta_html = f'<div class="qa-meta">{" ".join(meta)}</div>' if meta else ""
    return f'<div class="qa-answer">{body}{meta_html}</div>'


def user_html(text: str) -> str:
    return f'<div class="qa-question">{_text_html(text)}</div>'


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _where(p: Passage) -> str:
    bits = []
    if p.section:
        bits.append(esc(p.section))
    if p.para_no:
        bits.append(f"§&nbsp;{esc(p.para_no)}")
    if p.page:
        bits.append(f"p.&nbsp;{p.page}")
    return " · ".join(bits)


def _links(p: Passage, open_label: str = "Show in document") -> str:
    return (f'<div class="qa-links"><a class="open-passage" href="{esc(permalink(p.id))}">'
            f'{esc(open_label)}</a><a class="permalink" href="{esc(permalink(p.id))}" '
            f'target="_blank" rel="noopener">Permalink</a><code class="qa-id">{esc(p.id)}</code>'
            f'</div>')


def passage_card(p: Passage, *, marker: int | None = None, support: str = "",
                 score: float | None = None, inferred: bool = False, anchor: str = "") -> str:
    head = []
    if marker is not None:
        head.append(f'<span class="marker">&#91;{marker}&#93;</span>')
    head.append(f"<strong>{esc(p.title or p.source)}</strong>")
    where = _where(p)
    if where:
        head.append(f'<span class="where"> · {where}</span>')
    if score is not None:
        head.append(f'<span class="where"> · score {score:.3f}</span>')
    if inferred:
        head.append('<span class="where"> · attributed by similarity</span>')
    aid = f' id="{esc(anchor)}"' if anchor else ""
    return (f'<li class="qa-card"{aid} data-pid="{esc(p.id)}"><div class="head">{"".join(head)}'
            f'</div><p class="qa-text">{highlight_html(p.text, support)}</p>{_links(p)}</li>')


def sources_html(answer: Answer | None) -> str:
    if answer is None:
        return ('<div class="qa-panel"><h3>Sources</h3><p class="qa-empty">The passages cited '
                'by the answer appear here, with the supporting sentence highlighted.</p></div>')
    cited_ids = set()
    cards = []
    shown = {int(n) for n in _MARKER.findall(answer.text)}
    for c in answer.citations:
        if c.marker not in shown:
            continue
        cited_ids.add(c.passage.id)
        cards.append(passage_card(c.passage, marker=c.marker, support=c.support,
                                  inferred=c.inferred, anchor=f"cite-{c.marker}"))
    out = ['<div class="qa-panel"><h3>Sources</h3>']
    if cards:
        out.append(f'<ol class="qa-cards">{"".join(cards)}</ol>')
    else:
        out.append('<p class="qa-empty">No passage is cited by this answer.</p>')
    others = [sp for sp in answer.passages if sp.passage.id not in cited_ids]
    if others:
        out.append(f'<details class="qa-more"><summary>Other retrieved passages ({len(others)})'
                   f'</summary><ol class="qa-cards">')
        out.extend(passage_card(sp.passage) for sp in others)
        out.append("</ol></details>")
    out.append("</div>")
    return "".join(out)


def results_html(results: list[ScoredPassage], query: str) -> str:
    if not query.strip():
        return '<div class="qa-panel"><p class="qa-empty">Type words to search for.</p></div>'
    if not results:
        return (f'<div class="qa-panel"><p class="qa-empty">No passage found for '
                f'“{esc(query)}”.</p></div>')
    cards = "".join(passage_card(r.passage, marker=i)
                    for i, r in enumerate(results, 1))
    return (f'<div class="qa-panel"><h3>{len(results)} passages for “{esc(query)}”</h3>'
            f'<ol class="qa-cards">{cards}</ol></div>')


def _para_html(p: Passage, cls: str, inner: str, extra: str = "") -> str:
    printed = p.para_no and re.match(rf"\s*\(?{re.escape(p.para_no)}[.)]", p.text)
    pno = f'<span class="pno">§&nbsp;{esc(p.para_no)}</span>' if p.para_no and not printed else ""
    return (f'<div class="qa-para {cls}" data-pid="{esc(p.id)}"{extra}>{pno}'
            f'<span class="qa-text">{inner}</span></div>')


def document_html(doc: list[Passage], *, target: str = "", support: str = "",
                  around: int | None = None) -> str:
    """A document, or the window of ``around`` paragraphs each side of ``target``."""
    if not doc:
        return '<div class="qa-viewer"><p class="qa-empty">Nothing to show.</p></div>'
    idx = next((i for i, p in enumerate(doc) if p.id == target), None)
    lo, hi = 0, len(doc)
    if idx is not None and around is not None:
        lo, hi = max(0, idx - around), min(len(doc), idx + around + 1)
    first = doc[0]
    head = (f'<div class="doc-head"><strong>{esc(first.title or first.source)}</strong> · '
            f'<span class="where">{esc(first.source)} · {len(doc)} passages</span>')
    if idx is not None:
        head += f' · <span class="where">passage {idx + 1} of {len(doc)}</span>'
    head += "</div>"
    title = "Passage in its document" if around is not None else "Document"
    out = [f'<div class="qa-viewer" role="region" aria-label="{title}">',
           f'<h3 class="viewer-title">{title}</h3>', head]
    if lo > 0:
        out.append(f'<p class="qa-empty">… {_n(lo, "passage")} before</p>')
    section = None
    for i in range(lo, hi):
        p = doc[i]
        if p.section != section:
            section = p.section
            if section:
                out.append(f'<div class="qa-section">{esc(section)}</div>')
        if i == idx:
            inner = highlight_html(p.text, support)
            if "<mark>" not in inner:
                inner = highlight_html(p.text, whole=True)
            out.append(_para_html(p, "target", inner,
                                  ' id="passage-target" tabindex="-1" aria-current="true"'))
        else:
            cls = "context" if around is not None else "para"
            link = (f' <a class="open-passage" href="{esc(permalink(p.id))}" '
                    f'aria-label="Open passage {esc(p.label)}">open</a>')
            out.append(_para_html(p, cls, esc(p.text) + link))
    if hi < len(doc):
        out.append(f'<p class="qa-empty">… {_n(len(doc) - hi, "passage")} after</p>')
    if idx is not None:
        p = doc[idx]
        nav = []
        if idx > 0:
            nav.append(f'<a class="open-passage" href="{esc(permalink(doc[idx - 1].id))}">'
                       f'← previous</a>')
        if idx + 1 < len(doc):
            nav.append(f'<a class="open-passage" href="{esc(permalink(doc[idx + 1].id))}">'
                       f'next →</a>')
        nav.append(f'<a class="permalink" href="{esc(permalink(p.id))}" target="_blank" '
                   f'rel="noopener">Permalink</a><code class="qa-id">{esc(p.id)}</code>')
        out.append(f'<div class="qa-links">{"".join(nav)}</div>')
    out.append("</div>")
    return "".join(out)


def status_html(service: QAService) -> str:
    try:
        st = service.status()
    except Exception as exc:  # noqa: BLE001 - the status line must never break the page
        return f'<div class="qa-status"><span>status unavailable: {esc(exc)}</span></div>'
    dot = "ok" if st.llm_ok else "off"
    return (f'<div class="qa-status" role="status" aria-live="polite">'
            f'<span><span class="dot {dot}"></span>{esc(st.llm)}</span>'
            f'<span>embeddings: {esc(st.embedding_model)}</span>'
            f'<span>{st.documents} documents, {st.passages} passages indexed</span>'
            f'<span>store: {esc(st.store)}</span></div>')


def unavailable_html(exc: BaseException) -> str:
    """What a panel shows when the index cannot be read (e.g. the Chroma server is down)."""
    return (f'<div class="qa-panel"><p class="qa-empty qa-error" role="alert">The index is '
            f'unavailable: {esc(exc)}</p></div>')


def documents_table_html(docs: list[tuple[str, str, int]]) -> str:
    if not docs:
        return '<p class="qa-empty">No document is indexed yet.</p>'
    rows = "".join(f"<tr><td>{esc(t)}</td><td><code>{esc(s)}</code></td><td>{n}</td></tr>"
                   for s, t, n in docs)
    return (f'<table class="qa-docs"><thead><tr><th>Title</th><th>File</th><th>Passages</th>'
            f'</tr></thead><tbody>{rows}</tbody></table>')


# -- uploads ------------------------------------------------------------------------------
class UploadError(ValueError):
    """An upload refused, with a message for the user."""


def safe_upload_name(raw: str) -> str:
    """The base name of an uploaded file, cleaned: no folders, no control characters, no
    hidden or empty names. Raises UploadError."""
    name = unicodedata.normalize("NFC", str(raw or "")).replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    name = re.sub(r'[<>:"|?*]', "_", name)
    name = re.sub(r"\s+", " ", name).strip()
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    if not name or name in (".", "..") or name.startswith(".") or not stem.strip(" ._-"):
        raise UploadError(f"“{raw}” is not a usable file name")
    if len(name.encode("utf-8")) > 180:
        keep = stem.encode("utf-8")[: 170 - len(ext)].decode("utf-8", "ignore").rstrip()
        name = f"{keep}.{ext}" if ext else keep
    return name


def check_upload(name: str, size: int, max_mb: float) -> None:
    ext = Path(name).suffix.lower()
    if ext not in UPLOAD_TYPES:
        raise UploadError(f"{name}: type “{ext or '(none)'}” is not accepted; upload "
                          f"{', '.join(UPLOAD_TYPES)} files")
    if size > max_mb * 1024 * 1024:
        raise UploadError(f"{name}: {size / 1048576:.1f} MB is over the limit of "
                          f"{max_mb:g} MB per file")
    if size == 0:
        raise UploadError(f"{name}: the file is empty")


@dataclass
class UploadResult:
    name: str
    ok: bool
    message: str


from ingest.indexer import uploads_dir  # noqa: E402
from ingest.loaders import SkipFile, load_document  # noqa: E402


def _indexed_files(settings: Settings) -> dict[str, str]:
    """source -> sha256 of every indexed file, from the ingest manifest."""
    from ingest.indexer import manifest_path
    from ingest.manifest import Manifest

    return {s: e.sha256 for s, e in Manifest.load(manifest_path(settings)).files.items()}


def ingest_upload(service: QAService, tmp_path: str | Path, original_name: str | None = None,
                  on_progress=None) -> UploadResult:
    """Check, store under data_dir/uploads/ and index one uploaded file (never prunes)."""
    from ingest.manifest import file_sha256

    settings = service.settings
    tmp_path = Path(tmp_path)
    shown = original_name or tmp_path.name
    try:
        name = safe_upload_name(shown)
        check_upload(name, tmp_path.stat().st_size, settings.app.max_upload_mb)
        sha = file_sha256(tmp_path)
        indexed = _indexed_files(settings)
        same = [s for s, h in indexed.items() if h == sha]
        if same:
            return UploadResult(name, True, f"{name}: already indexed (as {same[0]}), nothing to do")
        folder = uploads_dir(settings)
        folder.mkdir(parents=True, exist_ok=True)
        # A name taken by a corpus document (not an earlier upload) gets a suffix, so an
        # upload never replaces a document of the corpus.
        stem, ext = Path(name).stem, Path(name).suffix
        n = 2
        while name in indexed and not (folder / name).is_file():
            name = f"{stem}-{n}{ext}"
            n += 1
        dest = folder / name
        if dest.resolve().parent != folder.resolve():
            raise UploadError(f"“{shown}” is not a usable file name")
        replaced = dest.is_file()
        # Through a hidden temporary file (ingest skips hidden files), checked, then renamed:
        # a full disk never leaves half a file, and a file that cannot be read as a document
        # never replaces an earlier upload of the same name (nor its passages).
        part = folder / f".{Path(name).stem}.part{Path(name).suffix}"
        try:
            shutil.copyfile(tmp_path, part)
            load_document(part, max_bytes=int(settings.ingest.max_file_mb * 1024 * 1024))
            part.replace(dest)
        except SkipFile as exc:
            part.unlink(missing_ok=True)
            return UploadResult(name, False, f"{name}: not indexed: {exc}")
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise UploadError(f"{name}: not added: cannot store it in {folder}: "
                              f"{exc.strerror or exc}; nothing else changed") from None
        if on_progress:
            on_progress(name)
        report = service.ingest(dest, prune=False, progress=True)
    except UploadError as exc:
        return UploadResult(shown, False, str(exc))
    except StoreError as exc:  # disk full, read-only data dir, store unreachable
        log.warning("upload of %s not indexed: %s", shown, exc)
        return UploadResult(shown, False, f"{shown}: not indexed: {exc}")
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
        log.exception("upload of %s failed", shown)
        return UploadResult(shown, False, f"{shown}: indexing failed: {exc}")
    skipped = dict(report.skipped)
    if name in skipped:
        dest.unlink(missing_ok=True)
        return UploadResult(name, False, f"{name}: not indexed: {skipped[name]}")
    if name in report.unchanged:
        return UploadResult(name, True, f"{name}: already indexed, nothing to do")
    count = report.passages_by_file.get(name, 0)
    verb = "updated" if replaced or name in report.updated else "indexed"
    return UploadResult(name, True, f"{name}: {verb}, {count} passages; it is now searchable "
                                    f"and citable")


# -- the app --------------------------------------------------------------------------------
def _theme():
    return gr.themes.Default(
        font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def _doc_choices(docs: list[tuple[str, str, int]]) -> list[tuple[str, str]]:
    return [(f"{t} — {s}" if t and t != s else s, s) for s, t, _ in docs]


def _keep_choices_private(component: gr.components.Component) -> None:
    """Leave a component's choices (document names) out of the API description.

    Gradio embeds that description in the page it serves to anyone, the login page of an
    app with a password included, and would list every document name in it (as the enum
    of the choices and as examples). Names are data, not schema: the description says
    "a list of strings" and the choices come with the page once logged in."""
    multiple = isinstance(component, gr.CheckboxGroup) or getattr(component, "multiselect", False)
    schema = ({"type": "array", "items": {"type": "string"}, "title": "Documents"}
              if multiple else {"type": "string", "title": "Document"})
    example = [] if multiple else ""
    component.api_info = lambda: dict(schema)  # type: ignore[method-assign]
    component.example_payload = lambda: example  # type: ignore[method-assign]
    component.example_value = lambda: example  # type: ignore[method-assign]


def build_app(service: QAService) -> gr.Blocks:
    settings = service.settings
    try:
        docs = service.documents()
    except Exception:  # noqa: BLE001 - a broken store shows in the status line instead
        log.exception("cannot list the documents")
        docs = []
    doc_choices = _doc_choices(docs)
    default_k = settings.retrieval.top_k
    default_mode = settings.answer.mode

    with gr.Blocks(title="Document Q&A", analytics_enabled=False, fill_width=True) as demo:
        last_supports = gr.State({})  # passage id -> supporting sentence of the last answer

        with gr.Row(elem_id="app-header"):
            gr.HTML("<h1>Document Q&amp;A</h1>", elem_id="app-title", padding=False)
        status = gr.HTML(status_html(service), elem_id="status")

        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:
            # ---------------------------------------------------------------- chat
            with gr.Tab("Chat", id="chat", elem_id="chat-tab"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=320):
                        chatbot = gr.Chatbot(
                            label="Conversation", show_label=False, elem_id="chatbot",
                            height=520,
                            placeholder=PLACEHOLDER, examples=[{"text": q} for q in EXAMPLES],
                            latex_delimiters=[], feedback_options=None, buttons=["copy"],
                            autoscroll=True,
                        )
                        question = gr.Textbox(
                            label="Your question", elem_id="question", lines=1, max_lines=6,
                            placeholder="Ask about the documents… (Enter to send)",
                            autofocus=True, submit_btn="Send",
                            max_length=settings.answer.max_question_chars,
                        )
                        with gr.Row():
                            stop = gr.Button("Stop", elem_id="stop", size="sm", min_width=80)
                            clear = gr.Button("Clear conversation", elem_id="clear", size="sm",
                                              min_width=80)
                        with gr.Accordion("Answer settings", open=False, elem_id="answer-settings"):
                            mode = gr.Radio(MODES, value=default_mode, label="Answer mode",
                                            elem_id="mode")
                            k = gr.Slider(1, 30, value=default_k, step=1,
                                          label="Passages to retrieve", elem_id="k")
                            doc_filter = gr.CheckboxGroup(
                                doc_choices, value=[], elem_id="doc-filter",
                                label="Search only these documents (none ticked: all documents)",
                            )
                    with gr.Column(scale=2, min_width=300, elem_id="sources-col"):
                        sources = gr.HTML(sources_html(None), elem_id="sources",
                                          padding=False)
                        chat_viewer = gr.HTML("", elem_id="chat-viewer", padding=False)
                        chat_open_pid = gr.Textbox(elem_id="chat-open-pid", show_label=False,
                                                   container=False, elem_classes="qa-hidden")
                        chat_open_btn = gr.Button("open", elem_id="chat-open-btn",
                                                  elem_classes="qa-hidden")

            # ---------------------------------------------------------- citation lookup
            with gr.Tab("Citation lookup", id="lookup", elem_id="lookup-tab"):
                with gr.Column(elem_id="lookup-panel"):
                    with gr.Row(equal_height=True):
                        lookup_query = gr.Textbox(label="Search passages", elem_id="lookup-query",
                                                  placeholder="words, a quotation, a question…",
                                                  scale=4, min_width=200)
                        lookup_doc = gr.Dropdown([("All documents", "")] + doc_choices, value="",
                                                 label="Document", elem_id="lookup-doc",
                                                 scale=2, min_width=160)
                        lookup_btn = gr.Button("Search", variant="primary", elem_id="lookup-btn",
                                               scale=1, min_width=80)
                    with gr.Row(equal_height=True):
                        pid_box = gr.Textbox(label="Open a passage by id or permalink",
                                             elem_id="pid-box", scale=4, min_width=200,
                                             placeholder="e.g. 001_15cd4e670d3e8e09.txt#0012 "
                                                         "or http://127.0.0.1:7860/?passage=…")
                        pid_btn = gr.Button("Open", elem_id="pid-btn", scale=1, min_width=80)
                    with gr.Row(equal_height=True):
                        browse_doc = gr.Dropdown(doc_choices, value=None, label="Browse a document",
                                                 elem_id="browse-doc", scale=4, min_width=200)
                        browse_btn = gr.Button("Show document", elem_id="browse-btn", scale=1,
                                               min_width=80)
                    lookup_viewer = gr.HTML("", elem_id="lookup-viewer", padding=False)
                    lookup_results = gr.HTML("", elem_id="lookup-results", padding=False)
                    lookup_open_pid = gr.Textbox(elem_id="lookup-open-pid", show_label=False,
                                                 container=False, elem_classes="qa-hidden")
                    lookup_open_btn = gr.Button("open", elem_id="lookup-open-btn",
                                                elem_classes="qa-hidden")

            # ---------------------------------------------------------------- documents
            with gr.Tab("Documents", id="documents", elem_id="documents-tab"):
                gr.HTML(
                    f"<p>Add <strong>.txt, .md, .pdf or .docx</strong> files (at most "
                    f"{settings.app.max_upload_mb:g} MB each). They are stored in the app's data "
                    f"folder, indexed into the same index, and become searchable and citable. "
                    f"Nothing leaves this computer.</p>", padding=False)
                upload = gr.File(label="Files to add", file_count="multiple",
                                 file_types=list(UPLOAD_TYPES), elem_id="upload")
                upload_btn = gr.Button("Add to the index", variant="primary", elem_id="upload-btn")
                upload_report = gr.HTML("", elem_id="upload-report", padding=False)
                docs_table = gr.HTML(documents_table_html(docs), elem_id="docs-table",
                                     padding=False)

        for private in (doc_filter, lookup_doc, browse_doc):
            _keep_choices_private(private)

        # ------------------------------------------------------------------ handlers
        def respond(message, history, mode_value, k_value, docs_value, known=None):
            history = list(history or [])
            text = clean_question(message if isinstance(message, str) else "")
            if not text:
                gr.Warning(EMPTY_QUESTION)
                yield history, gr.skip(), "", gr.skip()
                return
            prior = history_for_service(history)
            # What is shown is what is answered: a question over the limit is cut (the
            # answer's notice says so) instead of filling the history with it.
            shown = text[: settings.answer.max_question_chars]
            history.append({"role": "user", "content": user_html(shown)})
            history.append({"role": "assistant", "content": answer_html("", streaming=True)})
            yield history, gr.skip(), "", gr.skip()
            from .answering import Done

            partial = ""
            try:
                for event in service.ask_stream(text, prior, mode=mode_value or None,
                                                k=int(k_value) if k_value else None,
                                                sources=list(docs_value or []) or None):
                    if isinstance(event, Done):
                        ans: Answer = event.answer
                        links = {c.marker: c.passage for c in ans.citations}
                        history[-1] = {"role": "assistant", "content": answer_html(
                            ans.text, links, mode=ans.mode, notice=ans.notice, model=ans.model)}
                        # supports of every answer so far, for citations of earlier turns too
                        supports = {**(known or {}),
                                    **{c.passage.id: c.support for c in ans.citations}}
                        yield history, sources_html(ans), "", supports
                        return
                    partial += getattr(event, "text", "") or ""
                    history[-1] = {"role": "assistant",
                                   "content": answer_html(partial, streaming=True)}
                    yield history, gr.skip(), "", gr.skip()
            except StoreError as exc:  # e.g. the Chroma server is down: say so, stay up
                log.warning("answering failed: %s", exc)
                history[-1] = {"role": "assistant", "content": answer_html(
                    partial, notice=f"The index is unavailable: {exc} Try again once it is "
                                    f"back.", mode="")}
                yield history, gr.skip(), "", gr.skip()
            except Exception as exc:  # noqa: BLE001 - show the reason in the chat
                log.exception("answering failed")
                history[-1] = {"role": "assistant", "content": answer_html(
                    partial, notice=f"The answer failed: {exc}", mode="")}
                yield history, gr.skip(), "", gr.skip()

        def guarded(fn):
            """An HTML handler that shows a store failure in its panel, not as an error."""
            def run(*args):
                try:
                    return fn(*args)
                except StoreError as exc:
                    log.warning("%s failed: %s", fn.__name__, exc)
                    return unavailable_html(exc)
            run.__name__ = fn.__name__
            return run

        @guarded
        def open_in_chat(ref, supports):
            pid = parse_passage_ref(ref)
            return _context(pid, (supports or {}).get(pid, ""))

        def _context(pid: str, support: str = "") -> str:
            if not pid:
                return ""
            p = service.passage(pid)
            if p is None:
                return (f'<div class="qa-viewer"><p class="qa-empty">No passage with the id '
                        f'<code>{esc(pid)}</code> in the index.</p></div>')
            return document_html(service.document(p.source), target=pid, support=support,
                                 around=2)

        @guarded
        def do_lookup(query, source):
            query = (query or "").strip()
            if not query:
                return results_html([], "")
            results = service.search(query, k=max(default_k, 10),
                                     sources=[source] if source else None)
            return results_html(results, query)

        @guarded
        def do_open(ref):
            return _context(parse_passage_ref(ref))

        @guarded
        def do_browse(source):
            if not source:
                return '<div class="qa-viewer"><p class="qa-empty">Choose a document.</p></div>'
            return document_html(service.document(source))

        def refresh_docs():
            try:
                d = service.documents()
            except StoreError as exc:
                log.warning("cannot list the documents: %s", exc)
                return (status_html(service), gr.skip(), gr.skip(), gr.skip(),
                        unavailable_html(exc))
            choices = _doc_choices(d)
            return (status_html(service), gr.update(choices=choices),
                    gr.update(choices=[("All documents", "")] + choices),
                    gr.update(choices=choices), documents_table_html(d))

        def on_load(request: gr.Request):
            params = dict(request.query_params) if request is not None else {}
            pid = (params.get("passage") or "").strip()
            source = (params.get("doc") or "").strip()
            refreshed = refresh_docs()
            if pid:
                return (*refreshed, gr.Tabs(selected="lookup"), do_open(pid), pid)
            if source:
                return (*refreshed, gr.Tabs(selected="lookup"), do_browse(source), gr.skip())
            return (*refreshed, gr.skip(), gr.skip(), gr.skip())

        def do_upload(files, progress=gr.Progress(track_tqdm=True)):
            files = [f for f in (files or []) if f]
            if not files:
                return ('<p class="qa-empty">Choose one or more files first.</p>', *refresh_docs(),
                        gr.skip())
            results = []
            for i, f in enumerate(files):
                path = getattr(f, "name", None) or (f.get("path") if isinstance(f, dict) else f)
                progress((i, len(files)), desc=f"Indexing {Path(str(path)).name}", unit="files")
                results.append(ingest_upload(service, path))
            progress((len(files), len(files)), desc="Done", unit="files")
            items = "".join(f'<li class="{"ok" if r.ok else "bad"}">{"✓" if r.ok else "✗"} '
                            f'{esc(r.message)}</li>' for r in results)
            return (f'<ul class="qa-upload-report">{items}</ul>', *refresh_docs(), None)

        def clear_chat():
            return [], sources_html(None), "", {}, ""

        # ---------------------------------------------------------------- wiring
        chat_inputs = [question, chatbot, mode, k, doc_filter, last_supports]
        chat_outputs = [chatbot, sources, question, last_supports]
        submit_ev = question.submit(respond, chat_inputs, chat_outputs, api_name="chat",
                                    show_progress="hidden")

        def example(evt: gr.SelectData):
            value = evt.value
            return value.get("text", "") if isinstance(value, dict) else str(value or "")

        ex_ev = chatbot.example_select(example, None, question, api_visibility="private").then(
            respond, chat_inputs, chat_outputs, api_visibility="private", show_progress="hidden")
        stop.click(None, None, None, cancels=[submit_ev, ex_ev])
        clear.click(clear_chat, None, [chatbot, sources, chat_viewer, last_supports, question],
                    cancels=[submit_ev, ex_ev], api_visibility="private")

        chat_open_btn.click(open_in_chat, [chat_open_pid, last_supports], chat_viewer,
                            api_visibility="private", show_progress="hidden").then(
            None, js=_focus_js("chat-viewer"))
        lookup_open_btn.click(do_open, lookup_open_pid, lookup_viewer, api_visibility="private",
                              show_progress="hidden").then(None, js=_focus_js("lookup-viewer"))

        lookup_query.submit(do_lookup, [lookup_query, lookup_doc], lookup_results,
                            api_name="lookup")
        lookup_btn.click(do_lookup, [lookup_query, lookup_doc], lookup_results,
                         api_visibility="private")
        pid_box.submit(do_open, pid_box, lookup_viewer, api_name="passage")
        pid_btn.click(do_open, pid_box, lookup_viewer, api_visibility="private")
        browse_doc.change(do_browse, browse_doc, lookup_viewer, api_name="browse")
        browse_btn.click(do_browse, browse_doc, lookup_viewer, api_visibility="private")

        doc_outputs = [status, doc_filter, lookup_doc, browse_doc, docs_table]
        upload_btn.click(do_upload, upload, [upload_report, *doc_outputs, upload],
                         api_name="upload", concurrency_limit=1)
        demo.load(on_load, None, [*doc_outputs, tabs, lookup_viewer, pid_box],
                  api_visibility="private", show_progress="hidden")
        timer = gr.Timer(60)
        timer.tick(lambda: status_html(service), None, status, api_visibility="private",
                   show_progress="hidden")

        # JSON endpoints for scripts (gradio_client): plain data, no HTML.
        def ask(question: str, mode: str = "extractive", k: int = 0,
                sources: list[str] | None = None) -> dict:
            """Answer a question; returns the Answer as a dict."""
            try:
                return service.ask(question, None, mode=mode or None, k=int(k) or None,
                                   sources=list(sources or []) or None).to_dict()
            except (ValueError, StoreError) as exc:  # empty question, index unavailable
                raise gr.Error(str(exc), print_exception=False) from None

        def search(query: str, k: int = 10, source: str = "") -> list[dict]:
            """The best passages for a query."""
            try:
                return [r.to_dict() for r in service.search(
                    query, k=int(k) or None, sources=[source] if source else None)]
            except StoreError as exc:
                raise gr.Error(str(exc), print_exception=False) from None

        def passage(ref: str) -> dict:
            """A passage by id or permalink, with its neighbours."""
            pid = parse_passage_ref(ref)
            p = service.passage(pid)
            if p is None:
                return {"found": False, "id": pid}
            return {"found": True, "passage": p.to_dict(), "permalink": permalink(pid),
                    "neighbours": [q.to_dict() for q in service.neighbours(pid)]}

        def status_json() -> dict:
            """What the app runs on: LLM, embedding model, documents and passages."""
            try:
                st = service.status()
            except StoreError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            queue = getattr(demo, "_queue", None)
            return {"line": st.line(), "llm": st.llm, "llm_ok": st.llm_ok,
                    "embedding_model": st.embedding_model, "documents": st.documents,
                    "passages": st.passages, "store": st.store,
                    # the request queue's bounds, as launch() set them
                    "queue": {"max_size": getattr(queue, "max_size", None),
                              "concurrency": getattr(queue, "default_concurrency_limit", None)}}

        gr.api(ask, api_name="ask_json")
        gr.api(search, api_name="search_json")
        gr.api(passage, api_name="passage_json")
        gr.api(status_json, api_name="status_json")
    return demo


def _focus_js(viewer: str) -> str:
    """Bring the opened passage into view and give it the keyboard focus."""
    return ("() => { setTimeout(() => { const t = document.querySelector('#%s #passage-target');"
            " if (t) { t.scrollIntoView({block: 'nearest'}); t.focus({preventScroll: true}); }"
            " }, 60); }" % viewer)


def _read_static(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def launch_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for Blocks.launch: local assets only, private, no share link."""
    return {
        "share": False,
        "theme": _theme(),
        "css": _read_static("app.css"),
        "js": _read_static("app.js"),
        "head": '<meta name="referrer" content="no-referrer">',
        "max_file_size": int(settings.app.max_upload_mb * 1024 * 1024),
        "footer_links": ["api", "settings"],
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        "enable_monitoring": False,
        "show_error": True,
    }


def _auth(settings: Settings, host: str) -> tuple[str, str] | None:
    raw = os.environ.get(settings.app.auth_env, "")
    if raw:
        user, sep, password = raw.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{settings.app.auth_env} must be 'user:password'")
        return user, password
    if host not in LOOPBACK:
        raise ValueError(
            f"the app would listen on {host}, reachable from other machines: set "
            f"{settings.app.auth_env}=user:password to require a login, or use app.host: 127.0.0.1"
        )
    return None


def launch(settings: Settings, service: QAService | None = None, *, host: str | None = None,
           port: int | None = None, block: bool = True, quiet: bool = False,
           inbrowser: bool = False) -> tuple[gr.Blocks, str]:
    """Build and start the app; returns (blocks, local url). ``block=False`` returns at once
    (tests); close it with ``blocks.close()``."""
    host = host or settings.app.host
    port = port or settings.app.port
    auth = _auth(settings, host)
    service = service or QAService(settings)
    demo = build_app(service)
    # Bounded: at most app.concurrency answers at once per handler, app.max_queue waiting;
    # beyond that a request is refused at once ("queue is full"), never piled up.
    demo.queue(default_concurrency_limit=settings.app.concurrency,
               max_size=settings.app.max_queue)
    _, url, _ = demo.launch(server_name=host, server_port=port, auth=auth,
                            prevent_thread_lock=not block, quiet=quiet, inbrowser=inbrowser,
                            **launch_options(settings))
    return demo, url
