"""RaTEScore (Zhao et al., 2024) by RadEval's RaTEScore code with the user's two local models, as a registry entry.

RaTEScore splits each report into sentences (medspacy's PyRuSH), tags medical entities with a token-classification
model (`Angelakeke/RaTE-NER-Deberta`), embeds each entity with a second encoder ([CLS] of `FremyCompany/BioLORD-2023-C`)
and scores a pair by the F1 of type-weighted best-match cosine similarities (the "long" affinity matrix, ReXrank's
default); 0.5 when either report has no entity. Everything is RadEval 2.2.1's `radeval/metrics/RaTEScore/` (its
`RaTEScore` class, constructed with the two local folders, on one device); nothing is re-implemented.

Dependencies. RadEval's RaTEScore imports medspacy at load. medspacy 1.3.1 pins spacy<3.8, whose thinc 8.2 needs
numpy 1.x; it runs on spacy 3.8 (numpy 2) when installed without its requirements:
`pip install "spacy>=3.8" PyRuSH loguru` then
`pip install --no-deps medspacy==1.3.1 medspacy_quickumls==3.2 pysbd pysimstring medspacy_unqlite unidecode`.

Model folders: `--ratescore-ner-model` (the NER model: config.json with its `id2label`, weights, tokenizer) and
`--ratescore-embedding-model` (the entity encoder). Nothing is downloaded.
"""

from __future__ import annotations

import types

from .green import check_model_folder, radeval_module
from .registry import Inputs, Metric, MetricStats, mean_stats, register

__all__ = ["REXRANK_RATESCORE_NAME", "RATESCORE_INSTALL", "radeval_ratescore", "ratescore_scores"]

REXRANK_RATESCORE_NAME = "rexrank/RaTEScore"
RATESCORE_INSTALL = ('`pip install "spacy>=3.8" PyRuSH loguru` then `pip install --no-deps medspacy==1.3.1 '
                     'medspacy_quickumls==3.2 pysbd pysimstring medspacy_unqlite unidecode` (medspacy pins spacy<3.8, '
                     'whose thinc needs numpy 1.x)')


def radeval_ratescore() -> types.ModuleType:
    """RadEval's `radeval/metrics/RaTEScore/scorer.py` (see [`radeval_module`]), or an `ImportError` saying how to
    install medspacy."""
    try:
        return radeval_module("radeval.metrics.RaTEScore.scorer")
    except ModuleNotFoundError as error:
        raise ImportError(f"RaTEScore runs RadEval's RaTEScore code, which needs {error.name}: {RATESCORE_INSTALL}.") \
            from error


def ratescore_scores(predictions: list[str], references: list[str], ner_model, embedding_model,
                     use_gpu: bool | None = None) -> dict:
    """Per-report RaTEScore of `predictions` against `references` by RadEval's `RaTEScore` class on local models.

    Args:
        predictions, references (`list[str]`): Candidate and reference reports, one reference per prediction.
        ner_model, embedding_model: Local folders of the entity tagger and of the entity encoder.
        use_gpu (`bool`, *optional*): RadEval's `use_gpu` (default: CUDA when available).

    Returns:
        `dict`: `scores` (per report), `mean`, `prediction_entities` and `reference_entities` ((text, type) pairs).
    """
    hint = "RaTEScore needs local copies of RaTE-NER-Deberta (--ratescore-ner-model) and BioLORD-2023-C " \
           "(--ratescore-embedding-model); nothing is downloaded."
    ner_model = check_model_folder(ner_model, hint)
    embedding_model = check_model_folder(embedding_model, hint)
    scorer = radeval_ratescore().RaTEScore(bert_model=str(ner_model), eval_model=str(embedding_model),
                                           use_gpu=use_gpu)
    scores, prediction_entities, reference_entities = scorer.compute_score(list(predictions), list(references))
    scores = [float(s) for s in scores]
    return {"scores": scores, "mean": sum(scores) / len(scores), "prediction_entities": prediction_entities,
            "reference_entities": reference_entities}


def _ratescore(inputs: Inputs) -> list[MetricStats]:
    settings = inputs.settings
    if not settings.get("ratescore_embedding_model"):
        raise ValueError("RaTEScore needs both models: pass --ratescore-embedding-model DIR (a local BioLORD-2023-C) "
                         "with --ratescore-ner-model DIR.")
    result = ratescore_scores(*inputs.raw, settings["ratescore_ner_model"], settings["ratescore_embedding_model"])
    inputs.record["rexrank_ratescore_settings"] = (
        f"RadEval RaTEScore class, NER {settings['ratescore_ner_model']}, entity encoder "
        f"{settings['ratescore_embedding_model']}, 'long' affinity matrix, batch size 1")
    return [mean_stats(REXRANK_RATESCORE_NAME, result["scores"])]


register(Metric("rexrank/RaTEScore", "ratescore", _ratescore, (REXRANK_RATESCORE_NAME,), needs=("raw text",),
                model=("ratescore_ner_model",), level="mean",
                implementation="RadEval 2.2.1's RaTEScore class (medspacy sentences, NER, entity embeddings, F1)",
                description="RaTEScore with local NER and entity-encoder folders (--ratescore-ner-model, "
                            "--ratescore-embedding-model)"))
