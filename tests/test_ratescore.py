"""rexrank/RaTEScore: RadEval's RaTEScore class on local NER and entity-encoder folders, through the registry."""

import importlib.util

import numpy as np
import pytest

from helpers import one_torch_thread_fixture
from training.evaluation.metrics.registry import Inputs, compute_metric

for _module in ("radeval", "medspacy", "loguru"):  # find_spec, not importorskip: importing radeval runs nltk.download
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed (RaTEScore: see training/evaluation/metrics/ratescore.py)",
                    allow_module_level=True)

_one_thread = one_torch_thread_fixture()

PREDICTIONS = ["Small left pleural effusion.", "Heart size is normal. No pneumothorax.", "Mild cardiomegaly.",
               "Right upper lobe consolidation. No effusion.", "Lungs are clear."]
REFERENCES = ["No pleural effusion.", "Heart size is normal. No pneumothorax.", "Moderate cardiomegaly. Edema.",
              "Consolidation in the right lower lobe.", "Mild edema in the left lung."]


@pytest.fixture(scope="module")
def tiny_ratescore(tmp_path_factory):
    from training.sandbox.tiny_scorers import save_tiny_ratescore

    return save_tiny_ratescore(tmp_path_factory.mktemp("ratescore"), PREDICTIONS + REFERENCES)


def _settings(folders):
    return {"ratescore_ner_model": str(folders[0]), "ratescore_embedding_model": str(folders[1])}


def test_ratescore_equals_radevals_ratescore_class(tiny_ratescore):
    from training.evaluation.metrics.ratescore import radeval_ratescore

    (stats,) = compute_metric("rexrank/RaTEScore", Inputs(PREDICTIONS, REFERENCES, _settings(tiny_ratescore)))
    scorer = radeval_ratescore().RaTEScore(bert_model=str(tiny_ratescore[0]), eval_model=str(tiny_ratescore[1]),
                                           use_gpu=False)
    expected, _, _ = scorer.compute_score(PREDICTIONS, REFERENCES)
    np.testing.assert_allclose(stats.per_report(), expected, rtol=1e-6)
    assert stats.value() == pytest.approx(np.mean(expected))
    assert len(set(np.round(expected, 6))) > 2  # the random tagger finds entities: not all 0.5
    # a report scored against itself: every entity's best match is itself, F1 = 1
    assert stats.per_report()[1] == pytest.approx(1.0, abs=1e-5)


def test_ratescore_needs_both_folders(tmp_path, tiny_ratescore):
    with pytest.raises(ValueError, match="--ratescore-ner-model"):
        compute_metric("rexrank/RaTEScore", Inputs(PREDICTIONS, REFERENCES, {}))
    with pytest.raises(ValueError, match="--ratescore-embedding-model"):
        compute_metric("rexrank/RaTEScore", Inputs(PREDICTIONS, REFERENCES,
                                                   {"ratescore_ner_model": str(tiny_ratescore[0])}))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        compute_metric("rexrank/RaTEScore", Inputs(PREDICTIONS, REFERENCES,
                                                   _settings((tiny_ratescore[0], tmp_path / "nowhere"))))
