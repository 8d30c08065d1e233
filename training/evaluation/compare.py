"""Paired comparison of two prediction files of the same studies: `rrg compare A/predictions.jsonl B/predictions.jsonl`.

Scores both files the way `rrg evaluate` does (the same metric registry and protocol), on the same bootstrap
resamples of the studies, and reports for every metric B - A with its 95% interval and a two-sided paired-bootstrap
p-value: is stage 2 really better than stage 1, true images better than shuffled ones?
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..fileio import write_json_atomic

__all__ = ["load_pairs", "compare_predictions", "ground_truth_labels", "main"]

logger = logging.getLogger(__name__)


def load_pairs(path) -> list[dict]:
    """Rows (`id`, `prediction`, `reference`) of a predictions.jsonl, with a clear error for a bad row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file (expected the predictions.jsonl of rrg evaluate).")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error}).") from None
            missing = [k for k in ("id", "prediction", "reference") if not isinstance(row.get(k), str | int)]
            if missing or not isinstance(row.get("prediction"), str) or not isinstance(row.get("reference"), str):
                raise ValueError(f"{path}, line {number}: expected string fields id, prediction and reference; "
                                 f"got keys {sorted(row)}.")
            rows.append(row)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: study id {duplicate!r} appears more than once.")
    return rows


def compare_predictions(path_a, path_b, labeler=None, replicates: int = 1000, seed: int = 0,
                        reference_labels: dict | None = None, **scoring_kwargs) -> dict:
    """Paired bootstrap of every metric between two prediction files of the same study ids.

    Args:
        reference_labels (`dict`, *optional*):
            Study id -> CheXpert label dict (e.g. a benchmark's ground truth, from [`ground_truth_labels`]): clinical
            efficacy is then scored against these labels instead of the labeler's labels of the reference reports
            (the text metrics still compare with the reference reports). Every compared study must have an entry.

    Returns:
        `dict`: `metrics` (name -> a, b, difference, low, high, p_value), `num_samples`, `a`, `b`, `method`,
        `ce_reference` (`"reference reports"` or `"given labels"`).
    """
    from .bootstrap import paired_test
    from .scorecard import metric_stats

    a_rows, b_rows = load_pairs(path_a), load_pairs(path_b)
    a_ids, b_ids = {r["id"] for r in a_rows}, {r["id"] for r in b_rows}
    if a_ids != b_ids:
        only_a, only_b = sorted(map(str, a_ids - b_ids))[:5], sorted(map(str, b_ids - a_ids))[:5]
        raise ValueError(f"{path_a} and {path_b} must hold the same study ids: {len(a_ids - b_ids)} only in A "
                         f"(e.g. {only_a}), {len(b_ids - a_ids)} only in B (e.g. {only_b}).")
    by_id = {r["id"]: r for r in b_rows}
    b_rows = [by_id[r["id"]] for r in a_rows]
    for a, b in zip(a_rows, b_rows, strict=True):
        if a["reference"] != b["reference"]:
            raise ValueError(f"Study {a['id']!r} has different references in {path_a} and {path_b}.")
    refs = [r["reference"] for r in a_rows]
    if labeler is None:
        from .labeler import RuleBasedLabeler

        labeler = RuleBasedLabeler()
    if reference_labels is not None:
        missing = [str(r["id"]) for r in a_rows if str(r["id"]) not in reference_labels]
        if missing:
            raise ValueError(f"No ground-truth labels for {len(missing)} of the {len(a_rows)} compared studies (e.g. "
                             f"{missing[:5]}): compare predictions of the split whose labels you give (--split).")
        scoring_kwargs["reference_labels"] = [reference_labels[str(r["id"])] for r in a_rows]
    stats_a, _ = metric_stats([r["prediction"] for r in a_rows], refs, labeler=labeler, **scoring_kwargs)
    stats_b, _ = metric_stats([r["prediction"] for r in b_rows], refs, labeler=labeler, **scoring_kwargs)
    return {
        "a": str(path_a), "b": str(path_b), "num_samples": len(refs),
        "method": f"paired bootstrap of B - A, {replicates} replicates, seed {seed}; 95% percentile interval; "
                  "two-sided p = 2 * min(share of replicates <= 0, share >= 0)",
        "ce_reference": "reference reports" if reference_labels is None else "given labels",
        "metrics": paired_test(stats_a, stats_b, replicates=replicates, seed=seed),
    }


def ground_truth_labels(dataset_path, split: str = "test", chexpert_column: str | None = None, **data_kwargs) -> dict:
    """Study id -> the dataset's own CheXpert labels for one split (an annotation.json's `chexpert` entries, e.g.
    the synthetic benchmark's ground truth, or a Hugging Face dataset's `chexpert_column`), for
    `compare_predictions(..., reference_labels=...)`; a split without labels is a `ValueError` saying so."""
    from ..arguments import DataArguments
    from ..data.loaders import dataset_labels, load_rows

    data_args = DataArguments(dataset_path=str(dataset_path), **data_kwargs)
    rows = load_rows(data_args, [split], chexpert_column=chexpert_column)[split]
    labels, _ = dataset_labels(rows, "dataset", None, split)
    return {str(row["id"]): label for row, label in zip(rows, labels, strict=True)}


def to_markdown(result: dict, names=None) -> str:
    against = ("; clinical efficacy against the given ground-truth labels"
               if result.get("ce_reference") == "given labels" else "")
    lines = [f"A = {result['a']}, B = {result['b']}, {result['num_samples']} studies; {result['method']}{against}.", "",
             "| Metric | A | B | B - A | 95% CI | p |", "| --- | ---: | ---: | ---: | :---: | ---: |"]
    for name, r in result["metrics"].items():
        if names and name not in names:
            continue
        lines.append(f"| {name} | {r['a']:.4f} | {r['b']:.4f} | {r['difference']:+.4f} | "
                     f"[{r['low']:+.4f}, {r['high']:+.4f}] | {r['p_value']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="rrg compare", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="predictions.jsonl of system A (e.g. stage 1)")
    p.add_argument("b", help="predictions.jsonl of system B (e.g. stage 2), same study ids")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="REPLICATES")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", default="mimic", choices=["mimic", "iu", "none"])
    p.add_argument("--no-meteor", action="store_true")
    p.add_argument("--protocol", default="r2gen",
                   help="Scoring protocol(s) of the metric registry: r2gen (default), rexrank, or r2gen,rexrank.")
    p.add_argument("--labels_from", "--labels-from", default="reports", choices=["reports", "dataset"],
                   help="Clinical efficacy against the labeler's labels of the reference reports (default) or the "
                        "dataset's own CheXpert labels (ground truth; needs --dataset_path).")
    p.add_argument("--dataset_path", "--dataset-path", default=None,
                   help="annotation.json (or its folder) or a Hugging Face dataset holding the labels.")
    p.add_argument("--split", default="test", help="Split of --dataset_path the predictions are of (default test).")
    p.add_argument("--chexpert_column", "--chexpert-column", default=None,
                   help="Labels column of a Hugging Face dataset (an annotation.json has them in 'chexpert').")
    p.add_argument("--output", default=None, help="Write the comparison as JSON here.")
    a = p.parse_args(argv)
    reference_labels = None
    if a.labels_from == "dataset":
        if not a.dataset_path:
            p.error("--labels_from dataset needs --dataset_path (the data set whose labels are the ground truth).")
        reference_labels = ground_truth_labels(a.dataset_path, a.split, chexpert_column=a.chexpert_column)
    elif a.dataset_path or a.chexpert_column:
        p.error("--dataset_path / --chexpert_column are read only with --labels_from dataset.")
    result = compare_predictions(a.a, a.b, replicates=a.bootstrap, seed=a.seed, protocol=a.protocol,
                                 clean=None if a.clean == "none" else a.clean, meteor=not a.no_meteor,
                                 reference_labels=reference_labels)
    if a.output:
        write_json_atomic(Path(a.output), result)
    sys.stdout.write(to_markdown(result))
    return 0
