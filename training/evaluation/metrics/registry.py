"""The one metric registry: every report metric once, as per-report statistics plus an aggregate.

A registry entry ([`Metric`]) says what a metric needs (cleaned text, raw text, labels, a model folder) and holds one
function that turns an [`Inputs`] (the report pairs and the scoring settings) into [`MetricStats`]: one row of
statistics per report and a `combine` that turns their (weighted) sums into the corpus score. Everything that reads a
metric goes through here: `rrg evaluate` and `rrg compare` (`training.evaluation.scorecard`), the bootstrap
(`training.evaluation.bootstrap` resamples the rows), the local `evaluate` modules, the model card and the stage-3
rewards ([`per_report_scores`]).

Registering a metric is one function and one [`register`] call in its family's module (then add its name to a
protocol list in `training/evaluation/metrics/protocols.py`):

```python
from training.evaluation.metrics.registry import Metric, mean_stats, register


def _length_ratio(inputs, **settings):
    hyps, refs = inputs.raw  # or inputs.text (cleaned + tokenized as the protocol says), inputs.labels
    return [mean_stats("mine/length-ratio", [len(h.split()) / max(1, len(r.split())) for h, r in zip(hyps, refs)])]


register(Metric(name="mine/length-ratio", family="mine", compute=_length_ratio, outputs=("mine/length-ratio",),
                needs=("raw text",), level="mean", implementation="rrg"))
```

A metric that needs a local model folder names the setting that holds it (`model=("mine_model",)`): a protocol that
lists it fails with an error naming the flag (`--mine-model`) when the folder is not given, unless the protocol marks
the entry optional. The setting reaches `inputs.settings` as a `ScoringArguments` field of the same name
(`training/arguments.py`; `score_kwargs()` passes every field to `score_reports`), or as a keyword of
`score_reports` / [`per_report_scores`].
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MetricStats",
    "mean_stats",
    "Metric",
    "Inputs",
    "register",
    "get_metric",
    "list_metrics",
    "metric_for_output",
    "metric_info",
    "compute_metric",
    "per_report_scores",
    "check_pairs",
    "card_rows",
]

# The modules whose import registers the built-in metrics (one per metric family). A new family adds its module here.
FAMILY_MODULES = (
    "training.evaluation.metrics.ngram",
    "training.evaluation.metrics.clinical",
    "training.evaluation.metrics.bertscore",
    "training.evaluation.metrics.radgraph",
    "training.evaluation.metrics.embedding",
    "training.evaluation.metrics.radcliq",
    "training.evaluation.metrics.green",
    "training.evaluation.metrics.ratescore",
)


@dataclass
class MetricStats:
    """One metric as per-report statistics.

    Attributes:
        name (`str`): Metric name (its metrics.json key).
        stats (`np.ndarray`): `(num_reports, k)` per-report statistics.
        combine (`callable`): `(sums (B, k), total_weight (B,)) -> (B,)` corpus score of weighted sums. Applied to one
            row with weight 1 it gives the metric of that one report pair ([`per_report`]).
        resample (`callable`, *optional*): `weights (B, n) -> (B,)`, for metrics that are not a function of sums
            (CIDEr's idf depends on which references are in the sample).
        offset (`float`): Added to every replicate (METEOR: corpus score minus the per-report mean).
    """

    name: str
    stats: np.ndarray
    combine: Callable
    resample: Callable | None = None
    offset: float = 0.0

    def replicates(self, weights: np.ndarray, cache: dict | None = None) -> np.ndarray:
        """The metric on each resample (`weights`: `(B, n)` multiplicities). `cache` shares `weights @ stats` between
        metrics built on the same statistics array (the CE variants of one uncertainty policy)."""
        if self.resample is not None:
            return self.resample(weights) + self.offset
        if cache is None:
            sums = weights @ self.stats
        else:
            key = id(self.stats)
            if key not in cache:
                cache[key] = (self.stats, weights @ self.stats)  # hold the array so its id stays unique
            sums = cache[key][1]
        return self.combine(sums, weights.sum(1)) + self.offset

    def value(self) -> float:
        """The corpus score on all reports."""
        return float(self.replicates(np.ones((1, self.stats.shape[0])))[0])

    def per_report(self) -> np.ndarray:
        """`(num_reports,)`: the metric computed on each report pair alone (sentence BLEU, the report's own CE F1; the
        per-report score for mean metrics; CIDEr with the idf of all references, as its per-report scores)."""
        return np.asarray(self.combine(self.stats, np.ones(self.stats.shape[0])), dtype=float)


def mean_stats(name: str, scores, offset: float = 0.0) -> MetricStats:
    """A metric that is the mean of per-report scores."""
    values = np.asarray(scores, dtype=float).reshape(-1, 1)
    return MetricStats(name, values, _mean_combine, offset=offset)


def _mean_combine(sums, total):
    return sums[:, 0] / total


@dataclass(frozen=True)
class Metric:
    """A registry entry.

    Attributes:
        name (`str`): Registry name, the one protocols list (e.g. `"bleu"`, `"rexrank/BLEU-2"`).
        family (`str`): Metric family (the module that registers it: `"ngram"`, `"clinical"`, ...).
        compute (`callable`): `(inputs: Inputs, **settings) -> list[MetricStats]`, one per output.
        outputs (`tuple[str, ...]`): metrics.json names of what `compute` returns; `{labeler}` stands for the CE
            labeler's short name.
        needs (`tuple[str, ...]`): What it reads, in words (`"cleaned text"`, `"raw text"`, `"labels"`, `"java"`).
        model (`tuple[str, ...]`): Settings that can hold the local model folder (or saved annotations) it needs; any
            one of them is enough. Empty when it needs none.
        level (`str`): `"corpus"` (aggregate of summed per-report statistics) or `"mean"` (mean of per-report scores).
        implementation (`str`): Whose code computes it.
        description (`str`): One line for listings.
        parts (`tuple[str, ...]`): Registry entries a composite metric reads (through [`Inputs.stats`]); each one's
            model folder is needed too.
    """

    name: str
    family: str
    compute: Callable
    outputs: tuple[str, ...]
    needs: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    level: str = "corpus"
    implementation: str = ""
    description: str = ""
    parts: tuple[str, ...] = ()

    def output_names(self, labeler_key: str = "rule") -> tuple[str, ...]:
        return tuple(o.replace("{labeler}", labeler_key) for o in self.outputs)

    def missing_model(self, settings: dict) -> str | None:
        """The flag to pass when none of the model settings is given, else `None`."""
        if self.model and not any(settings.get(s) is not None for s in self.model):
            return " or ".join("--" + s.replace("_", "-") for s in self.model)
        for part in self.parts:
            flag = get_metric(part).missing_model(settings)
            if flag:
                return flag
        return None


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric to the registry (its family module calls this at import). Names are unique."""
    if not isinstance(metric, Metric):
        raise TypeError(f"register() takes a Metric, got {type(metric).__name__}.")
    if metric.level not in ("corpus", "mean"):
        raise ValueError(f"Metric {metric.name!r}: level must be 'corpus' or 'mean', got {metric.level!r}.")
    existing = _REGISTRY.get(metric.name)
    if existing is not None and existing.compute is not metric.compute:
        raise ValueError(f"A metric named {metric.name!r} is already registered (family {existing.family!r}).")
    _REGISTRY[metric.name] = metric
    return metric


@functools.cache
def _load_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def list_metrics() -> dict[str, Metric]:
    """Every registered metric, by registry name."""
    _load_families()
    return dict(_REGISTRY)


def get_metric(name: str) -> Metric:
    """The registry entry called `name`."""
    _load_families()
    if isinstance(name, Metric):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"Unknown metric {name!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def metric_for_output(output: str, labeler_key: str = "rule") -> Metric:
    """The registry entry that produces the metrics.json name `output` (e.g. `"BLEU-4"` -> `bleu`)."""
    _load_families()
    for metric in _REGISTRY.values():
        if output in metric.output_names(labeler_key):
            return metric
    raise ValueError(f"No registered metric produces {output!r}.")


def metric_info(name: str) -> dict:
    """Metadata of a registry entry or output name: family, needs, model settings, level, implementation and the
    protocols that list it."""
    from .protocols import PROTOCOLS

    _load_families()
    metric = _REGISTRY.get(name) or metric_for_output(name)
    return {
        "name": metric.name, "family": metric.family, "outputs": list(metric.outputs), "needs": list(metric.needs),
        "model": list(metric.model), "level": metric.level, "implementation": metric.implementation,
        "description": metric.description,
        "protocols": [p.name for p in PROTOCOLS.values() if any(e.metric == metric.name for e in p.entries)],
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # drops NaN


def card_rows(metrics: dict) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The metric rows a model card shows, under their metrics.json names (also the front matter's metric types).

    Returns:
        `(text_rows, clinical_rows)`: every registered non-clinical metric present in `metrics`, in registry order
        (BLEU-1..4, METEOR, ROUGE-L, CIDEr, other protocols' `rexrank/...`, BERTScore, RadGraph-F1), and the
        clinical-efficacy rows: each paper row of `clinical.PAPER_VARIANTS`, or the R2Gen table's P/R/F1 for a
        metrics dict without named variants.
    """
    from .clinical import CE_METRIC_NAMES
    from .clinical import card_rows as ce_card_rows

    text = []
    for metric in list_metrics().values():
        if metric.family != "clinical":
            text.extend((name, float(metrics[name])) for name in metric.output_names() if _is_number(metrics.get(name)))
    ce = metrics.get("clinical_efficacy") if isinstance(metrics.get("clinical_efficacy"), dict) else {}
    flat_ce = {**{k: v for k, v in metrics.items() if k in dict(CE_METRIC_NAMES)}, **ce}
    clinical = ce_card_rows(metrics) or [
        (label, float(flat_ce[key])) for key, label in CE_METRIC_NAMES if _is_number(flat_ce.get(key))
    ]
    return text, clinical


def check_pairs(predictions, references) -> tuple[list[str], list[str]]:
    """Both lists as lists of strings of equal, non-zero length, or a clear `TypeError` / `ValueError`."""
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"`{name}` must be a list of strings, got {type(value).__name__}.")
        for item in value:
            if not isinstance(item, str):
                raise TypeError(f"Every entry of `{name}` must be a string, got {type(item).__name__}.")
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} references; pass one reference per prediction."
        )
    if not predictions:
        raise ValueError("`predictions` and `references` are empty; nothing to score.")
    return list(predictions), list(references)


@dataclass
class Inputs:
    """The report pairs and scoring settings every metric reads, with the shared work done once.

    Attributes:
        predictions, references (`list[str]`): Raw reports, one reference per prediction.
        settings (`dict`): Scoring settings: `clean` (`"mimic"`, `"iu"` or `None`), `tokenization` (`"r2gen"` /
            `"ptb"`), `reference_max_tokens`, `meteor`, `labeler`, `zero_division`, model folders
            (`bertscore_model`, `radgraph_model`, ...).
        record (`dict`): What metrics add besides numbers (settings, tables, `warnings`).
    """

    predictions: list[str]
    references: list[str]
    settings: dict = field(default_factory=dict)
    record: dict = field(default_factory=lambda: {"warnings": []})
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.predictions, self.references = check_pairs(self.predictions, self.references)

    def __len__(self) -> int:
        return len(self.predictions)

    def cached(self, key, make: Callable):
        """`make()` computed once per `Inputs` (tokenized text, labels, a family's shared statistics)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def warn(self, message: str) -> None:
        import logging

        logging.getLogger(__name__).warning(message)
        self.record.setdefault("warnings", []).append(message)

    @property
    def raw(self) -> tuple[list[str], list[str]]:
        """`(predictions, references)` as given."""
        return self.predictions, self.references

    @property
    def text(self) -> tuple[list[str], list[str]]:
        """`(predictions, references)` cleaned, truncated and tokenized as the settings say (`ngram.prepare_text`)."""
        from .ngram import prepare_text

        return self.cached("text", lambda: prepare_text(self))

    @property
    def labels(self) -> tuple[list[dict], list[dict]]:
        """CheXpert labels of `(predictions, references)` from the settings' labeler (each distinct report once)."""
        from .clinical import label_reports

        return self.cached("labels", lambda: label_reports(self))

    @property
    def labeler_key(self) -> str:
        from .clinical import get_default_labeler, labeler_key

        return labeler_key(get_default_labeler(self).name)

    def stats(self, name: str, **settings) -> list[MetricStats]:
        """The statistics of registry entry `name` (computed once per `Inputs` and settings); composite metrics read
        their parts through this."""
        metric = get_metric(name)
        key = ("stats", metric.name, tuple(sorted(settings.items(), key=lambda kv: kv[0])))
        try:
            hash(key)
        except TypeError:  # unhashable settings: compute without sharing
            return list(metric.compute(self, **settings))
        return self.cached(key, lambda: list(metric.compute(self, **settings)))


def compute_metric(name: str | Metric, inputs: Inputs, **settings) -> list[MetricStats]:
    """The statistics of one registry entry on `inputs`; a clear error names the flag of a missing model folder."""
    metric = get_metric(name)
    merged = {**inputs.settings, **settings}
    flag = metric.missing_model(merged)
    if flag:
        raise ValueError(f"Metric {metric.name!r} needs a local model folder: pass {flag} (nothing is downloaded).")
    return inputs.stats(metric.name, **settings)


def per_report_scores(name_or_metric, predictions: list[str], references: list[str], **settings) -> np.ndarray:
    """One score per report pair, for rewards: the metric computed on that pair alone.

    For corpus metrics this is the metric of one pair: sentence BLEU-n (pycocoevalcap's smoothing), the report's own
    CE precision / recall / F1 over the observations (micro on one report = example-based), CIDEr-D with the
    document frequencies of all `references` (as self-critical training uses it). For mean metrics (ROUGE-L,
    METEOR, BERTScore, RadGraph-F1, `rexrank/BLEU-2`) it is the per-report score the mean is taken over.

    Args:
        name_or_metric (`str` or [`Metric`]): A metrics.json name (`"BLEU-4"`, `"rexrank/BLEU-2"`,
            `"ce_rule_f1_example_14_uncertain_positive"` — the uncertainty policy and label set are in the name) or a
            registry entry with a single output.
        predictions, references (`list[str]`): Raw reports, one reference per prediction.
        **settings: Scoring settings (see [`Inputs`]): `clean` (default `"mimic"`, as `rrg evaluate`), `tokenization`,
            `labeler` (a labeler object; default the offline rule-based one), `zero_division`, model folders.

    Returns:
        `np.ndarray` of shape `(len(predictions),)`.

    Example:

    ```python
    >>> from training.evaluation.metrics.registry import per_report_scores
    >>> preds = ["No pleural effusion.", "Small left pleural effusion."]
    >>> refs = ["No pleural effusion.", "No pleural effusion."]
    >>> per_report_scores("rexrank/BLEU-2", preds, refs).round(4).tolist()
    [1.0, 0.5477]
    >>> per_report_scores("ce_rule_f1_example_14_uncertain_negative", preds, refs).tolist()
    [1.0, 0.0]
    ```
    """
    settings.setdefault("clean", "mimic")
    inputs = Inputs(predictions, references, settings)
    if isinstance(name_or_metric, Metric) or name_or_metric in list_metrics():
        metric = get_metric(name_or_metric)
        outputs = metric.output_names(inputs.labeler_key if "labels" in metric.needs else "rule")
        if len(outputs) != 1:
            raise ValueError(f"Metric {metric.name!r} has several outputs; name one of {list(outputs)}.")
        output = outputs[0]
    else:
        output = name_or_metric
        key = inputs.labeler_key if str(output).startswith("ce_") else "rule"
        metric = metric_for_output(output, key)
    for stats in compute_metric(metric, inputs):
        if stats.name == output:
            return stats.per_report()
    raise ValueError(f"Metric {metric.name!r} did not produce {output!r} with these settings "
                     f"(warnings: {inputs.record.get('warnings')}).")
