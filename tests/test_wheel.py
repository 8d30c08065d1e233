"""The built wheel, installed in a fresh environment, runs the `rrg` commands (no repository checkout needed)."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from helpers import make_full_run

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(args, cwd, timeout=900) -> str:
    # Outside the repository and without PYTHONPATH, only the installed wheel provides `training` / `hub_cards`.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the wheel installed; dependencies come from this environment (no downloads)."""
    root = tmp_path_factory.mktemp("wheel")
    wheels = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels)], cwd=root)
    (wheel,) = wheels.glob("rrg-*.whl")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip())
    # Reuse the installed dependencies: a path entry (not a site dir), so this environment's editable rrg finder is
    # not loaded and only the wheel provides rrg.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], cwd=root)
    where = _run([str(python), "-c", "import training, hub_cards; print(training.__file__, hub_cards.__file__)"], cwd=root)
    assert str(REPO_ROOT) not in where and str(site) in where
    return {"root": root, "bin": env_dir / "bin"}


def test_demo_help(installed):
    assert "--output-dir" in _run([str(installed["bin"] / "rrg"), "demo", "--help"], cwd=installed["root"])



def test_data_generates_the_same_benchmark(installed, tmp_path):
    # the report phrases are a data file (training/sandbox/synthetic/phrases.json): the wheel must ship it
    from training.sandbox.synthetic import generate_synthetic_dataset

    args = ["--num-train", "3", "--num-val", "1", "--num-test", "1", "--image-size", "32", "--seed", "5"]
    _run([str(installed["bin"] / "rrg"), "data", "--out", str(tmp_path / "wheel"), *args], cwd=tmp_path)
    here = generate_synthetic_dataset(tmp_path / "here", num_train=3, num_val=1, num_test=1, image_size=32, seed=5)
    assert (tmp_path / "wheel" / "annotation.json").read_bytes() == (here / "annotation.json").read_bytes()

def test_export_of_a_trained_folder(installed, tokenizer, tmp_path):
    run = make_full_run(tmp_path / "run", tokenizer)
    out = tmp_path / "hub"
    _run([str(installed["bin"] / "rrg"), "export", str(run), "--output-dir", str(out)], cwd=tmp_path)
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "not a medical device" in card.lower()
    assert (out / "modeling_rrg.py").is_file() and (out / "model.safetensors").is_file()


def test_analyze_on_a_hugging_face_dataset(installed, tokenizer, tmp_path):
    run = make_full_run(tmp_path / "run", tokenizer)
    images = []
    for i in range(3):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
        images.append(str(path))
    reports = ["the heart is normal .", "small left pleural effusion .", "no pneumothorax ."]
    data = tmp_path / "hf_data"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"image": images, "report": reports})}).save_to_disk(data)
    out = tmp_path / "analysis"
    _run([str(installed["bin"] / "rrg"), "analyze", "--model", str(run), "--data", str(data), "--split", "test",
          "--max-studies", "2", "--max-new-tokens", "3", "--batch-size", "2", "--num-threads", "1",
          "--allow-outside-image-root",  # the table holds absolute paths to images outside the dataset folder
          "--output-dir", str(out)], cwd=tmp_path)
    assert (out / "analysis.json").is_file() and (out / "summary.md").is_file()


def test_serve_examples_ship_in_the_wheel(installed, tmp_path):
    # package data of training.serve: the page's example studies, without the sandbox's renderer
    code = ("import sys; sys.modules['training.sandbox'] = None; from training.serve import write_examples; "
            "print(len(write_examples(sys.argv[1])))")
    assert _run([str(installed["bin"] / "python"), "-c", code, str(tmp_path)], cwd=tmp_path).strip() == "3"
