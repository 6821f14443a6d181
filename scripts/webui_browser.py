"""Headless Chromium for the web page: the launch flags that work on a closed network, and a screenshot tool.

    python scripts/webui_browser.py http://127.0.0.1:7860 docs/    # one PNG per tab: docs/webui-train.png ...

tests/e2e/test_webui.py drives the page with :func:`open_browser` too. Chromium is Debian's (/usr/bin/chromium),
driven by Playwright for Python with ``executable_path``; nothing is downloaded.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
"""Without these Chromium stalls here (it tries the network, a GPU, a sandbox)."""
TABS = {"train": "tab-train", "eval": "tab-eval", "chat": "tab-chat", "compare": "tab-compare",
        "inspect": "tab-inspect", "serve": "tab-serve"}
"""PNG name -> the tab's elem_id."""


def open_browser(playwright, width: int = 1400, height: int = 1000):
    """(browser context, page) of a fresh headless Chromium profile."""
    profile = tempfile.mkdtemp(prefix="softprompt-chromium-")
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=FLAGS,  # the profile is its --user-data-dir
        viewport={"width": width, "height": height})
    return context, context.pages[0] if context.pages else context.new_page()


def open_tab(page, name: str) -> None:
    """Click the tab button whose panel has the elem_id of ``name``."""
    index = list(TABS).index(name)
    page.locator("button[role=tab]").nth(index).click()
    page.wait_for_timeout(400)


def screenshots(url: str, folder: str | Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        context, page = open_browser(p)
        page.goto(url, wait_until="load")
        page.wait_for_selector("button[role=tab]", timeout=60000)
        for name in TABS:
            open_tab(page, name)
            path = Path(folder) / f"webui-{name}.png"
            page.screenshot(path=str(path), full_page=name != "train")
            out.append(path)
        context.close()
    return out


if __name__ == "__main__":
    for written in screenshots(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "docs"):
        print(written)
