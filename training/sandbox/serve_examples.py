"""Render the example studies `rrg serve` ships (`training/serve/examples.json`) from the synthetic benchmark.

The page offers a few studies one click away. They are the first test studies of the synthetic benchmark (seed 0,
as `rrg data` makes them), rendered once here and stored with the serve package, so the page (and the Space folder
it is copied into) never needs the renderer. Run this again only when the renderer changes; `tests/test_serve.py`
checks the shipped file equals a fresh rendering.

Usage:

```bash
python -m training.sandbox.serve_examples            # rewrites training/serve/examples.json
```
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import sys
from pathlib import Path

from ..fileio import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["EXAMPLES_PATH", "indication_for", "render_serve_examples", "write_serve_examples", "main"]

# Where serve reads them (package data of `training.serve`; the sandbox writes the file, it imports nothing of serve).
EXAMPLES_PATH = Path(__file__).resolve().parents[1] / "serve" / "examples.json"
VIEW_NAMES = ("frontal", "lateral")

# A plausible clinical question for a study, from its ground truth (first match wins): the page fills it in with the
# example, so the indication box is seen in use.
_INDICATIONS = (
    ("support_device", "Line and tube placement check."),
    ("pneumothorax", "Sudden chest pain."),
    ("pleural_effusion", "Shortness of breath."),
    ("edema", "Shortness of breath."),
    ("cardiomegaly", "Shortness of breath."),
    ("consolidation", "Cough and fever."),
    ("atelectasis", "Cough and fever."),
    ("nodule", "Follow-up of a lung nodule."),
    ("fracture", "Chest wall pain after a fall."),
)


def indication_for(findings: list[dict]) -> str:
    """The indication of a synthetic study, from the names of its findings."""
    names = {finding["name"] for finding in findings}
    return next((text for name, text in _INDICATIONS if name in names), "Routine pre-operative chest radiograph.")


def render_serve_examples(count: int = 3, image_size: int = 256, seed: int = 0, lateral: bool = True) -> dict:
    """
    The examples document: `{"source": ..., "studies": [{"id", "indication", "report", "views": [{"name",
    "png_base64"}]}]}` for the first `count` test studies of the synthetic benchmark with `seed`.
    """
    from PIL import Image

    from .synthetic import generate_study

    studies = []
    for index in range(count):
        entry, images = generate_study(seed, "test", index, image_size=image_size, lateral=lateral)
        views = []
        for name, array in zip(VIEW_NAMES, images):
            buffer = io.BytesIO()
            Image.fromarray(array, mode="L").save(buffer, format="PNG", optimize=True)
            views.append({"name": name, "png_base64": base64.b64encode(buffer.getvalue()).decode("ascii")})
        studies.append({"id": entry["id"], "indication": indication_for(entry["findings"]), "report": entry["report"],
                        "views": views})
    source = (f"synthetic benchmark (training.sandbox.synthetic), seed {seed}, test split, studies 0-{count - 1}, "
              f"{image_size} px; written by `python -m training.sandbox.serve_examples`")
    return {"source": source, "studies": studies}


def write_serve_examples(path: str | os.PathLike = EXAMPLES_PATH, **kwargs) -> Path:
    """Write [`render_serve_examples`] to `path` (atomically); `kwargs` go to it."""
    path = Path(path)
    write_text_atomic(path, json.dumps(render_serve_examples(**kwargs), indent=1) + "\n")
    logger.info("Wrote the serve examples to %s", path)
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    write_serve_examples(argv[0] if argv else EXAMPLES_PATH)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
