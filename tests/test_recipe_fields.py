"""Every recipe field takes effect or is a clear error; what shapes the prompt is saved with the model (train = serve)."""

import json

import pytest
import torch

from helpers import train_recipe, train_run
from training.sft.model_setup import UNQUANTIZED_MODULES, build_model_and_processor, lora_config, quantization_config
from training.sft.train import parse_args

INSTRUCTION = "Describe this chest X-ray in detail."


def _args(workspace, tmp_path, *extra, **fields):
    return parse_args(["--config", str(train_recipe(workspace, tmp_path / "run", **fields)), *extra])


@pytest.mark.slow
def test_recipe_instruction_is_saved_and_used_by_evaluate_and_the_pipeline(workspace, tmp_path):
    from transformers import pipeline

    from modeling_rrg import RRGProcessor
    from training.data.loaders import load_synthetic
    from training.evaluation.evaluator import generate_reports
    from training.model_io import load_trained

    final = train_run(train_recipe(workspace, tmp_path / "s1", max_steps=1, instruction=INSTRUCTION))
    assert RRGProcessor.from_pretrained(final).instruction == INSTRUCTION
    assert json.loads((final / "rrg_training.json").read_text())["recipe"]["rrg"]["instruction"] == INSTRUCTION

    model, processor = load_trained(final)
    row = load_synthetic(workspace / "data", splits=["test"])["test"][0]
    assert INSTRUCTION in processor.build_prompt(len(row["image_path"]))
    # evaluate's generation builds the saved prompt: identical to passing the instruction explicitly.
    plain = generate_reports(model, processor, [row], tmp_path / "a.jsonl", generation_kwargs={"max_new_tokens": 4})
    explicit = generate_reports(model, processor, [row], tmp_path / "b.jsonl", instruction=INSTRUCTION,
                                generation_kwargs={"max_new_tokens": 4})
    assert plain[0]["prediction"] == explicit[0]["prediction"]
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    assert INSTRUCTION in pipe.processor.build_prompt(1)


@pytest.mark.slow  # needs the stage1 training run
def test_stage2_instruction_overrides_the_folder_and_unset_keeps_it(workspace, stage1, tmp_path):
    args, _, _, model_args = _args(workspace, tmp_path, stage=2, model_name_or_path=str(stage1), use_peft=True,
                                instruction=INSTRUCTION)
    _, processor, _ = build_model_and_processor(args, model_args)
    assert processor.instruction == INSTRUCTION
    args, _, _, model_args = _args(workspace, tmp_path, stage=2, model_name_or_path=str(stage1), use_peft=True)
    _, processor, _ = build_model_and_processor(args, model_args)
    from modeling_rrg.processing_rrg import DEFAULT_INSTRUCTION

    assert processor.instruction == DEFAULT_INSTRUCTION


def test_attn_implementation_takes_effect(workspace, tmp_path):
    args, _, _, model_args = _args(workspace, tmp_path, attn_implementation="eager")
    model, _, _ = build_model_and_processor(args, model_args)
    assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "eager"
    args, _, _, model_args = _args(workspace, tmp_path, attn_implementation="not_an_attention")
    with pytest.raises((ValueError, ImportError), match="not_an_attention"):
        build_model_and_processor(args, model_args)


@pytest.mark.slow  # needs the stage1 training run
def test_model_revision_on_local_folders_is_an_error(workspace, stage1, tmp_path):
    args, _, _, model_args = _args(workspace, tmp_path, model_revision="v2")
    with pytest.raises(ValueError, match="model_revision='v2'.*local folder"):
        build_model_and_processor(args, model_args)
    args, _, _, model_args = _args(workspace, tmp_path, stage=2, model_name_or_path=str(stage1), model_revision="v2")
    with pytest.raises(ValueError, match="model_revision='v2'.*local folder"):
        build_model_and_processor(args, model_args)


def test_model_revision_of_a_hub_backbone_is_downloaded_at_that_revision(workspace, tmp_path, monkeypatch):
    import huggingface_hub

    asked = []

    def fake_snapshot(repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return str(workspace / ("vision" if "vision" in repo_id else "text"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    args, _, _, model_args = _args(workspace, tmp_path, vision_model="org/vision", text_model="org/text",
                                model_revision="v2")
    _, _, base_models = build_model_and_processor(args, model_args)
    assert sorted(asked) == [("org/text", "v2"), ("org/vision", "v2")]
    assert base_models == {"vision": "org/vision", "text": "org/text", "revision": "v2"}


@pytest.mark.slow  # needs the stage1 training run
@pytest.mark.parametrize(
    ("field", "value"),
    [("projector_type", "mlp2x_gelu"), ("num_visual_tokens", 2), ("vision_feature_layer", -2), ("max_views", 3)],
)
def test_projector_fields_that_differ_from_the_stage1_folder_are_errors(workspace, stage1, tmp_path, field, value):
    args, _, _, model_args = _args(workspace, tmp_path, stage=2, model_name_or_path=str(stage1), use_peft=True,
                                **{field: value})
    with pytest.raises(ValueError, match=f"{field}=.*cannot change shape"):
        build_model_and_processor(args, model_args)


@pytest.mark.slow  # needs the stage1 training run
def test_projector_fields_equal_to_the_folder_are_accepted(workspace, stage1, tmp_path):
    args, _, _, model_args = _args(workspace, tmp_path, stage=2, model_name_or_path=str(stage1), use_peft=True,
                                projector_type="linear", num_visual_tokens=4, vision_feature_layer=-1, max_views=2)
    model, _, _ = build_model_and_processor(args, model_args)
    assert model.config.num_visual_tokens == 4


def test_projector_fields_build_the_projector_from_backbones(workspace, tmp_path):
    args, _, _, model_args = _args(workspace, tmp_path, projector_type="mlp2x_gelu", vision_feature_layer=-2,
                                max_views=3)
    model, processor, _ = build_model_and_processor(args, model_args)
    assert (model.config.projector_type, model.config.vision_feature_layer) == ("mlp2x_gelu", -2)
    assert model.config.max_views == processor.max_views == 3


def test_lora_fields_reach_the_peft_config(workspace, tmp_path):
    args, _, _, model_args = _args(workspace, tmp_path, stage=2, use_peft=True, lora_modules_to_save=["lm_head"],
                                lora_target_modules=["q_proj"], lora_r=4, use_rslora=True)
    model, _, _ = build_model_and_processor(args, model_args)
    config = lora_config(model, args, model_args)
    assert config.modules_to_save == ["multi_modal_projector", "lm_head"]
    assert getattr(config.task_type, "value", config.task_type) == "CAUSAL_LM"
    assert (config.r, config.use_rslora) == (4, True)
    targeted = [n for n, _ in model.named_modules() if __import__("re").fullmatch(config.target_modules, n)]
    assert targeted and all(".language_model." in n and n.endswith("q_proj") for n in targeted)


def test_unsupported_lora_fields_are_clear_errors(workspace, tmp_path):
    args, _, _, model_args = _args(workspace, tmp_path, stage=2, use_peft=True, lora_task_type="SEQ_CLS")
    model, _, _ = build_model_and_processor(args, model_args)
    with pytest.raises(ValueError, match="lora_task_type='SEQ_CLS'"):
        lora_config(model, args, model_args)
    model_args.lora_task_type = "CAUSAL_LM"
    model_args.lora_target_parameters = ["not_a_parameter"]
    with pytest.raises(ValueError, match="matches no parameter"):
        lora_config(model, args, model_args)
    model_args.lora_target_parameters = ["weight"]  # matches the vision tower and projector too
    with pytest.raises(ValueError, match="outside the LLM"):
        lora_config(model, args, model_args)


def test_quantization_config_comes_from_trl_with_rrg_modules_unquantized(workspace, tmp_path):
    args, _, _, model_args = _args(workspace, tmp_path, load_in_4bit=True, bnb_4bit_quant_storage="uint8",
                                use_bnb_nested_quant=True)
    config = quantization_config(model_args)
    assert config.load_in_4bit and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_quant_storage == torch.uint8
    assert config.llm_int8_skip_modules == UNQUANTIZED_MODULES


def test_quantization_needs_a_gpu(workspace, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, _, _, model_args = _args(workspace, tmp_path, load_in_4bit=True)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        build_model_and_processor(args, model_args)
