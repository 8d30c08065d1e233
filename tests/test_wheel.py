"""The wheel, built and installed the way the README says (distribution `rrg-cxr`, with extras), in a fresh
environment: it is this project (the `rrg` command, `modeling_rrg`, `training`, `hub_cards`) and runs the `rrg`
commands with no repository checkout. Every `pip install` in the README installs that wheel."""

import json
import os
import re
import shlex
import subprocess
import sysconfig
import venv
from pathlib import Path

import datasets
import numpy as np
import pytest
import tomllib
from PIL import Image

from helpers import make_full_run, source_copy

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
# A pip command in the README, inline or in a code block: its arguments are quoted strings or bare words.
PIP_COMMAND = re.compile(r'pip (install|wheel)((?: +(?:"[^"\n]*"|[^\s`"()]+))+)')
# The commands `rrg --help` lists: how we know the `rrg` on PATH is ours.
RRG_COMMANDS = ("demo", "data", "train", "evaluate", "compare", "analyze", "export", "push", "plan", "serve")

pytestmark = pytest.mark.slow


def _run(args, cwd, timeout=900) -> str:
    # Outside the repository and without PYTHONPATH, only the installed wheel provides `training` / `hub_cards`.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _wheel_name() -> str:
    project = _project()
    return f"{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"


def readme_pip_commands() -> list[list[str]]:
    """Every `pip install` / `pip wheel` command of the README, as argument lists."""
    return [[kind, *shlex.split(args)] for kind, args in PIP_COMMAND.findall(README.read_text())]


def readme_install_block() -> list[str]:
    """The lines of the README's install code block (the one that builds the wheel)."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S) if "pip wheel" in b]
    assert len(blocks) == 1, f"README.md should have one bash block that builds the wheel, found {len(blocks)}"
    return [line.strip() for line in blocks[0].splitlines() if line.strip()]


def _ours(entry: Path) -> bool:
    """The editable install of this project in the test environment (what the fresh one must not see)."""
    return entry.name.startswith(("__editable__", "rrg-", "rrg_cxr-", "_rrg")) or entry.suffix == ".egg-link"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv where the README's install block ran as written, in a copy of the checkout.

    The dependencies come from this environment (a path entry of links to its packages, minus this project's
    editable install), so the extras resolve without downloads and only the wheel can provide rrg.
    """
    root = tmp_path_factory.mktemp("wheel")
    source = source_copy(root / "src")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip())
    # Named like a site dir: dill (datasets' hashing) pickles modules outside a "site-packages" path by value.
    deps = root / "deps" / "site-packages"
    deps.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not _ours(entry):
            (deps / entry.name).symlink_to(entry)
    (site / "deps.pth").write_text(f"{deps}\n")
    help_text = None
    for line in readme_install_block():
        command = shlex.split(line)
        if command[0] == "pip":  # the venv's own pip (from the linked packages), as a user's `pip` would be
            _run([str(python), "-m", *command], cwd=source)
        elif command[0] == "rrg":
            help_text = _run([str(env_dir / "bin" / "rrg"), *command[1:]], cwd=root)
        else:
            raise AssertionError(f"README's install block has a line this test does not know how to run: {line!r}")
    assert (source / "dist" / _wheel_name()).is_file(), sorted(p.name for p in (source / "dist").iterdir())
    assert help_text is not None and all(f"\n  {name} " in help_text for name in RRG_COMMANDS), help_text
    where = _run([str(python), "-c", "import modeling_rrg, training, hub_cards; "
                  "print(modeling_rrg.__file__, training.__file__, hub_cards.__file__)"], cwd=root)
    assert str(REPO_ROOT) not in where and where.count(str(site)) == 3, where
    return {"root": root, "bin": env_dir / "bin", "python": python, "source": source}


def test_the_wheel_is_this_project_with_its_extras(installed):
    metadata = _run([str(installed["python"]), "-c", "import importlib.metadata as m, json; d = m.distribution("
                     "'rrg-cxr'); print(json.dumps({'name': d.metadata['Name'], 'version': d.version, 'extras': "
                     "d.metadata.get_all('Provides-Extra'), 'entry': d.read_text('entry_points.txt'), 'files': "
                     "[str(f) for f in d.files]}))"], cwd=installed["root"])
    meta = json.loads(metadata.strip().splitlines()[-1])
    assert (meta["name"], meta["version"]) == ("rrg-cxr", _project()["version"])
    assert "rrg = training.cli:main" in meta["entry"]
    assert {"modeling_rrg/modeling_rrg.py", "training/cli.py", "hub_cards/model_card.jinja"} <= set(meta["files"])
    assert set(_project()["optional-dependencies"]) <= set(meta["extras"])
    # The other README lines (extras named one by one) install the same wheel into the same environment.
    for command in readme_pip_commands():
        if command[0] == "install":
            _run([str(installed["python"]), "-m", "pip", *command], cwd=installed["source"])
    assert "rrg-cxr" in _run([str(installed["python"]), "-m", "pip", "list"], cwd=installed["root"])


def test_every_readme_pip_install_installs_the_wheel():
    """No README line installs another project (the name `rrg` on PyPI is not us) or a stale wheel name."""
    extras = set(_project()["optional-dependencies"])
    commands = readme_pip_commands()
    assert sum(c[0] == "install" for c in commands) >= 5, commands  # the install block and the extras' mentions
    for command in commands:
        if command[0] == "wheel":
            assert command[1:] == ["--no-deps", "-w", "dist", "."], command
            continue
        (target,) = command[1:]
        match = re.fullmatch(r"dist/([^\[]+)\[([a-z,]+)\]", target)
        assert match and match.group(1) == _wheel_name(), (command, _wheel_name())
        assert set(match.group(2).split(",")) <= extras, (command, extras)
    sources = [README, *REPO_ROOT.glob("hub_cards/*"), *REPO_ROOT.glob("docs/*.md"), *REPO_ROOT.rglob("training/**/*.py")]
    for path in sources:
        text = path.read_text(errors="ignore") if path.is_file() else ""
        assert not re.search(r"pip install [\"']?rrg(\[|[\"'`\s]|$)", text), f"{path} tells users to install PyPI's `rrg`"


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
