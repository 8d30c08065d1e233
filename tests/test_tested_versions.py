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
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    tested = {"transformers_oldest": "5.0.0", "transformers_locked": "5.24.0", "transformers_newest": "5.25.1",
              "tested_on": "2026-11-24", "torch": "2.13.0", "training_stack_newest": {"trl": "1.16.0"}}
    assert sync_readme(readme, tested)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "5.0.0 (oldest supported), 5.24.0 (locked), 5.25.1 (newest on the package index)" in text
    assert "trl 1.16.0" in text
    assert not sync_readme(readme, tested)  # idempotent
