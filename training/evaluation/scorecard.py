"""All report metrics with bootstrap intervals, under names a user can quote: what `rrg evaluate` writes.

[`score_reports`] cleans both sides the R2Gen way (`training.data.report_cleaning`), scores BLEU-1..4 and CIDEr
(matrix form, equal to pycocoevalcap's scorers; see `tests/test_scorecard.py`), ROUGE-L and METEOR (pycocoevalcap),
every named clinical-efficacy variant (`training.evaluation.ce_variants`), and optionally BERTScore (the `bert-score` package)
and RadGraph-F1 (the `radgraph` package) from local model folders. Every metric gets a paired bootstrap 95%
interval under `"confidence_intervals"`. References are scored untruncated unless `reference_max_tokens` asks for
R2Gen's protocol (references cut to the model's maximum sequence length, which flatters scores).
"""

from __future__ import annotations

import logging

import numpy as np

from .bootstrap import DEFAULT_REPLICATES, CiderStats, MetricStats, bleu_stats, confidence_intervals, mean_stats
from .ce_variants import ce_counts, ce_variants_from_counts, labeler_key

__all__ = ["metric_stats", "score_reports", "truncate_reference"]

logger = logging.getLogger(__name__)


def truncate_reference(cleaned: str, max_seq_length: int) -> str:
    """R2Gen's reference truncation: its tokenizer prepends a BOS id and cuts ids to `max_seq_length`, and the
    scored reference is decoded from the ids after BOS, so `max_seq_length - 1` words remain."""
    return " ".join(cleaned.split()[: max(0, max_seq_length - 1)])


class _CachedLabeler:
    def __init__(self, labeler, cache: dict):
        self.name, self._cache = labeler.name, cache

    def label_batch(self, reports):
        return [self._cache[r] for r in reports]


def metric_stats(predictions: list[str], references: list[str], labeler=None, clean: str | None = "mimic",
                 tokenization: str = "r2gen", meteor: bool = True, reference_max_tokens: int | None = None,
                 bertscore_model=None, bertscore_layer: int | None = None, radgraph_model=None,
                 radgraph_annotations: tuple[list, list] | None = None) -> tuple[list, dict]:
    """Per-report statistics of every metric (for [`confidence_intervals`] and `rrg compare`) and the extras.

    Returns:
        `(list[MetricStats], dict)`: the metrics, and the non-numeric record (settings, CE tables, warnings).
    """
    from ..data.reports import clean_report
    from .scoring import _check_pairs, _get_meteor, _reset_meteor, compute_clinical_efficacy, java_available

    predictions, references = _check_pairs(predictions, references)
    record: dict = {"warnings": []}
    if clean:
        hyps = [clean_report(p, style=clean) for p in predictions]
        refs = [clean_report(r, style=clean) for r in references]
    else:
        hyps, refs = list(predictions), list(references)
    if reference_max_tokens is not None:
        if reference_max_tokens < 2:
            raise ValueError(f"reference_max_tokens must be at least 2 (BOS + one word), got {reference_max_tokens}.")
        refs = [truncate_reference(r, reference_max_tokens) for r in refs]
        record["reference_truncation"] = (
            f"R2Gen protocol: references cut to max_seq_length={reference_max_tokens} token ids incl. BOS "
            f"({reference_max_tokens - 1} words) before scoring; flatters scores, quote only against R2Gen-style tables"
        )
    else:
        record["reference_truncation"] = "none: references scored in full"
    if tokenization == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        if not java_available():
            raise ValueError("tokenization='ptb' needs java on PATH; install a Java runtime or use 'r2gen'.")
        tok = PTBTokenizer()
        gts = tok.tokenize({i: [{"caption": r}] for i, r in enumerate(refs)})
        res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(hyps)})
        refs = [gts.get(i, [""])[0] for i in range(len(refs))]
        hyps = [res.get(i, [""])[0] for i in range(len(hyps))]
    elif tokenization != "r2gen":
        raise ValueError(f"`tokenization` must be 'r2gen' or 'ptb', got {tokenization!r}.")
    hyps = [" ".join(h.split()) for h in hyps]
    refs = [" ".join(r.split()) for r in refs]

    from pycocoevalcap.rouge.rouge import Rouge

    stats: list[MetricStats] = bleu_stats(hyps, refs)
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    if meteor and java_available():
        try:
            corpus, per_report = _get_meteor().compute_score(gts, res)
            per_report = np.asarray(per_report, dtype=float)
            stats.append(mean_stats("METEOR", per_report, offset=float(corpus) - float(per_report.mean())))
        except Exception as error:  # the java process can die or answer garbage; report, don't crash
            _reset_meteor()
            record["warnings"].append(f"METEOR was not computed: the METEOR java process failed ({error}).")
    elif meteor:
        record["warnings"].append("METEOR was not computed: it needs java and none is on PATH.")
    _, rouge = Rouge().compute_score(gts, res)
    stats.append(mean_stats("ROUGE-L", rouge))
    stats.append(CiderStats(hyps, refs).metric("CIDEr"))

    if labeler is None:
        from .labeler import RuleBasedLabeler

        labeler = RuleBasedLabeler()
    unique = list(dict.fromkeys(predictions + references))
    cache = dict(zip(unique, labeler.label_batch(unique), strict=True))
    pred_labels, ref_labels = [cache[p] for p in predictions], [cache[r] for r in references]
    record["clinical_efficacy"] = compute_clinical_efficacy(predictions, references, _CachedLabeler(labeler, cache))
    counts = ce_counts(pred_labels, ref_labels)
    key = labeler_key(labeler.name)
    variants = _CEVariants(counts, key)
    for name in ce_variants_from_counts(counts, key):
        stats.append(MetricStats(name, np.zeros((len(predictions), 1)), None, resample=variants.getter(name)))
    record["ce_labeler"] = key

    if bertscore_model:
        from .scoring import compute_bertscore

        bs = compute_bertscore(predictions, references, bertscore_model, num_layers=bertscore_layer)
        for name in ("BERTScore-P", "BERTScore-R", "BERTScore-F1"):
            stats.append(mean_stats(name, bs.pop(f"{name}_per_report")))
        record.update({k: v for k, v in bs.items() if not k.startswith("BERTScore-")})
    if radgraph_model:
        from .radgraph_f1 import RadGraphScorer

        rg = RadGraphScorer(radgraph_model).score(predictions, references)
        for name, values in rg.pop("per_report").items():
            stats.append(mean_stats(name, values))
        record.update(rg)
    elif radgraph_annotations is not None:
        from .radgraph_f1 import radgraph_f1_from_annotations

        for name, values in radgraph_f1_from_annotations(*radgraph_annotations).items():
            stats.append(mean_stats(name, values))
        record["radgraph_settings"] = "from saved RadGraph annotations; radgraph package compute_reward"
    return stats, record


class _CEVariants:
    """All CE variants of one resample computed together and shared by the per-variant metrics."""

    def __init__(self, counts: dict, labeler: str):
        self.counts, self.labeler, self._key, self._values = counts, labeler, None, None

    def getter(self, name: str):
        def resample(weights: np.ndarray) -> np.ndarray:
            if self._key is not weights:  # holding the array keeps its identity unique
                self._values = ce_variants_from_counts(self.counts, self.labeler, weights=weights)
                self._key = weights
            return self._values[name]

        return resample


def score_reports(predictions: list[str], references: list[str], labeler=None, clean: str | None = "mimic",
                  tokenization: str = "r2gen", meteor: bool = True, reference_max_tokens: int | None = None,
                  bertscore_model=None, bertscore_layer: int | None = None, radgraph_model=None,
                  radgraph_annotations: tuple[list, list] | None = None, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> dict:
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
        radgraph_annotations: `(prediction graphs, reference graphs)` saved from the radgraph package, one per
            report, instead of a model (the package cannot run on transformers 5).
        replicates (`int`): Bootstrap replicates (0 skips the intervals).
        seed (`int`): Seed of the resampling.

    Returns:
        `dict`: metric name -> value (NLG names, `ce_*` variants, `BERTScore-*`, `RadGraph-*`), plus
        `confidence_intervals` (name -> value/low/high), `clinical_efficacy` (the per-observation tables),
        `nlg_text_cleaning`, `reference_truncation`, `tokenization`, `implementation`, `warnings`.

    Example:

    ```python
    >>> from training.evaluation.scorecard import score_reports
    >>> m = score_reports(["No pleural effusion."], ["No pleural effusion."], meteor=False, replicates=10)
    >>> m["BLEU-1"], m["ce_rule_f1_micro_14_uncertain_negative"]
    (0.9999999999000001, 0.0)
    ```
    """
    from .scoring import TOKENIZATIONS, _package_version

    stats, record = metric_stats(predictions, references, labeler=labeler, clean=clean, tokenization=tokenization,
                                 meteor=meteor, reference_max_tokens=reference_max_tokens,
                                 bertscore_model=bertscore_model, bertscore_layer=bertscore_layer,
                                 radgraph_model=radgraph_model, radgraph_annotations=radgraph_annotations)
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
