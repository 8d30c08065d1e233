"""Writes the synthetic benchmark: one study = ground truth + report + images, the folder in R2Gen's layout."""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...data.chexpert import POSITIVE
from ...fileio import atomic_dir
from .findings import sample_findings
from .render import render_study
from .report import write_report

__all__ = ["finding_maps", "generate_study", "generate_synthetic_dataset"]

logger = logging.getLogger(__name__)

# Split names as R2Gen writes them in annotation.json.
_SPLITS = ("train", "val", "test")


def _save_png(array: np.ndarray, path: Path) -> None:
    # Pillow writes no timestamps into PNGs, so the bytes are a pure function of the pixels.
    Image.fromarray(array, mode="L").save(path, format="PNG", compress_level=6)


def _study_rngs(seed: int, split: str, index: int) -> list[np.random.Generator]:
    """The findings, report and image generators of one study (a pure function of seed, split and index)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(_SPLITS.index(split), int(index)))
    return [np.random.default_rng(s) for s in ss.spawn(3)]


def finding_maps(seed: int, study_id: str, findings: list[dict[str, Any]], grid: int, image_size: int = 48,
                 threshold: int = 10) -> np.ndarray:
    """
    Where each finding of a generated study is drawn on its frontal view: a `(len(findings), grid, grid)` boolean
    array, cell `(i, r, c)` true when adding finding `i` changes some pixel of that cell by more than `threshold`.

    The study is re-rendered (at `image_size`, small for speed) with its findings added one at a time: the renderer
    draws the same patient for the same seed whatever the findings, so each difference is that finding alone, in
    place. Used as dense (per-patch) targets when pretraining the demo's vision encoder.

    Args:
        seed (`int`): Data set seed, as given to [`generate_synthetic_dataset`].
        study_id (`str`): The study's `id` (`"<split>_<index>"`, as in `annotation.json`).
        findings (`list[dict]`): The study's ground truth (its `findings` entry), in the stored order.
        grid (`int`): Cells per side (the encoder's patch grid); `image_size` is rounded up to a multiple of it.
        image_size (`int`, *optional*, defaults to 48): Side of the re-rendered images (>= 32).
        threshold (`int`, *optional*, defaults to 10): Grey-level change that counts as drawn.
    """
    split, _, index = study_id.rpartition("_")
    if split not in _SPLITS or not index.isdigit():
        raise ValueError(f"study_id must look like 'train_000012', got {study_id!r}.")
    size = max(32, -(-int(image_size) // grid) * grid)
    cell = size // grid
    previous = None
    maps = np.zeros((len(findings), grid, grid), dtype=bool)
    for i in range(len(findings) + 1 if findings else 0):
        # A fresh generator per render: each starts from the study's image state.
        image = render_study(_study_rngs(seed, split, int(index))[2], findings[:i], image_size=size)[0].astype(np.int16)
        if previous is not None:
            diff = np.abs(image - previous).reshape(grid, cell, grid, cell).max(axis=(1, 3))
            maps[i - 1] = diff > threshold
        previous = image
    return maps


def generate_study(
    seed: int,
    split: str,
    index: int,
    image_size: int = 128,
    lateral: bool = False,
    normal_fraction: float = 0.35,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """
    Generates one study: ground truth, report, labels and images.

    Args:
        seed (`int`): Data set seed.
        split (`str`): One of `"train"`, `"val"`, `"test"`.
        index (`int`): Index of the study inside its split.
        image_size (`int`, *optional*, defaults to 128): Image side in pixels.
        lateral (`bool`, *optional*, defaults to `False`): Whether to render a lateral view too.
        normal_fraction (`float`, *optional*, defaults to 0.35): Fraction of studies without pathology.

    Returns:
        `tuple[dict, list[np.ndarray]]`: the annotation entry (with `image_path` relative to the
        image root) and the rendered images.
    """
    f_rng, r_rng, i_rng = _study_rngs(seed, split, index)
    findings = sample_findings(f_rng, normal_fraction=normal_fraction)
    report = write_report(findings, r_rng)
    images = render_study(i_rng, findings, image_size=image_size, lateral=lateral)
    study_id = f"{split}_{index:06d}"
    entry = {
        "id": study_id,
        "study_id": 50_000_000 + _SPLITS.index(split) * 1_000_000 + int(index),
        "subject_id": 10_000_000 + _SPLITS.index(split) * 1_000_000 + int(index),
        "report": report.text,
        "image_path": [f"{split}/{study_id}/{v}.png" for v in range(len(images))],
        "chexpert": report.chexpert,
        "findings": findings,
    }
    return entry, images


def _generate_chunk(args: tuple) -> list[dict[str, Any]]:
    seed, split, indices, image_size, lateral, normal_fraction, image_root = args
    entries = []
    for index in indices:
        entry, images = generate_study(seed, split, index, image_size, lateral, normal_fraction)
        folder = Path(image_root) / split / entry["id"]
        folder.mkdir(parents=True, exist_ok=True)
        for rel, image in zip(entry["image_path"], images):
            _save_png(image, Path(image_root) / rel)
        entries.append(entry)
    return entries


def generate_synthetic_dataset(
    output_dir: str | os.PathLike,
    num_train: int = 2000,
    num_val: int = 200,
    num_test: int = 200,
    image_size: int = 128,
    seed: int = 0,
    lateral: bool = False,
    num_workers: int | None = None,
    normal_fraction: float = 0.35,
    overwrite: bool = False,
) -> Path:
    """
    Generates the synthetic benchmark and writes it in the R2Gen `annotation.json` layout.

    The folder is built in a temporary sibling folder and moved into place with `os.replace`, so
    a crash never leaves a half-written data set behind. The output is byte-identical for the same
    arguments whatever `num_workers` is.

    Args:
        output_dir (`str` or `os.PathLike`):
            Folder to create; gets `annotation.json` and `images/`.
        num_train (`int`, *optional*, defaults to 2000): Number of training studies.
        num_val (`int`, *optional*, defaults to 200): Number of validation studies (R2Gen `"val"`).
        num_test (`int`, *optional*, defaults to 200): Number of test studies.
        image_size (`int`, *optional*, defaults to 128): Image side in pixels (>= 32).
        seed (`int`, *optional*, defaults to 0): Seed; everything is a function of it.
        lateral (`bool`, *optional*, defaults to `False`): Also render a lateral view per study.
        num_workers (`int`, *optional*):
            Worker processes; defaults to the number of CPU cores (1 for small data sets).
        normal_fraction (`float`, *optional*, defaults to 0.35): Fraction of studies without pathology.
        overwrite (`bool`, *optional*, defaults to `False`): Replace an existing non-empty `output_dir`.

    Returns:
        `Path`: `output_dir`.

    Example:

    ```python
    >>> from training.sandbox.synthetic import generate_synthetic_dataset
    >>> from training.data.loaders import load_synthetic
    >>> out = generate_synthetic_dataset("/tmp/synth", num_train=20, num_val=5, num_test=5, image_size=64)
    >>> load_synthetic(out)["train"].num_rows
    20
    ```
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for name, n in counts.items():
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"num_{name} must be a non-negative integer, got {n!r}.")
    if sum(counts.values()) == 0:
        raise ValueError("All of num_train, num_val and num_test are 0; ask for at least one study.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}.")
    if not 0.0 <= normal_fraction <= 1.0:
        raise ValueError(f"normal_fraction must be in [0, 1], got {normal_fraction}.")
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ValueError(f"{output_dir} already exists and is not empty; pass overwrite=True (--overwrite) or choose another folder.")
    total = sum(counts.values())
    if num_workers is None:
        num_workers = 1 if total < 200 else (os.cpu_count() or 1)
    num_workers = max(1, int(num_workers))

    with atomic_dir(output_dir) as tmp:
        image_root = tmp / "images"
        image_root.mkdir()
        chunk = 64
        jobs = [
            (int(seed), split, list(range(start, min(start + chunk, n))), int(image_size), bool(lateral), float(normal_fraction), str(image_root))
            for split, n in counts.items()
            for start in range(0, n, chunk)
        ]
        annotation: dict[str, list] = {split: [] for split in _SPLITS}
        start_time = time.perf_counter()
        with tqdm(total=total, desc="Generating synthetic studies", unit="study", disable=total < 500) as bar:
            if num_workers == 1:
                results = map(_generate_chunk, jobs)
                for job, entries in zip(jobs, results):
                    annotation[job[1]].extend(entries)
                    bar.update(len(entries))
            else:
                with ProcessPoolExecutor(max_workers=num_workers) as pool:
                    for job, entries in zip(jobs, pool.map(_generate_chunk, jobs)):
                        annotation[job[1]].extend(entries)
                        bar.update(len(entries))
        with open(tmp / "annotation.json", "w", encoding="utf-8") as fh:
            json.dump(annotation, fh, indent=1)
            fh.write("\n")
        # What the data set is, for model cards and metrics (a folder name such as `data` says nothing).
        info = {"pretty_name": f"rrg synthetic chest X-ray benchmark (seed {seed}, {image_size} px)",
                "splits": {name: len(rows) for name, rows in annotation.items()}}
        (tmp / "dataset_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        elapsed = time.perf_counter() - start_time
    normal = sum(e["chexpert"]["No Finding"] == POSITIVE for split in annotation.values() for e in split)
    logger.info(
        "Wrote %d synthetic studies (%s) to %s in %.1f s with %d worker(s); %.0f%% without pathology.",
        total,
        ", ".join(f"{k}={v}" for k, v in counts.items()),
        output_dir,
        elapsed,
        num_workers,
        100.0 * normal / total,
    )
    return output_dir
