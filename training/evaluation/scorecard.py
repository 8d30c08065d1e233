"""All report metrics with bootstrap intervals, under names a user can quote: what `rrg evaluate` writes.

[`score_reports`] runs a scoring protocol (`training.evaluation.metrics.protocols`: a list of entries of the metric
registry, `training.evaluation.metrics.registry`) on the report pairs. The default, `r2gen`, cleans both sides the
R2Gen way (`training.data.report_cleaning`), scores BLEU-1..4 and CIDEr (matrix form, equal to pycocoevalcap's
scorers; see `tests/test_scorecard.py`), ROUGE-L and METEOR (pycocoevalcap), every named clinical-efficacy variant
(`training.evaluation.metrics.clinical`), and BERTScore (the `bert-score` package) and RadGraph-F1 (RadEval's vendored
radgraph) when their local model folders are given; `rexrank` adds ReXrank's columns under `rexrank/...` names. Every
metric gets a paired bootstrap 95% interval under `"confidence_intervals"`. References are scored untruncated unless
`reference_max_tokens` asks for R2Gen's protocol (references cut to the model's maximum sequence length, which
flatters scores). [`metrics_to_markdown`] renders metrics.md.
"""

from __future__ import annotations

import logging

from ..data.chexpert import CHEXPERT_OBSERVATIONS
from .bootstrap import DEFAULT_REPLICATES, confidence_intervals
from .metrics.bertscore import BERTSCORE_METRIC_NAMES
from .metrics.clinical import CE_METRIC_NAMES, ce_variants_markdown
from .metrics.ngram import NLG_METRIC_NAMES, TOKENIZATIONS, _package_version, truncate_reference
from .metrics.protocols import get_protocol
from .metrics.radgraph import RADGRAPH_METRIC_NAMES
from .metrics.registry import Inputs, MetricStats, compute_metric, get_metric

__all__ = ["protocol_entries", "check_protocol", "metric_stats", "score_reports", "truncate_reference",
           "metrics_to_markdown"]

logger = logging.getLogger(__name__)


def _protocol_names(protocol) -> list[str]:
    if isinstance(protocol, str):
        return [p.strip() for p in protocol.split(",") if p.strip()]
    return list(protocol)


def protocol_entries(protocol, settings: dict) -> list:
    """The entries of one or more protocols (`"r2gen"`, `"r2gen,rexrank"` or a list) that run with `settings`:
    optional entries whose model folder is not given are left out; any other entry missing its model folder is a
    `ValueError` naming the flag to pass."""
    entries, seen = [], set()
    for name in _protocol_names(protocol) or ["r2gen"]:
        spec = get_protocol(name)
        for entry in spec.entries:
            metric = get_metric(entry.metric)
            if metric.name in seen:
                continue
            flag = metric.missing_model({**settings, **entry.settings})
            if flag and entry.optional:
                continue
            if flag:
                raise ValueError(f"Scoring protocol {spec.name!r} lists {metric.name!r}, which needs a local model "
                                 f"folder: pass {flag} (nothing is downloaded), or choose another --protocol.")
            seen.add(metric.name)
            entries.append(entry)
    return entries


def check_protocol(protocol, **settings) -> None:
    """Fail early (before generating reports) when a protocol needs a model folder that was not given."""
    protocol_entries(protocol, settings)


def metric_stats(predictions: list[str], references: list[str], labeler=None, clean: str | None = "mimic",
                 tokenization: str = "r2gen", meteor: bool = True, reference_max_tokens: int | None = None,
                 bertscore_model=None, bertscore_layer: int | None = None, radgraph_model=None,
                 radgraph_annotations: tuple[list, list] | None = None, protocol="r2gen",
                 **settings) -> tuple[list[MetricStats], dict]:
    """Per-report statistics of every metric of `protocol` (for [`confidence_intervals`] and `rrg compare`) and the
    extras. Labels, cleaned text and CE counts are computed once and shared by all metrics.

    `settings` holds further metric settings (e.g. the model folders of ReXrank's entries).

    Returns:
        `(list[MetricStats], dict)`: the metrics, and the non-numeric record (settings, CE tables, warnings,
        `metric_definitions`: per metric name its registry entry, level, implementation and model folder).
    """
    settings = {"labeler": labeler, "clean": clean, "tokenization": tokenization, "meteor": meteor,
                "reference_max_tokens": reference_max_tokens, "bertscore_model": bertscore_model,
                "bertscore_layer": bertscore_layer, "radgraph_model": radgraph_model,
                "radgraph_annotations": radgraph_annotations, **settings}
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"`tokenization` must be 'r2gen' or 'ptb', got {tokenization!r}.")
    entries = protocol_entries(protocol, settings)
    inputs = Inputs(predictions, references, settings)
    stats: list[MetricStats] = []
    definitions = {}
    for entry in entries:
        metric = get_metric(entry.metric)
        for m in compute_metric(metric, inputs, **entry.settings):
            stats.append(m)
            folders = [str(settings[s]) for s in metric.model if settings.get(s) is not None and s.endswith("_model")]
            definitions[m.name] = {"metric": metric.name, "level": metric.level,
                                   "implementation": metric.implementation, "model": folders[0] if folders else None}
    inputs.record["protocol"] = ",".join(_protocol_names(protocol) or ["r2gen"])
    inputs.record["metric_definitions"] = definitions
    return stats, inputs.record


def score_reports(predictions: list[str], references: list[str], labeler=None, clean: str | None = "mimic",
                  tokenization: str = "r2gen", meteor: bool = True, reference_max_tokens: int | None = None,
                  bertscore_model=None, bertscore_layer: int | None = None, radgraph_model=None,
                  radgraph_annotations: tuple[list, list] | None = None, replicates: int = DEFAULT_REPLICATES,
                  seed: int = 0, protocol="r2gen", **settings) -> dict:
    """Score generated reports against references: every metric, its 95% bootstrap interval, and how it was made.

    Args:
        predictions, references (`list[str]`): Raw reports, one reference per prediction.
        labeler (*optional*): CE labeler (`training.evaluation.labeler`); defaults to the offline rule-based one.
        clean (`str`, *optional*): `"mimic"`/`"iu"` R2Gen cleaning before the NLG metrics, `None` for none.
        tokenization (`str`): `"r2gen"` (cleaned text scored as given) or `"ptb"` (pycocoevalcap's PTBTokenizer).
        meteor (`bool`): Compute METEOR (needs java).
        reference_max_tokens (`int`, *optional*): R2Gen's protocol: cut references to this max sequence length.
        bertscore_model, bertscore_layer: Local encoder folder (and hidden layer) for BERTScore.
        radgraph_model: Local RadGraph model folder for RadGraph-F1.
        radgraph_annotations: `(prediction graphs, reference graphs)` saved from a RadGraph model, one per report,
            instead of a model (with `radgraph_model_type`, the model that made them).
        replicates (`int`): Bootstrap replicates (0 skips the intervals).
        seed (`int`): Seed of the resampling.
        protocol (`str` or `list[str]`): Scoring protocol(s) (`training.evaluation.metrics.protocols`): `"r2gen"`
            (default), `"rexrank"`, or several (`"r2gen,rexrank"`).
        **settings: Further metric settings (model folders of other protocols' entries).

    Returns:
        `dict`: metric name -> value (NLG names, `ce_*` variants, `BERTScore-*`, `RadGraph-*`, `rexrank/...`), plus
        `confidence_intervals` (name -> value/low/high), `clinical_efficacy` (the per-observation tables),
        `protocol`, `metric_definitions`, `nlg_text_cleaning`, `reference_truncation`, `tokenization`,
        `implementation`, `warnings`.

    Example:

    ```python
    >>> from training.evaluation.scorecard import score_reports
    >>> m = score_reports(["No pleural effusion."], ["No pleural effusion."], meteor=False, replicates=10)
    >>> m["BLEU-1"], m["ce_rule_f1_micro_14_uncertain_negative"]
    (0.9999999999000001, 0.0)
    ```
    """
    stats, record = metric_stats(predictions, references, labeler=labeler, clean=clean, tokenization=tokenization,
                                 meteor=meteor, reference_max_tokens=reference_max_tokens,
                                 bertscore_model=bertscore_model, bertscore_layer=bertscore_layer,
                                 radgraph_model=radgraph_model, radgraph_annotations=radgraph_annotations,
                                 protocol=protocol, **settings)
    result = {m.name: m.value() for m in stats}
    if replicates:
        result["confidence_intervals"] = confidence_intervals(stats, replicates=replicates, seed=seed)
        result["confidence_interval_method"] = (
            f"paired percentile bootstrap, {replicates} replicates of the reports drawn with replacement, seed {seed}, "
            "95%; corpus metrics (BLEU, CIDEr with its idf, CE micro/macro) recomputed on each replicate"
        )
    result.update(record)
    result["nlg_text_cleaning"] = clean or "none"
    result["tokenization"] = TOKENIZATIONS[tokenization]
    result["implementation"] = (
        f"BLEU and CIDEr: pycocoevalcap's Bleu(4) and Cider in matrix form (equal to pycocoevalcap "
        f"{_package_version('pycocoevalcap')}); ROUGE-L and METEOR: pycocoevalcap"
    )
    result["num_samples"] = len(predictions)
    return result


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
    return str(value)


def metrics_to_markdown(metrics: dict) -> str:
    """Render metrics as markdown: a summary table and, if present, per-observation and CE-variant tables.

    Args:
        metrics (`dict`): The output of [`score_reports`], `compute_nlg_metrics` and/or `compute_clinical_efficacy`,
            either merged into one flat dict or nested under `"nlg"` and `"clinical_efficacy"` keys.

    Returns:
        `str`: Markdown text ending with a newline.
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"`metrics` must be a dict, got {type(metrics).__name__}.")
    flat: dict = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and key not in ("per_observation", "confidence_intervals", "metric_definitions"):
            flat.update(value)
        else:
            flat[key] = value

    intervals = flat.get("confidence_intervals") or {}

    def row(label: str, key: str) -> str:
        ci = intervals.get(key)
        span = f"[{_fmt(ci['low'])}, {_fmt(ci['high'])}]" if ci else ""
        return f"| {label} | {_fmt(flat[key])} | {span} |"

    lines = ["| Metric | Value | 95% CI |", "| --- | ---: | :---: |"]
    for name in NLG_METRIC_NAMES:
        if name in flat:
            lines.append(row(name, name))
    for key, label in CE_METRIC_NAMES:
        if key in flat:
            lines.append(f"| {label} | {_fmt(flat[key])} | |")
    shown = {*NLG_METRIC_NAMES, *BERTSCORE_METRIC_NAMES, *RADGRAPH_METRIC_NAMES}
    for key in (*BERTSCORE_METRIC_NAMES, *RADGRAPH_METRIC_NAMES):
        if key in flat:
            lines.append(row(key, key))
    # metrics of other protocols, under the names that state protocol and level (e.g. rexrank/BLEU-2)
    definitions = metrics.get("metric_definitions") or {}
    for key, info in definitions.items():
        if key not in shown and not key.startswith("ce_") and isinstance(flat.get(key), (int, float)):
            label = f"{key} ({'mean of per-report scores' if info.get('level') == 'mean' else 'corpus'})"
            lines.append(row(label, key))
    notes = [f"- {label}: {form.format(flat[key])}" for key, label, form in (
        ("protocol", "Protocol", "`{}`"),
        ("tokenization", "NLG tokenization", "{}"), ("implementation", "NLG implementation", "{}"),
        ("labeler", "Clinical efficacy labeler", "`{}`"), ("positive_definition", "Positive label", "{}"),
        ("reference_truncation", "References", "{}"), ("confidence_interval_method", "Intervals", "{}"),
    ) if key in flat]
    for warning in flat.get("warnings", []) or []:
        notes.append(f"- Warning: {warning}")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(notes) + "\n"

    per_observation = flat.get("per_observation")
    if per_observation:
        rows = [
            "| Observation | Support | Predicted | Precision | Recall | F1 |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for obs in CHEXPERT_OBSERVATIONS:
            if obs in per_observation:
                s = per_observation[obs]
                rows.append(
                    f"| {obs} | {s['support']} | {s.get('predicted', '')} | {_fmt(s['precision'])} | "
                    f"{_fmt(s['recall'])} | {_fmt(s['f1'])} |"
                )
        text += "\n### Clinical efficacy per observation\n\n" + "\n".join(rows) + "\n"
    text += ce_variants_markdown(metrics)
    return text
