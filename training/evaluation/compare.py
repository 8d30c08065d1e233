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

__all__ = ["load_pairs", "compare_predictions", "main"]

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


def compare_predictions(path_a, path_b, labeler=None, replicates: int = 1000, seed: int = 0, **scoring_kwargs) -> dict:
    """Paired bootstrap of every metric between two prediction files of the same study ids.

    Returns:
        `dict`: `metrics` (name -> a, b, difference, low, high, p_value), `num_samples`, `a`, `b`, `method`.
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
    stats_a, _ = metric_stats([r["prediction"] for r in a_rows], refs, labeler=labeler, **scoring_kwargs)
    stats_b, _ = metric_stats([r["prediction"] for r in b_rows], refs, labeler=labeler, **scoring_kwargs)
    return {
        "a": str(path_a), "b": str(path_b), "num_samples": len(refs),
        "method": f"paired bootstrap of B - A, {replicates} replicates, seed {seed}; 95% percentile interval; "
                  "two-sided p = 2 * min(share of replicates <= 0, share >= 0)",
        "metrics": paired_test(stats_a, stats_b, replicates=replicates, seed=seed),
    }


def to_markdown(result: dict, names=None) -> str:
    lines = [f"A = {result['a']}, B = {result['b']}, {result['num_samples']} studies; {result['method']}.", "",
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
    p.add_argument("--output", default=None, help="Write the comparison as JSON here.")
    a = p.parse_args(argv)
    result = compare_predictions(a.a, a.b, replicates=a.bootstrap, seed=a.seed, protocol=a.protocol,
                                 clean=None if a.clean == "none" else a.clean, meteor=not a.no_meteor)
    if a.output:
        write_json_atomic(Path(a.output), result)
    sys.stdout.write(to_markdown(result))
    return 0
