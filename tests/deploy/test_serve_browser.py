"""`mmfm serve` end to end: the real command on a free port, driven in headless chromium by Playwright.

Needs Debian's chromium (`.ci/run` installs it) and the playwright package; skipped, saying which is missing,
without them. MMFM_SCREENSHOT=PATH saves a screenshot of the page after the three actions.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: "
                                                               "pip install playwright")
httpx = pytest.importorskip("httpx", reason="the browser test needs httpx: pip install httpx")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("the browser test needs chromium on PATH (apt-get install chromium; .ci/run does)",
                allow_module_level=True)

LABELS = ["a red circle", "a blue square", "a green star"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    """`mmfm serve` in its own process with the tiny CLIP, its index and the tiny Frozen model; its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmfm.cli", "serve", "--model", "ViT-tiny-test",
                                 "--pretrained", str(served.clip), "--index", str(served.index), "--frozen",
                                 str(served.frozen), "--max-new-tokens", "5", "--port", str(port), "--threads", "1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180       # importing torch on a loaded 2-core machine takes a while
        while True:
            assert proc.poll() is None, f"mmfm serve exited with {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{url}/api/info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"mmfm serve did not answer: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(60_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server)
        yield page
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def test_classify_search_and_caption_in_the_browser(served, server, page):
    # Classify: upload, type labels, click; the bars are the API's probabilities, best first.
    page.set_input_files("#image", served.images[0])
    page.fill("#labels", ", ".join(LABELS))
    page.click("#classify-button")
    page.wait_for_selector(".bar-row")
    rows = page.query_selector_all(".bar-row")
    shown = [(r.get_attribute("data-label"), float(r.get_attribute("data-probability")),
              r.query_selector(".pct").inner_text(), r.query_selector(".name").inner_text()) for r in rows]
    with open(served.images[0], "rb") as f:
        api = httpx.post(f"{server}/api/classify", files={"image": ("x.png", f.read(), "image/png")},
                         data={"labels": ", ".join(LABELS)}, timeout=60).json()["labels"]
    assert [(label, prob) for label, prob, _, _ in shown] == [(x["label"], x["probability"]) for x in api]
    assert [(pct, name) for _, _, pct, name in shown] == [(f"{100 * x['probability']:.1f}%", x["label"]) for x in api]
    widths = page.eval_on_selector_all(".bar-row .fill", "bars => bars.map(b => b.getBoundingClientRect().width)")
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]    # drawn to scale, best first

    # Search by text: the top hit is the API's (and so `mmfm search`'s), with its thumbnail loaded.
    page.fill("#query", "a red circle")
    page.click("#search-button")
    page.wait_for_selector(".hit")
    want = httpx.get(f"{server}/api/search", params={"q": "a red circle", "k": "8"}, timeout=60).json()["hits"]
    assert page.eval_on_selector_all(".hit", "hits => hits.map(h => h.dataset.path)") == [h["path"] for h in want]
    page.wait_for_function("() => [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth)")

    # Caption: the Frozen model's caption of the uploaded image.
    page.click("#caption-button")
    page.wait_for_selector("#caption-text[data-caption]")
    with open(served.images[0], "rb") as f:
        caption = httpx.post(f"{server}/api/caption", files={"image": ("x.png", f.read(), "image/png")},
                             timeout=60).json()["caption"]
    assert page.get_attribute("#caption-text", "data-caption") == caption
    if os.environ.get("MMFM_SCREENSHOT"):
        page.screenshot(path=os.environ["MMFM_SCREENSHOT"], full_page=True)


def test_a_refused_request_shows_its_one_line_in_the_page(page):
    page.fill("#labels", "only one label")
    page.click("#classify-button")
    page.wait_for_selector("#classify-error:not([hidden])")
    assert "at least two" in page.inner_text("#classify-error")
    assert page.query_selector_all(".bar-row") == []
