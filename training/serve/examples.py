"""The example studies of the `rrg serve` page, shipped with the package in `examples.json` (next to this file).

Three test studies of the synthetic benchmark (frontal and lateral PNG, the reference report and an indication),
rendered once by `python -m training.sandbox.serve_examples` and stored as package data (base64 PNG in JSON, so the
wheel's package-data patterns carry them), so neither the page nor the Space folder needs the sandbox's renderer at
run time. Gradio offers files, so [`write_examples`] writes the PNGs into a folder the first time they are needed.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from ..fileio import write_bytes_atomic

__all__ = ["EXAMPLES_FILE", "NUM_EXAMPLES", "load_examples", "write_examples"]

EXAMPLES_FILE = Path(__file__).with_name("examples.json")
NUM_EXAMPLES = 3


def load_examples(path: str | os.PathLike = EXAMPLES_FILE) -> list[dict]:
    """The shipped studies: `[{"id", "indication", "report", "views": [{"name", "png": bytes}]}]`."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    return [{**study, "views": [{"name": view["name"], "png": base64.b64decode(view["png_base64"])}
                                for view in study["views"]]}
            for study in document["studies"]]


def write_examples(folder: str | os.PathLike, count: int = NUM_EXAMPLES, lateral: bool = True) -> list[dict]:
    """
    Write the first `count` shipped studies as PNGs under `folder` (`<id>/frontal.png`, `<id>/lateral.png`).

    Args:
        folder (`str` or `os.PathLike`): Where the PNGs go (files already there are kept).
        count (`int`, *optional*, defaults to 3): How many studies (at most the number shipped).
        lateral (`bool`, *optional*, defaults to `True`): Include the lateral view (for models reading two views).

    Returns:
        `list[dict]`: `{"id", "images" (paths), "report", "indication"}` per study.
    """
    studies = load_examples()
    if count > len(studies):
        raise ValueError(f"{EXAMPLES_FILE} holds {len(studies)} example studies; asked for {count}.")
    folder = Path(folder)
    out = []
    for study in studies[:count]:
        paths = []
        for view in study["views"][: 2 if lateral else 1]:
            path = folder / study["id"] / f"{view['name']}.png"
            if not path.is_file():
                write_bytes_atomic(path, view["png"])
            paths.append(str(path))
        out.append({"id": study["id"], "images": paths, "report": study["report"], "indication": study["indication"]})
    return out
