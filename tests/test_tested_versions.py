"""The README and the model card state the transformers range the compatibility matrix last passed, not a typed one."""

from pathlib import Path

from training.release.tested_versions import (
    README_END,
    README_START,
    load_tested_versions,
    render_tested_versions,
    sync_readme,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_readme_block_is_the_recorded_matrix():
    tested = load_tested_versions(REPO_ROOT / "hub_cards" / "tested_versions.json")
    assert {"transformers_oldest", "transformers_locked", "transformers_newest"} <= set(tested)
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert block == render_tested_versions(tested), "README's tested versions drifted: run the compatibility matrix"


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
