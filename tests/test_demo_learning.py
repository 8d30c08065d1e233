"""End to end, a few minutes: the demo pipeline on a small synthetic set must learn to read the images.

A model that ignores the images scores the same with the test images shuffled between studies; one that reads them
does better with the true images. Checked on the teacher-forced test loss and on the clinical efficacy of the
generated reports, and the demo's output layout (stages, evaluation, export) is checked on the way.
"""

import json
import random

import pytest
import torch

from training.sandbox.demo import DemoConfig, run_demo

# Runs the whole demo pipeline.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    summary = run_demo(out, DemoConfig.small(), export=True, evaluate_stage1=False)
    return out, summary


def test_demo_writes_the_documented_layout(demo):
    out, summary = demo
    for path in ("data/annotation.json", "backbones/text/config.json", "backbones/vision/config.json",
                 "stage1/model/rrg_training.json", "stage2/model/adapter_config.json", "eval/predictions.jsonl",
                 "eval/metrics.json", "eval/metrics.md", "eval_shuffled/metrics.json", "export/config.json",
                 "export/model.safetensors", "export/README.md", "summary.json", "summary.md"):
        assert (out / path).exists(), path
    assert summary["stages"]["stage1"]["mode"] == "projector" and summary["stages"]["stage2"]["mode"] == "lora"
    assert "| CE-F1 (micro-14) |" in (out / "summary.md").read_text()
    # Stage 3 against stage 2 on the benchmark's ground truth (`rrg compare --labels_from dataset`): its stage-2 side
    # must be what `rrg probe` counts for the same reports against the same labels (two independent countings).
    truth = json.loads((out / "compare_stage2_stage3_ground_truth.json").read_text())
    assert truth["ce_reference"] == "given labels"
    stage2_vs_truth = summary["stage3_vs_stage2_ground_truth"]["ce_rule_f1_micro_14_uncertain_negative"]["a"]
    assert stage2_vs_truth == pytest.approx(summary["probe"]["report"]["f1_micro"], abs=1e-9)
    assert "ground-truth labels" in (out / "summary.md").read_text()
    # The exported model takes as many views as the demo's studies have (one frontal view), so `rrg serve` offers its
    # example studies without the lateral view the model never learned to read.
    views = max(len(r["image_path"]) for r in json.loads((out / "data" / "annotation.json").read_text())["train"])
    processor_config = json.loads((out / "export" / "processor_config.json").read_text())
    assert views == 1 and processor_config["max_views"] == views
    assert json.loads((out / "export" / "config.json").read_text())["max_views"] == views


def test_model_reads_the_images(demo):
    from training.data.loaders import load_synthetic
    from training.model_io import load_trained
    from training.sft.train import RRGDataCollator

    out, summary = demo
    model, processor = load_trained(out / "stage2")
    rows = list(load_synthetic(out / "data")["test"])
    images = [r["image_path"] for r in rows]
    random.Random(0).shuffle(images)
    shuffled = [{**r, "image_path": p} for r, p in zip(rows, images)]
    collate = RRGDataCollator(processor, max_length=256)

    def mean_loss(batch_rows):
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(batch_rows), 25):
                chunk = batch_rows[i : i + 25]
                total += model(**collate(chunk)).loss.item() * len(chunk)
        return total / len(batch_rows)

    true_loss, shuffled_loss = mean_loss(rows), mean_loss(shuffled)
    assert true_loss < 0.99 * shuffled_loss, (true_loss, shuffled_loss)

    true_ce = summary["test"]["stage2_true_images"]["CE-F1 (micro-14)"]
    shuffled_ce = summary["test"]["stage2_shuffled_images"]["CE-F1 (micro-14)"]
    assert true_ce > shuffled_ce + 0.05, (true_ce, shuffled_ce)
    # and the reports are reports: real overlap with the references
    assert summary["test"]["stage2_true_images"]["BLEU-1"] > 0.3
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["clinical_efficacy"]["labeler"] == "rrg-rule-based-v1"


def test_dense_targets_name_each_finding_where_it_is_drawn(tmp_path):
    """finding_patch_targets: every target name of a finding gets that finding's cells; bad dense targets are refused."""
    import numpy as np

    from training.sandbox.pretrain import finding_patch_targets, finding_targets, pretrain_vision_encoder
    from training.sandbox.synthetic import finding_maps, generate_synthetic_dataset
    from training.sandbox.tiny import tiny_image_processor, tiny_vision_config

    out = generate_synthetic_dataset(tmp_path / "d", num_train=12, num_val=0, num_test=0, image_size=32, seed=1,
                                     num_workers=1)
    rows = json.loads((out / "annotation.json").read_text())["train"]
    dense = finding_patch_targets(rows, seed=1, grid=4, num_workers=1)
    assert len(dense) == len(rows)
    for row, targets in zip(rows, dense):
        assert set(targets) == finding_targets(row["findings"])
        maps = finding_maps(1, row["id"], row["findings"], grid=4)
        for finding, cells in zip(row["findings"], maps):
            for name in finding_targets([finding]):
                assert (targets[name] >= cells).all()  # OR over the findings that share a name
        for name, cells in targets.items():
            owners = [c for f, c in zip(row["findings"], maps) if name in finding_targets([f])]
            np.testing.assert_array_equal(cells, np.any(owners, axis=0))
    paths = [str(out / "images" / r["image_path"][0]) for r in rows]
    targets = [finding_targets(r["findings"]) for r in rows]
    config = tiny_vision_config("vit", image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2)
    bad = [{name: cells[:2] for name, cells in t.items()} for t in dense]
    with pytest.raises(ValueError, match=r"expected \(4, 4\)"):
        pretrain_vision_encoder(paths, targets, config, tiny_image_processor(32), tmp_path / "v", epochs=1,
                                patch_targets=bad if any(bad) else [{"cardiomegaly": np.zeros((2, 2), bool)}] * 12)
    with pytest.raises(ValueError, match="one per example"):
        pretrain_vision_encoder(paths, targets, config, tiny_image_processor(32), tmp_path / "v", epochs=1,
                                patch_targets=dense[:3])
    pretrain_vision_encoder(paths, targets, config, tiny_image_processor(32), tmp_path / "v", epochs=1,
                            patch_targets=dense)
    assert (tmp_path / "v" / "config.json").exists()
