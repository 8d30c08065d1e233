"""`rrg evaluate`: generation to predictions.jsonl with resume, metrics.json / metrics.md; the CLI and recipes."""

import json

import pytest

from training.arguments import GenerationArguments, ScoringArguments
from training.evaluation.evaluator import evaluate, generate_reports, read_predictions

NO_METEOR = ScoringArguments(meteor=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from training.sandbox.synthetic import generate_synthetic_dataset
    from training.sandbox.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("eval")
    data = generate_synthetic_dataset(root / "data", num_train=4, num_val=2, num_test=10, image_size=32, seed=1)
    model, processor = build_tiny_model(seed=3)
    model.eval()
    return root, data, model, processor


def _rows(data):
    from training.data.loaders import load_synthetic

    return list(load_synthetic(data)["test"])


def test_resumed_evaluation_equals_uninterrupted(setup, tmp_path, monkeypatch):
    root, data, model, processor = setup
    gen = GenerationArguments(max_new_tokens=8, min_new_tokens=8, batch_size=3)
    full = evaluate(None, data, gen, NO_METEOR, output_dir=tmp_path / "full", model=model, processor=processor)

    calls = {"n": 0}
    generate = model.generate

    def dies_on_third_call(**kwargs):  # as a killed run would
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return generate(**kwargs)

    part = tmp_path / "part"
    monkeypatch.setattr(model, "generate", dies_on_third_call)
    with pytest.raises(KeyboardInterrupt):
        evaluate(None, data, gen, NO_METEOR, output_dir=part, model=model, processor=processor)
    monkeypatch.undo()
    written = read_predictions(part / "predictions.jsonl")
    assert len(written) == 6
    with open(part / "predictions.jsonl", "a") as handle:  # a write cut in the middle of a line
        handle.write('{"id": "test_0000')
    resumed = evaluate(None, data, gen, NO_METEOR, output_dir=part, model=model, processor=processor)
    a = [json.loads(x) for x in (tmp_path / "full" / "predictions.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (part / "predictions.jsonl").read_text().splitlines()]
    assert a == b
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert full[key] == resumed[key]
    assert full["clinical_efficacy"] == resumed["clinical_efficacy"]


def test_metrics_files_say_what_was_computed(setup, tmp_path):
    root, data, model, processor = setup
    evaluate(None, data, GenerationArguments(max_new_tokens=6, batch_size=5), NO_METEOR, output_dir=tmp_path,
             model=model, processor=processor)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["clinical_efficacy"]["labeler"] == "rrg-rule-based-v1"
    assert metrics["num_samples"] == 10 and metrics["split"] == "test"
    assert metrics["generation"]["max_new_tokens"] == 6 and metrics["generation"]["num_beams"] == 1
    assert "r2gen" in metrics["tokenization"] and metrics["nlg_text_cleaning"] == "mimic"
    table = (tmp_path / "metrics.md").read_text()
    assert "BLEU-4" in table and "Pleural Effusion" in table and "rrg-rule-based-v1" in table


def test_shuffled_images_pair_studies_with_other_images(setup, tmp_path):
    root, data, model, processor = setup
    rows = _rows(data)
    preds = generate_reports(model, processor, rows, tmp_path / "p.jsonl", batch_size=5,
                             generation_kwargs={"max_new_tokens": 2}, shuffle_images_seed=0)
    moved = sum(p["image_path"] != r["image_path"] for p, r in zip(preds, rows))
    assert moved >= len(rows) // 2
    assert sorted(tuple(p["image_path"]) for p in preds) == sorted(tuple(r["image_path"]) for r in rows)


def test_cli_lists_commands_and_dispatches(capsys):
    from training.cli import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("name", ["demo_stage1", "demo_stage2", "paper_stage1", "paper_stage2"])
def test_shipped_recipes_parse(name):
    from training.sandbox.demo import RECIPES
    from training.sft.train import parse_args

    # GPU recipes are validated on CPU with bf16 switched off (TrainingArguments refuses bf16 without a GPU).
    cpu = ["--bf16", "false", "--use_cpu", "true"] if name.startswith("paper") else []
    args, data_args, training_args, model_args = parse_args(["--config", str(RECIPES / f"{name}.yaml"),
                                                  "--output_dir", "/tmp/unused", *cpu])
    assert args.stage == (1 if "stage1" in name else 2)
    if args.stage == 2:
        assert model_args.use_peft
    if name.startswith("paper"):
        assert model_args.dtype == "bfloat16" and training_args.activation_checkpointing
        if args.stage == 1:
            assert args.text_model == "openlm-research/open_llama_7b"
        else:
            assert model_args.model_name_or_path == "outputs/paper/stage1"


def test_evaluate_cli_on_a_saved_adapter_folder_with_beam_search_and_bertscore(setup, tmp_path):
    """The command as a user runs it: a LoRA folder (merged on load), beam search, a local BERTScore model."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    from training.model_io import COMPLETE_MARKER
    from training.sft.model_setup import lora_target_regex

    root, data, model, processor = setup
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    (base / COMPLETE_MARKER).write_text(json.dumps({"stage": 1}))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=lora_target_regex("llama"),
                                                  modules_to_save=["multi_modal_projector"]))
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    peft_model.unload()
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(bert)
    processor.tokenizer.save_pretrained(bert)

    from training.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(adapter), "--data", str(data), "--output-dir", str(out),
                 "--num-beams", "2", "--max-new-tokens", "6", "--repetition-penalty", "1.2", "--no-meteor",
                 "--bertscore-model", str(bert), "--max-samples", "4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["generation"]["num_beams"] == 2 and metrics["generation"]["repetition_penalty"] == 1.2
    assert metrics["num_samples"] == 4 and 0.0 <= metrics["BERTScore-F1"] <= 1.0
    assert "METEOR" not in metrics
    # named CE variants, intervals for every metric, the reference protocol, and metrics.md laying them out
    assert metrics["ce_rule_f1_micro_14_uncertain_negative"] == metrics["clinical_efficacy"]["f1_micro_14"]
    assert {"BLEU-4", "CIDEr", "BERTScore-F1", "ce_rule_f1_micro_5_uncertain_positive"} <= set(
        metrics["confidence_intervals"])
    assert metrics["reference_truncation"].startswith("none")
    assert "Clinical efficacy variants" in (out / "metrics.md").read_text()
