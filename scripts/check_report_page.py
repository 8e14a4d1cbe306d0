"""Open a report page in headless Chromium and save a full-page screenshot.

Usage: python scripts/check_report_page.py runs/demo/lora/report/index.html shot.png

Needs playwright (the Python package) and a Chromium binary (default
``/usr/bin/chromium``, or ``--chromium PATH``). Exits 1 if the page shows a broken
image or a Python-looking error text, so it doubles as a smoke check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

WIDTH = 1280


def screenshot(page_path: Path, out: Path, chromium: str) -> list[str]:
    """Screenshot ``page_path`` to ``out``; return the problems found on the page."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            broken = page.eval_on_selector_all(
                "img", "imgs => imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"
            )
            text = page.inner_text("body")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    problems = [f"broken image {name}" for name in broken]
    problems += [f"page text contains {word!r}" for word in ("Traceback", "nan%") if word in text]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="report HTML file")
    parser.add_argument("out", type=Path, help="PNG screenshot to write")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    args = parser.parse_args()
    if not args.page.is_file():
        parser.error(f"{args.page} is not a file")
    problems = screenshot(args.page, args.out, args.chromium)
    for problem in problems:
        print(f"{args.page}: {problem}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
