"""RadGraph-F1 as a registry entry: `training.evaluation.radgraph_f1` (the `radgraph` package) does the work."""

from __future__ import annotations

from .registry import Inputs, Metric, MetricStats, mean_stats, register

__all__ = ["RADGRAPH_METRIC_NAMES"]

RADGRAPH_METRIC_NAMES = ("RadGraph-F1-simple", "RadGraph-F1-partial", "RadGraph-F1-complete")


def _radgraph(inputs: Inputs) -> list[MetricStats]:
    from ..radgraph_f1 import RadGraphScorer, radgraph_f1_from_annotations

    settings = inputs.settings
    if settings.get("radgraph_model"):
        result = RadGraphScorer(settings["radgraph_model"]).score(*inputs.raw)
        per_report = result.pop("per_report")
        inputs.record.update(result)
    else:
        per_report = radgraph_f1_from_annotations(*settings["radgraph_annotations"])
        inputs.record["radgraph_settings"] = "from saved RadGraph annotations; radgraph package compute_reward"
    return [mean_stats(name, per_report[name]) for name in RADGRAPH_METRIC_NAMES]


register(Metric("radgraph", "radgraph", _radgraph, RADGRAPH_METRIC_NAMES, needs=("raw text",),
                model=("radgraph_model", "radgraph_annotations"), level="mean",
                implementation="radgraph package: RadGraph annotations, compute_reward at three levels",
                description="RadGraph-F1 (simple, partial = RG_ER, complete) from a local model or saved graphs"))
