"""SembScore (Yu et al., 2023): the cosine of the CheXbert embeddings of a report and its reference, as a registry entry.

CXR-Report-Metric (`CXRMetric/run_eval.py`, `add_semb_col`; ReXrank's SembScore column) embeds each report with
CheXbert's `encode.py` (the encoder's last hidden state at [CLS]) and scores each pair by the cosine of the two
embeddings. The CheXbert checkpoint is the user's `chexbert.pth` (`--chexbert-checkpoint`, with the local
bert-base-uncased tokenizer folder `--chexbert-tokenizer`); nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

from .registry import Inputs, Metric, MetricStats, mean_stats, register

__all__ = ["REXRANK_SEMB_NAME", "chexbert_model", "semb_scores"]

REXRANK_SEMB_NAME = "rexrank/SembScore"


def chexbert_model(inputs: Inputs):
    """The run's CheXbert: the CE labeler when it is CheXbert, else one built from `chexbert_checkpoint` /
    `chexbert_tokenizer` (once per run)."""
    from ..labeler import CheXbertLabeler

    labeler = inputs.settings.get("labeler")
    if isinstance(labeler, CheXbertLabeler):
        return labeler

    def make():
        settings = inputs.settings
        if not settings.get("chexbert_tokenizer"):
            raise ValueError("SembScore needs the local bert-base-uncased tokenizer folder of CheXbert: pass "
                             "--chexbert-tokenizer DIR (with --chexbert-checkpoint chexbert.pth).")
        return CheXbertLabeler(settings["chexbert_checkpoint"], settings["chexbert_tokenizer"])

    return inputs.cached("chexbert_model", make)


def semb_scores(chexbert, predictions: list[str], references: list[str]) -> np.ndarray:
    """Per-pair cosine of CheXbert embeddings (each distinct text embedded once); 0 when an embedding is zero, as
    RadEval's `semantic_embedding_scores`."""
    unique = list(dict.fromkeys(predictions + references))
    embeddings = chexbert.embed_batch(unique).astype(np.float64)
    index = {text: i for i, text in enumerate(unique)}
    hyp = embeddings[[index[t] for t in predictions]]
    ref = embeddings[[index[t] for t in references]]
    dot = (hyp * ref).sum(1)
    norms = np.linalg.norm(hyp, axis=1) * np.linalg.norm(ref, axis=1)
    return np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)


def _semb(inputs: Inputs) -> list[MetricStats]:
    chexbert = chexbert_model(inputs)
    inputs.record["rexrank_semb_settings"] = (
        "cosine of CheXbert [CLS] embeddings (last hidden state, CheXbert's preprocessing and 512-token truncation), "
        f"checkpoint {inputs.settings.get('chexbert_checkpoint') or 'of the CE labeler'}")
    return [mean_stats(REXRANK_SEMB_NAME, semb_scores(chexbert, *inputs.raw))]


register(Metric("rexrank/SembScore", "embedding", _semb, (REXRANK_SEMB_NAME,), needs=("raw text",),
                model=("chexbert_checkpoint",), level="mean",
                implementation="rrg's CheXbertLabeler.embed_batch (CXR-Report-Metric's encode.py) + cosine",
                description="ReXrank's SembScore: cosine of CheXbert embeddings (--chexbert-checkpoint)"))
