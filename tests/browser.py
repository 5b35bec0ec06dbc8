"""A real headless browser for the web UI's tests: Debian's chromium
(apt-get installs it when missing), driven by Playwright pointed at that
executable, so nothing downloads a browser.

    with Browser() as browser:
        page = browser.new_page()
        page.goto(url)
"""

from __future__ import annotations

import os
from typing import Any

from tests.databases import apt_install

__all__ = ["Browser", "CHROMIUM"]

CHROMIUM = "/usr/bin/chromium"
# Headless as root, and no calls home: this machine's network is closed, and
# chromium's background connections fail many at a time otherwise.
# Playwright gives each launch a new empty profile of its own.
_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class Browser:
    """Chromium for the length of a `with` block; `new_page()` opens a tab."""

    def __enter__(self) -> Browser:
        if not os.path.exists(CHROMIUM):
            apt_install("chromium")
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=_FLAGS
        )
        return self

    def new_page(self, **options: Any) -> Any:
        return self._browser.new_page(**options)

    def __exit__(self, *exc: Any) -> None:
        self._browser.close()
        self._playwright.stop()
