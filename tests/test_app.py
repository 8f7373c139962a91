"""The web app through its API (gradio_client) against the real app on 127.0.0.1, plus the
app's pure helpers (escaping, file names, history parsing)."""

from __future__ import annotations

import re
import urllib.parse

import pytest

from qa_app.app import (
    UploadError,
    _auth,
    answer_html,
    check_upload,
    find_support,
    highlight_html,
    history_for_service,
    message_text,
    parse_passage_ref,
    permalink,
    safe_upload_name,
)
from qa_app.schema import Passage

FR_QUESTION = "Quand la Thaïlande a-t-elle adhéré à la CICA ?"


def _content(message) -> str:
    """Raw content (HTML kept) of a chat message as the client returns it."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False, download_files=False)


# -- pure helpers -------------------------------------------------------------------------
def _passage(text="Le Conseil décide de proroger le mandat. Il prie le Secrétaire général.",
             **kw) -> Passage:
    fields = dict(id="doc.txt#0003", source="doc.txt", title="Résolution <b>X</b>",
                  section="II. Décisions", para_no="3", text=text, start=0, end=len(text),
                  position=3)
    fields.update(kw)
    return Passage(**fields)


def test_answer_html_escapes_text_and_links_markers():
    p = _passage()
    out = answer_html("Texte <script>alert(1)</script> ![x](http://evil/x.png) [1] [9].",
                      {1: p}, mode="extractive")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "![x](http" not in out  # Markdown image syntax defused: nothing is fetched
    assert f'href="{permalink(p.id)}"' in out and 'class="cite"' in out
    assert '<span class="cite-plain">&#91;9&#93;</span>' in out  # unknown marker: not a link
    assert "Résolution &lt;b&gt;X&lt;/b&gt;" in out  # the title in the tooltip is escaped too


def test_highlight_marks_support_even_with_other_spacing():
    p = _passage()
    assert highlight_html(p.text, "Il prie le   Secrétaire\ngénéral.").endswith(
        "<mark>Il prie le Secrétaire général.</mark>")
    assert "<mark>" not in highlight_html(p.text, "Rien à voir ici du tout.")
    assert find_support("a <b> c", "<b>") == (2, 5)
    assert highlight_html("x <i>y</i>", "<i>y</i>") == "x <mark>&lt;i&gt;y&lt;/i&gt;</mark>"


def test_message_text_reads_strings_and_gradio6_parts():
    assert message_text("plain") == "plain"
    assert message_text([{"type": "text", "text": "<div>a &amp; b</div>"},
                         {"type": "text", "text": "c"}]) == "a & b\nc"
    assert message_text({"type": "text", "text": "d"}) == "d"
    history = [
        {"role": "user", "content": [{"type": "text", "text": "<div class=\"qa-question\">Q1</div>"}]},
        {"role": "assistant", "content": answer_html("R1 [1]", {1: _passage()}, mode="extractive",
                                                     notice="no language model")},
        {"role": "system", "content": "ignored"},
    ]
    assert history_for_service(history) == [{"role": "user", "content": "Q1"},
                                            {"role": "assistant", "content": "R1 [1]"}]


@pytest.mark.parametrize("raw,expected", [
    ("../../etc/rapport.txt", "rapport.txt"),
    ("..\\..\\Windows\\note.md", "note.md"),
    ("C:/x/y/Mémo final.docx", "Mémo final.docx"),
    ("a\x00b<c>.pdf", "ab_c_.pdf"),
])
def test_upload_names_keep_only_a_clean_base_name(raw, expected):
    assert safe_upload_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "..", "../", ".hidden.txt", "...txt", "dir/", "  "])
def test_upload_names_refuse_empty_or_odd_names(raw):
    with pytest.raises(UploadError):
        safe_upload_name(raw)


def test_upload_limits_give_clear_messages():
    with pytest.raises(UploadError, match="type “.exe” is not accepted"):
        check_upload("x.exe", 10, 20)
    with pytest.raises(UploadError, match="over the limit of 1 MB"):
        check_upload("x.txt", 2 * 1024 * 1024, 1)
    check_upload("x.PDF", 10, 20)


def test_passage_refs_and_auth(settings, monkeypatch):
    pid = "001_x.txt#0012"
    assert parse_passage_ref(pid) == pid
    assert parse_passage_ref("http://127.0.0.1:7860/" + permalink(pid)) == pid
    assert parse_passage_ref(urllib.parse.quote(pid, safe="")) == pid
    monkeypatch.delenv(settings.app.auth_env, raising=False)
    assert _auth(settings, "127.0.0.1") is None
    with pytest.raises(ValueError, match=settings.app.auth_env):
        _auth(settings, "0.0.0.0")
    monkeypatch.setenv(settings.app.auth_env, "ana:s3cret")
    assert _auth(settings, "0.0.0.0") == ("ana", "s3cret")


# -- the running app through gradio_client --------------------------------------------------
def test_status_names_extractive_mode_model_and_counts(client, app_server):
    st = client.predict(api_name="/status_json")
    assert st["llm"] == "extractive mode: no language model reachable" and not st["llm_ok"]
    assert "e5" in st["embedding_model"].lower()
    assert st["documents"] == 5 and st["passages"] > 50  # 4 seeds + the HTML note


def test_chat_answers_french_question_with_citations_and_sources(client):
    history, sources, cleared = client.predict(
        FR_QUESTION, [], "extractive", 5, [], api_name="/chat")
    assert cleared == ""
    assert [m["role"] for m in history] == ["user", "assistant"]
    answer = _content(history[-1])
    links = re.findall(r'<a class="cite" href="\?passage=([^"]+)"', answer)
    assert links, answer
    assert "Thaïlande" in message_text(answer)  # answered in French, from the documents
    assert "extractive" in answer
    # the sources panel lists every cited passage, support highlighted, with its permalink
    assert '<li class="qa-card" id="cite-1"' in sources
    assert "<mark>" in sources
    for pid in links:
        assert f'href="?passage={pid}"' in sources


def test_chat_follow_up_reads_gradio6_history(client):
    history, _, _ = client.predict(FR_QUESTION, [], "extractive", 5, [], api_name="/chat")
    history, sources, _ = client.predict(
        "Et le Viet Nam ?", history, "extractive", 5, [], api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant"] * 2
    assert "qa-answer" in _content(history[-1])


def test_chat_respects_the_document_filter(client):
    only = "003_08fd0699280038d4.txt"
    _, sources, _ = client.predict(FR_QUESTION, [], "extractive", 5, [only], api_name="/chat")
    pids = re.findall(r'data-pid="([^"]+)"', sources)
    assert pids and all(pid.startswith(only) for pid in pids)


def test_ask_json_returns_a_cited_extractive_answer(client):
    answer = client.predict(FR_QUESTION, "extractive", 5, [], api_name="/ask_json")
    assert answer["mode"] == "extractive"
    assert answer["citations"] and answer["passages"]
    assert all(f"[{c['marker']}]" in answer["text"] for c in answer["citations"])


def test_ask_json_abstains_with_the_reason(client):
    """Abstention without the LLM says why: a year no document mentions, an amount of money
    that no passage states."""
    year = client.predict("Qui présidait la CICA en 1987 ?", "auto", 5, [], api_name="/ask_json")
    assert year["mode"] == "abstained" and year["citations"] == []
    assert year["text"] == "Les documents fournis ne permettent pas de répondre à cette question."
    assert "1987" in year["notice"]
    cost = client.predict("How much did the 2006 Almaty summit cost?", "auto", 5, [],
                          api_name="/ask_json")
    assert cost["mode"] == "abstained" and "amount of money" in cost["notice"]


def test_lookup_search_with_and_without_document_filter(client):
    html = client.predict("adhésion de la Thaïlande", "", api_name="/lookup")
    assert "qa-card" in html and "Thaïlande" in html
    only = "002_a329dce9da1eed87.txt"
    html = client.predict("terrorisme", only, api_name="/lookup")
    pids = re.findall(r'data-pid="([^"]+)"', html)
    assert pids and all(p.startswith(only) for p in pids)


def test_passage_by_id_and_by_permalink_shows_it_between_its_neighbours(client, app_server):
    doc = app_server.service.document("001_15cd4e670d3e8e09.txt")
    target = doc[5]
    for ref in (target.id, app_server.url + permalink(target.id)):
        html = client.predict(ref, api_name="/passage")
        assert 'id="passage-target"' in html
        assert f'data-pid="{doc[4].id}"' in html and f'data-pid="{doc[6].id}"' in html
        assert html.index(doc[4].id) < html.index('id="passage-target"') < html.index(doc[6].id)
    data = client.predict(target.id, api_name="/passage_json")
    assert data["found"] and data["passage"]["text"] == target.text
    assert client.predict("nope.txt#9999", api_name="/passage_json")["found"] is False
    assert "No passage with the id" in client.predict("nope.txt#9999", api_name="/passage")


def test_browse_a_document_paragraph_by_paragraph(client, app_server):
    source = "002_a329dce9da1eed87.txt"
    html = client.predict(source, api_name="/browse")
    assert html.count('class="qa-para') == len(app_server.service.document(source))


def test_html_in_a_document_is_escaped(client, app_server):
    html = client.predict("quetzalcoatlus", app_server.html_doc, api_name="/lookup")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html and "<img" not in html


def test_upload_indexes_a_file_then_reports_a_duplicate(client, app_server, tmp_path):
    from gradio_client import handle_file

    note = tmp_path / "Rapport sur les pingouins.md"
    note.write_text("# Rapport\n\nLe manchot empereur vit en Antarctique et plonge à plus de "
                    "cinq cents mètres de profondeur pour se nourrir.\n", encoding="utf-8")
    report = client.predict([handle_file(str(note))], api_name="/upload")[0]
    assert "Rapport sur les pingouins.md: indexed" in report, report
    stored = app_server.tmp / "data" / "uploads" / "Rapport sur les pingouins.md"
    assert stored.is_file()
    html = client.predict("manchot empereur", "", api_name="/lookup")
    assert "Rapport sur les pingouins.md" in html
    again = client.predict([handle_file(str(note))], api_name="/upload")[0]
    assert "already indexed" in again
    seeds = {s for s, _, _ in app_server.service.documents()}
    assert "001_15cd4e670d3e8e09.txt" in seeds  # nothing was pruned


def test_upload_refuses_other_types_with_a_message(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "programme.exe"
    bad.write_bytes(b"MZ\x00\x01")
    try:
        report = client.predict([handle_file(str(bad))], api_name="/upload")[0]
    except Exception as exc:  # Gradio itself may refuse the type before the app sees it
        report = str(exc)
    assert "not accepted" in report or "Invalid file type" in report, report
