"""Takes the README's screenshot of `rrg serve` (docs/serve.png) on a trained model, e.g. the demo's export.

    python docs/screenshot_serve.py outputs/demo/export --output docs/serve.png

Starts `rrg serve MODEL` on a free local port, opens the page in Debian's headless Chromium (the system binary and
its chromedriver, as tests/test_serve.py drives it; nothing is downloaded), clicks the first shipped example study,
generates its report and saves the page once the findings chips and the attention map are drawn.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, what: str, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = condition()
        except Exception:  # the page is still loading
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise SystemExit(f"Timed out waiting for {what}.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="An exported model folder (or Hub id in the offline cache).")
    parser.add_argument("--output", default=str(ROOT / "docs" / "serve.png"))
    parser.add_argument("--example", type=int, default=0, help="Which shipped example study to click.")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from training.serve.browser import headless_chromium, missing_browser

    missing = missing_browser()
    if missing:
        raise SystemExit(missing)

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TRANSFORMERS_VERBOSITY": "error"}
    server = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", args.model, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait(lambda: urllib.request.urlopen(url, timeout=2).status == 200, "rrg serve to answer")
        driver = headless_chromium(tempfile.mkdtemp(), window_size="1280,1500")
        driver.get(url)
        _wait(lambda: driver.find_elements("css selector", "#rrg-generate"), "the page")
        examples = _wait(lambda: driver.find_elements("xpath", "//button[contains(., 'Synthetic study')]"),
                         "the example studies")
        examples[args.example].click()
        _wait(lambda: driver.find_element("id", "rrg-files").text.strip(), "the example's views")
        driver.find_element("id", "rrg-generate").click()
        _wait(lambda: driver.find_element("id", "rrg-status").text.strip().startswith("Done"), "the report")
        _wait(lambda: driver.find_elements("css selector", "#rrg-heatmap img"), "the attention map")
        time.sleep(1.0)  # the last paint
        driver.save_screenshot(args.output)
        sys.stdout.write(f"Wrote {args.output}\n")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
