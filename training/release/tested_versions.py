"""The transformers releases the remote code was last tested on, as recorded by the compatibility matrix.

`tests/test_remote_code_compat.py` writes `hub_cards/tested_versions.json` after each passing run (oldest supported,
locked and newest-on-the-index transformers, and the newest training stack); the model card and the README state
the range from it, so neither is typed by hand.
"""

import json
import re
from importlib import resources
from pathlib import Path

__all__ = ["load_tested_versions", "render_tested_versions", "sync_readme"]

README_START, README_END = "<!-- tested-versions:start -->", "<!-- tested-versions:end -->"


def _path() -> Path:
    # hub_cards/ is a data-only package (editable install: the checkout's folder; wheel: its installed copy).
    return Path(str(resources.files("hub_cards").joinpath("tested_versions.json")))


def load_tested_versions(path: str | Path | None = None) -> dict:
    """The recorded matrix (an empty dict when it was never run)."""
    path = Path(path) if path is not None else _path()
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def render_tested_versions(tested: dict) -> str:
    """One markdown paragraph saying which releases passed, for the README and the model card."""
    roles = [("transformers_oldest", "oldest supported"), ("transformers_locked", "locked"),
             ("transformers_newest", "newest on the package index")]
    parts = [f"{tested[key]} ({label})" for key, label in roles if tested.get(key)]
    if not parts:
        return "The compatibility matrix has not been run yet."
    text = f"Last passing run ({tested.get('tested_on', 'date unknown')}, torch {tested.get('torch', '?')}): " \
           f"the remote code on transformers {', '.join(parts)}"
    stack = tested.get("training_stack_newest")
    if stack:
        text += "; both training stages on " + ", ".join(f"{name} {version}" for name, version in sorted(stack.items()))
    return text + "."


def sync_readme(readme: str | Path, tested: dict | None = None) -> bool:
    """Rewrite the README's tested-versions block from the record; returns whether the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block to fill in.")
    block = f"{README_START}\n{render_tested_versions(tested if tested is not None else load_tested_versions())}\n{README_END}"
    new = re.sub(re.escape(README_START) + r".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    if new == text:
        return False
    tmp = readme.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(readme)
    return True
