"""Stage 3 (GRPO with clinical rewards, training/rl): rewards, prompt, learning, resume, outputs, KL reference,
DDP / FSDP2 / DeepSpeed ZeRO-2 and ZeRO-3 equal to one process, seeded sampling."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import train_recipe, train_run

ROOT = Path(__file__).resolve().parents[1]
REPORTS = [
    "The heart is enlarged. There is a small left pleural effusion. No pneumothorax.",
    "Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax.",
    "Possible right lower lobe consolidation. No effusion.",
    "Endotracheal tube in place. Mild pulmonary edema.",
]
PREDICTIONS = [
    "The heart is enlarged. No pleural effusion. No pneumothorax.",
    "Heart size is normal. Lungs are clear.",
    "Right lower lobe consolidation. Small left effusion.",
    "",
]


# ----------------------------------------------------------------------------------------------------------- rewards
def test_clinical_f1_is_the_ce_tables_example_f1():
    """Per report, clinical_f1 is the example-based CE-F1 of `rrg evaluate` (same labeler, same counts)."""
    from training.evaluation.labeler import RuleBasedLabeler
    from training.evaluation.metrics.clinical import ce_counts, ce_variants_from_counts
    from training.rl.rewards import ClinicalF1Reward

    labeler = RuleBasedLabeler()
    for policy in ("negative", "positive"):
        reward = ClinicalF1Reward(labeler=labeler, uncertain=policy, zero_division=0.0)
        scores = np.array(reward(prompts=[""] * 4, completions=PREDICTIONS, report=REPORTS))
        counts = ce_counts(labeler.label_batch(PREDICTIONS), labeler.label_batch(REPORTS))
        expected = ce_variants_from_counts(counts, "rule")[f"ce_rule_f1_example_14_uncertain_{policy}"]
        assert scores.mean() == pytest.approx(expected)
        tp, fp, fn = counts[policy].sum(axis=2).T
        denominator = 2 * tp + fp + fn
        assert np.allclose(scores, np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
    # A correct normal report (nothing positive on either side) earns full marks with the default zero_division.
    assert ClinicalF1Reward()(completions=["Lungs are clear."], report=["No acute findings."]) == [1.0]


def test_clinical_f1_negative_mentions_must_agree():
    from training.rl.rewards import ClinicalF1Reward

    both = ClinicalF1Reward(mentions=["positive", "negative"])
    positive = ClinicalF1Reward()
    pair = dict(completions=["No pneumothorax."], report=["There is a pneumothorax."])
    assert positive(**pair) == [0.0] and both(**pair) == [0.0]
    agree = dict(completions=["No pneumothorax."], report=["No pneumothorax is seen."])
    assert both(**agree) == [1.0]
    with pytest.raises(ValueError, match="subset"):
        ClinicalF1Reward(mentions=["typo"])


def test_rewards_are_the_registrys_per_report_scores():
    from training.evaluation.metrics.registry import per_report_scores
    from training.rl.rewards import BleuReward, ClinicalF1Reward, RougeLReward

    for reward, name in ((BleuReward(), "BLEU-4"), (BleuReward(order=2), "BLEU-2"), (RougeLReward(), "ROUGE-L"),
                         (ClinicalF1Reward(), "ce_rule_f1_example_14_uncertain_negative"),
                         (ClinicalF1Reward(uncertain="positive"), "ce_rule_f1_example_14_uncertain_positive")):
        scores = reward(prompts=[""] * 4, completions=PREDICTIONS, report=REPORTS)
        assert np.allclose(scores, per_report_scores(name, PREDICTIONS, REPORTS, zero_division=1.0)), name


def test_length_reward_and_composition():
    from training.rl.rewards import LengthReward, build_rewards

    reward = LengthReward(eos_token_ids=[2])
    out = reward(completions=["a b", "a b c d", "a b c d"], report=["a b c d"] * 3, completion_ids=[[5, 2], [5, 2], [5, 6]])
    assert out == [0.5, 1.0, 0.0]  # the last one never ended
    funcs = build_rewards(["clinical_f1", "bleu", "test_rl:favour_effusion"], {"bleu": {"order": 2}})
    assert [f.__name__ for f in funcs] == ["clinical_f1", "bleu", "favour_effusion"]
    assert funcs[1].order == 2
    with pytest.raises(ValueError, match="not in reward_funcs"):
        build_rewards(["bleu"], {"length": {}})
    with pytest.raises(ValueError, match="cannot import"):
        build_rewards(["nowhere.module:reward"])
    with pytest.raises(ValueError, match="RadGraph model folder"):
        build_rewards(["radgraph"], {"radgraph": {"radgraph_model": None}})


def test_null_reward_is_a_hash_of_the_completion_blind_to_the_reference():
    import hashlib

    from training.rl.grpo import RRGRewardArguments, reward_settings
    from training.rl.rewards import build_rewards

    (null,) = build_rewards(["null"], reward_settings(RRGRewardArguments(reward_funcs=["null"]), [2]))
    texts = ["Small left pleural effusion.", "No acute cardiopulmonary process.", "Small left pleural effusion."]
    out = null(completions=texts, report=["No acute process."] * 3)
    expected = [int(hashlib.sha256(t.encode()).hexdigest()[:16], 16) / 2**64 for t in texts]
    assert out == expected and out[0] == out[2] != out[1]
    assert null(completions=texts, report=texts) == out  # the reference changes nothing
    many = null(completions=[f"report {i}" for i in range(2000)], report=["x"] * 2000)
    assert all(0.0 <= v < 1.0 for v in many) and abs(sum(many) / len(many) - 0.5) < 0.03


# The words that say "pleural effusion" (and on which side and how large); FINDING: their tokens in the model's
# tokenizer, set by the learning test.
FINDING = {"tokens": set()}
EFFUSION_WORDS = (" effusion", " effusions", " pleural", " fluid", " left", " right", " small", " large")


def favour_effusion(prompts=None, completions=None, completion_ids=None, **kwargs):
    """A reward for the learning tests: how often a completion spells one of the effusion words, per completion token.
    Substrings, not whole words: a tiny random LM rarely puts a word between spaces, but its tokens spell the words
    often enough that most groups of samples differ in reward (a dense signal)."""
    words = [w.strip() for w in EFFUSION_WORDS]
    lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [len(c.split()) for c in completions]
    return [sum(c.lower().count(w) for w in words) / max(n, 1) for c, n in zip(completions, lengths, strict=True)]


# ------------------------------------------------------------------------------------------------------- training
def rl_recipe(workspace, out, stage2, **overrides):
    base = {
        "stage": 3, "dataset_path": str(workspace / "data"), "model_name_or_path": str(stage2), "output_dir": str(out),
        "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "max_steps": 4, "save_steps": 2,
        "per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 12, "temperature": 1.0,
        "learning_rate": 0.01, "logging_steps": 1, "bf16": False, "activation_checkpointing": False,
        "report_to": "none", "use_cpu": True, "eval_strategy": "no", "eval_split": None, "seed": 0, "data_seed": 0,
        "disable_tqdm": True, "save_only_model": False, "reward_funcs": ["clinical_f1", "bleu", "length"],
        "reward_weights": [1.0, 0.5, 0.2],
    }
    base.update(overrides)
    path = Path(out).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base))
    return path


def rl_run(path, *extra):
    from training.rl.grpo import parse_args, train

    return train(*parse_args(["--config", str(path), *extra]))


@pytest.fixture(scope="module")
def stage2(workspace, stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "stage2"
    return train_run(train_recipe(workspace, out, stage=2, model_name_or_path=str(stage1), use_peft=True, lora_r=4,
                                  lora_alpha=8, lora_dropout=0.0, max_steps=4, learning_rate=0.02)).parent


def adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_prompt_is_the_processors_training_prompt(workspace, stage2, tmp_path, monkeypatch):
    """What generate and the scored forward get: the collator's training prompt token for token, every view's image
    tokens, and the cached features (multi-view studies)."""
    from training.model_io import load_trained
    from training.rl import grpo
    from training.sft.feature_cache import FeatureCache
    from training.sft.train import RRGDataCollator

    seen = {}
    trainer_cls = grpo._grpo_trainer_class()
    original = trainer_cls._generate_single_turn

    def spy(self, prompt_ids, images, multimodal_fields, num_generations, *a, **k):
        seen.setdefault("prompt_ids", []).extend(prompt_ids)
        seen.setdefault("fields", []).append({k2: v.detach().cpu() for k2, v in multimodal_fields.items()})
        seen.setdefault("rows", []).extend(self._rrg_generation["study_ids"])
        return original(self, prompt_ids, images, multimodal_fields, num_generations, *a, **k)

    monkeypatch.setattr(trainer_cls, "_generate_single_turn", spy)
    # Every other study gets a second view (the same image again: what counts is two blocks of image tokens).
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(workspace / "data" / "images")
    annotation = json.loads((workspace / "data" / "annotation.json").read_text())
    for index, row in enumerate(annotation["train"]):
        row["image_path"] = row["image_path"][:1] * (1 + index % 2)
    (data / "annotation.json").write_text(json.dumps(annotation))
    cache_dir = tmp_path / "features"
    rl_run(rl_recipe(workspace, tmp_path / "s3", stage2, max_steps=2, dataset_path=str(data),
                     feature_cache_dir=str(cache_dir)))

    model, processor = load_trained(stage2)
    by_id = {r["id"]: r for r in annotation["train"]}
    training = RRGDataCollator(processor, feature_cache=FeatureCache(cache_dir, model, processor))
    studies = [{"image_path": [str(data / "images" / p) for p in by_id[i]["image_path"]],
                "report": by_id[i]["report"]} for i in seen["rows"]]
    assert {len(s["image_path"]) for s in studies} == {1, 2}  # multi-view studies are part of it
    batch = training(studies)
    for row, prompt in enumerate(seen["prompt_ids"]):
        ids = batch["input_ids"][row][batch["labels"][row] == -100][: len(prompt)]
        keep = batch["attention_mask"][row][batch["labels"][row] == -100][: len(prompt)].bool()
        assert ids[keep].tolist() == prompt  # the prompt part of the training sequence
        views = len(studies[row]["image_path"])
        assert prompt.count(processor.image_token_id) == views * processor.image_seq_length
    fed = [(f["image_features"][i], int(f["num_views"][i])) for f in seen["fields"] for i in range(len(f["num_views"]))]
    assert [n for _, n in fed] == batch["num_views"].tolist()
    for (features, n), expected in zip(fed, batch["image_features"], strict=True):
        assert torch.equal(features[:n], expected[:n])  # the cache's features of each view


@pytest.mark.slow
def test_reward_moves_the_model_towards_the_rewarded_finding(workspace, stage2, tmp_path):
    """GRPO with a reward for the finding's token raises how often samples say it; the same run rewarded for length
    only does not (the reward, not the training, moves the model)."""
    from training.data.images import load_image
    from training.evaluation.generation import generate_batch
    from training.model_io import load_trained

    _, processor = load_trained(stage2)
    FINDING["tokens"] = {processor.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in EFFUSION_WORDS}
    # Full fine-tuning: the tiny random LLM's logits are near zero and only its LM head can make one token likelier
    # within a few steps (a LoRA on attention barely moves them); the demo trains a LoRA.
    common = dict(max_steps=12, save_steps=100, learning_rate=0.02, max_completion_length=16, use_peft=False,
                  per_device_train_batch_size=32, num_generations=8)
    rewarded = rl_run(rl_recipe(workspace, tmp_path / "effusion", stage2, **common,
                                reward_funcs=["test_rl:favour_effusion"], reward_weights=[1.0]))
    control = rl_run(rl_recipe(workspace, tmp_path / "control", stage2, **common, reward_funcs=["length"],
                               reward_weights=[1.0]))
    rows = json.loads((workspace / "data" / "annotation.json").read_text())["val"]
    studies = [[load_image(workspace / "data" / "images" / p) for p in r["image_path"]] for r in rows]
    base, processor = load_trained(stage2)
    torch.manual_seed(0)
    contexts = generate_batch(base, processor, studies * 2, {"do_sample": True, "max_new_tokens": 16})

    def probability(folder):
        """Mean probability of the finding's tokens over the positions of fixed sampled reports (teacher-forced)."""
        model, _ = load_trained(folder)
        inputs = processor(images=studies * 2, padding_side="right")
        total, count = 0.0, 0
        with torch.no_grad():
            for row, context in enumerate(contexts):
                ids = torch.tensor([context["prompt_ids"] + context["report_ids"]])
                logits = model(input_ids=ids, pixel_values=inputs["pixel_values"][row : row + 1],
                               num_views=inputs["num_views"][row : row + 1]).logits[0]
                start = len(context["prompt_ids"]) - 1
                total += logits[start:-1].softmax(-1)[:, sorted(FINDING["tokens"])].sum().item()
                count += logits[start:-1].shape[0]
        return total / count

    before, after, without = probability(stage2), probability(rewarded), probability(control)
    print("P(finding tokens) before / rewarded / control:", before, after, without)
    # The rewarded run moves the finding's tokens well beyond where the same training with another reward drifts.
    assert after > 2 * max(before, without), (before, after, without)
    summary = json.loads((rewarded / "rrg_training.json").read_text())
    history = [row["rewards/favour_effusion/mean"] for row in summary["rewards"]["history"]]
    assert history[-1] > history[0]


@pytest.mark.slow
def test_outputs_and_resume_equal_a_straight_run(workspace, stage2, tmp_path, monkeypatch):
    """Checkpoints, rrg_run.json, model/ (loads through load_trained, over stage 2), rewards per step, samples;
    a run resumed from its mid-run checkpoint ends with the straight run's weights; the run guard refuses reuse."""
    from training.model_io import load_trained
    from training.rl import grpo

    straight = rl_run(rl_recipe(workspace, tmp_path / "straight", stage2))
    trainer_cls = grpo._grpo_trainer_class()
    calls = {"n": 0}
    original = trainer_cls.training_step

    def crash_after_two(self, *args, **kwargs):
        if calls["n"] == 2:  # steps 1-2 done and checkpoint-2 written
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_cls, "training_step", crash_after_two)
    path = rl_recipe(workspace, tmp_path / "resumed", stage2)
    with pytest.raises(KeyboardInterrupt):
        rl_run(path)
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir() and not (tmp_path / "resumed" / "model").exists()
    monkeypatch.setattr(trainer_cls, "training_step", original)
    resumed = rl_run(path, "--resume_from_checkpoint", "last")

    a, b = adapter_weights(straight.parent), adapter_weights(resumed.parent)
    assert a.keys() == b.keys() and any("lora" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    summary = json.loads((straight / "rrg_training.json").read_text())
    assert summary["stage"] == 3 and summary["global_step"] == 4 and summary["mode"] == "lora"
    assert [r["step"] for r in summary["rewards"]["history"]] == [1, 2, 3, 4]
    assert {"rewards/clinical_f1/mean", "rewards/bleu/mean", "rewards/length/mean"} <= set(summary["rewards"]["history"][0])
    samples = [json.loads(line) for line in (straight.parent / "samples.jsonl").read_text().splitlines()]
    assert samples and set(samples[0]["rewards"]) == {"clinical_f1", "bleu", "length"}
    assert json.loads((straight.parent / "rrg_run.json").read_text())["status"] == "finished"
    model, _ = load_trained(straight)  # stage 3's adapter over stage 2's adapter over stage 1
    assert model is not None
    with pytest.raises(ValueError, match="finished"):
        rl_run(rl_recipe(workspace, tmp_path / "straight", stage2))


def test_rrg_train_dispatches_stage_3(tmp_path):
    from training.sft.train import requested_stage

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: 3\n")
    assert requested_stage(["--config", str(recipe)]) == 3
    assert requested_stage(["--config", str(recipe), "--stage", "2"]) == 2
    assert requested_stage(["--stage=3"]) == 3
    assert requested_stage([]) is None


def logged(folder, key):
    """`key` at each logged step of a run (its last checkpoint's trainer_state.json), by step."""
    (checkpoint,) = sorted(Path(folder).glob("checkpoint-*"))[-1:]
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {row["step"]: row[key] for row in history if key in row}


@pytest.mark.slow
def test_kl_reference_of_full_fine_tuning_is_the_starting_weights(workspace, stage2, tmp_path):
    """beta > 0 without LoRA: trl's reference model is the merged stage 2 the run starts from, so the KL of the first
    step (policy = start) is 0. trl alone would load the folder the merged config names: stage 1, the adapter's base."""
    assert (stage2 / "model" / "adapter_config.json").exists()  # the case where the two differ
    out = rl_run(rl_recipe(workspace, tmp_path / "kl", stage2, use_peft=False, beta=0.1, max_steps=2, save_steps=100,
                           learning_rate=1e-3))
    kl = logged(out.parent, "kl")
    assert kl[1] == 0.0 and kl[2] > 0.0, kl


# Two processes x 4 rows against one process x 8 rows (the same global batch), launched as the README does
# (tests/helpers.py `launch`). Full fine-tuning, so two steps move every weight, with a KL term (trl's reference model,
# a copy of the starting weights, prepared under the backend) and a dense reward (see the learning test); and a LoRA
# with the KL to the adapter-disabled model. Seeded generation samples each study's completions the same whatever the
# batch, and trl gathers the rewards. A rank training alone on its half is ~2e-3 (full) / ~2e-2 (LoRA) away.
MULTI = dict(max_steps=2, save_steps=100, use_cpu=False, num_generations=4, reward_funcs=["test_rl:favour_effusion"],
             reward_weights=[1.0], max_completion_length=16, beta=0.1)
MULTI_RUNS = {"full": dict(use_peft=False, learning_rate=1e-3), "lora": dict(use_peft=True, learning_rate=1e-2)}


@pytest.fixture(scope="module")
def one_process(workspace, stage2, tmp_path_factory):
    root = tmp_path_factory.mktemp("one-process")
    return {name: rl_run(rl_recipe(workspace, root / name, stage2, per_device_train_batch_size=8, **MULTI, **run))
            for name, run in MULTI_RUNS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"])
def test_two_processes_equal_one_process(workspace, stage2, one_process, tmp_path, backend):
    """DDP, FSDP2, ZeRO-2 and ZeRO-3 train stage 3 to the one-process weights (within 1e-5) and log its KL."""
    from safetensors.torch import load_file

    from helpers import launch
    from training.model_io import load_trained

    start = dict(load_trained(stage2)[0].state_dict())
    for name, run in MULTI_RUNS.items():
        launch(backend, rl_recipe(workspace, tmp_path / name, stage2, per_device_train_batch_size=4, **MULTI, **run),
               tests_importable=True)
        folder = tmp_path / name / "model"
        summary = json.loads((folder / "rrg_training.json").read_text())
        assert (summary["distributed"], summary["world_size"], summary["global_step"]) == (backend, 2, 2), name
        file = "adapter_model.safetensors" if name == "lora" else "model.safetensors"
        expected, actual = load_file(str(one_process[name] / file)), load_file(str(folder / file))
        assert expected.keys() == actual.keys()
        if name == "full":  # training moved the weights
            assert any(not torch.allclose(expected[k], start[k], atol=1e-4) for k in expected if k in start)
        else:  # the LoRA's B matrices start at zero
            assert any(t.abs().max() > 1e-3 for k, t in expected.items() if "lora_B" in k)
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=0,
                                       msg=lambda m, k=key, n=name: f"{n} {k}: {m}")
        kl, kl_expected = logged(tmp_path / name, "kl"), logged(one_process[name].parent, "kl")
        assert kl_expected[1] == 0.0 and kl_expected[2] > 0.0, kl_expected
        assert kl == pytest.approx(kl_expected, rel=1e-3, abs=1e-9), (name, kl, kl_expected)


def test_radgraph_reward_is_the_registry_radgraph_score(tmp_path):
    """The radgraph reward of each completion is the registry's per-report RadGraph-F1 (model type from the folder)."""
    if importlib.util.find_spec("radeval") is None:  # not imported: radeval/__init__ runs nltk.download
        pytest.skip("RadEval's vendored radgraph (pip install --no-deps radeval==2.2.1)")
    from training.evaluation.metrics.registry import per_report_scores
    from training.rl.rewards import build_rewards
    from training.sandbox.tiny_scorers import save_tiny_radgraph

    references = ["Small left pleural effusion. The heart is normal in size.",
                  "Mild cardiomegaly with small bilateral pleural effusions.", "No pneumothorax."]
    completions = ["Small left pleural effusion.", "Heart size normal. Lungs are clear.", "No pneumothorax."]
    model_dir, encoder_dir = save_tiny_radgraph(tmp_path / "released", references + completions)
    (reward,) = build_rewards(["radgraph"], {"radgraph": {"radgraph_model": str(model_dir),
                                                          "radgraph_encoder": str(encoder_dir)}})
    scores = reward(completions=completions, report=references)
    expected = per_report_scores("RadGraph-F1-partial/radgraph", completions, references,
                                 radgraph_model=str(model_dir), radgraph_encoder=str(encoder_dir))
    assert scores == pytest.approx(list(expected), abs=1e-9)
    assert reward.metric == "RadGraph-F1-partial/radgraph"


# ------------------------------------------------------------------------------------------------ seeded sampling
def _seeded_rows_alone_and_batched(model, processor, studies, texts, num_generations, config):
    """Completion ids of every (study, generation) row generated in one left-padded batch, and alone."""
    from training.rl.grpo import _generation_seeds, seeded_generate

    ids = [i for i in range(len(studies)) for _ in range(num_generations)]
    seeds = _generation_seeds(0, 3, [f"study-{i}" for i in ids], num_generations)
    batch = processor(images=[studies[i] for i in ids], text=[texts[i] for i in ids], padding_side="left")
    assert (batch["attention_mask"][:, 0] == 0).any(), "test needs different prompt lengths"
    together = seeded_generate(model, generation_config=config, seeds=seeds, **batch)[:, batch["input_ids"].shape[1]:]
    alone = []
    for row, i in enumerate(ids):
        single = processor(images=[studies[i]], text=[texts[i]])
        out = seeded_generate(model, generation_config=config, seeds=seeds[row : row + 1], **single)
        alone.append(out[0, single["input_ids"].shape[1]:])
    return together, alone


def test_batched_seeded_sampling_equals_each_study_sampled_alone(tokenizer, monkeypatch):
    """One batched generate with per-row generators samples, for every study's completions, the token ids that
    sampling that study alone does (prompts of different lengths, left padded; temperature, top-k and top-p applied;
    rows ending early; uniforms drawn in several blocks); the check fails when the rows share one generator."""
    from transformers import GenerationConfig

    from helpers import xray
    from training.rl import grpo
    from training.sandbox.tiny import build_tiny_model

    model, processor = build_tiny_model(tokenizer=tokenizer, seed=1)
    model.eval()
    studies = [[xray(5), xray(6)], [xray(7)], [xray(8)]]
    texts = [processor.build_prompt(len(s)) for s in studies]
    config = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=50, top_p=0.95,
                              pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=None)
    together, alone = _seeded_rows_alone_and_batched(model, processor, studies, texts, 2, config)
    for row, single in enumerate(alone):
        assert torch.equal(together[row], single), f"row {row} differs when batched"
    assert len({tuple(r.tolist()) for r in together}) == len(together), "rows must sample different completions"

    # An EOS that some rows sample early: they end (then padding) while the batch goes on; up to their EOS they
    # are what they are alone.
    eos = int(together[0, 2])
    config.eos_token_id = eos
    together, alone = _seeded_rows_alone_and_batched(model, processor, studies, texts, 2, config)

    def upto_eos(row):
        hits = (row == eos).nonzero()
        return row[: int(hits[0]) + 1 if len(hits) else len(row)].tolist()

    assert any(len(upto_eos(r)) < 10 for r in together), "test needs rows ending early"
    for row, single in enumerate(alone):
        assert upto_eos(together[row]) == upto_eos(single), f"row {row} differs when batched (with EOS)"
    config.eos_token_id = None

    # Without max_new_tokens the rows draw their uniforms in blocks of SeededSampler.BLOCK (3 here: several blocks
    # per generate). max_length: the batch (padded to its longest prompt) generates 10 tokens, a shorter prompt alone
    # more; the first 10 are the same.
    monkeypatch.setattr(grpo.seeded_sampler_class(), "BLOCK", 3)
    longest = max(len(processor(images=[s], text=[t])["input_ids"][0]) for s, t in zip(studies, texts, strict=True))
    by_length = GenerationConfig(max_length=longest + 10, do_sample=True, temperature=1.3, top_k=50, top_p=0.95,
                                 pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=None)
    together, alone = _seeded_rows_alone_and_batched(model, processor, studies, texts, 2, by_length)
    assert together.shape[1] == 10 and any(len(a) > 10 for a in alone)
    for row, single in enumerate(alone):
        assert torch.equal(together[row], single[:10]), f"row {row} differs when batched (blocks of 3 uniforms)"

    shared = torch.Generator().manual_seed(0)
    monkeypatch.setattr(grpo, "_row_generators", lambda seeds, device: [shared] * len(seeds))
    together, alone = _seeded_rows_alone_and_batched(model, processor, studies, texts, 2, config)
    assert any(not torch.equal(t, a) for t, a in zip(together, alone))


def test_generation_seeds_follow_the_study_and_its_group_index():
    from training.rl.grpo import _generation_seeds

    one = _generation_seeds(0, 1, ["a", "a", "b", "b"], 2)
    assert len(set(one)) == 4
    # process 1 of 2 holds rows 2-3 of the same batch: the same seeds
    assert _generation_seeds(0, 1, ["b", "b"], 2, offset=2) == one[2:]
    assert _generation_seeds(0, 1, ["b", "b", "a", "a"], 2) == one[2:] + one[:2]  # study order does not matter
    with pytest.raises(ValueError, match="side by side"):
        _generation_seeds(0, 1, ["a", "b", "b", "a"], 2)


def test_seeded_sampler_picks_by_inverse_cdf_and_never_a_zero_probability_token():
    """u in [0, 1) picks the first token whose cumulative probability exceeds u * total; u * total reaching total
    (rounding) picks the last token of nonzero probability, not the masked tail."""
    from training.rl.grpo import seeded_sampler_class

    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0, float("-inf"), float("-inf")]])  # probabilities 1/4 x 4, then 0, 0
    for u, token in ((0.0, 0), (0.24, 0), (0.26, 1), (0.74, 2), (0.76, 3), (1.0, 3)):
        sampler = seeded_sampler_class()([torch.Generator()])
        sampler.uniforms = torch.tensor([[u]], dtype=torch.float64)  # the row's uniform of step 0
        out = sampler(torch.zeros(1, 5, dtype=torch.long), scores.clone())
        assert out[0].argmax().item() == token and out[0].isfinite().sum() == 1, (u, out)
