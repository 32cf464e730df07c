"""The smoke-built book in a real headless Chromium: pages load without console errors, every image (GIFs
included) has a size and alt text and loads lazily, internal links and citations resolve, Colab links point at the
committed notebooks, no table scrolls sideways at 1280 px, and each page's weight (everything the browser downloads
for it, every image scrolled into view, cache off) stays within the book's limits. Screenshots of every page are
kept under _build/screenshots/ as test artefacts."""
import functools
import re
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
MAX_PAGE_BYTES = 8_000_000   # a chapter page with every image
MAX_GIF_BYTES = 1_500_000
MIN_GIF_WIDTH = 320

# every image into view (lazy ones load), waiting for each; then what the page shows
LOAD_ALL_IMAGES = """async () => {
  for (const img of Array.from(document.images)) {
    img.scrollIntoView();
    if (!img.complete) await new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r);
                                                setTimeout(r, 5000); });
  }
  window.scrollTo(0, 0);
  return Array.from(document.images).map(e => ({src: e.currentSrc || e.src, width: e.naturalWidth,
    alt: e.getAttribute('alt') || '', lazy: e.getAttribute('loading') === 'lazy',
    content: !!e.closest('article')}));
}"""
# a table scrolls sideways when the output or table container holding it overflows, or when it runs past the window
WIDE_TABLES = """() => Array.from(document.querySelectorAll('article table')).map(t => {
  const box = t.closest('div.cell_output, .pst-scrollable-table-container');
  const r = t.getBoundingClientRect();
  return {width: Math.round(r.width), room: box ? box.clientWidth : window.innerWidth - Math.round(r.left),
          scrolls: (box ? box.scrollWidth > box.clientWidth + 1 : false) || r.right > window.innerWidth + 1,
          caption: (t.caption ? t.caption.textContent : '') ||
          Array.from(t.querySelectorAll('th')).slice(0, 3).map(h => h.textContent.trim()).join(' | ')};
}).filter(t => t.scrolls)"""

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
    problems, checked_images, weights = [], 0, {}
    bib = html / "book" / "bibliography.html"
    bib_ids = set(re.findall(r'id="([^"]+)"', bib.read_text())) if bib.exists() else set()
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})  # each page weighed as a first visit
        errors, sizes = [], {}

        def on_response(r):
            if r.status >= 400:
                errors.append(f"HTTP {r.status} for {r.url}")
            sizes[r.url.split("?")[0]] = int(r.headers.get("content-length") or 0)

        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", on_response)
        for rel in pages:
            errors.clear()
            sizes.clear()
            page.goto(f"{base}/{rel}", wait_until="load")
            page.wait_for_timeout(100)
            imgs = page.evaluate(LOAD_ALL_IMAGES)
            page.wait_for_timeout(100)
            checked_images += len(imgs)
            problems += [f"{rel}: image {i['src']} has no size" for i in imgs if not i["width"]]
            problems += [f"{rel}: image {i['src']} has no alt text" for i in imgs if not i["alt"].strip()]
            problems += [f"{rel}: image {i['src']} does not load lazily"
                         for i in imgs if i["content"] and not i["lazy"]]
            for i in imgs:
                if i["src"].endswith(".gif"):
                    n = sizes.get(i["src"].split("?")[0], 0)
                    if n > MAX_GIF_BYTES or i["width"] < MIN_GIF_WIDTH:
                        problems.append(f"{rel}: GIF {i['src']} is {n} bytes, {i['width']} px wide "
                                        f"(limits {MAX_GIF_BYTES} bytes, >= {MIN_GIF_WIDTH} px)")
            weights[rel] = sum(sizes.values())
            if weights[rel] > MAX_PAGE_BYTES:
                problems.append(f"{rel}: the page weighs {weights[rel]} bytes with its images (limit {MAX_PAGE_BYTES})")
            problems += [f"{rel}: a table ({t['caption'][:60]}) is {t['width']} px wide in {t['room']} px and scrolls "
                         "sideways" for t in page.evaluate(WIDE_TABLES)]
            for href in page.eval_on_selector_all("a[href*='bibliography.html#']", "els => els.map(e => e.href)"):
                if urlparse(href).fragment not in bib_ids:
                    problems.append(f"{rel}: citation {href} does not resolve to an entry of the bibliography")
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
    print(f"browser check: {len(pages)} pages, {checked_images} images; page weights (bytes, cache off): "
          + ", ".join(f"{k} {v:,}" for k, v in weights.items()))
    assert len(pages) >= 2 and checked_images > 0
    assert not problems, "\n".join(problems)
