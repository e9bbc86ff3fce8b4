"""Screenshot a plastiscope report in headless Chromium (Debian's; never a downloaded browser).

    python scripts/screenshot.py plastiscope-demo/report.html docs/demo-report.png [--scroll 0.0]

``--scroll`` is the fraction of the page height to scroll to first (0: the top).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scroll", type=float, default=0.0)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(args.report.resolve().as_uri(), wait_until="load")
        page.evaluate("window.plastiscopeReport.renderAll()")
        page.wait_for_function("window.plastiscopeReport.rendered() === window.plastiscopeReport.plots")
        page.evaluate(f"window.scrollTo(0, document.body.scrollHeight * {args.scroll})")
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.out))
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
