"""Debian's headless Chromium, driven by selenium through the system chromedriver (nothing is downloaded).

Used by the browser tests (`tests/test_serve.py`) and the README's screenshot (`docs/screenshot_serve.py`). Selenium
Manager would look for (and try to download) a browser and a driver; the service names Debian's instead. Install
them with `INSTALL`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHROMIUM", "CHROMEDRIVER", "INSTALL", "missing_browser", "headless_chromium"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def missing_browser() -> str | None:
    """What is missing to drive the browser (with the command that installs it), or `None`."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return (f"Debian's chromium and chromium-driver are needed ({CHROMIUM}, {CHROMEDRIVER}); install them with: "
                f"{INSTALL}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is needed: pip install -e '.[dev]'"
    return None


def headless_chromium(user_data_dir: str | os.PathLike, window_size: str = "1280,1400"):
    """A selenium `webdriver.Chrome` on the system Chromium, headless, that can resolve only 127.0.0.1."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={window_size}", f"--user-data-dir={Path(user_data_dir)}",
                 # Only the local server resolves: the page cannot reach anything else.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
