"""Weight of each page of a built book: the HTML, its images (GIFs included) and the scripts and style sheets it
loads, as a browser fetching it cold would download them; plus its largest GIF (bytes, width).

    python tools/page_weight.py _build/html [--json out.json]

The browser test measures the same thing in Chromium (every image scrolled into view, so lazy ones count too).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

REF = re.compile(r'<(?:img|script|link)\b[^>]*?\b(?:src|href)="([^"#?]+)', re.I)


def page_weight(html_root: Path, page: Path) -> dict:
    text = page.read_text(encoding="utf-8", errors="replace")
    files, total = {}, page.stat().st_size
    for ref in REF.findall(text):
        if urlparse(ref).scheme:
            continue
        f = (page.parent / unquote(ref)).resolve()
        if f.is_file():
            files[f] = f.stat().st_size
    total += sum(files.values())
    gifs = [f for f in files if f.suffix.lower() == ".gif"]
    big = max(gifs, key=lambda f: files[f], default=None)
    return {"page": page.relative_to(html_root).as_posix(), "bytes": total,
            "images": sum(v for f, v in files.items() if f.suffix.lower() in {".gif", ".png", ".jpg", ".svg"}),
            "gifs": len(gifs), "largest_gif": files[big] if big else 0,
            "largest_gif_width": Image.open(big).size[0] if big else 0,
            "narrowest_gif_width": min((Image.open(f).size[0] for f in gifs), default=0)}


def weights(html_root: Path) -> list[dict]:
    pages = sorted(p for p in Path(html_root).rglob("*.html") if not p.relative_to(html_root).parts[0].startswith("_"))
    return [page_weight(Path(html_root), p) for p in pages]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = weights(a.html)
    print(f"{'page':42} {'MB':>6} {'images MB':>9} {'GIFs':>4} {'largest GIF':>11} {'GIF widths px':>13}")
    for r in rows:
        print(f"{r['page']:42} {r['bytes'] / 1e6:6.2f} {r['images'] / 1e6:9.2f} {r['gifs']:4d} "
              f"{r['largest_gif'] / 1e6:9.2f}MB {r['narrowest_gif_width']:>5}-{r['largest_gif_width']:<5}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
