"""Clinical efficacy under every name the literature uses, each spelled out.

"CE-F1" means different numbers in different papers. Each variant here is named
`ce_{labeler}_{metric}_{averaging}_{labels}_uncertain_{policy}`, e.g. `ce_chexbert_f1_micro_5_uncertain_positive`:

- labeler: the labeler that read both reports (`chexbert`, `rule` for the offline rule-based labeler, ...);
- metric: `precision`, `recall`, `f1`;
- averaging: `micro` (true/false positives pooled over observations), `macro` (mean of per-observation scores),
  `example` (example-based: P/R/F1 of each report's label set, averaged over reports);
- labels: `14` (all CheXpert observations) or `5` (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
  Effusion);
- policy: an uncertain mention (-1) counts as `negative` or as `positive`; not mentioned counts as negative.

[`PAPER_VARIANTS`] says which variant a paper's table reports. Counts are kept per report, so bootstrap
replicates (`training.evaluation.bootstrap`) recompute every variant from weighted sums without relabelling.
"""

from __future__ import annotations

import re

import numpy as np

from ..data.chexpert import CHEXPERT_5, CHEXPERT_OBSERVATIONS, POSITIVE, UNCERTAIN

__all__ = [
    "AVERAGINGS",
    "LABEL_SETS",
    "UNCERTAIN_POLICIES",
    "PAPER_VARIANTS",
    "variant_name",
    "labeler_key",
    "ce_counts",
    "ce_variants_from_counts",
    "compute_ce_variants",
    "ce_variants_markdown",
    "card_rows",
]

AVERAGINGS = ("micro", "macro", "example")
LABEL_SETS = {"14": CHEXPERT_OBSERVATIONS, "5": CHEXPERT_5}
UNCERTAIN_POLICIES = ("negative", "positive")
_METRICS = ("precision", "recall", "f1")

# (row: averaging_labels_uncertain_policy, labeler the paper used, who reports it). Kept as data so metrics.md, the README
# and the model card quote the same rows.
PAPER_VARIANTS = (
    ("micro_14_uncertain_negative", "chexpert", "R2Gen, R2GenCMN, R2GenGPT (CE precision / recall / F1)"),
    ("example_14_uncertain_negative", "chexpert", "papers reporting example-based CE (e.g. METransformer)"),
    ("macro_14_uncertain_positive", "chexbert", "LLaVA-Rad, MAIRA-2 (macro-F1-14, f1chexbert's rrg mode)"),
    ("micro_5_uncertain_positive", "chexbert", "LLaVA-Rad, MAIRA-2 (micro-F1-5, f1chexbert's rrg mode)"),
    ("micro_14_uncertain_positive", "chexbert", "LLaVA-Rad, MAIRA-2 (micro-F1-14)"),
    ("macro_5_uncertain_positive", "chexbert", "LLaVA-Rad (macro-F1-5)"),
)

_KNOWN_LABELERS = {"rrg-rule-based-v1": "rule", "chexbert": "chexbert"}


def labeler_key(name: str) -> str:
    """Short labeler name used in variant names (`"rrg-rule-based-v1"` -> `"rule"`)."""
    return _KNOWN_LABELERS.get(name) or re.sub(r"[^a-z0-9]+", "", name.lower()) or "labeler"


def variant_name(labeler: str, metric: str, averaging: str, labels: str, policy: str) -> str:
    """The metrics.json key of one CE variant, e.g. `ce_chexbert_f1_micro_5_uncertain_positive`."""
    return f"ce_{labeler}_{metric}_{averaging}_{labels}_uncertain_{policy}"


def _positives(labels: list[dict], policy: str) -> np.ndarray:
    accepted = (POSITIVE,) if policy == "negative" else (POSITIVE, UNCERTAIN)
    return np.array([[row.get(obs) in accepted for obs in CHEXPERT_OBSERVATIONS] for row in labels], dtype=bool)


def ce_counts(predicted_labels: list[dict], reference_labels: list[dict]) -> dict[str, np.ndarray]:
    """Per-report true positives, false positives and false negatives for each uncertainty policy.

    Returns:
        `dict`: policy -> array of shape `(num_reports, 3, 14)` (tp, fp, fn per observation), int8.
    """
    if len(predicted_labels) != len(reference_labels):
        raise ValueError(f"Got {len(predicted_labels)} predicted label rows but {len(reference_labels)} references.")
    counts = {}
    for policy in UNCERTAIN_POLICIES:
        p, r = _positives(predicted_labels, policy), _positives(reference_labels, policy)
        counts[policy] = np.stack([p & r, p & ~r, r & ~p], axis=1).astype(np.int8)
    return counts


def _safe_divide(numerator, denominator, zero_division):
    out = np.full(np.broadcast(numerator, denominator).shape, zero_division, dtype=float)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _prf(tp, fp, fn, zero_division):
    return (
        _safe_divide(tp, tp + fp, zero_division),
        _safe_divide(tp, tp + fn, zero_division),
        _safe_divide(2 * tp, 2 * tp + fp + fn, zero_division),
    )


def ce_variants_from_counts(counts: dict[str, np.ndarray], labeler: str, weights: np.ndarray | None = None,
                            zero_division: float = 0.0) -> dict[str, np.ndarray | float]:
    """Every CE variant from per-report counts.

    Args:
        counts: Output of [`ce_counts`].
        labeler (`str`): Short labeler name (see [`labeler_key`]).
        weights (`np.ndarray`, *optional*): `(replicates, num_reports)` multiplicities of a bootstrap resample;
            every variant is then an array of one value per replicate. `None` scores the reports once.
        zero_division (`float`): Value of a score whose denominator is zero (0.0 as scikit-learn's default).

    Returns:
        `dict`: variant name -> float (or array of shape `(replicates,)`).
    """
    single = weights is None
    out = {}
    for policy, c in counts.items():
        n = c.shape[0]
        w = np.ones((1, n)) if single else np.asarray(weights, dtype=float)
        pooled = np.einsum("bn,nko->bko", w, c.astype(float))  # (B, 3, 14) summed counts
        for labels, subset in LABEL_SETS.items():
            idx = [CHEXPERT_OBSERVATIONS.index(o) for o in subset]
            tp, fp, fn = (pooled[:, k, idx] for k in range(3))
            micro = _prf(tp.sum(1), fp.sum(1), fn.sum(1), zero_division)
            macro = [m.mean(1) for m in _prf(tp, fp, fn, zero_division)]
            per_report = _prf(*(c[:, k, idx].sum(1).astype(float) for k in range(3)), zero_division)  # (n,)
            example = [w @ m / w.sum(1) for m in per_report]
            for averaging, values in (("micro", micro), ("macro", macro), ("example", example)):
                for metric, value in zip(_METRICS, values, strict=True):
                    out[variant_name(labeler, metric, averaging, labels, policy)] = (
                        float(value[0]) if single else value
                    )
    return out


def compute_ce_variants(predicted_labels: list[dict], reference_labels: list[dict], labeler: str,
                        zero_division: float = 0.0) -> dict[str, float]:
    """All named CE variants (see the module docstring) for one labeler's labels of predictions and references.

    Example:

    ```python
    >>> from training.evaluation.ce_variants import compute_ce_variants
    >>> pred = [{"Edema": 1, "Pleural Effusion": -1}]
    >>> ref = [{"Edema": 1, "Pleural Effusion": 1}]
    >>> v = compute_ce_variants(pred, ref, "chexbert")
    >>> v["ce_chexbert_f1_micro_5_uncertain_negative"], v["ce_chexbert_f1_micro_5_uncertain_positive"]
    (0.6666666666666666, 1.0)
    ```
    """
    return ce_variants_from_counts(ce_counts(predicted_labels, reference_labels), labeler_key(labeler),
                                   zero_division=zero_division)


def ce_variants_markdown(metrics: dict) -> str:
    """The CE variants of a metrics dict as markdown: one row per (averaging, labels, uncertainty), P/R/F1 with
    intervals, and which papers report that row; empty when the dict has no variants."""
    names = [k for k in metrics if isinstance(k, str) and k.startswith("ce_") and "_uncertain_" in k]
    if not names:
        return ""
    labeler = names[0].split("_")[1]
    intervals = metrics.get("confidence_intervals") or {}
    used_by: dict[str, list[str]] = {}
    for row, paper_labeler, papers in PAPER_VARIANTS:
        used_by.setdefault(row, []).append(f"{papers} [{paper_labeler} labeler]")

    def cell(name: str) -> str:
        value = metrics.get(name)
        if value is None:
            return "-"
        ci = intervals.get(name)
        return f"{value:.4f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else f"{value:.4f}"

    lines = [
        f"\n### Clinical efficacy variants (labeler: `{labeler}`)\n",
        "Keys in metrics.json: `ce_{labeler}_{precision|recall|f1}_{averaging}_{labels}_uncertain_{policy}`. Compare "
        "with a paper only on its row, and only when the labeler matches.\n",
        "| Averaging | Labels | Uncertain as | Precision | Recall | F1 | Reported by |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for policy in UNCERTAIN_POLICIES:
        for labels in LABEL_SETS:
            for averaging in AVERAGINGS:
                row = f"{averaging}_{labels}_uncertain_{policy}"
                cells = [cell(variant_name(labeler, m, averaging, labels, policy)) for m in _METRICS]
                lines.append(f"| {averaging} | {labels} | {policy} | " + " | ".join(cells) + " | "
                             + "; ".join(used_by.get(row, [])) + " |")
    return "\n".join(lines) + "\n"


def card_rows(metrics: dict) -> list[tuple[str, float]]:
    """The CE rows a model card shows: each paper row of [`PAPER_VARIANTS`] (P, R, F1 for the R2Gen row, F1 for
    the others) under its metrics.json name (also the front matter's metric type), so the card quotes exactly
    what metrics.json holds."""
    names = [k for k in metrics if isinstance(k, str) and k.startswith("ce_") and "_uncertain_" in k]
    if not names:
        return []
    labeler = names[0].split("_")[1]
    rows = []
    for row, _, _ in PAPER_VARIANTS:
        averaging, labels, _, policy = row.split("_")
        for metric in _METRICS if row == PAPER_VARIANTS[0][0] else ("f1",):
            name = variant_name(labeler, metric, averaging, labels, policy)
            if isinstance(metrics.get(name), (int, float)):
                rows.append((name, float(metrics[name])))
    return rows
