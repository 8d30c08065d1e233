"""The README and the model card state the transformers range the compatibility matrix last passed, not a typed one."""

import json
import subprocess
from pathlib import Path

import pytest

from training.release.tested_versions import (
    README_END,
    README_START,
    expected_versions,
    load_tested_versions,
    promote_results,
    record_result,
    render_tested_versions,
    results_path,
    stale_entries,
    sync_readme,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORD = REPO_ROOT / "hub_cards" / "tested_versions.json"


def test_readme_block_is_the_recorded_matrix():
    tested = load_tested_versions(RECORD)
    assert {"transformers_oldest", "transformers_locked", "transformers_newest"} <= set(tested)
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert block == render_tested_versions(tested), (
        "README's tested-versions block is not hub_cards/tested_versions.json: run `make tested-versions`")


@pytest.mark.slow  # asks the package index (pip) for today's newest releases
def test_recorded_versions_are_what_the_matrix_tests_today():
    """The record names the oldest supported and locked transformers of this checkout and the newest transformers
    and training stack on the index *today*: a new upstream release or a new lock makes it stale, and this fails."""
    stale = stale_entries(load_tested_versions(RECORD), expected_versions(REPO_ROOT))
    assert not stale, (
        "hub_cards/tested_versions.json (and the README block) is stale:\n  " + "\n  ".join(stale)
        + "\nRun `make tested-versions` (runs the compatibility matrix on these releases and records them), then "
        "commit hub_cards/tested_versions.json and README.md."
    )


def test_matrix_results_go_to_an_ignored_file():
    """The compatibility matrix writes what passed outside the tracked files (git status stays clean)."""
    path = results_path(REPO_ROOT)
    assert REPO_ROOT in path.parents, path
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT)
    assert ignored.returncode == 0, f"{path} is not ignored by git: the tests would dirty the tree"


def _checkout(root: Path, locked: str = "5.25.0") -> Path:
    (root / "requirements").mkdir(parents=True)
    (root / "hub_cards").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["torch>=2.4", "transformers>=5.0,<6"]\n')
    (root / "requirements" / "lock.txt").write_text(f"# lock\ntorchvision==0.1\ntransformers=={locked}\n")
    (root / "README.md").write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    return root


def test_promote_results_writes_the_record_and_the_readme(tmp_path):
    root = _checkout(tmp_path / "repo")
    results = tmp_path / "results.json"
    stack = {"accelerate": "1.16.0", "datasets": "5.2.0", "peft": "0.21.2", "transformers": "5.25.0", "trl": "1.16.0"}
    for role, value in (("transformers_oldest", "5.0.0"), ("transformers_locked", "5.25.0"),
                        ("transformers_newest", "5.25.0")):
        record_result(results, role, value, torch_version="2.13.0")
    with pytest.raises(ValueError, match="has no result for training_stack_newest"):  # that test failed: no record
        promote_results(results, root)
    assert not (root / "hub_cards" / "tested_versions.json").exists()
    record_result(results, "training_stack_newest", stack, torch_version="2.13.0")
    record = promote_results(results, root)
    assert json.loads((root / "hub_cards" / "tested_versions.json").read_text()) == record
    assert record["transformers_newest"] == "5.25.0" and record["training_stack_newest"] == stack
    readme = (root / "README.md").read_text()
    assert f"{README_START}\n{render_tested_versions(record)}\n{README_END}" in readme
    assert readme.startswith("intro\n") and readme.endswith("outro\n")
    # results of a run before `make lock` moved the lock on are refused, not recorded
    (root / "requirements" / "lock.txt").write_text("transformers==5.26.0\n")
    with pytest.raises(ValueError, match="transformers_locked: recorded '5.25.0', today '5.26.0'"):
        promote_results(results, root)
    with pytest.raises(FileNotFoundError, match="run the compatibility matrix first"):
        promote_results(tmp_path / "missing.json", root)
    with pytest.raises(ValueError, match="Unknown tested-versions role"):
        record_result(results, "transformers_latest", "5.25.0", torch_version="2.13.0")


def test_stale_entries_name_each_outdated_role():
    recorded = {"transformers_oldest": "5.0.0", "transformers_locked": "5.24.0", "transformers_newest": "5.24.0",
                "training_stack_newest": {"accelerate": "1.15.0"}}
    today = {"transformers_oldest": "5.0.0", "transformers_locked": "5.25.0", "transformers_newest": "5.25.0",
             "training_stack_newest": {"accelerate": "1.16.0"}}
    assert stale_entries(recorded, today) == [
        "transformers_locked: recorded '5.24.0', today '5.25.0'",
        "transformers_newest: recorded '5.24.0', today '5.25.0'",
        "training_stack_newest: recorded {'accelerate': '1.15.0'}, today {'accelerate': '1.16.0'}",
    ]
    assert stale_entries(today, today) == []


def test_sync_readme_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nstale text\n{README_END}\noutro\n")
    tested = {"transformers_oldest": "5.0.0", "transformers_locked": "5.24.0", "transformers_newest": "5.25.1",
              "tested_on": "2026-11-24", "torch": "2.13.0", "training_stack_newest": {"trl": "1.16.0"}}
    assert sync_readme(readme, tested)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale text" not in text
    assert "5.0.0 (oldest supported), 5.24.0 (locked), 5.25.1 (newest on the package index)" in text
    assert "trl 1.16.0" in text
    assert not sync_readme(readme, tested)  # idempotent


def test_card_names_the_dataset_base_models_and_tested_versions(tmp_path, tokenizer):
    """The card says what the evaluation data is (not its folder name `data`), links the backbones' Hub ids (also
    when they were loaded from a Hub cache snapshot) and states the tested transformers releases."""
    import json

    from helpers import make_full_run, write_metrics
    from training.data.loaders import describe_dataset
    from training.release.card import build_card_context, hub_id_of, render_model_card
    from training.sandbox.synthetic import generate_synthetic_dataset

    data = generate_synthetic_dataset(tmp_path / "data", num_train=2, num_val=1, num_test=1, image_size=32, seed=3)
    assert describe_dataset(str(data)) == "rrg synthetic chest X-ray benchmark (seed 3, 32 px)"
    assert describe_dataset(str(tmp_path / "physionet" / "mimic_cxr" / "annotation.json")) == "MIMIC-CXR"
    assert describe_dataset("org/iu-xray") == "org/iu-xray"
    snapshot = tmp_path / "hub" / "models--openlm-research--open_llama_7b" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_id_of(str(snapshot)) == "openlm-research/open_llama_7b"
    assert hub_id_of(str(tmp_path)) is None

    run = make_full_run(tmp_path / "stage1", tokenizer)
    summary = json.loads((run / "rrg_training.json").read_text())
    summary["base_models"] = {"vision": "google/vit-base-patch16-224-in21k", "text": str(snapshot)}
    (run / "rrg_training.json").write_text(json.dumps(summary))
    metrics = json.loads((write_metrics(tmp_path / "eval") / "metrics.json").read_text())
    metrics["data"] = str(data)
    context = build_card_context(run, metrics=metrics, repo_id="org/rrg")
    assert context["base_model"] == ["google/vit-base-patch16-224-in21k", "openlm-research/open_llama_7b"]
    card = str(render_model_card(context))
    assert "base_model:\n- google/vit-base-patch16-224-in21k\n- openlm-research/open_llama_7b" in card
    assert "name: rrg synthetic chest X-ray benchmark (seed 3, 32 px)" in card
    assert render_tested_versions(load_tested_versions()) in card
