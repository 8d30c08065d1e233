"""Two-stage training on SFTTrainer: what trains and what stays frozen, resume, adapters, feature cache.

Multi-process training (DDP, FSDP2, DeepSpeed) is tested in test_distributed.py."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import train_recipe as recipe
from helpers import train_run as run
from helpers import weights
from training.sft.train import RRGDataCollator, parse_args

# Every test here trains (SFTTrainer runs on CPU, DDP subprocesses): minutes in all.
pytestmark = pytest.mark.slow


def test_stage1_trains_only_the_projector(workspace, tmp_path):
    final = run(recipe(workspace, tmp_path / "stage1"))
    after = weights(final)
    vision = load_file(str(workspace / "vision" / "model.safetensors"))
    text = load_file(str(workspace / "text" / "model.safetensors"))
    for key, value in vision.items():
        assert torch.equal(after[f"model.vision_tower.{key}"], value), key
    for key, value in text.items():
        target = f"model.language_model.{key.removeprefix('model.')}" if key.startswith("model.") else key
        got = after[target]
        if got.shape != value.shape:  # embeddings / head grew by the image token: old rows untouched
            got = got[: value.shape[0]]
        assert torch.equal(got, value), key
    summary = json.loads((final / "rrg_training.json").read_text())
    assert summary["stage"] == 1 and summary["mode"] == "projector"
    projector_params = sum(v.numel() for k, v in after.items() if "multi_modal_projector" in k)
    assert summary["trainable_parameters"] == projector_params
    assert summary["frozen_parameters"] > 10 * projector_params
    # The projector moved away from its initialisation: rebuild the untrained assembly with the run's seed.
    from transformers import set_seed

    from training.sft.model_setup import build_model_and_processor

    args, data_args, training_args, model_args = parse_args(["--config", str(tmp_path / "stage1.yaml")])
    set_seed(training_args.seed)
    initial, _, _ = build_model_and_processor(args, model_args)
    for name, value in initial.model.multi_modal_projector.state_dict().items():
        assert not torch.equal(value, after[f"model.multi_modal_projector.{name}"]), f"projector {name} did not train"


def test_stage2_lora_from_stage1_trains_adapters_and_projector_only(workspace, stage1, tmp_path):
    from peft import PeftModel

    from training.model_io import load_trained

    final = run(recipe(workspace, tmp_path / "stage2", stage=2, model_name_or_path=str(stage1), use_peft=True,
                       lora_r=4, lora_alpha=8, merge_adapter=True))
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in adapter) and any("multi_modal_projector" in k for k in adapter)
    assert not any("vision_tower" in k for k in adapter), "LoRA must never touch the vision tower"
    assert all(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k), "LoRA B stayed at its zero init"
    stage1_weights = weights(stage1 / "model")
    projector_keys = [k for k in adapter if "multi_modal_projector" in k]
    changed = [k for k in projector_keys
               if not torch.equal(adapter[k], stage1_weights[k.replace("base_model.model.", "").replace(
                   ".modules_to_save.default", "")])]
    assert changed, "the projector did not train in stage 2"

    # adapter -> merge -> reload: equal logits three ways
    peft_model, processor = load_trained(final, merge=False)
    assert isinstance(peft_model, PeftModel)
    merged_in_memory, _ = load_trained(final, merge=True)
    merged_folder, _ = load_trained(final.parent / "merged")
    from training.data.loaders import load_synthetic

    rows = load_synthetic(workspace / "data")["test"].select(range(4))
    batch = RRGDataCollator(processor, max_length=256)(list(rows))
    with torch.no_grad():
        a = peft_model(**batch).logits
        b = merged_in_memory(**batch).logits
        c = merged_folder(**batch).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b, c)
    # merged model: vision tower still identical to stage 1
    merged_weights = weights(final.parent / "merged")
    for key, value in stage1_weights.items():
        if key.startswith("model.vision_tower."):
            assert torch.equal(merged_weights[key], value), key


def test_stage2_lora_with_train_projector_false_keeps_the_projector(workspace, stage1, tmp_path):
    from training.model_io import load_trained

    final = run(recipe(workspace, tmp_path / "frozen_projector", stage=2, model_name_or_path=str(stage1),
                       use_peft=True, lora_r=4, lora_alpha=8, max_steps=2, train_projector=False))
    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert not any("multi_modal_projector" in k for k in adapter), "a frozen projector must not be saved"
    assert all(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k), "the LoRA did not train"
    merged, _ = load_trained(final)
    stage1_weights = weights(stage1 / "model")
    for name, value in merged.model.multi_modal_projector.state_dict().items():
        assert torch.equal(value, stage1_weights[f"model.multi_modal_projector.{name}"]), name
    with pytest.raises(ValueError, match="train_projector false leaves nothing to train"):
        run(recipe(workspace, tmp_path / "s1_frozen", stage=1, max_steps=1, train_projector=False))


def test_stage2_full_finetune_trains_llm_not_encoder(workspace, stage1, tmp_path):
    final = run(recipe(workspace, tmp_path / "full", stage=2, model_name_or_path=str(stage1), use_peft=False,
                       learning_rate=0.01))
    before, after = weights(stage1 / "model"), weights(final)
    llm_changed = [k for k in before if k.startswith("model.language_model.") and not torch.equal(before[k], after[k])]
    assert llm_changed
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.vision_tower."))
    assert json.loads((final / "rrg_training.json").read_text())["mode"] == "full"


def test_stage2_without_stage1_ablation_saves_its_base(workspace, tmp_path):
    from training.model_io import load_trained

    final = run(recipe(workspace, tmp_path / "ablation", stage=2, use_peft=True, lora_r=2, max_steps=2))
    base = tmp_path / "ablation" / "base"
    config = json.loads((final / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == base.resolve()
    assert json.loads((base / "rrg_training.json").read_text())["stage"] == 0
    # The adapter loads onto that base and changes it: the trained projector replaces the untrained one.
    merged, _ = load_trained(final)
    untrained, _ = load_trained(base)
    assert not torch.equal(merged.model.multi_modal_projector.linear_1.weight,
                           untrained.model.multi_modal_projector.linear_1.weight)


def test_feature_cache_gives_the_same_loss_as_the_encoder(workspace, stage1, tmp_path):
    from training.data.loaders import load_synthetic
    from training.model_io import load_trained
    from training.sft.feature_cache import FeatureCache

    model, processor = load_trained(stage1)
    rows = list(load_synthetic(workspace / "data")["train"].select(range(6)))
    cache = FeatureCache(tmp_path / "cache", model, processor)
    paths = [p for r in rows for p in r["image_path"]]
    assert cache.precompute(paths) == len(set(paths))
    assert cache.precompute(paths) == 0  # reused, not recomputed
    with torch.no_grad():
        plain = model(**RRGDataCollator(processor, max_length=256)(rows)).loss
        cached_batch = RRGDataCollator(processor, max_length=256, feature_cache=cache)(rows)
        assert "pixel_values" not in cached_batch and "image_features" in cached_batch
        cached = model(**cached_batch).loss
    torch.testing.assert_close(plain, cached)
    # a different encoder gets a different cache folder (no stale reuse)
    with torch.no_grad():
        model.model.vision_tower.embeddings.patch_embeddings.projection.weight.add_(1.0)
    assert FeatureCache(tmp_path / "cache", model, processor).dir != cache.dir


def test_feature_cache_is_shared_by_stage1_and_stage2(workspace, tmp_path):
    cache = tmp_path / "features"
    run(recipe(workspace, tmp_path / "c1", max_steps=1, feature_cache_dir=str(cache)))
    entries = {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")}
    assert len(entries) == 56  # 48 train + 8 validation images
    run(recipe(workspace, tmp_path / "c2", stage=2, model_name_or_path=str(tmp_path / "c1"), use_peft=True,
               max_steps=1, feature_cache_dir=str(cache)))
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")} == entries  # reused, none rewritten


def test_training_with_feature_cache_matches_training_without(workspace, stage1, tmp_path):
    common = dict(stage=2, model_name_or_path=str(stage1), use_peft=True, lora_r=2, max_steps=3, save_steps=100)
    a = run(recipe(workspace, tmp_path / "nocache", **common))
    b = run(recipe(workspace, tmp_path / "cache", feature_cache_dir=str(tmp_path / "fc"), **common))
    la = json.loads((a / "rrg_training.json").read_text())["train_loss"]
    lb = json.loads((b / "rrg_training.json").read_text())["train_loss"]
    assert la == pytest.approx(lb, rel=1e-4)


def test_interrupted_run_resumes_to_the_same_result(workspace, tmp_path, monkeypatch):
    import trl

    straight = run(recipe(workspace, tmp_path / "straight", max_steps=6, save_steps=3))

    calls = {"n": 0}
    original = trl.SFTTrainer.training_step

    def crash_after_three(self, *args, **kwargs):
        if calls["n"] == 4:  # steps 1-3 done and checkpoint-3 written
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", crash_after_three)
    interrupted = recipe(workspace, tmp_path / "resumed", max_steps=6, save_steps=3)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted)
    out = tmp_path / "resumed"
    assert (out / "checkpoint-3").is_dir()
    assert not (out / "model").exists(), "a crashed run must not leave a model folder that looks complete"
    stage2_on_crashed = recipe(workspace, tmp_path / "on-crashed", stage=2, model_name_or_path=str(out), use_peft=True)
    with pytest.raises(ValueError, match="did not finish"):
        run(stage2_on_crashed)
    monkeypatch.setattr(trl.SFTTrainer, "training_step", original)
    resumed = run(interrupted, "--resume_from_checkpoint", "last")
    a, b = weights(straight), weights(resumed)
    for key in a:
        if "multi_modal_projector" in key:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert json.loads((resumed / "rrg_training.json").read_text())["global_step"] == 6


def test_clear_errors_for_bad_recipes(workspace, tmp_path):
    bad = recipe(workspace, tmp_path / "bad", not_a_field=3)
    with pytest.raises(ValueError, match="not_a_field"):
        parse_args(["--config", str(bad)])
    missing = recipe(workspace, tmp_path / "s2", stage=2, model_name_or_path=str(tmp_path / "no-stage1"), use_peft=True)
    with pytest.raises(FileNotFoundError, match="stage 1's output folder"):
        run(missing)
    no_columns = tmp_path / "cols.jsonl"
    no_columns.write_text(json.dumps({"image": "x.png", "text": "a report", "split": "train"}) + "\n")
    bad_data = recipe(workspace, tmp_path / "cols", dataset_path=str(no_columns), dataset_format="hf",
                      split_column="split", eval_split=None)
    with pytest.raises((ValueError, FileNotFoundError), match="report"):
        run(bad_data)
    lora_in_stage1 = recipe(workspace, tmp_path / "l1", use_peft=True)
    with pytest.raises(ValueError, match="Stage 1 trains only the projector"):
        run(lora_in_stage1)


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_checkpointing_gives_the_same_training(workspace, stage1, tmp_path, stage):
    """The GPU recipes turn gradient checkpointing on; it must train exactly like the plain run."""
    common = dict(max_steps=2, save_steps=100, lora_dropout=0.0, use_peft=stage == 2, stage=stage)
    if stage == 2:
        common["model_name_or_path"] = str(stage1)
    plain = run(recipe(workspace, tmp_path / "plain", activation_checkpointing=False, **common))
    checkpointed = run(recipe(workspace, tmp_path / "ckpt", activation_checkpointing=True, **common))
    a, b = (json.loads((p / "rrg_training.json").read_text()) for p in (plain, checkpointed))
    assert (a["gradient_checkpointing"], b["gradient_checkpointing"]) == (False, True)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_checkpointing_field_is_read_under_the_installed_name(workspace, tmp_path):
    """Recipes may say gradient_checkpointing (before transformers 5.24) or activation_checkpointing (5.24+): both
    parse on every release without a deprecation warning, and mean the same."""
    import dataclasses
    import warnings

    from training.sft.train import _checkpointing_field_names

    old = recipe(workspace, tmp_path / "old", **{"gradient_checkpointing": True, "activation_checkpointing": None})
    new = recipe(workspace, tmp_path / "new", **{"activation_checkpointing": True})
    for path in (old, new):
        text = yaml.safe_load(path.read_text())
        text = {k: v for k, v in text.items() if v is not None}
        path.write_text(yaml.safe_dump(text))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            _, _, training_args, _ = parse_args(["--config", str(path)])
        assert training_args.activation_checkpointing is True
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, _, training_args, _ = parse_args(["--config", str(new), "--gradient_checkpointing", "false"])
    assert training_args.activation_checkpointing is False

    @dataclasses.dataclass
    class OldTrainingArguments:  # a release before 5.24: only the old names exist
        gradient_checkpointing: bool = False

    translated = _checkpointing_field_names(["--config", str(new), "--activation_checkpointing=true"], OldTrainingArguments)
    assert translated[2] == "--gradient_checkpointing=true"
    assert yaml.safe_load(Path(translated[1]).read_text())["gradient_checkpointing"] is True
