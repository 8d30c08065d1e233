"""Takes the README's screenshot of `rrg serve` (docs/serve.png) on a trained model, e.g. the demo's export.

    python docs/screenshot_serve.py outputs/demo/export --views outputs/demo/data/images/test/test_000017/0.png

Starts `rrg serve MODEL` on a free local port, opens the page in Debian's headless Chromium (the system binary and
its chromedriver, as tests/test_serve.py drives it; nothing is downloaded), clicks the first shipped example study (or
uploads `--views`), generates its report and saves the page once the findings chips and the attention map are drawn.
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
    parser.add_argument("--views", nargs="+", help="Upload these image files instead of clicking an example (the "
                        "examples have a lateral view and an indication; the demo model was trained on frontal views "
                        "without one, e.g. outputs/demo/data/images/test/test_000017/0.png).")
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
        driver = headless_chromium(tempfile.mkdtemp(), window_size="1280,1900")
        driver.get(url)
        _wait(lambda: driver.find_elements("css selector", "#rrg-generate"), "the page")
        if args.views:
            field = driver.find_element("css selector", "#rrg-files input[type=file]")
            field.send_keys("\n".join(str(Path(p).resolve()) for p in args.views))
            _wait(lambda: all(Path(p).name in driver.find_element("id", "rrg-files").text.replace("\n", "")
                              for p in args.views), "the upload")
        else:
            examples = _wait(lambda: driver.find_elements("xpath", "//button[contains(., 'Synthetic study')]"),
                             "the example studies")
            examples[args.example].click()
            _wait(lambda: ".png" in driver.find_element("id", "rrg-files").text, "the example's views")
        time.sleep(3.0)  # the page's state gets the files after they are shown
        driver.find_element("id", "rrg-generate").click()
        def finished():
            text = driver.find_element("id", "rrg-status").text.strip()
            return text if text.startswith(("Done", "Report written,", "Generation failed")) else None

        status = _wait(finished, "the report")
        if not status.startswith(("Done", "Report written,")):
            raise SystemExit(f"The page says: {status}")
        _wait(lambda: driver.execute_script("const i = document.querySelector('#rrg-heatmap img');"
                                            "return i && i.complete && i.naturalWidth > 0;"), "the attention map")
        time.sleep(3.0)  # the last paint (the map is a large image)
        driver.save_screenshot(args.output)
        sys.stdout.write(f"Wrote {args.output}\n")
    except SystemExit:
        if driver is not None:  # what the page showed, next to the output
            driver.save_screenshot(str(Path(args.output).with_suffix(".failed.png")))
        raise
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
