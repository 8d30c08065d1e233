"""`rrg probe`: the linear probe on the frozen encoder's features vs the report model (training/analysis/probe.py)."""

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from training.analysis import probe as probe_module
from training.analysis.probe import (
    auroc,
    best_f1_threshold,
    fit_logistic,
    fit_probe,
    run_probe,
    study_features,
)
from training.arguments import DataArguments
from training.data.chexpert import CHEXPERT_OBSERVATIONS

IMAGE_SIZE, PATCH = 64, 16  # 16 patch tokens per view, as in the demo
# Findings the synthetic benchmark draws large (a wide heart, fluid at a lung base): any encoder that sees the
# study's pixels separates them, so they show whether the probe reads what is there.
VISIBLE = ("Cardiomegaly", "Pleural Effusion")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from training.sandbox.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("probe") / "data", num_train=400, num_val=8,
                                      num_test=200, image_size=IMAGE_SIZE, seed=0)


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    """A few studies, for the tests that compare two paths on the same studies (not the probe's power)."""
    from training.sandbox.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("probe-small") / "data", num_train=60, num_val=4,
                                      num_test=30, image_size=IMAGE_SIZE, seed=1)


@pytest.fixture(scope="module")
def shuffled_bench(bench, tmp_path_factory):
    """The same studies, each paired with another study's images: the encoder sees pixels, but not the study's."""
    annotation = json.loads((bench / "annotation.json").read_text())
    rng = random.Random(0)
    for entries in annotation.values():
        paths = [entry["image_path"] for entry in entries]
        rng.shuffle(paths)
        for entry, path in zip(entries, paths):
            entry["image_path"] = path
    folder = tmp_path_factory.mktemp("probe-shuffled")
    (folder / "annotation.json").write_text(json.dumps(annotation))
    return folder / "annotation.json", bench / "images"


@pytest.fixture(scope="module")
def encoder(tokenizer):
    """A tiny rrg model with a random-weight 64 px ViT (hidden 32) and its processor."""
    from training.sandbox.tiny import build_tiny_model

    model, processor = build_tiny_model(tokenizer=tokenizer, image_size=IMAGE_SIZE, patch_size=PATCH,
                                        vision_hidden_size=32, num_visual_tokens=None)
    return model.eval(), processor


@pytest.fixture(scope="module")
def pretrained(bench, tokenizer, tmp_path_factory):
    """The same model with its ViT pretrained on the training images' findings (as the demo pretrains it)."""
    from transformers import AutoModel

    from training.sandbox.pretrain import finding_targets, pretrain_vision_encoder
    from training.sandbox.tiny import build_tiny_model, tiny_image_processor, tiny_vision_config

    rows = json.loads((bench / "annotation.json").read_text())["train"]
    folder = pretrain_vision_encoder(
        [str(bench / "images" / r["image_path"][0]) for r in rows], [finding_targets(r["findings"]) for r in rows],
        tiny_vision_config("vit", image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, num_layers=2),
        tiny_image_processor(IMAGE_SIZE), tmp_path_factory.mktemp("vit"), epochs=20, learning_rate=3e-3, seed=0,
    )
    model, processor = build_tiny_model(tokenizer=tokenizer, image_size=IMAGE_SIZE, patch_size=PATCH,
                                        vision_hidden_size=32)
    model.model.vision_tower.load_state_dict(AutoModel.from_pretrained(folder).state_dict())
    return model.eval(), processor


def _by_name(result):
    return {o["observation"]: o for o in result["observations"]}


FAST = {"l2_grid": (1e-3, 1e-2, 1e-1), "folds": 3}


# ------------------------------------------------------------------------------------------- the probe's parts
def test_auroc_equals_pairwise_count():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)  # many ties
    labels = rng.random(60) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(pairwise)
    assert auroc(scores, np.zeros(60, dtype=bool)) is None


def test_best_threshold_is_the_best_cut():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(80), 2)
    labels = rng.random(80) < 0.25 + 0.5 * scores  # informative, with ties
    threshold, f1 = best_f1_threshold(scores, labels)

    def f1_at(t):
        pred = scores >= t
        tp = (pred & labels).sum()
        return 2 * tp / (pred.sum() + labels.sum())

    assert f1 == pytest.approx(f1_at(threshold))
    assert f1 == pytest.approx(max(f1_at(t) for t in np.unique(scores)))


def test_logistic_fit_is_the_penalised_optimum():
    """Against scipy's optimiser on the same objective, column by column."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 5))
    y = np.stack([(x @ rng.normal(size=5) + rng.normal(size=120)) > 0 for _ in range(2)], axis=1).astype(float)
    l2 = np.array([0.01, 0.3])
    weights, bias = fit_logistic(x, y, l2, tolerance=1e-10)
    fast_weights, fast_bias = fit_logistic(x, y, l2, tolerance=1e-10, products="float32")
    for k in range(2):
        def objective(theta, k=k):
            z = x @ theta[:5] + theta[5]
            return np.mean(np.logaddexp(0, z) - y[:, k] * z) + 0.5 * l2[k] * theta[:5] @ theta[:5]

        reference = minimize(objective, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x
        np.testing.assert_allclose(weights[:, k], reference[:5], atol=1e-5)
        assert bias[k] == pytest.approx(reference[5], abs=1e-5)
        # What rrg probe fits with: the products with x in float32, the optimum to float32's accuracy.
        np.testing.assert_allclose(fast_weights[:, k], reference[:5], atol=1e-3)
        assert fast_bias[k] == pytest.approx(reference[5], abs=1e-3)


def test_probe_cross_validation_in_worker_processes_equals_one_process():
    """The (penalty x fold) fits run in worker processes: the same out-of-fold choice as a loop written here."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 6))
    y = np.stack([(x @ rng.normal(size=6) + rng.normal(size=90)) > 0.8 for _ in range(3)], axis=1).astype(float)
    grid, folds = (1e-3, 1e-1, 3.0), 3
    serial = fit_probe(x, y, l2_grid=grid, folds=folds, seed=5, num_workers=1)
    parallel = fit_probe(x, y, l2_grid=grid, folds=folds, seed=5, num_workers=2)
    for key in ("l2", "threshold", "cv_f1", "weights", "bias"):
        np.testing.assert_array_equal(serial[key], parallel[key], err_msg=key)
    # the reference: out-of-fold probabilities per penalty, the lowest log-loss per column, its F1-best threshold
    z = (x - x.mean(0)) / x.std(0)
    fold = np.random.default_rng(5).permutation(len(x)) % folds
    scores = np.zeros((len(grid),) + y.shape)
    for g, l2 in enumerate(grid):
        for f in range(folds):
            w, b = fit_logistic(z[fold != f], y[fold != f], l2, products="float32")
            scores[g][fold == f] = 1 / (1 + np.exp(-(z[fold == f] @ w + b)))
    loss = -(y * np.log(scores + 1e-12) + (1 - y) * np.log(1 - scores + 1e-12)).mean(1)
    chosen = loss.argmin(0)
    np.testing.assert_array_equal(parallel["l2"], np.asarray(grid)[chosen])
    for k in range(3):
        threshold, f1 = best_f1_threshold(scores[chosen[k], :, k], y[:, k] > 0.5)
        assert parallel["threshold"][k] == pytest.approx(threshold, abs=1e-6)
        assert parallel["cv_f1"][k] == pytest.approx(f1, abs=1e-9)


# ------------------------------------------------------------------------------------ blind vs seeing encoders
@pytest.mark.slow
def test_blind_encoder_probe_stays_at_chance(encoder, shuffled_bench, tmp_path):
    """Each study paired with another study's images: the features vary with the pixels but say nothing about the
    study's labels, so the probe must be at chance: AUROC ~0.5 and no F1 above calling everything positive."""
    model, processor = encoder
    annotation, image_root = shuffled_bench
    data = DataArguments(dataset_path=str(annotation), image_root=str(image_root))
    result = run_probe(model, data, tmp_path, processor=processor, report=False, pooling="flat", **FAST)
    probed = [o for o in result["observations"] if o["probed"] and o["positives"] >= 10]
    assert len(probed) >= 8
    aurocs = np.array([o["probe_auroc"] for o in probed])
    assert abs(aurocs.mean() - 0.5) < 0.05, aurocs
    assert np.abs(aurocs - 0.5).max() < 0.16, aurocs
    for o in probed:
        assert o["probe_f1"] < o["chance_f1"] + 0.08, o
    assert (tmp_path / "probe.json").is_file() and (tmp_path / "probe.png").stat().st_size > 0


@pytest.mark.slow
def test_pixel_blind_encoder_probe_is_the_prior(encoder, bench, tmp_path):
    """An encoder whose patch embedding is zero returns the same features for every image: the probe can only
    learn the prior, so every score is tied (AUROC 0.5) and F1 is that of calling every study positive."""
    model, processor = copy.deepcopy(encoder[0]), encoder[1]
    with torch.no_grad():
        model.model.vision_tower.embeddings.patch_embeddings.projection.weight.zero_()
        model.model.vision_tower.embeddings.patch_embeddings.projection.bias.zero_()
    result = run_probe(model, bench, tmp_path, processor=processor, report=False, **FAST)
    for o in result["observations"]:
        if o["probed"] and o["positives"]:
            assert o["probe_auroc"] == pytest.approx(0.5, abs=0.02), o
            assert o["probe_f1"] <= o["chance_f1"] + 1e-6, o


@pytest.mark.slow
def test_seeing_encoders_read_the_visible_findings(encoder, pretrained, bench, tmp_path):
    """The same random ViT on the study's own images, and a ViT pretrained on the findings, both separate what the
    benchmark draws large, far above the prior."""
    for name, (model, processor) in (("random", encoder), ("pretrained", pretrained)):
        result = run_probe(model, bench, tmp_path / name, processor=processor, report=False, pooling="flat", **FAST)
        observations = _by_name(result)
        for finding in VISIBLE:
            o = observations[finding]
            assert o["probe_auroc"] > 0.9, (name, o)
            assert o["probe_f1"] > o["chance_f1"] + 0.3, (name, o)
        assert result["summary"]["probe"]["f1_micro"] > 0.4, (name, result["summary"])


# ------------------------------------------------------------------------------------------------ feature paths
@pytest.mark.slow
def test_feature_cache_gives_the_same_probe(encoder, small_bench, tmp_path, monkeypatch):
    model, processor = encoder
    plain = run_probe(model, small_bench, tmp_path / "plain", processor=processor, report=False, pooling="mean_max", **FAST)
    cache = tmp_path / "features"
    cached = run_probe(model, small_bench, tmp_path / "cached", processor=processor, report=False, pooling="mean_max",
                       feature_cache_dir=cache, **FAST)
    assert any(cache.rglob("*.safetensors"))
    # Second run: every entry is there, so the encoder must not run at all.
    monkeypatch.setattr(type(model.model), "get_vision_features",
                        lambda *a, **k: pytest.fail("features recomputed although cached"))
    reread = run_probe(model, small_bench, tmp_path / "reread", processor=processor, report=False, pooling="mean_max",
                       feature_cache_dir=cache, **FAST)
    for other in (cached, reread):
        for a, b in zip(plain["observations"], other["observations"]):
            assert a["probe_f1"] == pytest.approx(b["probe_f1"], abs=1e-9)
            assert a["probe_auroc"] == pytest.approx(b["probe_auroc"], abs=1e-6) if a["probe_auroc"] else True


@pytest.mark.slow
def test_study_features_are_what_the_projector_receives(encoder, small_bench):
    """Study features equal the projector's input in a forward, averaged over views (and tokens for `mean`)."""
    model, processor = encoder
    rows = json.loads((small_bench / "annotation.json").read_text())["test"][:3]
    studies = [[str(small_bench / "images" / p) for p in r["image_path"]] for r in rows]
    features = study_features(model, processor, studies, pooling="mean")
    flat = study_features(model, processor, studies, pooling="flat")
    from training.data.images import load_image

    seen = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        for study in studies:
            inputs = processor(images=[[load_image(p) for p in study]])
            model.model.get_image_features(pixel_values=inputs["pixel_values"], num_views=inputs["num_views"])
    finally:
        hook.remove()
    for received, vector, flat_vector in zip(seen, features, flat, strict=True):
        np.testing.assert_allclose(vector, received.mean((0, 1)).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(flat_vector, received.mean(0).flatten().numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- Hugging Face data
def _save_hf(bench, folder, with_labels: bool):
    import datasets

    annotation = json.loads((bench / "annotation.json").read_text())
    splits = {}
    for key, name in (("train", "train"), ("test", "test")):
        rows = annotation[key]
        columns = {"image": [[str(bench / "images" / p) for p in r["image_path"]] for r in rows],
                   "text": [r["report"] for r in rows], "study": [r["id"] for r in rows]}
        if with_labels:
            columns["labels"] = [json.dumps(r["chexpert"]) for r in rows]
        splits[name] = datasets.Dataset.from_dict(columns)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def _probe_numbers(result):
    return [(o["observation"], o["positives"], o["train_positives"], o["probed"], round(o["probe_f1"], 9),
             None if o["probe_auroc"] is None else round(o["probe_auroc"], 9)) for o in result["observations"]]


@pytest.mark.slow
def test_hf_dataset_with_and_without_labels(encoder, small_bench, tmp_path):
    """A save_to_disk dataset (image-path-list and report columns) gives the probe of the same annotation.json: with
    a labels column through the CLI, and without one from the labeler's labels of the references."""
    from training.analysis.probe import main

    model, processor = encoder
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "rrg_training.json").write_text("{}")

    labelled = _save_hf(small_bench, tmp_path / "hf_labelled", with_labels=True)
    assert main(["--model", str(folder), "--dataset_path", str(labelled), "--image_column", "image",
                 "--report_column", "text", "--chexpert_column", "labels", "--no_report", "--device", "cpu",
                 "--allow_outside_image_root",
                 "--output_dir", str(tmp_path / "hf1")]) == 0
    hf = json.loads((tmp_path / "hf1" / "probe.json").read_text())
    assert hf["meta"]["labels"] == "dataset"
    reference = run_probe(model, small_bench, tmp_path / "annotation", processor=processor, report=False)
    assert _probe_numbers(hf) == _probe_numbers(reference)

    unlabelled = _save_hf(small_bench, tmp_path / "hf_plain", with_labels=False)
    data = DataArguments(dataset_path=str(unlabelled), image_column="image", report_column="text",
                         allow_outside_image_root=True)
    result = run_probe(model, data, tmp_path / "hf2", processor=processor, report=False, **FAST)
    assert result["meta"]["labels"] == "labeler:rrg-rule-based-v1"
    from training.evaluation.labeler import RuleBasedLabeler

    test_reports = [r["report"] for r in json.loads((small_bench / "annotation.json").read_text())["test"]]
    labels = RuleBasedLabeler().label_batch(test_reports)
    for o in result["observations"]:
        assert o["positives"] == sum(row.get(o["observation"]) == 1 for row in labels)
    reference = run_probe(model, small_bench, tmp_path / "annotation2", processor=processor, report=False,
                          labels_from="labeler", **FAST)
    assert _probe_numbers(result) == _probe_numbers(reference)


# ------------------------------------------------------------------------------------------------ report model
def _write_predictions(path, rows, texts):
    path.write_text("".join(json.dumps({"id": r["id"], "reference": r["report"], "prediction": t,
                                        "image_path": r["image_path"]}) + "\n" for r, t in zip(rows, texts)))
    return path


@pytest.mark.slow
def test_report_f1_is_the_evaluation_ce(encoder, small_bench, tmp_path):
    """Report F1 per observation equals what rrg evaluate's clinical efficacy computes on the same labels."""
    from training.evaluation.labeler import RuleBasedLabeler
    from training.evaluation.metrics.clinical import compute_ce_variants, compute_clinical_efficacy

    model, processor = encoder
    rows = json.loads((small_bench / "annotation.json").read_text())["test"]
    rng = random.Random(3)
    # Reports that are right for some studies and wrong for others: another study's report for half of them.
    texts = [r["report"] if rng.random() < 0.5 else rows[rng.randrange(len(rows))]["report"] for r in rows]
    predictions = _write_predictions(tmp_path / "predictions.jsonl", rows, texts)

    # Labels from the labeler on the references: exactly rrg evaluate's clinical efficacy.
    result = run_probe(model, small_bench, tmp_path / "labeler", processor=processor, predictions=predictions,
                       labels_from="labeler", **FAST)
    ce = compute_clinical_efficacy(texts, [r["report"] for r in rows])
    for o in result["observations"]:
        assert o["report_f1"] == pytest.approx(ce["per_observation"][o["observation"]]["f1"])
        assert o["gap"] == pytest.approx(o["probe_f1"] - o["report_f1"])
    assert result["summary"]["report"]["f1_micro"] == pytest.approx(ce["f1_micro_14"])
    assert result["summary"]["report"]["f1_macro"] == pytest.approx(ce["f1_macro_14"])

    # Labels from the dataset: the labeler's labels of the reports against the benchmark's ground truth.
    result = run_probe(model, small_bench, tmp_path / "dataset", processor=processor, predictions=tmp_path, **FAST)
    assert result["meta"]["labels"] == "dataset"
    variants = compute_ce_variants(RuleBasedLabeler().label_batch(texts), [r["chexpert"] for r in rows], "rule")
    assert result["summary"]["report"]["f1_micro"] == pytest.approx(variants["ce_rule_f1_micro_14_uncertain_negative"])
    assert result["summary"]["report"]["f1_macro"] == pytest.approx(variants["ce_rule_f1_macro_14_uncertain_negative"])
    markdown = (tmp_path / "dataset" / "probe.md").read_text()
    for name in CHEXPERT_OBSERVATIONS:
        assert f"| {name} |" in markdown
    assert "**micro-F1 (14)**" in markdown


@pytest.mark.slow
def test_reports_generated_when_no_predictions(encoder, small_bench, tmp_path):
    from training.evaluation.labeler import RuleBasedLabeler
    from training.evaluation.metrics.clinical import compute_clinical_efficacy

    model, processor = encoder
    result = run_probe(model, small_bench, tmp_path, processor=processor, max_studies=6, labels_from="labeler",
                       generation_kwargs={"max_new_tokens": 6}, generation_batch_size=3, **FAST)
    written = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(written) == 6 and result["meta"]["predictions"] == "generated"
    ce = compute_clinical_efficacy([w["prediction"] for w in written], [w["reference"] for w in written],
                                   labeler=RuleBasedLabeler())
    for o in result["observations"]:
        assert o["report_f1"] == pytest.approx(ce["per_observation"][o["observation"]]["f1"])


def test_missing_predictions_are_named(encoder, small_bench, tmp_path, monkeypatch):
    model, processor = encoder
    rows = json.loads((small_bench / "annotation.json").read_text())["test"]
    predictions = _write_predictions(tmp_path / "predictions.jsonl", rows[1:], [r["report"] for r in rows[1:]])
    # Checked before any feature is computed.
    monkeypatch.setattr(probe_module, "study_features", lambda *a, **k: pytest.fail("features computed first"))
    with pytest.raises(ValueError, match=rf"no prediction for 1 of the {len(rows)} studies.*{rows[0]['id']}"):
        run_probe(model, small_bench, tmp_path / "out", processor=processor, predictions=predictions, **FAST)


def test_bad_arguments(encoder, small_bench, tmp_path):
    model, processor = encoder
    with pytest.raises(ValueError, match="different splits"):
        run_probe(model, small_bench, tmp_path, processor=processor, split="train")
    with pytest.raises(ValueError, match="pooling"):
        study_features(model, processor, [["x.png"]], pooling="max")
    with pytest.raises(ValueError, match="processor"):
        run_probe(model, small_bench, tmp_path)
    with pytest.raises(ValueError, match="chexpert_column is for Hugging Face"):
        run_probe(model, small_bench, tmp_path, processor=processor, chexpert_column="labels")


def test_cli_is_registered():
    from training.cli import COMMANDS

    assert COMMANDS["probe"][:2] == ("training.analysis.probe", "main")
    assert Path(probe_module.__file__).name == "probe.py"
