"""RadCliQ-v1 (Yu et al., 2023), ReXrank's composite column, as a registry entry built on its four parts.

RadCliQ-v1 of one report = a linear model on the standardized per-report RadGraph combined, BERTScore, SembScore and
BLEU-2 (in that order, CXR-Report-Metric's `COLS` in `CXRMetric/run_eval.py`): lower is better. The numbers below are
the fitted `StandardScaler` (`mean_`, `scale_`) and coefficients (4 weights, then the intercept) stored in
CXR-Report-Metric's `CXRMetric/radcliq-v1.pkl` (rajpurkarlab/CXR-Report-Metric), read from that published file;
RadEval's `RadCliQv1/radcliq.py` carries the same values. ReXrank prints `1/RadCliQ-v1`, the inverse of the mean
(RadEval's `CompositeMetric.predict`: `1 / scores.mean()`), higher is better.
"""

from __future__ import annotations

import numpy as np

from .registry import Inputs, Metric, MetricStats, mean_stats, register

__all__ = ["RADCLIQ_V1_MEAN", "RADCLIQ_V1_SCALE", "RADCLIQ_V1_COEFS", "RADCLIQ_V1_INTERCEPT", "radcliq_v1",
           "REXRANK_RADCLIQ_NAMES"]

# inputs: radgraph_combined, bertscore, semb_score, bleu_score
RADCLIQ_V1_MEAN = np.array([0.5379231241355762, 0.6175725628125001, 0.7647942121140658, 0.44738335396242174])
RADCLIQ_V1_SCALE = np.array([0.3028258411486429, 0.22430938459304575, 0.2539439110169773, 0.2989271671041838])
RADCLIQ_V1_COEFS = np.array([-0.37708368261038905, -0.37030009974480316, -0.25261621789593225, 4.315048405024756e-12])
RADCLIQ_V1_INTERCEPT = 2.466552561323256e-10
REXRANK_RADCLIQ_NAMES = ("rexrank/RadCliQ-v1", "rexrank/1/RadCliQ-v1")
# the four parts: registry entry and the metrics.json name each contributes
_PARTS = (("rexrank/RadGraph", "RadGraph-F1-combined/radgraph"), ("rexrank/BERTScore", "rexrank/BERTScore-F1"),
          ("rexrank/SembScore", "rexrank/SembScore"), ("rexrank/BLEU-2", "rexrank/BLEU-2"))


def radcliq_v1(radgraph_combined, bertscore, semb_score, bleu_score) -> np.ndarray:
    """Per-report RadCliQ-v1 from the four per-report scores (arrays of equal length)."""
    x = np.column_stack([radgraph_combined, bertscore, semb_score, bleu_score]).astype(np.float64)
    return ((x - RADCLIQ_V1_MEAN) / RADCLIQ_V1_SCALE) @ RADCLIQ_V1_COEFS + RADCLIQ_V1_INTERCEPT


def _inverse_of_mean(sums, total):
    return total / sums[:, 0]


def _radcliq(inputs: Inputs) -> list[MetricStats]:
    parts = []
    for entry, output in _PARTS:
        stats = {m.name: m for m in inputs.stats(entry)}
        parts.append(stats[output].per_report())
    scores = radcliq_v1(*parts)
    inputs.record["rexrank_radcliq_settings"] = (
        "RadCliQ-v1 = CXR-Report-Metric's radcliq-v1.pkl (StandardScaler + linear) on per-report "
        + ", ".join(output for _, output in _PARTS) + "; 1/RadCliQ-v1 = 1 / mean (ReXrank's column)")
    return [mean_stats(REXRANK_RADCLIQ_NAMES[0], scores)]


def _inverse_radcliq(inputs: Inputs) -> list[MetricStats]:
    (radcliq,) = inputs.stats("rexrank/RadCliQ-v1")
    return [MetricStats(REXRANK_RADCLIQ_NAMES[1], radcliq.stats, _inverse_of_mean)]


register(Metric("rexrank/RadCliQ-v1", "radcliq", _radcliq, REXRANK_RADCLIQ_NAMES[:1], needs=("raw text",),
                level="mean", parts=tuple(entry for entry, _ in _PARTS),
                implementation="CXR-Report-Metric's RadCliQ-v1 coefficients on rrg's four ReXrank parts",
                description="RadCliQ-v1 per report, averaged (lower is better)"))
register(Metric("rexrank/1/RadCliQ-v1", "radcliq", _inverse_radcliq, REXRANK_RADCLIQ_NAMES[1:], needs=("raw text",),
                level="corpus", parts=("rexrank/RadCliQ-v1",),
                implementation="1 / mean RadCliQ-v1 (RadEval's CompositeMetric.predict; ReXrank's column)",
                description="ReXrank's 1/RadCliQ-v1: the inverse of the mean RadCliQ-v1 (higher is better)"))
