"""The smoke-built book in a real headless Chromium: pages load without console errors, every image (GIFs
included) has a size, internal links resolve, and Colab links point at the committed notebooks.
Screenshots of every page are kept under _build/screenshots/ as test artefacts."""
import functools
import http.server
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is installed by `make test`'s venv")
if not Path(CHROMIUM).exists():
    pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium package", pytrace=False)


@pytest.fixture(scope="module")
def served(smoke_book):
    html = smoke_book[0] / "html"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield html, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_every_page_in_a_real_browser(served):
    html, base = served
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                   if not p.relative_to(html).parts[0].startswith("_"))
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems, checked_images = [], 0
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: errors.append(f"HTTP {r.status} for {r.url}") if r.status >= 400 else None)
        for rel in pages:
            errors.clear()
            page.goto(f"{base}/{rel}", wait_until="load")
            page.wait_for_timeout(100)
            imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.currentSrc || e.src, e.naturalWidth])")
            checked_images += len(imgs)
            problems += [f"{rel}: image {src} has no size" for src, w in imgs if not w]
            for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
                url = urlparse(href)
                if url.netloc == urlparse(base).netloc and url.path.endswith(".html"):
                    if not (html / url.path.lstrip("/")).exists():
                        problems.append(f"{rel}: broken internal link {url.path}")
            if rel.startswith("notebooks/"):
                colab = page.eval_on_selector_all("a[href*='colab.research.google.com']", "els => els.map(e => e.href)")
                want = (REPO_URL.replace("https://github.com/", "https://colab.research.google.com/github/")
                        + f"/blob/main/{rel[:-5]}.ipynb")
                if want not in colab:
                    problems.append(f"{rel}: no Colab link to {want} (found {colab})")
            problems += [f"{rel}: console error: {e}" for e in errors]
            page.screenshot(path=str(shots / (rel.replace("/", "__")[:-5] + ".png")), full_page=False)
        browser.close()
    print(f"browser check: {len(pages)} pages, {checked_images} images")
    assert len(pages) >= 2 and checked_images > 0
    assert not problems, "\n".join(problems)
