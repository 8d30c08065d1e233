"""BERTScore (Zhang et al., 2020) by the `bert-score` package with a local checkpoint, as a registry entry."""

from __future__ import annotations

import os

from .registry import Inputs, Metric, MetricStats, check_pairs, mean_stats, register

__all__ = ["BERTSCORE_METRIC_NAMES", "REXRANK_BERTSCORE_NAME", "compute_bertscore", "baseline_file"]

BERTSCORE_METRIC_NAMES = ("BERTScore-P", "BERTScore-R", "BERTScore-F1")
# ReXrank's BERTScore column (CXR-Report-Metric's add_bertscore_col): distilroberta-base at bert-score's default layer
# for it (5), rescaled with the baseline file the bert-score wheel ships, idf off; the F1 per report, averaged.
REXRANK_BERTSCORE_NAME = "rexrank/BERTScore-F1"
REXRANK_BERTSCORE_MODEL = "distilroberta-base"


def baseline_file(model_type: str = REXRANK_BERTSCORE_MODEL, lang: str = "en") -> str:
    """The rescaling baseline the installed bert-score ships for `model_type` (`rescale_baseline/<lang>/<model>.tsv`)."""
    from importlib.util import find_spec

    spec = find_spec("bert_score")
    if spec is None:
        raise ImportError("BERTScore needs the `bert-score` package: `pip install bert-score` (or the `bertscore` extra of rrg-cxr).")
    path = os.path.join(os.path.dirname(spec.origin), "rescale_baseline", lang, f"{model_type}.tsv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The installed bert-score has no rescaling baseline {path}.")
    return path


def _baseline_row(path: str, layer: int):
    import csv

    import torch

    with open(path, encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    # bert-score reads it with pandas: row `layer` after the header, the LAYER column dropped
    return torch.tensor([float(v) for v in rows[1 + layer][1:]])


def _package_version(name: str) -> str:
    from .ngram import _package_version as version

    return version(name)


def compute_bertscore(
    predictions: list[str],
    references: list[str],
    model_path: str | os.PathLike,
    num_layers: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    baseline_path: str | None = None,
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
        baseline_path (`str`, *optional*): A bert-score baseline file: rescale P/R/F1 with its row of the layer,
            `(score - baseline) / (1 - baseline)`, as `bert_score.score(..., rescale_with_baseline=True,
            baseline_path=...)` does.

    Returns:
        `dict`: `BERTScore-P`, `BERTScore-R`, `BERTScore-F1` (corpus means), the per-report lists under
        `BERTScore-*_per_report`, `bertscore_model`, `bertscore_layer`, `bertscore_settings`.
    """
    from collections import defaultdict

    from transformers import AutoConfig, AutoTokenizer

    try:
        from bert_score.utils import bert_cos_score_idf, get_model
    except ImportError as error:
        raise ImportError("BERTScore needs the `bert-score` package: `pip install bert-score` (or the `bertscore` extra of rrg-cxr).") from error

    predictions, references = check_pairs(predictions, references)
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
    if baseline_path is not None:
        baseline = _baseline_row(baseline_path, layer)
        scores = (scores - baseline) / (1 - baseline)
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
            f"bert-score {_package_version('bert-score')}: greedy cosine matching, no idf weighting, "
            + (f"rescaled with the baseline {os.path.basename(baseline_path)} (layer {layer} row)" if baseline_path
               else "no baseline rescaling")
        ),
    }


def _bertscore(inputs: Inputs) -> list[MetricStats]:
    settings = inputs.settings
    result = compute_bertscore(*inputs.raw, settings["bertscore_model"], num_layers=settings.get("bertscore_layer"))
    stats = [mean_stats(name, result.pop(f"{name}_per_report")) for name in BERTSCORE_METRIC_NAMES]
    inputs.record.update({k: v for k, v in result.items() if not k.startswith("BERTScore-")})
    return stats


register(Metric("bertscore", "bertscore", _bertscore, BERTSCORE_METRIC_NAMES, needs=("raw text",),
                model=("bertscore_model",), level="mean",
                implementation="bert-score package (greedy matching, no idf, no rescaling), local checkpoint",
                description="BERTScore P/R/F1 with the encoder folder given by --bertscore-model"))


def _rexrank_bertscore(inputs: Inputs) -> list[MetricStats]:
    from transformers import AutoConfig

    settings = inputs.settings
    folder = settings["bertscore_model"]
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True) if os.path.isdir(folder) else None
    if config is not None and (config.model_type != "roberta" or config.num_hidden_layers != 6):
        inputs.warn(f"rexrank/BERTScore-F1: {folder} is a {config.model_type} with {config.num_hidden_layers} layers, "
                    "not distilroberta-base (roberta, 6 layers): the number is not comparable with ReXrank's.")
    # ReXrank collapses runs of spaces before scoring (re.sub(r' +', ' ', ...)); bert-score's tokenizers split on
    # whitespace anyway
    result = compute_bertscore(*inputs.raw, folder, num_layers=5, baseline_path=baseline_file(REXRANK_BERTSCORE_MODEL))
    inputs.record["rexrank_bertscore_settings"] = (
        f"{folder}, layer 5 (bert-score's layer for distilroberta-base), idf off, {result['bertscore_settings']}")
    return [mean_stats(REXRANK_BERTSCORE_NAME, result["BERTScore-F1_per_report"])]


register(Metric("rexrank/BERTScore", "bertscore", _rexrank_bertscore, (REXRANK_BERTSCORE_NAME,), needs=("raw text",),
                model=("bertscore_model",), level="mean",
                implementation="bert-score package: layer 5, rescaled with its distilroberta-base baseline, no idf",
                description="ReXrank's BERTScore: F1 of distilroberta-base (--bertscore-model), baseline-rescaled"))
