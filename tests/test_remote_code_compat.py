"""The exported folder in fresh virtual environments holding only torch, transformers and Pillow (not this project),
for the oldest and the newest transformers of the supported range: Auto classes, AutoProcessor, both pipelines and
the model card's quick start, from a local folder and from a Hub cache layout with HF_HUB_OFFLINE=1.

The environments are cached between runs under `<repo>/.cache/venvs/` (or `$RRG_TEST_VENV_CACHE`): a marker file is
written after a successful install, creation is locked with a file lock, and a failed install leaves nothing behind.
Override the versions with `RRG_COMPAT_TRANSFORMERS="5.0.0,5.23.0"`.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_export import REPO_ID, hub_cache, make_adapter_run, python_blocks, reference_batch, write_metrics

from helpers import xray

REPO_ROOT = Path(__file__).resolve().parents[1]
# Oldest and newest transformers of SUPPORTED_TRANSFORMERS (">=5.0,<6"); bump NEWEST when a new 5.x is released.
OLDEST, NEWEST = "5.0.0", "5.23.0"
VERSIONS = [v.strip() for v in os.environ.get("RRG_COMPAT_TRANSFORMERS", f"{OLDEST},{NEWEST}").split(",") if v.strip()]
# The CPU build this project's venv runs on (a plain `torch` spec would pull a multi-GB CUDA build).
TORCH_SPEC = f"torch=={torch.__version__.split('+')[0]}"
MARKER = ".rrg-venv-ready.json"

pytestmark = pytest.mark.slow


def _venv_root() -> Path:
    return Path(os.environ.get("RRG_TEST_VENV_CACHE") or REPO_ROOT / ".cache" / "venvs")


def fresh_venv(transformers_version: str) -> Path:
    """The python of a cached venv with torch, transformers==`transformers_version` and Pillow; created if missing."""
    root = _venv_root()
    root.mkdir(parents=True, exist_ok=True)
    spec = {"python": sys.version.split()[0], "torch": TORCH_SPEC, "transformers": transformers_version}
    name = f"tf-{transformers_version}-py{sys.version_info.major}{sys.version_info.minor}"
    venv = root / name
    python = venv / "bin" / "python"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers wait for one creator
        marker = venv / MARKER
        if marker.exists() and json.loads(marker.read_text()).get("spec") == spec and python.exists():
            return python
        # A venv is bound to its path, so it is built in place; the marker, written last, says it is complete.
        shutil.rmtree(venv, ignore_errors=True)
        start = time.perf_counter()
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TORCH_SPEC,
                 f"transformers=={transformers_version}", "pillow"],
                check=True, capture_output=True, text=True, timeout=1800,
            )
        except subprocess.CalledProcessError as err:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"Could not create the transformers=={transformers_version} venv:\n{err.stdout}\n{err.stderr}")
        seconds = time.perf_counter() - start
        marker.write_text(json.dumps({"spec": spec, "created_in_seconds": round(seconds, 1)}))
        sys.stderr.write(f"created {venv} in {seconds:.0f}s\n")
    return python


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A stage-2 LoRA run exported merged, the reference batch and logits, images for the card, a Hub cache copy."""
    from training.release.export import export_model
    from training.sandbox.tiny import train_bpe_tokenizer
    from training.sft.loading import load_trained

    root = tmp_path_factory.mktemp("compat")
    _, stage2 = make_adapter_run(root, train_bpe_tokenizer())
    model, processor = load_trained(stage2, merge=True)
    batch = dict(reference_batch(processor))
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save(batch, root / "batch.pt")
    torch.save(logits, root / "logits.pt")
    export = export_model(stage2, root / "export", metrics=write_metrics(root / "eval"), repo_id=REPO_ID,
                          max_shard_size="100KB")
    for index, name in enumerate(("frontal.png", "lateral.png")):
        Image.fromarray(xray(index)).save(root / name)
    cache = hub_cache(root, export)
    return {"root": root, "export": export, "cache": cache}


CHECKS = """
import json, sys
import torch
import transformers
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline
for blocked in ("modeling_rrg", "training", "peft", "trl"):
    try:
        __import__(blocked)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{blocked}} is importable: this is not a fresh environment")
assert transformers.__version__ == {version!r}, transformers.__version__
results = {{}}
for name in {names!r}:
    model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    assert type(model).__name__ == "RRGForConditionalGeneration" and type(processor).__name__ == "RRGProcessor"
    batch = torch.load("batch.pt")
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = AutoModel.from_pretrained(name, trust_remote_code=True).eval()(
            **{{k: v for k, v in batch.items() if k != "labels"}}).last_hidden_state
    torch.testing.assert_close(logits, torch.load("logits.pt"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.lm_head(hidden), logits, atol=1e-5, rtol=1e-5)
    views = [Image.open("frontal.png"), Image.open("lateral.png")]
    inputs = processor(images=views)
    direct = processor.batch_decode(model.generate(**inputs)[:, inputs["input_ids"].shape[1]:])[0]
    reporter = pipeline(model=name, trust_remote_code=True)
    report = reporter(["frontal.png", "lateral.png"])
    assert report == {{"report": direct}}, (report, direct)
    batch_out = reporter([["frontal.png", "lateral.png"], ["frontal.png"]], indication=[None, "Cough."])
    assert len(batch_out) == 2 and batch_out[0] == report, (batch_out, report)
    pipe = pipeline("image-text-to-text", model=name, trust_remote_code=True)
    content = [{{"type": "image", "image": v}} for v in views] + [{{"type": "text", "text": processor.instruction}}]
    chat = pipe(text=[{{"role": "user", "content": content}}], return_full_text=False)
    assert chat[0]["generated_text"] == direct, (chat, direct)
    results[name] = direct
print(json.dumps(results))
"""


def _run(python: Path, code: str, cwd: Path, env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "TOKENIZERS_PARALLELISM": "false"})
    env.update(env_extra)
    proc = subprocess.run([str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"fresh venv run failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_export_loads_in_fresh_venv(release, version):
    python = fresh_venv(version)
    root = release["root"]
    env = {"HF_HUB_CACHE": str(release["cache"]), "HF_HOME": str(root / f"hf_home-{version}")}
    out = _run(python, CHECKS.format(version=version, names=[str(release["export"]), REPO_ID]), root, env)
    results = json.loads(out.strip().splitlines()[-1])
    # Local folder and Hub cache give the same report.
    assert results[str(release["export"])] == results[REPO_ID]
    # The card's quick start runs as written (it names the Hub id, resolved from the cache offline).
    for block in python_blocks((release["export"] / "README.md").read_text()):
        assert _run(python, block, root, env).strip()
