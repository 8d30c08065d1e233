"""Scoring of generated radiology reports: natural-language metrics and clinical efficacy.

This is the plain-Python API behind the `rrg evaluate` command and the local `evaluate` modules in
`training/evaluation/metrics/`. Everything runs offline.

- [`compute_nlg_metrics`]: BLEU-1..4, METEOR, ROUGE-L and CIDEr computed by pycocoevalcap's scorers,
  the implementation behind the published MIMIC-CXR / IU X-Ray tables.
- [`compute_clinical_efficacy`]: precision / recall / F1 of CheXpert labels extracted from predictions
  vs references (micro and macro, over the 14 observations and the 5-observation subset, plus a
  per-observation table).
- [`metrics_to_markdown`]: the summary and per-observation tables as markdown.
- [`compute_bertscore`]: optional BERTScore from the `bert-score` package with a local checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Sequence

from ..data.chexpert import CHEXPERT_5, CHEXPERT_OBSERVATIONS, POSITIVE

__all__ = [
    "NLG_METRIC_NAMES",
    "CE_METRIC_NAMES",
    "TOKENIZATIONS",
    "compute_nlg_metrics",
    "compute_clinical_efficacy",
    "compute_bertscore",
    "metrics_to_markdown",
    "java_available",
]

logger = logging.getLogger(__name__)

RADGRAPH_METRIC_NAMES = ("RadGraph-F1-simple", "RadGraph-F1-partial", "RadGraph-F1-complete")
NLG_METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# The CheXpert subsets clinical efficacy is averaged over: all 14 observations and the 5 of the competition.
CE_SUBSETS = {"14": CHEXPERT_OBSERVATIONS, "5": CHEXPERT_5}
# Clinical-efficacy result keys and their display labels, in table order: "f1_micro_14" -> "CE F1 (micro, 14 obs.)".
CE_METRIC_NAMES = tuple(
    (f"{name}_{avg}_{subset}", f"CE {short} ({avg}, {subset} obs.)")
    for subset in CE_SUBSETS
    for avg in ("micro", "macro")
    for name, short in (("precision", "P"), ("recall", "R"), ("f1", "F1"))
)

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

CE_POSITIVE_DEFINITION = (
    "an observation counts as positive only when its label is 1; uncertain (-1), negative (0) and "
    "not mentioned (blank) all count as not positive (R2GenCMN / METransformer CE convention)"
)

_METEOR_LOCK = threading.Lock()
_METEOR_SCORER = None


def java_available() -> bool:
    """Whether a `java` executable is on PATH (METEOR and the PTB tokenizer need it)."""
    return shutil.which("java") is not None


def _check_pairs(predictions, references) -> tuple[list[str], list[str]]:
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


def compute_nlg_metrics(
    predictions: list[str],
    references: list[str],
    tokenization: str = "r2gen",
    meteor: bool = True,
) -> dict:
    """Compute BLEU-1..4, METEOR, ROUGE-L and CIDEr with pycocoevalcap's scorers.

    The scores are pycocoevalcap's own (`Bleu(4)` with the "closest" reference length, `Meteor` 1.5,
    `Rouge` with beta 1.2, `Cider` with idf from the references); nothing is re-derived here. Each
    prediction has exactly one reference, as in the MIMIC-CXR / IU X-Ray benchmarks.

    Args:
        predictions (`list[str]`): Generated reports.
        references (`list[str]`): Reference reports, one per prediction.
        tokenization (`str`, *optional*, defaults to `"r2gen"`):
            `"r2gen"` scores the strings as given (whitespace collapsed), which is how R2Gen / R2GenCMN
            produced the published tables (they clean reports first: lower case, punctuation split off);
            `"ptb"` runs pycocoevalcap's PTBTokenizer first (COCO-caption style; needs java).
        meteor (`bool`, *optional*, defaults to `True`):
            Compute METEOR (starts a java process once per Python process). When java is missing, METEOR
            is left out, a warning is logged and recorded under `"warnings"`.

    Returns:
        `dict`: `"BLEU-1"` .. `"BLEU-4"`, `"METEOR"` (absent when it could not run), `"ROUGE-L"`,
        `"CIDEr"` as floats, plus `"tokenization"` (a sentence saying what was done), `"implementation"`,
        `"num_samples"` and `"warnings"` (list of strings).

    Example:

    ```python
    >>> from training.evaluation.scoring import compute_nlg_metrics
    >>> scores = compute_nlg_metrics(["the heart is normal ."], ["the heart is normal ."], meteor=False)
    >>> round(scores["BLEU-1"], 4), round(scores["ROUGE-L"], 4)
    (1.0, 1.0)
    ```
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    predictions, references = _check_pairs(predictions, references)
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"`tokenization` must be one of {sorted(TOKENIZATIONS)}, got {tokenization!r}.")
    warnings: list[str] = []

    if tokenization == "ptb":
        if not java_available():
            raise ValueError(
                "tokenization='ptb' runs pycocoevalcap's Java PTBTokenizer but no `java` is on PATH; install a "
                "Java runtime or use tokenization='r2gen'."
            )
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": r}] for i, r in enumerate(references)})
        res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
        # PTBTokenizer drops trailing empty lines, so an empty last caption may be missing.
        gts = {i: gts.get(i, [""]) for i in range(len(references))}
        res = {i: res.get(i, [""]) for i in range(len(predictions))}
    else:
        # Collapsing whitespace changes nothing for cleaned reports, but a line break would break
        # METEOR's line protocol and double spaces would give ROUGE-L empty tokens.
        gts = {i: [" ".join(r.split())] for i, r in enumerate(references)}
        res = {i: [" ".join(p.split())] for i, p in enumerate(predictions)}

    result: dict = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, start=1):
        result[f"BLEU-{n}"] = float(value)

    if meteor:
        if not java_available():
            message = "METEOR was not computed: it needs java (pycocoevalcap's meteor-1.5.jar) and none is on PATH."
            logger.warning(message)
            warnings.append(message)
        else:
            try:
                score, _ = _get_meteor().compute_score(gts, res)
                result["METEOR"] = float(score)
            except Exception as error:  # the java process can die or answer garbage; report, don't crash
                _reset_meteor()
                message = f"METEOR was not computed: the METEOR java process failed ({type(error).__name__}: {error})."
                logger.warning(message)
                warnings.append(message)
    else:
        warnings.append("METEOR was not computed: disabled by the caller (meteor=False).")

    rouge, _ = Rouge().compute_score(gts, res)
    result["ROUGE-L"] = float(rouge)
    cider, _ = Cider().compute_score(gts, res)
    result["CIDEr"] = float(cider)

    result["tokenization"] = TOKENIZATIONS[tokenization]
    result["implementation"] = f"pycocoevalcap {_package_version('pycocoevalcap')}"
    result["num_samples"] = len(predictions)
    result["warnings"] = warnings
    return result


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _prf(tp: int, fp: int, fn: int, zero_division: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else zero_division
    recall = tp / (tp + fn) if tp + fn else zero_division
    if tp + fp + fn == 0:
        f1 = zero_division
    else:
        f1 = 2 * tp / (2 * tp + fp + fn)
    return precision, recall, f1


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]  # drop NaN
    return sum(kept) / len(kept) if kept else float("nan")


def compute_clinical_efficacy(
    predictions: list[str],
    references: list[str],
    labeler=None,
    zero_division: float = 0.0,
) -> dict:
    """Clinical efficacy: P/R/F1 of CheXpert labels extracted from predictions vs references.

    Both sides are labelled by the same labeler. An observation counts as positive only when its label
    is 1: uncertain (-1), negative (0) and blank are all "not positive" — the convention of R2GenCMN's
    and METransformer's CE code (they set blank and -1 to 0, then call scikit-learn). Micro scores pool
    true/false positives over the observations; macro scores average the per-observation scores, with
    `zero_division` for an observation whose score is undefined (0.0 matches scikit-learn's default, as
    in those papers; `float("nan")` leaves such observations out of the macro average).

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
    >>> from training.evaluation.scoring import compute_clinical_efficacy
    >>> ce = compute_clinical_efficacy(["Small left pleural effusion."], ["Small left pleural effusion."])
    >>> ce["f1_micro_14"], ce["labeler"]
    (1.0, 'rrg-rule-based-v1')
    ```
    """
    predictions, references = _check_pairs(predictions, references)
    if not isinstance(zero_division, (int, float)):
        raise TypeError(f"`zero_division` must be a number (0.0, 1.0 or nan), got {type(zero_division).__name__}.")
    if labeler is None:
        from .labeler import RuleBasedLabeler

        labeler = RuleBasedLabeler()
    if not hasattr(labeler, "label_batch") or not hasattr(labeler, "name"):
        raise TypeError("`labeler` must have a `name` and a `label_batch(reports)` method (see training.evaluation.labeler).")

    predicted_labels = labeler.label_batch(predictions)
    reference_labels = labeler.label_batch(references)

    counts = {}
    for obs in CHEXPERT_OBSERVATIONS:
        tp = fp = fn = 0
        for pred, ref in zip(predicted_labels, reference_labels, strict=True):
            p, r = pred.get(obs) == POSITIVE, ref.get(obs) == POSITIVE
            tp += p and r
            fp += p and not r
            fn += r and not p
        counts[obs] = (tp, fp, fn)

    per_observation = {}
    for obs, (tp, fp, fn) in counts.items():
        precision, recall, f1 = _prf(tp, fp, fn, zero_division)
        per_observation[obs] = {
            "support": tp + fn,
            "predicted": tp + fp,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }

    result: dict = {}
    for suffix, subset in CE_SUBSETS.items():
        tp = sum(counts[o][0] for o in subset)
        fp = sum(counts[o][1] for o in subset)
        fn = sum(counts[o][2] for o in subset)
        micro = _prf(tp, fp, fn, zero_division)
        for name, value in zip(("precision", "recall", "f1"), micro, strict=True):
            result[f"{name}_micro_{suffix}"] = value
        for name in ("precision", "recall", "f1"):
            result[f"{name}_macro_{suffix}"] = _nanmean([per_observation[o][name] for o in subset])
    result["per_observation"] = per_observation
    result["labeler"] = labeler.name
    result["positive_definition"] = CE_POSITIVE_DEFINITION
    result["zero_division"] = zero_division
    result["num_samples"] = len(predictions)
    return result


def compute_bertscore(
    predictions: list[str],
    references: list[str],
    model_path: str | os.PathLike,
    num_layers: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict:
    """BERTScore (Zhang et al., 2020) computed by the `bert-score` package with a local checkpoint.

    Runs the package's own pipeline (`bert_score.utils.get_model`, which keeps the first `num_layers` layers, and
    `bert_cos_score_idf`, greedy cosine matching) exactly as `bert_score.score(..., model_type=model_path,
    num_layers=num_layers, idf=False)` does, without idf weighting and without baseline rescaling; the only step
    we add is loading the tokenizer from the local folder and capping a missing `model_max_length` at the model's
    position embeddings (the package passes it to truncation and fails on "unbounded"). Numbers from different
    checkpoints or layers are not comparable.

    Args:
        predictions (`list[str]`): Generated reports.
        references (`list[str]`): Reference reports, one per prediction.
        model_path (`str` or `os.PathLike`): Local folder with a transformers encoder and its tokenizer.
        num_layers (`int`, *optional*): Layer whose output is used (0 = embeddings). Defaults to the last layer.
        batch_size (`int`, *optional*, defaults to 16): Sentences per forward pass.
        device (`str`, *optional*, defaults to `"cpu"`): Torch device.

    Returns:
        `dict`: `BERTScore-P`, `BERTScore-R`, `BERTScore-F1` (corpus means), the per-report lists under
        `BERTScore-*_per_report`, `bertscore_model`, `bertscore_layer`, `bertscore_settings`.
    """
    from collections import defaultdict

    from transformers import AutoConfig, AutoTokenizer

    try:
        from bert_score.utils import bert_cos_score_idf, get_model
    except ImportError as error:
        raise ImportError("BERTScore needs the `bert-score` package: `pip install rrg[bertscore]`.") from error

    predictions, references = _check_pairs(predictions, references)
    if not os.path.isdir(model_path):
        raise FileNotFoundError(
            f"BERTScore model folder {model_path} does not exist; pass a local transformers checkpoint folder "
            "(nothing is downloaded)."
        )
    config = AutoConfig.from_pretrained(str(model_path), local_files_only=True)
    total_layers = config.num_hidden_layers
    layer = total_layers if num_layers is None else num_layers
    if not 0 <= layer <= total_layers:
        raise ValueError(f"`num_layers` must be between 0 and {total_layers} for {model_path}, got {layer}.")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    positions = getattr(config, "max_position_embeddings", None) or 512
    if tokenizer.model_max_length > positions:
        tokenizer.model_max_length = positions
    model = get_model(str(model_path), layer).to(device)
    idf = defaultdict(lambda: 1.0)  # what bert_score.score does with idf=False
    idf[tokenizer.sep_token_id] = 0
    idf[tokenizer.cls_token_id] = 0
    scores = bert_cos_score_idf(model, references, predictions, tokenizer, idf, verbose=False, device=device,
                                batch_size=batch_size).cpu()
    precisions, recalls, f1s = (scores[:, k].tolist() for k in range(3))
    n = len(f1s)
    return {
        "BERTScore-P": sum(precisions) / n,
        "BERTScore-R": sum(recalls) / n,
        "BERTScore-F1": sum(f1s) / n,
        "BERTScore-P_per_report": precisions,
        "BERTScore-R_per_report": recalls,
        "BERTScore-F1_per_report": f1s,
        "bertscore_model": str(model_path),
        "bertscore_layer": layer,
        "bertscore_settings": (
            f"bert-score {_package_version('bert-score')}: greedy cosine matching, no idf weighting, no baseline "
            "rescaling"
        ),
    }


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
    return str(value)


def metrics_to_markdown(metrics: dict) -> str:
    """Render metrics as markdown: a summary table and, if present, a per-observation CE table.

    Args:
        metrics (`dict`): The output of [`compute_nlg_metrics`] and/or [`compute_clinical_efficacy`],
            either merged into one flat dict or nested under `"nlg"` and `"clinical_efficacy"` keys.

    Returns:
        `str`: Markdown text ending with a newline.
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"`metrics` must be a dict, got {type(metrics).__name__}.")
    flat: dict = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and key not in ("per_observation", "confidence_intervals"):
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
    for key in ("BERTScore-P", "BERTScore-R", "BERTScore-F1", *RADGRAPH_METRIC_NAMES):
        if key in flat:
            lines.append(row(key, key))
    notes = [f"- {label}: {form.format(flat[key])}" for key, label, form in (
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
    from .ce_variants import ce_variants_markdown

    text += ce_variants_markdown(metrics)
    return text
