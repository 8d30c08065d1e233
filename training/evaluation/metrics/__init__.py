"""rrg's metrics: the one registry and its metric families, and the local `evaluate` modules.

- `registry.py`: [`~registry.Metric`] entries, [`~registry.MetricStats`] (per-report statistics + aggregate),
  `per_report_scores` (one score per report pair, for rewards);
- one module per metric family: `ngram.py` (BLEU, CIDEr, ROUGE-L, METEOR, ReXrank's BLEU-2), `clinical.py` (CheXpert
  clinical efficacy), `bertscore.py`, `radgraph.py`;
- `protocols.py`: scoring protocols (`r2gen`, `rexrank`) as lists of registry entries with settings.

Each sub-folder holds one `evaluate` metric script named like its folder, so `evaluate.load(path_to_folder)` finds
it without the Hub. The scripts are thin wrappers around the registry (no duplicated logic), so the `rrg` package
must be importable (`pip install -e .` or run from the repository root).

Example:

```python
>>> import evaluate
>>> from training.evaluation.metrics import NLG_METRIC_PATH
>>> nlg = evaluate.load(str(NLG_METRIC_PATH))  # doctest: +SKIP
>>> nlg.compute(predictions=["no effusion ."], references=["no effusion ."], meteor=False)["BLEU-1"]  # doctest: +SKIP
```
"""

from pathlib import Path

from .registry import Metric, MetricStats, get_metric, list_metrics, per_report_scores, register

__all__ = [
    "Metric",
    "MetricStats",
    "get_metric",
    "list_metrics",
    "per_report_scores",
    "register",
    "METRICS_DIR",
    "NLG_METRIC_PATH",
    "CLINICAL_EFFICACY_METRIC_PATH",
    "load_metric",
    "report_pair_info",
]

METRICS_DIR = Path(__file__).resolve().parent
NLG_METRIC_PATH = METRICS_DIR / "rrg_nlg"
CLINICAL_EFFICACY_METRIC_PATH = METRICS_DIR / "rrg_clinical_efficacy"

_PATHS = {"rrg_nlg": NLG_METRIC_PATH, "rrg_clinical_efficacy": CLINICAL_EFFICACY_METRIC_PATH}


def load_metric(name: str, **kwargs):
    """Load one of rrg's local `evaluate` modules by name (`"rrg_nlg"` or `"rrg_clinical_efficacy"`).

    Args:
        name (`str`): Module name.
        **kwargs: Passed to `evaluate.load`.

    Returns:
        `evaluate.EvaluationModule`
    """
    if name not in _PATHS:
        raise ValueError(f"Unknown rrg metric {name!r}; choose one of {sorted(_PATHS)}.")
    import evaluate

    return evaluate.load(str(_PATHS[name]), **kwargs)


def report_pair_info(description: str, citation: str, inputs_description: str, codebase_url: str):
    """The `evaluate.MetricInfo` both rrg metrics share: one generated and one reference report (strings) per row."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        codebase_urls=[codebase_url],
    )
