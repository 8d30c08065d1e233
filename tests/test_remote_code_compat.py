"""Compatibility matrix that looks forward: the exported folder in fresh virtual environments holding only torch,
transformers and Pillow (not this project), for

* the **oldest** transformers this package supports (the floor of the range in `pyproject.toml`),
* the **locked** one (`requirements/lock.txt`, what `make` installs),
* the **newest** one the package index offers *when the test runs* (resolved with pip, never typed here),

each loading the folder with `trust_remote_code=True` from a local folder and from a Hub cache layout with
HF_HUB_OFFLINE=1, comparing logits and greedy generation with the reference computed here, and running the custom
pipeline, `image-text-to-text` and the model card's quick start. Plus one short stage-1 + stage-2 training run on the
newest transformers + trl + peft + accelerate + datasets together, whose trained weights must give the same logits as
the same run on the locked stack.

The environments are cached under `<repo>/.cache/venvs/` (or `$RRG_TEST_VENV_CACHE`), keyed by the exact versions:
a marker written after a successful install says an environment is complete, creation is locked with a file lock, a
failed install leaves nothing behind. Every passing run records the versions it tested in
`hub_cards/tested_versions.json` (read by the model card and mirrored in the README).
`RRG_COMPAT_TRANSFORMERS="5.0.0,5.23.0"` replaces the matrix with explicit versions (for bisecting a break).
"""

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import tomllib
import torch
from PIL import Image

from helpers import REPO_ID, hub_cache, make_adapter_run, python_blocks, reference_batch, write_metrics, xray

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements" / "lock.txt"
TESTED = REPO_ROOT / "hub_cards" / "tested_versions.json"
# The CPU build this project's venv runs on (a plain `torch` spec would pull a multi-GB CUDA build).
TORCH_SPEC = f"torch=={torch.__version__.split('+')[0]}"
MARKER = ".rrg-venv-ready.json"
# The training stack resolved to its newest releases together for the training check.
STACK = ("transformers", "trl", "peft", "accelerate", "datasets")

pytestmark = pytest.mark.slow


def _project_specs() -> dict[str, str]:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    specs = {}
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower()
        specs[name] = dep.replace(" ", "")
    return specs


def oldest_supported() -> str:
    spec = _project_specs()["transformers"]
    floor = re.search(r">=([0-9][0-9.]*)", spec)
    if floor is None:
        raise AssertionError(f"pyproject.toml's {spec!r} has no lower bound (>=): the oldest supported is unknown.")
    parts = floor.group(1).split(".")
    return ".".join((parts + ["0", "0"])[:3])


def locked(name: str) -> str:
    for line in LOCK.read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{LOCK} pins no {name}; run `make lock`.")


def newest(*requirements: str) -> dict[str, str]:
    """The versions pip resolves today for `requirements` (within their ranges), asking the package index."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps",
         "--disable-pip-version-check", "--report", "-", *requirements],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"Could not ask the package index for the newest {requirements}: pip said\n{proc.stderr[-2000:]}\n"
            "The compatibility matrix needs the package index (PyPI) to resolve the newest releases."
        )
    report = json.loads(proc.stdout)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}


def matrix() -> list[tuple[str, str]]:
    explicit = os.environ.get("RRG_COMPAT_TRANSFORMERS")
    if explicit:
        return [(f"explicit-{v.strip()}", v.strip()) for v in explicit.split(",") if v.strip()]
    return [
        ("oldest", oldest_supported()),
        ("locked", locked("transformers")),
        ("newest", newest(_project_specs()["transformers"])["transformers"]),
    ]


def _venv_root() -> Path:
    return Path(os.environ.get("RRG_TEST_VENV_CACHE") or REPO_ROOT / ".cache" / "venvs")


def fresh_venv(name: str, requirements: list[str]) -> Path:
    """The python of a cached venv holding `TORCH_SPEC` + `requirements` (exact pins); created if missing."""
    root = _venv_root()
    root.mkdir(parents=True, exist_ok=True)
    spec = {"python": sys.version.split()[0], "torch": TORCH_SPEC, "requirements": sorted(requirements)}
    venv = root / f"{name}-py{sys.version_info.major}{sys.version_info.minor}"
    python = venv / "bin" / "python"
    with open(root / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers wait for one creator
        marker = venv / MARKER
        if marker.exists() and json.loads(marker.read_text()).get("spec") == spec and python.exists():
            return python
        # A venv is bound to its path, so it is built in place; the marker, written last, says it is complete.
        shutil.rmtree(venv, ignore_errors=True)
        start = time.perf_counter()
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
            # torch first and alone: the other packages then see it installed and never pull a CUDA build.
            subprocess.run([*pip, TORCH_SPEC], check=True, capture_output=True, text=True, timeout=1800)
            subprocess.run([*pip, *requirements], check=True, capture_output=True, text=True, timeout=1800)
        except subprocess.CalledProcessError as err:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"Could not create the venv {name} ({requirements}):\n{err.stdout}\n{err.stderr}")
        seconds = time.perf_counter() - start
        marker.write_text(json.dumps({"spec": spec, "created_in_seconds": round(seconds, 1)}))
        sys.stderr.write(f"created {venv} in {seconds:.0f}s\n")
    return python


def record_tested(key: str, value) -> None:
    """Write what this run tested into `hub_cards/tested_versions.json` (file-locked: xdist workers share it)."""
    _venv_root().parent.mkdir(parents=True, exist_ok=True)
    with open(_venv_root().parent / "tested_versions.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(TESTED.read_text()) if TESTED.exists() else {}
        if data.get(key) == value:
            return
        data[key] = value
        data["tested_on"] = date.today().isoformat()
        data["torch"] = torch.__version__.split("+")[0]
        tmp = TESTED.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(TESTED)
        from training.release.tested_versions import sync_readme

        sync_readme(REPO_ROOT / "README.md", data)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A stage-2 LoRA run exported merged, the reference batch and logits, images for the card, a Hub cache copy."""
    from training.model_io import load_trained
    from training.release.export import export_model
    from training.sandbox.tiny import train_bpe_tokenizer

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
    views = [Image.open(root / "frontal.png"), Image.open(root / "lateral.png")]
    inputs = processor(images=views)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    reference_report = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:])[0]
    cache = hub_cache(root, export)
    return {"root": root, "export": export, "cache": cache, "report": reference_report}


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
if transformers.__version__ != {version!r}:
    raise SystemExit(f"expected transformers {version}, found {{transformers.__version__}}")
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
    torch.testing.assert_close(logits, torch.load("logits.pt"), atol=1e-5, rtol=1e-5,
                               msg=lambda m: "logits differ from the reference: " + m)
    torch.testing.assert_close(model.lm_head(hidden), logits, atol=1e-5, rtol=1e-5)
    views = [Image.open("frontal.png"), Image.open("lateral.png")]
    inputs = processor(images=views)
    direct = processor.batch_decode(model.generate(**inputs, max_new_tokens=20, do_sample=False)[:, inputs["input_ids"].shape[1]:])[0]
    uncached = processor.batch_decode(model.generate(**inputs, max_new_tokens=20, do_sample=False, use_cache=False)[:, inputs["input_ids"].shape[1]:])[0]
    assert uncached == direct, ("generation with and without the cache differ", uncached, direct)
    reporter = pipeline(model=name, trust_remote_code=True)
    report = reporter(["frontal.png", "lateral.png"], max_new_tokens=20)
    assert report == {{"report": direct}}, (report, direct)
    batch_out = reporter([["frontal.png", "lateral.png"], ["frontal.png"]], indication=[None, "Cough."], max_new_tokens=20)
    assert len(batch_out) == 2 and batch_out[0] == report, (batch_out, report)
    pipe = pipeline("image-text-to-text", model=name, trust_remote_code=True)
    content = [{{"type": "image", "image": v}} for v in views] + [{{"type": "text", "text": processor.instruction}}]
    chat = pipe(text=[{{"role": "user", "content": content}}], return_full_text=False, max_new_tokens=20)
    assert chat[0]["generated_text"] == direct, (chat, direct)
    results[name] = direct
print(json.dumps(results))
"""


def _run(python: Path, code: list[str] | str, cwd: Path, env_extra: dict, what: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "TOKENIZERS_PARALLELISM": "false"})
    env.update(env_extra)
    args = [str(python), "-c", code] if isinstance(code, str) else [str(python), *code]
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise AssertionError(
            f"{what} FAILED (exit {proc.returncode}). The last lines say what broke:\n{proc.stderr[-4000:]}\n"
            f"STDOUT:\n{proc.stdout[-2000:]}"
        )
    return proc.stdout


@pytest.mark.parametrize("role, version", matrix(), ids=lambda v: str(v))
def test_export_loads_in_fresh_venv(release, role, version):
    python = fresh_venv(f"tf-{version}", [f"transformers=={version}", "pillow"])
    root = release["root"]
    env = {"HF_HUB_CACHE": str(release["cache"]), "HF_HOME": str(root / f"hf_home-{version}")}
    what = f"The exported remote code on transformers {version} ({role} supported release)"
    out = _run(python, CHECKS.format(version=version, names=[str(release["export"]), REPO_ID]), root, env, what)
    results = json.loads(out.strip().splitlines()[-1])
    # Local folder and Hub cache give the same report, and it is the greedy report of the reference here.
    assert results[str(release["export"])] == results[REPO_ID] == release["report"], (what, results, release["report"])
    # The card's quick start runs as written (it names the Hub id, resolved from the cache offline).
    for block in python_blocks((release["export"] / "README.md").read_text()):
        assert _run(python, block, root, env, f"{what}: the model card's quick start").strip()
    if not role.startswith("explicit"):
        record_tested(f"transformers_{role}", version)


def test_matrix_resolves_three_roles_from_the_project_and_the_index():
    """The matrix is read from pyproject, the lock and the index, so a new release is tested the day it appears."""
    roles = dict(matrix()) if not os.environ.get("RRG_COMPAT_TRANSFORMERS") else None
    if roles is None:
        pytest.skip("RRG_COMPAT_TRANSFORMERS replaces the matrix")
    assert set(roles) == {"oldest", "locked", "newest"}
    key = lambda v: tuple(int(p) for p in re.findall(r"\d+", v)[:3])  # noqa: E731
    assert key(roles["oldest"]) <= key(roles["locked"]) <= key(roles["newest"]), roles
    installed = __import__("transformers").__version__
    assert installed == roles["locked"], (
        f"the venv runs transformers {installed} but the lock says {roles['locked']}: reinstall with `make install`"
    )


TRAIN_SCRIPT = Path(__file__).with_name("compat_train_run.py")


def test_two_stages_train_alike_on_the_newest_stack(tmp_path):
    """A short stage-1 + stage-2 run on the newest transformers/trl/peft/accelerate/datasets (resolved today) gives
    the same trained model as on the locked stack."""
    specs = _project_specs()
    versions = newest(*(specs[name] for name in STACK))
    python = fresh_venv(
        "stack-" + "-".join(f"{name}{versions[name]}" for name in STACK),
        [f"{name}=={versions[name]}" for name in STACK] + [str(REPO_ROOT)],
    )
    stack = ", ".join(f"{name} {versions[name]}" for name in STACK)
    reference = _run(Path(sys.executable), [str(TRAIN_SCRIPT), str(tmp_path / "locked")], REPO_ROOT,
                     {"PYTHONPATH": str(REPO_ROOT)}, "The short two-stage run on the locked stack")
    newest_out = _run(python, [str(TRAIN_SCRIPT), str(tmp_path / "newest")], tmp_path,
                      {"PYTHONPATH": str(REPO_ROOT)}, f"The short two-stage run on the newest stack ({stack})")
    ref, new = json.loads(reference.strip().splitlines()[-1]), json.loads(newest_out.strip().splitlines()[-1])
    assert new["versions"]["transformers"] == versions["transformers"], new["versions"]
    assert new["losses"] == pytest.approx(ref["losses"], rel=1e-4), (f"training losses differ on {stack}", new, ref)
    logits_ref = torch.load(tmp_path / "locked" / "logits.pt")
    logits_new = torch.load(tmp_path / "newest" / "logits.pt")
    torch.testing.assert_close(
        logits_new, logits_ref, atol=1e-4, rtol=1e-4,
        msg=lambda m: f"Training on the newest stack ({stack}) gives another model than on the locked stack: {m}",
    )
    record_tested("training_stack_newest", {name: versions[name] for name in STACK})
