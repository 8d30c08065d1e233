"""`rrg serve`: the Gradio page, driven in headless Chromium as a person would use it.

The app runs in its own process (`rrg serve EXPORT`, bound to 127.0.0.1 on a free port) on a tiny exported model.
Each test uploads files through the page's file input, presses *Generate* and reads the page; the report must equal
what `pipeline()` returns for the same image and settings. Screenshots of every state are saved under the test's
output folder. The browser is Debian's `chromium` + `chromium-driver`; a machine without them fails with the install
command. Chromium resolves no host but 127.0.0.1, so nothing on the page reaches the internet.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import xray

MAX_NEW_TOKENS = 12
MAX_UPLOAD_MB = 1.0
TIMEOUT = 90

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------- fixtures
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from helpers import make_full_run
    from training.release.export import export_model
    from training.sandbox.tiny import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("serve")
    run = make_full_run(root / "stage1", train_bpe_tokenizer())
    folder = export_model(run, root / "export", repo_id="rrg-org/rrg-tiny", max_new_tokens=MAX_NEW_TOKENS)
    # An untrained model may write the image token, which the attention analysis refuses (a trained one does not);
    # suppressing it in the saved generation config applies to the page and to pipeline() alike.
    generation = json.loads((folder / "generation_config.json").read_text())
    image_token_id = json.loads((folder / "config.json").read_text())["image_token_id"]
    generation["suppress_tokens"] = [image_token_id]
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


@pytest.fixture(scope="module")
def reporter(exported):
    from transformers import pipeline

    return pipeline(model=str(exported), trust_remote_code=True)


@pytest.fixture(scope="module")
def server(exported):
    """The app's model in this process, to compute what the page should show."""
    from training.serve import ReportServer

    return ReportServer(exported)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"rrg serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"rrg serve did not answer on {url} within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    """`rrg serve EXPORT` in its own process; yields its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONPATH", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", str(exported), "--host", "127.0.0.1", "--port", str(port),
             "--max-upload-mb", str(MAX_UPLOAD_MB), "--examples", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1],
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _browser(user_data_dir: Path):
    from training.serve import browser

    missing = browser.missing_browser()
    if missing:
        pytest.fail(f"The browser tests need a browser: {missing}")
    return browser.headless_chromium(user_data_dir)


@pytest.fixture()
def open_page(served, tmp_path):
    """Opens the page in a fresh headless Chromium; closes every browser at the end."""
    drivers = []

    def _open():
        driver = _browser(Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)))
        drivers.append(driver)
        driver.get(served)
        _wait(driver, lambda d: d.find_elements("css selector", "#rrg-generate"), "the page to load")
        return Page(driver, tmp_path)

    yield _open
    for driver in drivers:
        driver.quit()


def _wait(driver, condition, what: str, timeout: float = TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except Exception as err:
        raise AssertionError(f"Timed out waiting for {what}; page status: "
                             f"{driver.find_element('id', 'rrg-status').text!r}") from err


class Page:
    """What a person does on the page, and what they read from it."""

    def __init__(self, driver, shots: Path):
        self.driver, self.shots = driver, shots

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def upload(self, *paths) -> None:
        self.clear()
        field = self.driver.find_element("css selector", "#rrg-files input[type=file]")
        field.send_keys("\n".join(str(Path(p).resolve()) for p in paths))
        names = [Path(p).name for p in paths]
        # The file list shows each name's stem and extension in separate elements.
        _wait(self.driver, lambda d: all(n in d.find_element("id", "rrg-files").text.replace("\n", "") for n in names),
              "the upload")

    def clear(self) -> None:
        buttons = self.driver.find_elements("css selector", "#rrg-files button[aria-label='Clear']")
        if buttons:
            buttons[0].click()
            _wait(self.driver, lambda d: d.find_elements("css selector", "#rrg-files input[type=file]"), "clearing")

    def set_number(self, elem_id: str, value) -> None:
        field = self.driver.find_element("css selector", f"#{elem_id} input[type=number]")
        self.driver.execute_script(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
            "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));"
            "arguments[0].dispatchEvent(new Event('blur', {bubbles: true}));", field, str(value))

    def advanced(self, decoding: str, max_new_tokens: int, repetition_penalty: float) -> None:
        self.driver.find_element("css selector", "#rrg-advanced button").click()
        _wait(self.driver, lambda d: d.find_element("id", "rrg-decoding").is_displayed(), "the advanced fold")
        self.driver.find_element("xpath", f"//*[@id='rrg-decoding']//label[.//input[@value='{decoding}']]").click()
        self.set_number("rrg-max-new-tokens", max_new_tokens)
        self.set_number("rrg-repetition-penalty", repetition_penalty)

    def indication(self, text: str) -> None:
        self.driver.find_element("css selector", "#rrg-indication textarea, #rrg-indication input").send_keys(text)

    def generate(self) -> None:
        self.driver.find_element("id", "rrg-generate").click()

    def status(self) -> str:
        return self.driver.find_element("id", "rrg-status").text.strip()

    def wait_done(self) -> str:
        _wait(self.driver, lambda d: self.status().startswith(("Done", "Generation failed", "Report written,"))
              or d.find_elements("css selector", "#rrg-status .rrg-error"), "the report")
        return self.status()

    def wait_error(self) -> str:
        _wait(self.driver, lambda d: d.find_elements("css selector", "#rrg-status .rrg-error"), "an error message")
        return self.status()

    def report(self) -> str:
        return self.driver.find_element("css selector", "#rrg-report textarea").get_attribute("value")

    def chips(self) -> dict[str, str]:
        chips = self.driver.find_elements("css selector", "#rrg-findings .rrg-chip")
        return {chip.text.rsplit(": ", 1)[0]: chip.get_attribute("data-label") for chip in chips}

    def heatmap(self) -> Image.Image:
        src = self.driver.find_element("css selector", "#rrg-heatmap img").get_attribute("src")
        with urllib.request.urlopen(src, timeout=10) as response:
            return Image.open(__import__("io").BytesIO(response.read())).convert("RGB")

    def body(self) -> str:
        return self.driver.find_element("tag name", "body").text


def _synthetic_xray(path: Path, index: int = 0, bits: int = 8) -> Path:
    from training.sandbox.synthetic import generate_study

    _, images = generate_study(7, "test", index, image_size=96)
    array = images[0].astype(np.uint16) * 16 if bits == 16 else images[0]
    Image.fromarray(array).save(path)
    return path


def _expected(reporter, views, **kwargs) -> str:
    return reporter(views, **kwargs)["report"]


def _labels(report: str) -> dict[str, str]:
    from training.evaluation.labeler import RuleBasedLabeler

    names = {1: "positive", 0: "negative", -1: "uncertain"}
    return {k: names[v] for k, v in RuleBasedLabeler().label(report).items() if v is not None}


# ---------------------------------------------------------------------------------------------- tests
def test_upload_generate_matches_pipeline(open_page, reporter, server, tmp_path):
    page = open_page()
    body = page.body()
    assert "not for clinical use" in body and "Example studies" in body and "Synthetic study test_000000" in body
    page.screenshot("1-empty")
    frontal = _synthetic_xray(tmp_path / "frontal.png")
    page.upload(frontal)
    page.screenshot("2-uploaded")
    page.generate()
    assert page.wait_done() == "Done.", page.status()
    report = page.report()
    assert report and report == _expected(reporter, str(frontal), max_new_tokens=MAX_NEW_TOKENS)
    assert page.chips() == _labels(report)
    # The heat map is the analysis code's plot (token_attribution + plot_attribution) of this very report.
    record = {}
    *_, same = server.stream_report(server.load_views([frontal]), record=record)
    assert same == report
    reference = server.heatmap(server.attribution(record), 0, tmp_path / "reference.png")
    assert np.array_equal(np.asarray(page.heatmap()), np.asarray(Image.open(reference).convert("RGB")))
    page.screenshot("3-report")

    # Settings from the advanced fold and the indication reach generate() as they reach the pipeline.
    page.indication("Cough and fever.")
    page.advanced("beam", 6, 1.3)
    page.screenshot("4-advanced")
    page.generate()
    _wait(page.driver, lambda d: page.status() == "Done." and page.report() != report, "the beam-search report")
    beam = _expected(reporter, str(frontal), indication="Cough and fever.", num_beams=3, max_new_tokens=6,
                     repetition_penalty=1.3, do_sample=False)
    assert page.report() == beam
    page.screenshot("5-beam")


def test_example_study_is_one_click_away(open_page, reporter, tmp_path):
    from training.serve import write_examples

    page = open_page()
    page.driver.find_element("xpath", "//button[contains(., 'Synthetic study test_000001')]").click()
    _wait(page.driver, lambda d: "lateral.png" in d.find_element("id", "rrg-files").text.replace("\n", ""),
          "the example's views")
    page.generate()
    assert page.wait_done() == "Done.", page.status()
    page.screenshot("example")
    # The same shipped study, written again here, with its indication, gets the same report from pipeline().
    study = write_examples(tmp_path / "examples", count=2)[1]
    assert study["id"] == "test_000001" and len(study["images"]) == 2 and study["indication"]
    assert page.report() == _expected(reporter, study["images"], indication=study["indication"],
                                      max_new_tokens=MAX_NEW_TOKENS)


def test_two_views_16bit_png_and_dicom(open_page, reporter, tmp_path):
    from helpers import write_dicom as _dicom
    from training.data.images import load_image

    png16 = _synthetic_xray(tmp_path / "frontal16.png", index=1, bits=16)
    assert Image.open(png16).mode.startswith("I")
    dcm = _dicom(tmp_path / "lateral.dcm", xray(5, size=64, dtype=np.uint16), photometric="MONOCHROME1")
    page = open_page()
    page.upload(png16, dcm)
    page.generate()
    assert page.wait_done() == "Done.", page.status()
    expected = _expected(reporter, [load_image(png16), load_image(dcm)], max_new_tokens=MAX_NEW_TOKENS)
    assert page.report() == expected
    # Pick the second view for the heat map.
    first = np.asarray(page.heatmap())
    page.driver.find_element("xpath", "//*[@id='rrg-view']//label[contains(., 'lateral.dcm')]").click()
    _wait(page.driver, lambda d: page.heatmap().size != first.shape[1::-1]
          or not np.array_equal(np.asarray(page.heatmap()), first), "the lateral view's heat map")
    page.screenshot("two-views")


def test_bad_uploads_give_messages_and_the_app_keeps_serving(open_page, reporter, tmp_path):
    page = open_page()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    page.upload(corrupt)
    page.generate()
    message = page.wait_error()
    page.screenshot("1-corrupt")
    assert "corrupt.png is not an image this app can read" in message and str(tmp_path) not in message, message
    assert "/tmp/gradio" not in message and "gradio_api" not in message, message
    assert "Traceback" not in page.body()

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.upload(text)
    page.generate()
    _wait(page.driver, lambda d: "notes.txt is not an image" in page.status(), "the not-an-image message")

    views = [_synthetic_xray(tmp_path / f"v{i}.png", index=i) for i in range(3)]
    page.upload(*views)
    page.generate()
    _wait(page.driver, lambda d: "at most 2 view(s)" in page.status(), "the too-many-views message")
    page.screenshot("2-too-many")

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8)).save(big)
    assert big.stat().st_size > MAX_UPLOAD_MB * 1e6
    page.upload(big)
    page.generate()
    _wait(page.driver, lambda d: "the limit is 1 MB" in page.status(), "the too-large message")
    page.screenshot("3-too-large")
    assert "Traceback" not in page.body()

    # Still serving: a good upload in the same page gets its report.
    good = _synthetic_xray(tmp_path / "good.png", index=4)
    page.upload(good)
    page.generate()
    _wait(page.driver, lambda d: page.status() == "Done.", "the report after errors")
    assert page.report() == _expected(reporter, str(good), max_new_tokens=MAX_NEW_TOKENS)
    page.screenshot("4-recovered")


def test_two_sessions_at_once(open_page, reporter, tmp_path):
    pages = [open_page(), open_page()]
    images = [_synthetic_xray(tmp_path / f"study{i}.png", index=10 + i) for i in range(2)]
    for page, image in zip(pages, images):
        page.upload(image)
    threads = [threading.Thread(target=page.generate) for page in pages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, (page, image) in enumerate(zip(pages, images)):
        assert page.wait_done() == "Done.", page.status()
        page.screenshot(f"session-{index}")
        assert page.report() == _expected(reporter, str(image), max_new_tokens=MAX_NEW_TOKENS)
    assert pages[0].report() != pages[1].report() or images[0].read_bytes() == images[1].read_bytes()


def test_space_folder_runs_without_the_installed_project(exported, tmp_path):
    """The Space folder's app.py serves with only its own copy of the code (the installed project blocked)."""
    from training.serve import write_space

    space = write_space("rrg-org/rrg-tiny", tmp_path / "space")
    front = (space / "README.md").read_text()
    assert "sdk: gradio" in front and "app_file: app.py" in front and "- rrg-org/rrg-tiny" in front
    assert json.loads((space / "rrg_space.json").read_text()) == {"model": "rrg-org/rrg-tiny"}
    assert "gradio" in (space / "requirements.txt").read_text()
    with pytest.raises(ValueError, match="Hub id"):
        write_space("outputs/demo/export/", tmp_path / "bad")
    # Run it as a Space would (`python app.py`), on the local export, with the project's own packages hidden: the
    # copies next to app.py must be what runs.
    port = _free_port()
    log = tmp_path / "space.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RRG_MODEL": str(exported), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("PYTHONPATH", None)
    # Only what the page needs is copied, and it runs without the packages the Space does not install.
    assert not (space / "training" / "sandbox").exists() and not (space / "training" / "sft").exists()
    assert (space / "training" / "serve" / "examples.json").is_file()
    # Every copied module imports (the page imports some only when a heat map is drawn).
    check = ("import importlib, pathlib, runpy, sys; sys.modules.update(datasets=None, trl=None, peft=None); "
             "import training; assert training.__file__.startswith(sys.argv[1]), training.__file__; "
             "[importlib.import_module('.'.join(p.with_suffix('').parts).removesuffix('.__init__')) "
             "for p in sorted(pathlib.Path('training').rglob('*.py'))]; "
             "sys.argv = ['app.py']; runpy.run_path('app.py', run_name='__main__')")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", check, str(space)], cwd=space, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, log)
        from gradio_client import Client, handle_file

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        image = _synthetic_xray(tmp_path / "space.png", index=2)
        result = client.predict([handle_file(str(image))], "", "greedy", 3, MAX_NEW_TOKENS, 1.0, api_name="/run")
        assert result[1] == _expected(pipeline_for(exported), str(image), max_new_tokens=MAX_NEW_TOKENS)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def pipeline_for(folder):
    from transformers import pipeline

    return pipeline(model=str(folder), trust_remote_code=True)


# ------------------------------------------------------------------------------ without the browser
def test_report_streams_token_by_token(server, reporter, tmp_path):
    image = _synthetic_xray(tmp_path / "stream.png", index=3)
    views = server.load_views([image])
    steps = list(server.stream_report(views))
    final = _expected(reporter, str(image), max_new_tokens=MAX_NEW_TOKENS)
    assert steps[-1] == final and len(steps) > 3, steps
    # Every step extends the one before (the text grows a token at a time).
    assert all(later.startswith(earlier.rstrip()) for earlier, later in zip(steps[:-2], steps[1:-1])), steps
    # Beam search cannot stream: one value, the pipeline's report.
    from training.serve import GenerationSettings

    beam = list(server.stream_report(views, settings=GenerationSettings("beam", 2, 5, 1.2)))
    assert beam == [_expected(reporter, str(image), num_beams=2, max_new_tokens=5, repetition_penalty=1.2,
                              do_sample=False)]


def test_serves_a_hub_id_from_the_offline_cache(exported, reporter, tmp_path):
    from helpers import hub_cache

    cache = hub_cache(tmp_path, exported)
    image = _synthetic_xray(tmp_path / "hub.png", index=6)
    code = (
        "import json, sys\n"
        "from training.serve import ReportServer\n"
        "server = ReportServer('rrg-org/rrg-tiny')\n"
        "print(json.dumps(list(server.stream_report(server.load_views([sys.argv[1]])))[-1]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TRANSFORMERS_VERBOSITY": "error",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", code, str(image)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == _expected(reporter, str(image),
                                                                         max_new_tokens=MAX_NEW_TOKENS)


def test_shipped_examples_are_the_synthetic_test_studies(tmp_path):
    """examples.json equals a fresh rendering of the synthetic benchmark's first test studies (same seed), and the
    page's PNGs decode to those pixels."""
    import numpy as np
    from PIL import Image

    from training.sandbox.serve_examples import render_serve_examples
    from training.sandbox.synthetic import generate_study
    from training.serve import write_examples
    from training.serve.examples import EXAMPLES_FILE

    assert json.loads(EXAMPLES_FILE.read_text()) == render_serve_examples()
    studies = write_examples(tmp_path, count=3)
    entry, images = generate_study(0, "test", 2, image_size=256, lateral=True)
    assert studies[2]["id"] == entry["id"] and studies[2]["report"] == entry["report"]
    for path, array in zip(studies[2]["images"], images):
        assert np.array_equal(np.asarray(Image.open(path)), array)
    assert [len(s["images"]) for s in write_examples(tmp_path / "one", count=3, lateral=False)] == [1, 1, 1]


def test_settings_and_messages_without_a_model():
    from training.serve import GenerationSettings, UploadError
    from training.serve.app import chips_html

    assert GenerationSettings("greedy", 4, 7, 1.1).generate_kwargs() == {
        "do_sample": False, "num_beams": 1, "max_new_tokens": 7, "repetition_penalty": 1.1}
    assert GenerationSettings("beam", 4, 7, 1.0).generate_kwargs()["num_beams"] == 4
    with pytest.raises(UploadError, match="greedy' or 'beam"):
        GenerationSettings("sample").generate_kwargs()
    html = chips_html({"Pleural Effusion": 1, "Pneumothorax": 0, "Pneumonia": -1})
    assert html.index("Pleural Effusion: positive") < html.index("Pneumonia: uncertain") < html.index(
        "Pneumothorax: negative")
    assert "<script>" not in chips_html({"<script>": 1})


def test_cli_errors_on_a_missing_folder(capsys, caplog):
    from training.cli import main

    assert main(["serve", "no/such/export", "--port", str(_free_port())]) == 2
    assert "neither a folder nor a Hub model id" in caplog.text


def test_make_demo_prints_the_serve_command(monkeypatch, capsys, tmp_path):
    from training.sandbox import demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: {"export": str(tmp_path / "export")})
    monkeypatch.setattr(demo, "summary_table", lambda summary: "")
    assert demo.main(["--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"serve {tmp_path / 'export'}" in out.splitlines()[-1], out


def test_missing_browser_fails_with_the_install_command(monkeypatch, tmp_path):
    from training.serve import browser

    monkeypatch.setattr(browser, "CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium chromium-driver"):
        _browser(tmp_path)
