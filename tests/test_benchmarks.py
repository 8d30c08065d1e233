"""Smoke tests: each benchmark (side by side, epoch, padding, scaling, MFU, pooling) runs at its smallest size (no timing assertions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_sidebyside_smallest(tmp_path):
    out = _run(["benchmarks/sidebyside.py", "--smoke", "--rounds", "1", "--steps", "2", "--new-tokens", "2",
                "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")], tmp_path)
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["shape"] for r in results] == ["demo-smoke", "encoder_heavy-smoke"]
    for result in results:
        assert result["logit_max_abs_diff"] == 0.0  # same weights, same logits: the comparison is like for like
        for key in ("stage1_step", "stage1_step_cached", "stage2_step", "stage2_step_cached", "peak_memory_stage1",
                    "peak_memory_stage2", "generate_tokens_per_s_b1", "generate_tokens_per_s_b8",
                    "time_to_first_token_b1"):
            assert result[key]["min"] <= result[key]["median"] <= result[key]["max"]
    assert "stage-1 step" in out and (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.slow
def test_grpo_sidebyside_smallest(tmp_path):
    out = _run(["benchmarks/grpo_sidebyside.py", "--smoke", "--rounds", "1", "--steps", "2", "--num-generations", "2",
                "--completion-length", "3", "--json", str(tmp_path / "g.json")], tmp_path)
    [result] = json.loads((tmp_path / "g.json").read_text())
    assert result["shape"] == "demo-smoke"
    assert result["logit_max_abs_diff"] == 0.0  # same weights, same logits
    assert result["prompt_tokens"] > 0 and result["generated_tokens_per_step"] == result["rows_per_step"] * 3
    for key in ("step", "step_cpu", "generation", "rest", "step_batched", "generation_batched"):
        assert result[key]["min"] <= result[key]["median"] <= result[key]["max"]
    assert all(0 < result["generation_share"][name] < 1 for name in ("rrg", "rrg_batched", "llava"))
    assert "GRPO optimizer step" in out


@pytest.mark.slow
def test_epoch_benchmark_smallest(tmp_path):
    out = _run(["benchmarks/epoch.py", "--studies", "2", "--width", "64", "--height", "80", "--batch-size", "2",
                "--json", str(tmp_path / "e.json")], tmp_path)
    result = json.loads((tmp_path / "e.json").read_text())
    assert len(result["epoch_s_no_cache"]) == len(result["epoch_s_cache"]) == 2
    assert "| 2 |" in out


@pytest.mark.slow
def test_padding_benchmark_smallest(tmp_path):
    out = _run(["benchmarks/padding.py", "--smoke", "--rounds", "1", "--json", str(tmp_path / "p.json")], tmp_path)
    result = json.loads((tmp_path / "p.json").read_text())
    assert list(result["variants"]) == ["random", "group_by_length", "padding_free"]
    assert result["variants"]["padding_free"]["padding_fraction"] == 0.0
    for variant in result["variants"].values():
        ratio = variant["ratio_to_random"]
        assert ratio["min"] <= ratio["median"] <= ratio["max"] and len(variant["step_s"]) == 1
    assert "| padding_free | 0.0% |" in out


@pytest.mark.slow
def test_scaling_smallest(tmp_path):
    out = _run(["benchmarks/scaling.py", "--smoke", "--steps", "2", "--rounds", "1", "--json", str(tmp_path / "s.json"),
                "--plot", str(tmp_path / "s.png")], tmp_path)
    result = json.loads((tmp_path / "s.json").read_text())
    assert set(result["axes"]) == {"visual_tokens", "views", "report", "studies"}
    for axis in ("visual_tokens", "views", "report"):
        points = result["axes"][axis]
        assert len(points) == 2
        for point in points:
            for key in ("step_s", "step_s_cached", "peak_step_mb", "train_flops_per_step", "sequence_length"):
                assert point[key] > 0
    assert [p["visual_tokens_per_view"] for p in result["axes"]["visual_tokens"]] == [4, 1]  # pooled 2x2 -> 1x1
    assert [p["views"] for p in result["axes"]["views"]] == [1, 2]
    for point in result["axes"]["studies"]:
        assert len(point["epoch_s_no_cache"]) == len(point["epoch_s_cache"]) == 2
    assert "### views per study" in out and (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.slow
def test_mfu_smallest(tmp_path):
    out = _run(["benchmarks/mfu.py", "--smoke", "--steps", "2", "--rounds", "1", "--json", str(tmp_path / "m.json")], tmp_path)
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["peak_gflops"] > 0 and set(result["gemm_gflops_before"]) == {"64", "128"}
    assert [(p["shape"], p["stage"]) for p in result["points"]] == [
        ("demo-smoke", 1), ("demo-smoke", 2), ("encoder_heavy-smoke", 1), ("encoder_heavy-smoke", 2)]
    for point in result["points"]:
        assert point["mfu"] > 0 and point["hfu"] >= point["mfu"]  # the recompute only adds executed FLOPs
    assert "MFU" in out


@pytest.mark.slow
def test_pooling_quick_demo(tmp_path):
    out = _run(["benchmarks/pooling.py", "--smoke", "--json", str(tmp_path / "p.json")], tmp_path)
    result = json.loads((tmp_path / "p.json").read_text())
    assert [s["visual_tokens_per_view"] for s in result["settings"]] == [16, 4]
    for setting in result["settings"]:
        assert setting["stage1_steps"] > 0 and setting["stage2_steps"] > 0
        assert set(setting["metrics"]) == {"BLEU-4", "CIDEr", "CE-F1 (micro-14)", "CE-F1 (macro-14)"}
    assert "| 4 |" in out
