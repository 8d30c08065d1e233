"""Write a Hugging Face Space folder that serves an rrg model with the `rrg serve` page, unchanged.

The folder holds `app.py` (the Space's entry point, `training/serve/space_app.py`), a `README.md` whose front matter
makes it a Gradio Space, `requirements.txt`, `rrg_space.json` (the model to load) and a copy of the parts of this
project the page runs ([`SPACE_FILES`]: `training/serve/` with its example studies, the rule-based labeler, the image
reader, the attribution and plotting code of the analyses, and `modeling_rrg`, which the plots import) — not the
trainer, the loaders, the scorers or the sandbox, whose dependencies (`datasets`, `trl`, `peft`) the Space does not
install.
Upload it as a Space (`hf upload ORG/NAME DIR --repo-type space`); the model itself is loaded from the Hub with
`trust_remote_code=True` like any user would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..fileio import replace_dir, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["SPACE_FILES", "SPACE_REQUIREMENTS", "write_space"]

# What the page imports (the analysis plots with matplotlib; DICOM needs pydicom).
SPACE_REQUIREMENTS = (
    "torch>=2.4",
    "transformers>=5.0,<6",
    "gradio>=5",
    "pillow>=10",
    "numpy>=1.26",
    "pydicom>=2.4",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "safetensors>=0.4",
)
# What the page imports, relative to the project root (folders are copied whole). `tests/test_serve.py` runs the
# written Space with these copies only, and with `datasets`, `trl` and `peft` unimportable.
SPACE_FILES = (
    "modeling_rrg",
    "training/__init__.py",
    "training/fileio.py",
    "training/serve",
    "training/data/__init__.py",
    "training/data/chexpert.py",
    "training/data/images.py",
    "training/evaluation/__init__.py",
    "training/evaluation/generation.py",
    "training/evaluation/labeler.py",
    "training/evaluation/labeler_data",
    "training/analysis/__init__.py",
    "training/analysis/attention.py",
    "training/analysis/attribution.py",
    "training/analysis/plots.py",
    "training/analysis/studies.py",
)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")

README = """---
title: {title}
emoji: 🩻
colorFrom: blue
colorTo: gray
sdk: gradio
app_file: app.py
pinned: false
models:
- {model}
tags:
- radiology-report-generation
- medical-imaging
---

# {title}

A browser demo of [`{model}`](https://huggingface.co/{model}): upload the views of a chest X-ray study, get a report
streamed token by token, the CheXpert findings the rule-based labeler reads from it and each sentence's attention
heat map over the image.

**Research model — not for clinical use.** Do not upload identifiable patient data.

Written by `rrg serve {model} --write-space DIR`. To serve another model, set the Space variable `RRG_MODEL`.
"""


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def write_space(model: str, output_dir: str | os.PathLike, overwrite: bool = True) -> Path:
    """
    Write the Space folder for `model` (a Hub id, `org/name`) into `output_dir` (replaced atomically).

    Returns:
        `Path`: the folder.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(model)):
        raise ValueError(
            f"A Space loads its model from the Hub: pass a Hub id (org/name), got {model!r}. Push the export first "
            "(`rrg push outputs/demo/export --repo-id org/name`)."
        )
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise ValueError(f"{output_dir} already exists.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        root = _project_root()
        for name in SPACE_FILES:
            source, target = root / name, tmp / name
            if source.is_dir():
                shutil.copytree(source, target, ignore=_IGNORE)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        shutil.copy2(Path(__file__).with_name("space_app.py"), tmp / "app.py")
        write_text_atomic(tmp / "requirements.txt", "\n".join(SPACE_REQUIREMENTS) + "\n")
        write_text_atomic(tmp / "rrg_space.json", json.dumps({"model": str(model)}, indent=2) + "\n")
        title = str(model).split("/")[-1]
        write_text_atomic(tmp / "README.md", README.format(title=title, model=model))
        replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Wrote the Space folder for %s to %s", model, output_dir)
    return output_dir
