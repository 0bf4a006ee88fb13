"""The real UI in a real browser: Debian's Chromium driven by Playwright, against `app.py serve`
started on a free loopback port with the real default model (Qwen2.5-Coder-0.5B-Instruct).

Screenshots go to tests/artifacts/ (git-ignored) for a person to look at.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, ROOT, make_pdf

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
FACTS = {
    "Varrow Point": ("lighthouse keeper", "Ilse Marrick"),
    "Calloway": ("ferryman", "Tobin Reyes"),
    "Ashgrove": ("baker", "Mira Holt"),
    "Tessel": ("archivist", "Jonah Wick"),
}
FILLER = "The harbour town wakes early and the boats leave before dawn. " * 12

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("ui-data")
    port = _free_port()
    env = {**os.environ, "TOME_DATA_DIR": str(data), "TOME_MODELS_DIR": str(MODELS_DIR), "TOME_MODEL": "qwen",
           "TOME_PORT": str(port), "TOME_MAX_NEW_TOKENS": "32", "HF_HUB_OFFLINE": "1"}
    log = open(data / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((data / "serve.log").read_text()[-3000:])
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("the UI did not start in time")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                    "--disable-background-networking", "--disable-component-update",
                                    "--disable-sync"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    folder = tmp_path_factory.mktemp("books")
    pages = [FILLER + f"The {role} of {place} is named {name}. " + FILLER for place, (role, name) in FACTS.items()]
    return make_pdf(folder / "harbour.pdf", pages, title="Harbour Towns")


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#chat")
    return page


def _upload(page, path: Path, expect: str):
    """Upload through the Library tab; returns the report once it mentions ``expect``."""
    page.get_by_role("tab", name="Library").click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.wait_for_timeout(500)
    page.locator("#add-btn").click()
    page.wait_for_function("(t) => document.querySelector('#upload-report').innerText.includes(t)", arg=expect,
                           timeout=300_000)
    return page.locator("#upload-report").inner_text()


def _wait_memories(page):
    """Until the Library table (refreshed by its timer while the worker compresses) shows the memories made."""
    page.get_by_role("tab", name="Library").click()
    page.wait_for_function("(() => { const t = document.querySelector('#library').innerText;"
                           " return t.includes('ready') && !t.includes('queued') && !t.includes('compressing'); })()",
                           timeout=300_000)


def _choose_book(page, label_start: str):
    page.get_by_role("tab", name="Chat").click()
    page.locator("#books input").click()
    page.get_by_role("option", name=label_start).first.click()
    page.keyboard.press("Escape")


def _ask(page, question: str, done_in: str = "#chat", answers: int = 1):
    page.locator("#question textarea").fill(question)
    page.locator("#ask-btn").click()
    page.wait_for_function(
        f"document.querySelector('{done_in}').innerText.split('Sources:').length > {answers}", timeout=300_000)


def _expand_sources(page, where: str):
    for header in page.locator(f"{where} [role=button]:has-text('Sources:')").all():
        header.click()
    page.wait_for_timeout(300)


def test_upload_ask_cite_compare_and_a_bad_file(server, browser, book, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    page = _open(browser, server)
    report = _upload(page, book, "added Harbour Towns")
    assert "added Harbour Towns: 4 pages" in report and "askable now" in report  # stage 1 only
    table = page.locator("#library").inner_text()
    assert "Harbour Towns" in table and "\n4\n" in table and "yes" in table
    assert any(w in table for w in ("queued", "compressing", "ready"))  # stage 2 in the background
    _wait_memories(page)
    page.screenshot(path=str(ARTIFACTS / "library.png"))

    _choose_book(page, "Harbour Towns (4 p.)")
    _ask(page, "What is the name of the ferryman of Calloway?")
    chat = page.locator("#chat").inner_text()
    assert "Tobin Reyes" in chat
    _expand_sources(page, "#chat")
    sources = page.locator("#chat").inner_text()
    assert "first token" in sources
    top = re.search(r"Sources: Harbour Towns, pp?\. (\d+)(?:-(\d+))?", sources)
    assert top and int(top.group(1)) <= 2 <= int(top.group(2) or top.group(1))  # the fact is on page 2
    page.screenshot(path=str(ARTIFACTS / "chat.png"))

    page.get_by_text("compare", exact=True).click()
    page.locator("#new-btn").click()
    page.wait_for_timeout(300)
    _ask(page, "What is the name of the baker of Ashgrove?", done_in="#chat-raw")
    _expand_sources(page, "#chat")
    _expand_sources(page, "#chat-raw")
    left, right = page.locator("#chat").inner_text(), page.locator("#chat-raw").inner_text()
    # "auto" is kvzip-fast for Qwen
    assert "compressed kvzip-fast 8x" in left and "memory slots" in left and "first token" in left
    assert "uncompressed · " in right and "document tokens" in right and "Mira Holt" in right
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)

    bad = tmp_path / "notes.pdf"
    bad.write_bytes(b"not a pdf, whatever the name says")
    report = _upload(page, bad, "failed: notes.pdf")
    assert "failed: notes.pdf: not a PDF" in report
    page.screenshot(path=str(ARTIFACTS / "bad_file.png"))
    page.close()


def test_four_sessions_at_once_each_get_their_own_answer(server, browser, book):
    pages = [_open(browser, server) for _ in FACTS]
    _upload(pages[0], book, "Harbour Towns")  # added, or already there from the test before
    for p in pages[1:]:
        p.reload()
        p.wait_for_selector("#chat")
    for page, (place, (role, _)) in zip(pages, FACTS.items()):
        _choose_book(page, "Harbour Towns (4 p.)")
        page.locator("#question textarea").fill(f"What is the name of the {role} of {place}?")
    for page in pages:  # all four questions are queued before any answer is done
        page.locator("#ask-btn").click()
    for i, (page, (place, (_, name))) in enumerate(zip(pages, FACTS.items())):
        page.wait_for_function("document.querySelector('#chat').innerText.includes('Sources:')"
                               " || document.querySelector('#notice').innerText.includes('Error:')", timeout=600_000)
        assert "Error:" not in page.locator("#notice").inner_text(), page.locator("#notice").inner_text()
        chat = page.locator("#chat").inner_text()
        others = [n for _, (_, n) in FACTS.items() if n != name]
        assert name in chat, chat
        assert not any(o in chat for o in others), chat
        page.screenshot(path=str(ARTIFACTS / f"session_{i}.png"))
        page.close()


def test_cache_policy_setting_changes_the_answer_figures(server, browser, book):
    page = _open(browser, server)
    _upload(page, book, "Harbour Towns")  # already there from the first test, or added now
    _choose_book(page, "Harbour Towns (4 p.)")
    page.get_by_text("uncompressed", exact=True).click()
    page.locator("#settings").get_by_text("Settings", exact=True).first.click()
    page.locator("#cache-policy input").click()
    page.get_by_role("option", name="StreamingLLM (sinks + recent window)").click()
    page.keyboard.press("Escape")
    _ask(page, "What is the name of the ferryman of Calloway?")
    _expand_sources(page, "#chat")
    chat = page.locator("#chat").inner_text()
    assert re.search(r"cache streaming \d+% evicted", chat), chat[-400:]
    page.screenshot(path=str(ARTIFACTS / "cache_policy.png"), full_page=True)
    page.close()
