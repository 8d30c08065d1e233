"""Clinical efficacy: CheXpert labels of prediction vs reference, counted once, every named variant from the counts.

"CE-F1" means different numbers in different papers. Each variant is named
`ce_{labeler}_{metric}_{averaging}_{labels}_uncertain_{policy}`, e.g. `ce_chexbert_f1_micro_5_uncertain_positive`:

- labeler: the labeler that read both reports (`chexbert`, `rule` for the offline rule-based labeler, ...);
- metric: `precision`, `recall`, `f1`;
- averaging: `micro` (true/false positives pooled over observations), `macro` (mean of per-observation scores),
  `example` (example-based: P/R/F1 of each report's label set, averaged over reports);
- labels: `14` (all CheXpert observations) or `5` (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
  Effusion);
- policy: an uncertain mention (-1) counts as `negative` or as `positive`; not mentioned counts as negative.

Both reports are labelled by the same labeler, each distinct report once ([`label_reports`]); [`ce_counts`] keeps
per-report true positives, false positives and false negatives per observation, and every variant is a function of
their (weighted) sums, so bootstrap replicates recompute it without relabelling. [`compute_clinical_efficacy`] is
the R2GenCMN / METransformer table (uncertain as negative, micro and macro, 14 and 5 observations, per observation)
from the same counts. [`PAPER_VARIANTS`] says which variant a paper's table reports.
"""

from __future__ import annotations

import functools
import re
import warnings

import numpy as np

from ...data.chexpert import CHEXPERT_5, CHEXPERT_OBSERVATIONS, POSITIVE, UNCERTAIN
from .registry import Inputs, Metric, MetricStats, check_pairs, mean_stats, register

__all__ = [
    "AVERAGINGS",
    "LABEL_SETS",
    "UNCERTAIN_POLICIES",
    "PAPER_VARIANTS",
    "CE_METRIC_NAMES",
    "CE_POSITIVE_DEFINITION",
    "positive_matrix",
    "variant_name",
    "labeler_key",
    "label_reports",
    "ce_counts",
    "ce_stats",
    "ce_variants_from_counts",
    "compute_ce_variants",
    "compute_clinical_efficacy",
    "ce_variants_markdown",
    "card_rows",
]

AVERAGINGS = ("micro", "macro", "example")
LABEL_SETS = {"14": CHEXPERT_OBSERVATIONS, "5": CHEXPERT_5}
UNCERTAIN_POLICIES = ("negative", "positive")
_METRICS = ("precision", "recall", "f1")
_NUM_OBS = len(CHEXPERT_OBSERVATIONS)
_INDEX = {labels: [CHEXPERT_OBSERVATIONS.index(o) for o in subset] for labels, subset in LABEL_SETS.items()}

# Keys of compute_clinical_efficacy and their display labels, in table order: "f1_micro_14" -> "CE F1 (micro, 14 obs.)".
CE_METRIC_NAMES = tuple(
    (f"{name}_{avg}_{subset}", f"CE {short} ({avg}, {subset} obs.)")
    for subset in LABEL_SETS
    for avg in ("micro", "macro")
    for name, short in (("precision", "P"), ("recall", "R"), ("f1", "F1"))
)

CE_POSITIVE_DEFINITION = (
    "an observation counts as positive only when its label is 1; uncertain (-1), negative (0) and "
    "not mentioned (blank) all count as not positive (R2GenCMN / METransformer CE convention)"
)

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


def _variants():
    """(policy, labels, averaging, metric) of every variant, in metrics.json order."""
    return [(p, labels, a, m) for p in UNCERTAIN_POLICIES for labels in LABEL_SETS for a in AVERAGINGS for m in _METRICS]


@functools.cache
def _rule_labeler():
    # compiling the phrase lists takes most of a second: one instance per process (it holds no state between calls)
    from ..labeler import RuleBasedLabeler

    return RuleBasedLabeler()


def get_default_labeler(inputs: Inputs):
    """The settings' labeler (an object with `name` and `label_batch`), the offline rule-based one by default."""

    def make():
        labeler = inputs.settings.get("labeler")
        if labeler is None:
            labeler = _rule_labeler()
        if not hasattr(labeler, "label_batch") or not hasattr(labeler, "name"):
            raise TypeError(
                "`labeler` must have a `name` and a `label_batch(reports)` method (see training.evaluation.labeler)."
            )
        return labeler

    return inputs.cached("labeler", make)


def label_reports(inputs: Inputs) -> tuple[list[dict], list[dict]]:
    """CheXpert labels of the raw predictions and references; each distinct report is labelled once.

    With the setting `reference_labels` (one label dict per reference: a benchmark's ground truth, as
    `rrg compare --labels_from dataset` passes it) the references are not labelled: clinical efficacy is then
    scored against those labels."""
    labeler = get_default_labeler(inputs)
    given = inputs.settings.get("reference_labels")
    if given is not None:
        if len(given) != len(inputs.references):
            raise ValueError(f"reference_labels has {len(given)} label rows for {len(inputs.references)} references; "
                             "give one per reference, in the same order.")
        unique = list(dict.fromkeys(inputs.predictions))
        cache = dict(zip(unique, labeler.label_batch(unique), strict=True))
        return [cache[p] for p in inputs.predictions], [dict(labels) for labels in given]
    unique = list(dict.fromkeys(inputs.predictions + inputs.references))
    cache = dict(zip(unique, labeler.label_batch(unique), strict=True))
    return [cache[p] for p in inputs.predictions], [cache[r] for r in inputs.references]


def positive_matrix(labels: list[dict], policy: str = "negative") -> np.ndarray:
    """`(reports, 14)` booleans: which CheXpert observations count as positive in each label dict (label 1; with
    `policy="positive"` uncertain too) — the one definition CE, the rewards and `rrg probe` share."""
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
        p, r = positive_matrix(predicted_labels, policy), positive_matrix(reference_labels, policy)
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


def _average(values: np.ndarray) -> np.ndarray:
    # zero_division=nan leaves undefined observations out of the macro average
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan rows stay nan
        return np.nanmean(values, axis=1)


def _pooled_combine(metric: str, averaging: str, labels: str, zero_division: float):
    k, idx = _METRICS.index(metric), _INDEX[labels]

    def combine(sums, total):
        c = sums.reshape(sums.shape[0], 3, _NUM_OBS)[:, :, idx]
        tp, fp, fn = c[:, 0], c[:, 1], c[:, 2]
        if averaging == "micro":
            return _prf(tp.sum(1), fp.sum(1), fn.sum(1), zero_division)[k]
        return _average(_prf(tp, fp, fn, zero_division)[k])

    return combine


def ce_stats(counts: dict[str, np.ndarray], labeler: str, zero_division: float = 0.0) -> list[MetricStats]:
    """Every CE variant as [`MetricStats`]: micro and macro are functions of the summed per-report counts (all
    variants of one policy share one statistics array), example-based ones the mean of per-report scores."""
    flat = {policy: c.reshape(c.shape[0], -1).astype(float) for policy, c in counts.items()}
    out = []
    for policy, labels, averaging, metric in _variants():
        name = variant_name(labeler, metric, averaging, labels, policy)
        if averaging == "example":
            c = counts[policy][:, :, _INDEX[labels]].sum(2).astype(float)  # (n, 3) per-report sums
            per_report = _prf(c[:, 0], c[:, 1], c[:, 2], zero_division)[_METRICS.index(metric)]
            out.append(mean_stats(name, per_report))
        else:
            out.append(MetricStats(name, flat[policy], _pooled_combine(metric, averaging, labels, zero_division)))
    return out


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
    stats = ce_stats(counts, labeler, zero_division)
    if weights is None:
        return {m.name: m.value() for m in stats}
    cache: dict = {}
    return {m.name: m.replicates(np.asarray(weights, dtype=float), cache) for m in stats}


def compute_ce_variants(predicted_labels: list[dict], reference_labels: list[dict], labeler: str,
                        zero_division: float = 0.0) -> dict[str, float]:
    """All named CE variants (see the module docstring) for one labeler's labels of predictions and references.

    Example:

    ```python
    >>> from training.evaluation.metrics.clinical import compute_ce_variants
    >>> pred = [{"Edema": 1, "Pleural Effusion": -1}]
    >>> ref = [{"Edema": 1, "Pleural Effusion": 1}]
    >>> v = compute_ce_variants(pred, ref, "chexbert")
    >>> v["ce_chexbert_f1_micro_5_uncertain_negative"], v["ce_chexbert_f1_micro_5_uncertain_positive"]
    (0.6666666666666666, 1.0)
    ```
    """
    return ce_variants_from_counts(ce_counts(predicted_labels, reference_labels), labeler_key(labeler),
                                   zero_division=zero_division)


def _r2gen_table(counts: np.ndarray, labeler_name: str, zero_division: float) -> dict:
    """The R2GenCMN / METransformer CE table from the uncertain-as-negative counts `(n, 3, 14)`."""
    totals = counts.sum(0).astype(float)  # (3, 14)
    tp, fp, fn = totals
    precision, recall, f1 = _prf(tp, fp, fn, zero_division)
    per_observation = {
        obs: {"support": int(tp[i] + fn[i]), "predicted": int(tp[i] + fp[i]), "precision": float(precision[i]),
              "recall": float(recall[i]), "f1": float(f1[i])}
        for i, obs in enumerate(CHEXPERT_OBSERVATIONS)
    }
    result: dict = {}
    for labels, idx in _INDEX.items():
        micro = _prf(tp[idx].sum(), fp[idx].sum(), fn[idx].sum(), zero_division)
        macro = [_average(m[idx][None])[0] for m in (precision, recall, f1)]
        for k, name in enumerate(_METRICS):
            result[f"{name}_micro_{labels}"] = float(micro[k])
        for k, name in enumerate(_METRICS):
            result[f"{name}_macro_{labels}"] = float(macro[k])
    result["per_observation"] = per_observation
    result["labeler"] = labeler_name
    result["positive_definition"] = CE_POSITIVE_DEFINITION
    result["zero_division"] = zero_division
    result["num_samples"] = int(counts.shape[0])
    return result


def _clinical_efficacy(inputs: Inputs) -> list[MetricStats]:
    zero_division = inputs.settings.get("zero_division", 0.0)
    if not isinstance(zero_division, (int, float)):
        raise TypeError(f"`zero_division` must be a number (0.0, 1.0 or nan), got {type(zero_division).__name__}.")
    labeler = get_default_labeler(inputs)
    counts = inputs.cached("ce_counts", lambda: ce_counts(*inputs.labels))
    inputs.record["clinical_efficacy"] = _r2gen_table(counts["negative"], labeler.name, zero_division)
    inputs.record["ce_labeler"] = labeler_key(labeler.name)
    return ce_stats(counts, labeler_key(labeler.name), zero_division)


def compute_clinical_efficacy(predictions: list[str], references: list[str], labeler=None,
                              zero_division: float = 0.0) -> dict:
    """Clinical efficacy as R2GenCMN / METransformer report it: P/R/F1 of CheXpert labels of predictions vs references
    (the registry's `clinical_efficacy` entry, its uncertain-as-negative table).

    An observation counts as positive only when its label is 1: uncertain (-1), negative (0) and blank are all "not
    positive" — the convention of R2GenCMN's and METransformer's CE code (they set blank and -1 to 0, then call
    scikit-learn). Micro scores pool true/false positives over the observations; macro scores average the
    per-observation scores, with `zero_division` for an observation whose score is undefined (0.0 matches
    scikit-learn's default, as in those papers; `float("nan")` leaves such observations out of the macro average).

    Args:
        predictions (`list[str]`): Generated reports.
        references (`list[str]`): Reference reports, one per prediction.
        labeler (*optional*):
            An object with `name` and `label_batch(reports) -> list[dict]` (see `training.evaluation.labeler`).
            Defaults to the offline [`~training.evaluation.labeler.RuleBasedLabeler`].
        zero_division (`float`, *optional*, defaults to 0.0):
            Value of a precision / recall / F1 whose denominator is zero.

    Returns:
        `dict` with `precision_micro_14`, `recall_micro_14`, `f1_micro_14`, `precision_macro_14`,
        `recall_macro_14`, `f1_macro_14` and the same with `_5` (CheXpert 5-observation subset);
        `per_observation` (observation -> `support`, `predicted`, `precision`, `recall`, `f1`);
        `labeler` (the labeler's name), `positive_definition`, `zero_division`, `num_samples`.

    Example:

    ```python
    >>> from training.evaluation.metrics.clinical import compute_clinical_efficacy
    >>> ce = compute_clinical_efficacy(["Small left pleural effusion."], ["Small left pleural effusion."])
    >>> ce["f1_micro_14"], ce["labeler"]
    (1.0, 'rrg-rule-based-v1')
    ```
    """
    from .registry import compute_metric

    inputs = Inputs(*check_pairs(predictions, references), {"labeler": labeler, "zero_division": zero_division})
    compute_metric("clinical_efficacy", inputs)
    return inputs.record["clinical_efficacy"]


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


register(Metric(
    "clinical_efficacy", "clinical", _clinical_efficacy,
    tuple(variant_name("{labeler}", m, a, labels, p) for p, labels, a, m in _variants()),
    needs=("raw text", "labels"),
    implementation="rrg: CheXpert labels of both reports by one labeler, per-report tp/fp/fn, scikit-learn's "
                   "micro/macro/samples averaging",
    description="every named clinical-efficacy variant (labeler, averaging, label set, uncertainty policy)",
))
