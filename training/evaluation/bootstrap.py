"""Paired bootstrap confidence intervals for every report metric, and a paired test between two systems.

Every metric is written as per-report statistics plus a function that turns their (weighted) sums into the
corpus score, so a bootstrap replicate is a matrix product instead of a re-run of the scorer:

- BLEU-1..4: pycocoevalcap's corpus BLEU from summed hypothesis/reference lengths and matched/guessed n-gram
  counts ("closest" reference length; one reference per report);
- CIDEr (pycocoevalcap's `Cider`, i.e. CIDEr-D with clipping and the length penalty): the idf comes from the
  references of the resample, so each replicate recomputes document frequencies and the tf-idf cosines, all
  replicates at once with sparse matrices;
- ROUGE-L, METEOR, BERTScore, RadGraph-F1: means of per-report scores (METEOR's corpus score is pycocoevalcap's
  aggregate, whose interval is taken as the per-report mean's, shifted to the corpus value);
- clinical efficacy variants: summed per-report true/false positives (see `training.evaluation.ce_variants`).

A replicate draws reports with replacement; the same draws serve every metric and, in [`paired_test`], both
systems, so differences are paired.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse

__all__ = [
    "MetricStats",
    "bootstrap_weights",
    "bleu_stats",
    "CiderStats",
    "mean_stats",
    "confidence_intervals",
    "paired_test",
]

DEFAULT_REPLICATES = 1000


@dataclass
class MetricStats:
    """One metric as per-report statistics.

    Attributes:
        name (`str`): Metric name.
        stats (`np.ndarray`): `(num_reports, k)` per-report statistics.
        combine (`callable`): `(sums (B, k), total_weight (B,)) -> (B,)` corpus score of weighted sums.
        resample (`callable`, *optional*): `weights (B, n) -> (B,)`, for metrics that are not a function of sums
            (CIDEr's idf depends on which references are in the sample).
        offset (`float`): Added to every replicate (METEOR: corpus score minus the per-report mean).
    """

    name: str
    stats: np.ndarray
    combine: Callable
    resample: Callable | None = None
    offset: float = 0.0

    def replicates(self, weights: np.ndarray) -> np.ndarray:
        if self.resample is not None:
            return self.resample(weights) + self.offset
        return self.combine(weights @ self.stats, weights.sum(1)) + self.offset

    def value(self) -> float:
        return float(self.replicates(np.ones((1, self.stats.shape[0])))[0])


def bootstrap_weights(num_reports: int, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> np.ndarray:
    """`(replicates, num_reports)` multiplicities of reports drawn with replacement."""
    if num_reports < 1:
        raise ValueError("Cannot bootstrap an empty set of reports.")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_reports, np.full(num_reports, 1.0 / num_reports), size=replicates).astype(float)


def mean_stats(name: str, scores, offset: float = 0.0) -> MetricStats:
    """A metric that is the mean of per-report scores."""
    values = np.asarray(scores, dtype=float).reshape(-1, 1)
    return MetricStats(name, values, lambda sums, total: sums[:, 0] / total, offset=offset)


def _ngrams(words: list[str], n: int) -> dict[tuple, int]:
    counts: dict[tuple, int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def bleu_stats(hypotheses: list[str], references: list[str], n: int = 4) -> list[MetricStats]:
    """BLEU-1..n as pycocoevalcap's `Bleu(n)` computes them (whitespace tokens, one reference per report)."""
    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hc, rc = _ngrams(h, n), _ngrams(r, n)
        correct = [0] * n
        for gram, count in hc.items():
            correct[len(gram) - 1] += min(count, rc.get(gram, 0))
        guess = [max(0, len(h) - k) for k in range(n)]
        rows.append([len(h), len(r), *guess, *correct])
    stats = np.asarray(rows, dtype=float)
    tiny, small = 1e-15, 1e-9

    def make(order: int):
        def combine(sums, total):
            testlen, reflen = sums[:, 0], sums[:, 1]
            guess, correct = sums[:, 2 : 2 + n], sums[:, 2 + n : 2 + 2 * n]
            log_p = np.log((correct[:, :order] + tiny) / (guess[:, :order] + small)).sum(1)
            score = np.exp(log_p / order)
            ratio = (testlen + tiny) / (reflen + small)
            penalty = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
            return score * penalty

        return combine

    return [MetricStats(f"BLEU-{k}", stats, make(k)) for k in range(1, n + 1)]


class CiderStats:
    """pycocoevalcap's `Cider` (CIDEr-D: clipped tf-idf cosines, Gaussian length penalty, sigma 6) in matrix form."""

    def __init__(self, hypotheses: list[str], references: list[str], n: int = 4, sigma: float = 6.0,
                 chunk: int = 50):
        vocab: dict[tuple, int] = {}
        hyp_rows, ref_rows, lengths = [], [], []
        for text, rows in ((hypotheses, hyp_rows), (references, ref_rows)):
            for s in text:
                counts = _ngrams(s.split(), n)
                rows.append({vocab.setdefault(g, len(vocab)): c for g, c in counts.items()})
                # pycocoevalcap's "length" counts bigrams (its n == 1 index), kept for equality
                lengths.append(sum(c for g, c in counts.items() if len(g) == 2))
        self.num_reports = len(hypotheses)
        order = np.zeros(len(vocab), dtype=int)
        for gram, index in vocab.items():
            order[index] = len(gram) - 1
        hyp, ref = self._matrix(hyp_rows, len(vocab)), self._matrix(ref_rows, len(vocab))
        clipped = hyp.minimum(ref).multiply(ref).tocsr()
        self.presence = (ref > 0).astype(float).T.tocsr()  # (V, n) for document frequencies
        self.blocks = []
        for k in range(n):
            mask = sparse.diags((order == k).astype(float))
            self.blocks.append(tuple((m @ mask).tocsr() for m in (clipped, hyp.multiply(hyp), ref.multiply(ref))))
        delta = np.asarray(lengths[: self.num_reports], float) - np.asarray(lengths[self.num_reports :], float)
        self.penalty = np.exp(-(delta**2) / (2 * sigma**2))
        self.n, self.chunk = n, chunk

    @staticmethod
    def _matrix(rows: list[dict], width: int) -> sparse.csr_matrix:
        indptr, indices, data = [0], [], []
        for row in rows:
            indices.extend(row.keys())
            data.extend(row.values())
            indptr.append(len(indices))
        return sparse.csr_matrix((np.asarray(data, float), indices, indptr), shape=(len(rows), width))

    def per_report(self, weights: np.ndarray) -> np.ndarray:
        """`(n, B)` per-report CIDEr with the idf of each replicate's references."""
        log_n = math.log(self.num_reports)
        df = (self.presence @ weights.T)  # (V, B)
        w2 = (log_n - np.log(np.maximum(df, 1.0))) ** 2
        total = np.zeros((self.num_reports, weights.shape[0]))
        for clipped, hyp2, ref2 in self.blocks:
            dot, nh, nr = clipped @ w2, hyp2 @ w2, ref2 @ w2
            norm = np.sqrt(nh) * np.sqrt(nr)
            total += np.divide(dot, norm, out=dot.copy(), where=norm != 0)
        return 10.0 * total / self.n * self.penalty[:, None]

    def resample(self, weights: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, weights.shape[0], self.chunk):
            w = weights[start : start + self.chunk]
            out.append((self.per_report(w) * w.T).sum(0) / w.sum(1))
        return np.concatenate(out)

    def metric(self, name: str = "CIDEr") -> MetricStats:
        scores = self.per_report(np.ones((1, self.num_reports)))[:, 0]
        return MetricStats(name, scores.reshape(-1, 1), lambda sums, total: sums[:, 0] / total, resample=self.resample)


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
    out = {}
    for m in metrics:
        low, high = _interval(m.replicates(weights), confidence)
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
    out = {}
    for a in shared:
        b = by_name[a.name]
        diff = b.replicates(weights) - a.replicates(weights)
        low, high = _interval(diff, confidence)
        p = 2 * min((diff <= 0).mean(), (diff >= 0).mean())
        out[a.name] = {"a": a.value(), "b": b.value(), "difference": b.value() - a.value(), "low": low,
                       "high": high, "p_value": float(min(1.0, max(p, 1.0 / replicates)))}
    return out
