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
