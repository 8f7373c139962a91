"""The web app in headless Chromium (Debian's /usr/bin/chromium, driven by playwright).

Every test records each request the page makes and fails on any that leaves 127.0.0.1.
Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import ARTIFACTS, HTML_DOC_NAME

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update"]
SHOTS = ARTIFACTS / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
FR_QUESTION = "Quand la Thaïlande a-t-elle adhéré à la CICA ?"
TIMEOUT = 60_000  # ms; the first answer warms the model up on a shared 2-core machine


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A page with its requests and dialogs recorded."""

    def __init__(self, browser, width: int, height: int) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def outside(self) -> list[str]:
        out = []
        for url in self.requests:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                continue
            if parts.hostname not in LOCAL_HOSTS:
                out.append(url)
        return out


@pytest.fixture
def make_page(browser):
    pages: list[Page] = []

    def make(width: int = 1280, height: int = 900) -> Page:
        p = Page(browser, width, height)
        pages.append(p)
        return p

    yield make
    try:
        for p in pages:
            assert p.requests, "no request was recorded"
            assert not p.outside(), f"requests left 127.0.0.1: {p.outside()}"
            assert not p.dialogs, f"a dialog fired: {p.dialogs}"
    finally:
        for p in pages:
            p.context.close()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _open(p: Page, url: str, ready: str = "#question textarea") -> None:
    p.page.goto(url)
    p.page.wait_for_selector(ready)
    p.page.wait_for_selector("#status .qa-status")


def _ask(page, question: str) -> None:
    box = page.locator("#question textarea").first
    box.fill(question)
    box.press("Enter")


def test_chat_streams_a_cited_answer_and_opens_the_cited_passage(app_server, make_page):
    p = make_page()
    _open(p, app_server.url)
    page = p.page
    status = page.locator("#status").inner_text()
    assert "extractive mode: no language model reachable" in status
    assert "passages indexed" in status and "e5" in status.lower()
    assert page.get_by_text("Quand la Thaïlande").first.is_visible()  # an example question
    _shot(page, "desktop-empty.png")

    _ask(page, FR_QUESTION)
    cite = page.locator("#chatbot a.cite").first
    cite.wait_for()
    page.locator("#chatbot .qa-answer .qa-mode").wait_for()  # the final answer is shown
    answer = page.locator("#chatbot .qa-answer").last.inner_text()
    assert "Thaïlande" in answer
    # the sources panel lists exactly the cited passages, supporting sentence highlighted
    cited = page.locator("#chatbot .qa-answer").last.locator("a.cite")
    cited_pids = {cited.nth(i).get_attribute("href") for i in range(cited.count())}
    cards = page.locator("#sources .qa-panel > ol.qa-cards > li.qa-card")
    assert cards.count() == len(cited_pids) >= 1
    for i in range(cards.count()):
        card = cards.nth(i)
        assert card.locator("a.open-passage").get_attribute("href") in cited_pids
        assert card.locator("mark").first.is_visible()
    # screen readers get the visible text of the message, not its HTML
    label = page.locator('#chatbot [data-testid="bot"]').last.get_attribute("aria-label")
    assert label.startswith("Answer: ") and "<" not in label

    cite.click()
    target = page.locator("#chat-viewer #passage-target")
    target.wait_for()
    assert target.locator("mark").first.is_visible()
    pid = urllib.parse.unquote(cite.get_attribute("href").split("passage=", 1)[1])
    assert target.get_attribute("data-pid") == pid
    assert page.url.rstrip("/") == app_server.url.rstrip("/")  # opened in place, no reload
    # neighbours are shown around it, unless it is the first or last passage
    assert page.locator("#chat-viewer .qa-para").count() >= 2
    _shot(page, "desktop-answer.png")


def test_citation_opens_by_keyboard(app_server, make_page):
    p = make_page()
    _open(p, app_server.url)
    page = p.page
    _ask(page, "Que décident les dirigeants au paragraphe 23 de la déclaration du deuxième "
               "Sommet de la CICA ?")
    cite = page.locator("#chatbot a.cite").first
    cite.wait_for()
    cite.focus()
    page.keyboard.press("Enter")
    page.locator("#chat-viewer #passage-target").wait_for()
    # the opened passage takes the focus, so a keyboard user lands on it
    page.wait_for_function(
        "() => document.activeElement && document.activeElement.id === 'passage-target'")


def test_llm_answer_streams_token_by_token(llm_app_server, make_page):
    p = make_page()
    _open(p, llm_app_server.url)
    page = p.page
    assert "LLM: fake-model @ http://127.0.0.1" in page.locator("#status").inner_text()
    _ask(page, FR_QUESTION)
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answers = page.locator("#chatbot .qa-answer")
        if answers.count():
            seen.add(answers.last.inner_text().strip())
        if page.locator("#chatbot a.cite").count():
            break
        time.sleep(0.1)
    partial = [s for s in seen if s and s != "…" and "membre" not in s]
    assert partial, f"no partial answer was seen while streaming: {seen}"
    page.locator("#chatbot a.cite").first.wait_for()
    assert "generated by fake-model" in page.locator("#chatbot .qa-answer").last.inner_text()


def test_permalink_opens_the_app_on_the_passage(app_server, make_page):
    doc = app_server.service.document("002_a329dce9da1eed87.txt")
    target = doc[len(doc) // 2]
    p = make_page()
    _open(p, app_server.url + "?passage=" + urllib.parse.quote(target.id, safe=""),
          ready="#lookup-viewer")
    page = p.page
    shown = page.locator("#lookup-viewer #passage-target")
    shown.wait_for()
    assert shown.get_attribute("data-pid") == target.id
    assert target.text.split()[0] in shown.inner_text()
    assert page.locator("#lookup-viewer .qa-para").count() >= 3  # with its neighbours
    # "next" moves along the document in place
    page.locator("#lookup-viewer a.open-passage", has_text="next").click()
    page.wait_for_function(
        "(pid) => { const t = document.querySelector('#lookup-viewer #passage-target');"
        " return t && t.getAttribute('data-pid') === pid; }", arg=doc[len(doc) // 2 + 1].id)
    _shot(page, "desktop-permalink.png")


def test_lookup_tab_finds_a_passage_and_opens_it(app_server, make_page):
    p = make_page()
    _open(p, app_server.url)
    page = p.page
    page.get_by_role("tab", name="Citation lookup").click()
    box = page.locator("#lookup-query textarea, #lookup-query input").first
    box.fill("sécurité de l'approvisionnement en énergie")
    box.press("Enter")
    card = page.locator("#lookup-results .qa-card").first
    card.wait_for()
    assert "énergie" in card.inner_text()
    card.locator("a.open-passage").click()
    shown = page.locator("#lookup-viewer #passage-target")
    shown.wait_for()
    assert shown.get_attribute("data-pid") == card.get_attribute("data-pid")
    _shot(page, "desktop-lookup.png")


def test_html_in_a_document_renders_as_text(app_server, make_page):
    p = make_page()
    _open(p, app_server.url)
    page = p.page
    page.get_by_role("tab", name="Citation lookup").click()
    box = page.locator("#lookup-query textarea, #lookup-query input").first
    box.fill("quetzalcoatlus")
    box.press("Enter")
    card = page.locator("#lookup-results .qa-card", has_text="quetzalcoatlus").first
    card.wait_for()
    text = card.inner_text()
    assert "<script>alert(1)</script>" in text
    assert "<img src=x onerror=alert(2)>" in text
    assert page.locator("#lookup-results script, #lookup-results img, #lookup-results b").count() == 0
    # the same passage opened in its document, and the whole document, stay text too
    card.locator("a.open-passage").click()
    page.locator("#lookup-viewer #passage-target").wait_for()
    assert "<script>alert(1)</script>" in page.locator("#lookup-viewer").inner_text()
    assert page.locator("#lookup-viewer script, #lookup-viewer img").count() == 0
    page.wait_for_timeout(500)  # give a wrongly rendered onerror handler time to fire
    assert not p.dialogs
    assert HTML_DOC_NAME in page.locator("#lookup-viewer").inner_text()


def test_phone_width_layout(app_server, make_page):
    p = make_page(375, 812)
    _open(p, app_server.url)
    page = p.page
    _shot(page, "mobile-empty.png")
    _ask(page, FR_QUESTION)
    page.locator("#chatbot a.cite").first.wait_for()
    page.locator("#chatbot a.cite").first.click()
    page.locator("#chat-viewer #passage-target").wait_for()
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= 375 + 1, f"the page is {overflow}px wide at a 375px viewport"
    box = page.locator("#question").bounding_box()
    assert box and box["width"] <= 375
    _shot(page, "mobile-answer.png")
