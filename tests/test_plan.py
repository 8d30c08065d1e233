"""`rrg plan`: parameter counts, FLOPs and the CLI, checked against real (scaled-down) models."""

import torch
import yaml

from training.sft.plan import (
    PlanInputs,
    build_meta_model,
    forward_flops,
    memory_per_gpu,
    parameter_counts,
    plan,
    stage_flops,
)

VISION = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64, "image_size": 32, "patch_size": 8, "num_channels": 3}
TEXT = {"model_type": "llama", "vocab_size": 100, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0}
STAGE2 = {"stage": 2, "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_mlp": True,
          "projector_type": "mlp2x_gelu", "max_views": 2}


def _real_counts(recipe):
    """Counted independently on a real CPU model trained the way `rrg train` sets it up."""

    from peft import get_peft_model

    from modeling_rrg import RRGConfig, RRGForConditionalGeneration
    from training.sft.model_setup import configure_trainable, lora_config
    from training.sft.train import RRGScriptArguments

    args = RRGScriptArguments(**{k: v for k, v in recipe.items() if k in RRGScriptArguments.__dataclass_fields__})
    model = RRGForConditionalGeneration(RRGConfig(vision_config=VISION, text_config=TEXT, image_token_id=99,
                                                  projector_type=args.projector_type or "linear",
                                                  max_views=args.max_views or 2))
    configure_trainable(model, args, recipe.get("use_peft", False))
    if recipe.get("use_peft"):
        from trl import ModelConfig

        model_args = ModelConfig(lora_r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], lora_dropout=0.0,
                                 use_peft=True)
        model = get_peft_model(model, lora_config(model, args, model_args))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)
    return {"trainable": trainable, "total": total, "lora": lora, "vision": vision}


def test_parameter_counts_match_a_real_model():
    for recipe in ({"stage": 1, "max_views": 2}, STAGE2):
        counts = parameter_counts(build_meta_model(VISION, TEXT, recipe))
        real = _real_counts(recipe)
        assert sum(c["trainable"] for c in counts.values()) == real["trainable"]
        assert sum(c["trainable"] + c["frozen"] for c in counts.values()) == real["total"]
        assert counts["vision_tower"]["frozen"] == real["vision"] and counts["vision_tower"]["trainable"] == 0
        if recipe["stage"] == 2:
            # LoRA r=4 on q,k,v,o,gate,up,down of 2 layers: r * (in + out) per projection, by hand.
            h, f, kv = 48, 96, 48 * 2 // 4
            per_layer = 4 * ((h + h) * 2 + (h + kv) * 2) + 4 * ((h + f) * 2 + (f + h))
            per_layer *= 2  # two layers
            assert counts["language_model"]["trainable"] == real["lora"] == per_layer
        else:
            assert counts["language_model"]["trainable"] == 0


def test_forward_flops_match_a_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_rrg import RRGConfig, RRGForConditionalGeneration

    for projector in ("linear", "mlp2x_gelu"):
        config = RRGConfig(vision_config=VISION, text_config=TEXT, image_token_id=99, projector_type=projector)
        config._attn_implementation = "eager"  # matmuls the counter sees (it does not count CPU SDPA kernels)
        config.vision_config._attn_implementation = "eager"
        config.text_config._attn_implementation = "eager"
        model = RRGForConditionalGeneration(config).eval()
        text_tokens = 11
        ids = torch.tensor([[1] + [99] * 32 + list(range(3, 3 + text_tokens - 1))])
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(input_ids=ids, pixel_values=torch.randn(1, 2, 3, 32, 32), num_views=torch.tensor([2]))
        counted = counter.get_total_flops() - 2 * (2 * 32 * 32)  # ViT pooler on 2 views (unused, not estimated)
        estimate = forward_flops(VISION, TEXT, views=2, visual_tokens=None, text_tokens=text_tokens,
                                 projector_type=projector)
        assert estimate["encoder"] + estimate["projector"] + estimate["llm"] == counted

    # The LM head at the labelled positions only (what rrg's training computes): backbone + head on those rows.
    labelled = 4
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        hidden = model.model(input_ids=ids, pixel_values=torch.randn(1, 2, 3, 32, 32),
                             num_views=torch.tensor([2])).last_hidden_state
        model.lm_head(hidden[0, -labelled:])
    counted = counter.get_total_flops() - 2 * (2 * 32 * 32)
    estimate = forward_flops(VISION, TEXT, views=2, visual_tokens=None, text_tokens=text_tokens,
                             projector_type=projector, head_tokens=labelled)
    assert estimate["encoder"] + estimate["projector"] + estimate["llm"] == counted


def test_stage_flops_and_memory_follow_the_recipe():
    fwd = {"encoder": 10.0, "projector": 1.0, "llm": 100.0}
    cached = stage_flops(fwd, 1, lora=False, gradient_checkpointing=False, cached_encoder=True)
    assert cached["hardware"] == 3.0 + 200.0  # frozen LLM: forward + input-gradient backward; no encoder
    assert stage_flops(fwd, 2, lora=False, gradient_checkpointing=True, cached_encoder=False)["hardware"] == \
        10.0 + 3.0 + 400.0
    counts = {"llm": {"trainable": 1000, "frozen": 9000}}
    zero2 = memory_per_gpu(counts, TEXT, 1, 10, True, zero_stage=2, num_gpus=4)
    zero3 = memory_per_gpu(counts, TEXT, 1, 10, True, zero_stage=3, num_gpus=4)
    assert zero2["weights"] == 20000 and zero3["weights"] == 5000
    assert zero2["optimizer"] == 1000 * 12 / 4


def test_plan_cli_on_the_paper_recipe(tmp_path, capsys):
    from training.cli import main

    assert main(["plan", "--config", "training/sft/recipes/paper_stage2.yaml", "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "stage 1" in out and "stage 2" in out and "LLaVA-1.5-7B" in out
    import json

    result = json.loads((tmp_path / "plan.json").read_text())
    stage2 = result["stages"]["2"]
    # OpenLLaMA-7B + ViT-B/16: 6.74 B LLM parameters (incl. LM head), 86 M encoder, LoRA r=16 on q,k,v,o of 32 layers.
    llm = stage2["parameters"]["language_model"]["frozen"] + stage2["parameters"]["lm_head"]["frozen"]
    assert 6.70e9 < llm < 6.76e9
    assert stage2["parameters"]["language_model"]["trainable"] == 32 * 4 * 16 * (4096 + 4096)
    assert 86e6 < stage2["parameters"]["vision_tower"]["frozen"] < 87e6
    assert stage2["lora_r"] == 16 and stage2["gradient_checkpointing"]


def test_plan_rejects_a_non_recipe(tmp_path):
    import pytest

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"learning_rate": 1e-4}))
    with pytest.raises(ValueError, match="not an rrg recipe"):
        plan(bad, PlanInputs())
