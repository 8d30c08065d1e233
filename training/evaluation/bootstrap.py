"""Paired bootstrap confidence intervals for every report metric, and a paired test between two systems.

Every metric of the registry (`training.evaluation.metrics.registry`) is per-report statistics plus a function that
turns their (weighted) sums into the corpus score ([`MetricStats`]), so a bootstrap replicate is a matrix product
instead of a re-run of the scorer: BLEU from summed lengths and n-gram counts, CIDEr with the idf of the resample's
references, the CE variants from summed true/false positives, ROUGE-L / METEOR / BERTScore / RadGraph-F1 as means
of per-report scores.

A replicate draws reports with replacement; the same draws serve every metric and, in [`paired_test`], both
systems, so differences are paired.
"""

from __future__ import annotations

import numpy as np

from .metrics.registry import MetricStats, mean_stats

__all__ = [
    "MetricStats",
    "mean_stats",
    "bootstrap_weights",
    "confidence_intervals",
    "paired_test",
]

DEFAULT_REPLICATES = 1000


def bootstrap_weights(num_reports: int, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> np.ndarray:
    """`(replicates, num_reports)` multiplicities of reports drawn with replacement."""
    if num_reports < 1:
        raise ValueError("Cannot bootstrap an empty set of reports.")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_reports, np.full(num_reports, 1.0 / num_reports), size=replicates).astype(float)


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


def confidence_intervals(metrics: list[MetricStats], replicates: int = DEFAULT_REPLICATES, confidence: float = 0.95,
                         seed: int = 0) -> dict[str, dict]:
    """Percentile bootstrap intervals, one shared resample for all metrics.

    Returns:
        `dict`: metric name -> `{"value", "low", "high"}`.
    """
    if not metrics:
        return {}
    weights = bootstrap_weights(metrics[0].stats.shape[0], replicates, seed)
    out, cache = {}, {}
    for m in metrics:
        low, high = _interval(m.replicates(weights, cache), confidence)
        out[m.name] = {"value": m.value(), "low": low, "high": high}
    return out


def paired_test(metrics_a: list[MetricStats], metrics_b: list[MetricStats], replicates: int = DEFAULT_REPLICATES,
                confidence: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """Paired bootstrap of B - A for every metric both systems have (same reports, same order).

    The p-value is two-sided: twice the smaller share of replicates on either side of zero (Koehn, 2004), at
    least `1 / replicates`.

    Returns:
        `dict`: metric name -> `{"a", "b", "difference", "low", "high", "p_value"}`.
    """
    by_name = {m.name: m for m in metrics_b}
    shared = [m for m in metrics_a if m.name in by_name]
    if not shared:
        return {}
    n = shared[0].stats.shape[0]
    if by_name[shared[0].name].stats.shape[0] != n:
        raise ValueError("The two systems were scored on different numbers of reports.")
    weights = bootstrap_weights(n, replicates, seed)
    out, cache_a, cache_b = {}, {}, {}
    for a in shared:
        b = by_name[a.name]
        diff = b.replicates(weights, cache_b) - a.replicates(weights, cache_a)
        low, high = _interval(diff, confidence)
        p = 2 * min((diff <= 0).mean(), (diff >= 0).mean())
        out[a.name] = {"a": a.value(), "b": b.value(), "difference": b.value() - a.value(), "low": low,
                       "high": high, "p_value": float(min(1.0, max(p, 1.0 / replicates)))}
    return out
