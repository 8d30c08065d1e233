"""Command line of the synthetic benchmark: `rrg data --out DIR ...` (or `python -m training.sandbox.synthetic`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .dataset import generate_synthetic_dataset

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point: `python -m training.sandbox.synthetic --out DIR ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.sandbox.synthetic",
        description="Generate the synthetic chest X-ray report-generation benchmark (R2Gen annotation.json layout).",
    )
    parser.add_argument("--out", required=True, help="Output folder (gets annotation.json and images/).")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lateral", action="store_true", help="Also render a lateral view per study.")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--normal-fraction", type=float, default=0.35)
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    args = parser.parse_args(argv)
    options = vars(args)  # the flags are named as generate_synthetic_dataset's arguments
    return generate_synthetic_dataset(options.pop("out"), **options)
