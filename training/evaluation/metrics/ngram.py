"""N-gram metrics: BLEU-1..4, CIDEr, ROUGE-L, METEOR (pycocoevalcap) and ReXrank's per-report BLEU-2.

- BLEU-1..4: pycocoevalcap's corpus `Bleu(4)` ("closest" reference length, one reference per report) from per-report
  hypothesis/reference lengths and matched/guessed n-gram counts, so a bootstrap replicate is a matrix product;
- CIDEr: pycocoevalcap's `Cider` (CIDEr-D: clipped tf-idf cosines, Gaussian length penalty, sigma 6) in matrix form;
  the idf comes from the references of the resample, so each replicate recomputes document frequencies;
- ROUGE-L (beta 1.2) and METEOR 1.5: pycocoevalcap's scorers, per-report scores (METEOR's corpus score is
  pycocoevalcap's aggregate; its bootstrap is the per-report mean's, shifted to the corpus value);
- `rexrank/BLEU-2`: CXR-Report-Metric's BLEU (the fast-bleu package: nltk's `sentence_bleu` with weights (1/2, 1/2)
  and nltk's smoothing method 1) of each report, averaged over reports, on CXR-Report-Metric's tokens (lower case,
  `"."` split off, split on single spaces).

Text is prepared once ([`prepare_text`]): R2Gen cleaning, optional R2Gen reference truncation, then either nothing
more (`"r2gen"`: whitespace collapsed) or pycocoevalcap's PTBTokenizer (`"ptb"`).
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import threading
from collections import defaultdict

import numpy as np
from scipy import sparse

from .registry import Inputs, Metric, MetricStats, _mean_combine, check_pairs, mean_stats, register

__all__ = [
    "NLG_METRIC_NAMES",
    "TOKENIZATIONS",
    "java_available",
    "truncate_reference",
    "prepare_text",
    "bleu_stats",
    "CiderStats",
    "rexrank_tokens",
    "sentence_bleu2",
    "compute_nlg_metrics",
]

logger = logging.getLogger(__name__)

NLG_METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

TOKENIZATIONS = {
    "r2gen": (
        "r2gen: strings scored as given (whitespace collapsed, nothing else), as R2Gen / R2GenCMN call "
        "pycocoevalcap's scorers directly on their already-cleaned reports without PTBTokenizer; clean "
        "predictions and references the same way (lower case, punctuation split off) before scoring"
    ),
    "ptb": (
        "ptb: pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, lower-cased, punctuation removed) "
        "applied to predictions and references before scoring, as in the COCO caption evaluation"
    ),
}

_METEOR_LOCK = threading.Lock()
_METEOR_SCORER = None


def java_available() -> bool:
    """Whether a `java` executable is on PATH (METEOR and the PTB tokenizer need it)."""
    return shutil.which("java") is not None


def _get_meteor():
    # Java start-up and loading METEOR's paraphrase table take seconds: keep one scorer per process.
    global _METEOR_SCORER
    with _METEOR_LOCK:
        if _METEOR_SCORER is None:
            from pycocoevalcap.meteor.meteor import Meteor

            _METEOR_SCORER = Meteor()
        return _METEOR_SCORER


def _reset_meteor():
    global _METEOR_SCORER
    with _METEOR_LOCK:
        _METEOR_SCORER = None


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def truncate_reference(cleaned: str, max_seq_length: int) -> str:
    """R2Gen's reference truncation: its tokenizer prepends a BOS id and cuts ids to `max_seq_length`, and the
    scored reference is decoded from the ids after BOS, so `max_seq_length - 1` words remain."""
    return " ".join(cleaned.split()[: max(0, max_seq_length - 1)])


def prepare_text(inputs: Inputs) -> tuple[list[str], list[str]]:
    """`(hypotheses, references)` as the n-gram metrics score them, from `inputs.settings`: `clean` (R2Gen cleaning,
    `"mimic"` / `"iu"` / `None`), `reference_max_tokens` (R2Gen's reference truncation), `tokenization` (`"r2gen"`:
    whitespace collapsed; `"ptb"`: pycocoevalcap's PTBTokenizer, needs java). Records what was done."""
    settings = inputs.settings
    clean, tokenization = settings.get("clean"), settings.get("tokenization", "r2gen")
    max_tokens = settings.get("reference_max_tokens")
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"`tokenization` must be one of {sorted(TOKENIZATIONS)}, got {tokenization!r}.")
    hyps, refs = inputs.raw
    if clean:
        from ...data.reports import clean_report

        hyps = [clean_report(p, style=clean) for p in hyps]
        refs = [clean_report(r, style=clean) for r in refs]
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"reference_max_tokens must be at least 2 (BOS + one word), got {max_tokens}.")
        refs = [truncate_reference(r, max_tokens) for r in refs]
        inputs.record["reference_truncation"] = (
            f"R2Gen protocol: references cut to max_seq_length={max_tokens} token ids incl. BOS "
            f"({max_tokens - 1} words) before scoring; flatters scores, quote only against R2Gen-style tables"
        )
    else:
        inputs.record["reference_truncation"] = "none: references scored in full"
    if tokenization == "ptb":
        if not java_available():
            raise ValueError(
                "tokenization='ptb' runs pycocoevalcap's Java PTBTokenizer but no `java` is on PATH; install a "
                "Java runtime or use tokenization='r2gen'."
            )
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": r}] for i, r in enumerate(refs)})
        res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(hyps)})
        # PTBTokenizer drops trailing empty lines, so an empty last caption may be missing.
        refs = [gts.get(i, [""])[0] for i in range(len(refs))]
        hyps = [res.get(i, [""])[0] for i in range(len(hyps))]
    # Collapsing whitespace changes nothing for cleaned reports, but a line break would break METEOR's line protocol
    # and double spaces would give ROUGE-L empty tokens.
    return [" ".join(h.split()) for h in hyps], [" ".join(r.split()) for r in refs]


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
        return MetricStats(name, scores.reshape(-1, 1), _mean_combine, resample=self.resample)


def _coco_dicts(inputs: Inputs) -> tuple[dict, dict]:
    hyps, refs = inputs.text
    return {i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}


def _bleu(inputs: Inputs, n: int = 4) -> list[MetricStats]:
    return bleu_stats(*inputs.text, n=n)


def _cider(inputs: Inputs) -> list[MetricStats]:
    return [CiderStats(*inputs.text).metric("CIDEr")]


def _rouge(inputs: Inputs) -> list[MetricStats]:
    from pycocoevalcap.rouge.rouge import Rouge

    _, per_report = Rouge().compute_score(*_coco_dicts(inputs))
    return [mean_stats("ROUGE-L", per_report)]


def _meteor(inputs: Inputs) -> list[MetricStats]:
    if not inputs.settings.get("meteor", True):
        return []
    if not java_available():
        inputs.warn("METEOR was not computed: it needs java (pycocoevalcap's meteor-1.5.jar) and none is on PATH.")
        return []
    try:
        corpus, per_report = _get_meteor().compute_score(*_coco_dicts(inputs))
    except Exception as error:  # the java process can die or answer garbage; report, don't crash
        _reset_meteor()
        inputs.warn(f"METEOR was not computed: the METEOR java process failed ({type(error).__name__}: {error}).")
        return []
    per_report = np.asarray(per_report, dtype=float)
    return [mean_stats("METEOR", per_report, offset=float(corpus) - float(per_report.mean()))]


def rexrank_tokens(report: str) -> list[str]:
    """CXR-Report-Metric's tokens (`prep_reports`): lower case, `"."` split off, split on single spaces, empty strings
    dropped. Line breaks and tabs are not separators there, so they stay inside tokens here too."""
    return [t for t in str(report).lower().replace(".", " .").split(" ") if t != ""]


def sentence_bleu2(hypothesis: list[str], reference: list[str], smoothing: str = "method1") -> float:
    """BLEU-2 of one tokenized hypothesis against one reference, as nltk's `sentence_bleu([reference], hypothesis,
    weights=(0.5, 0.5), smoothing_function=...)` computes it.

    0 when no unigram matches (an empty hypothesis included); the brevity penalty is `exp(1 - r / c)` for a
    hypothesis of `c` tokens shorter than its reference of `r`. A zero bigram precision (no shared bigram, or a
    one-token hypothesis) is smoothed: `"method1"` (nltk's `SmoothingFunction().method1` and fast-bleu's default,
    which ReXrank runs) uses 0.1 / number of hypothesis bigrams; `"none"` (nltk's default `method0`) uses the
    smallest positive float, so the score is ~0.
    """
    if smoothing not in ("method1", "none"):
        raise ValueError(f"`smoothing` must be 'method1' or 'none', got {smoothing!r}.")
    hc, rc = _ngrams(hypothesis, 2), _ngrams(reference, 2)
    matched, total = [0, 0], [max(1, len(hypothesis)), max(1, len(hypothesis) - 1)]
    for gram, count in hc.items():
        matched[len(gram) - 1] += min(count, rc.get(gram, 0))
    if matched[0] == 0:
        return 0.0
    log_p = 0.0
    for m, t in zip(matched, total):
        if m == 0:
            log_p += 0.5 * (math.log(0.1 / t) if smoothing == "method1" else math.log(sys.float_info.min))
        else:
            log_p += 0.5 * math.log(m / t)
    c, r = len(hypothesis), len(reference)
    penalty = 1.0 if c > r else math.exp(1 - r / c)
    return penalty * math.exp(log_p)


def _rexrank_bleu2(inputs: Inputs, smoothing: str = "method1") -> list[MetricStats]:
    hyps, refs = inputs.raw
    scores = [sentence_bleu2(rexrank_tokens(h), rexrank_tokens(r), smoothing) for h, r in zip(hyps, refs)]
    inputs.record["rexrank_bleu_settings"] = (
        "rexrank/BLEU-2: per-report BLEU-2 (weights 1/2, 1/2; nltk smoothing "
        f"{'method 1' if smoothing == 'method1' else 'none'}) on raw reports lower-cased with '.' split off, as "
        "CXR-Report-Metric's fast-bleu call; mean over reports"
    )
    return [mean_stats("rexrank/BLEU-2", scores)]


def compute_nlg_metrics(predictions: list[str], references: list[str], tokenization: str = "r2gen",
                        meteor: bool = True) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of the strings as given (the registry's `bleu`, `meteor`, `rouge_l` and
    `cider` entries without R2Gen cleaning), equal to pycocoevalcap's scorers.

    Args:
        predictions (`list[str]`): Generated reports.
        references (`list[str]`): Reference reports, one per prediction.
        tokenization (`str`, *optional*, defaults to `"r2gen"`):
            `"r2gen"` scores the strings as given (whitespace collapsed), which is how R2Gen / R2GenCMN produced the
            published tables (they clean reports first: lower case, punctuation split off); `"ptb"` runs
            pycocoevalcap's PTBTokenizer first (COCO-caption style; needs java).
        meteor (`bool`, *optional*, defaults to `True`):
            Compute METEOR (starts a java process once per Python process). When java is missing, METEOR is left
            out, a warning is logged and recorded under `"warnings"`.

    Returns:
        `dict`: `"BLEU-1"` .. `"BLEU-4"`, `"METEOR"` (absent when it could not run), `"ROUGE-L"`, `"CIDEr"` as floats,
        plus `"tokenization"`, `"implementation"`, `"num_samples"` and `"warnings"` (list of strings).

    Example:

    ```python
    >>> from training.evaluation.metrics.ngram import compute_nlg_metrics
    >>> scores = compute_nlg_metrics(["the heart is normal ."], ["the heart is normal ."], meteor=False)
    >>> round(scores["BLEU-1"], 4), round(scores["ROUGE-L"], 4)
    (1.0, 1.0)
    ```
    """
    from .registry import compute_metric

    predictions, references = check_pairs(predictions, references)
    inputs = Inputs(predictions, references, {"clean": None, "tokenization": tokenization, "meteor": meteor})
    result: dict = {}
    for name in ("bleu", "meteor", "rouge_l", "cider"):
        result.update({m.name: m.value() for m in compute_metric(name, inputs)})
    if not meteor:
        inputs.record["warnings"].append("METEOR was not computed: disabled by the caller (meteor=False).")
    result["tokenization"] = TOKENIZATIONS[tokenization]
    result["implementation"] = f"pycocoevalcap {_package_version('pycocoevalcap')}"
    result["num_samples"] = len(predictions)
    result["warnings"] = inputs.record["warnings"]
    return result


_PYCOCO = "pycocoevalcap's scorers"
register(Metric("bleu", "ngram", _bleu, ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"), needs=("cleaned text",),
                implementation="pycocoevalcap's Bleu(4) in matrix form ('closest' reference length)",
                description="corpus BLEU-1..4 as pycocoevalcap computes it"))
register(Metric("meteor", "ngram", _meteor, ("METEOR",), needs=("cleaned text", "java"), level="mean",
                implementation=f"{_PYCOCO}: Meteor 1.5 (java)", description="METEOR 1.5, pycocoevalcap's aggregate"))
register(Metric("rouge_l", "ngram", _rouge, ("ROUGE-L",), needs=("cleaned text",), level="mean",
                implementation=f"{_PYCOCO}: Rouge (beta 1.2)", description="ROUGE-L, mean of per-report F"))
register(Metric("cider", "ngram", _cider, ("CIDEr",), needs=("cleaned text",),
                implementation="pycocoevalcap's Cider (CIDEr-D) in matrix form",
                description="CIDEr-D with the idf of the scored references"))
register(Metric("rexrank/BLEU-2", "ngram", _rexrank_bleu2, ("rexrank/BLEU-2",), needs=("raw text",), level="mean",
                implementation="rrg: nltk sentence_bleu (weights 1/2, 1/2, smoothing method 1) per report, as "
                               "CXR-Report-Metric's fast-bleu",
                description="ReXrank's BLEU-2: per-report BLEU-2 averaged over reports"))
