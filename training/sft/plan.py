"""`rrg plan`: the cost of a GPU recipe on paper — parameters, FLOPs, memory per GPU and GPU-hours.

```bash
rrg plan --config training/sft/recipes/paper_stage2.yaml [--gpu a100] [--mfu 0.4] [--num-gpus 8] [--zero-stage 2]
```

The model is built from the backbones' configs on the meta device (no weights, no memory): OpenLLaMA-7B and
ViT-B/16 by default (their published `config.json` values are below, since this machine has no Hub access), or any
local `config.json` via `--vision-config` / `--text-config`. Parameter counts come from that model (with the recipe's
freezing and LoRA applied); FLOPs and memory from the standard transformer estimates spelled out in the functions
below. The same estimate applied to LLaVA-1.5-7B's published setup is printed next to its published cost, so a wrong
assumption shows up as a mismatch there.
"""

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["PlanInputs", "build_meta_model", "parameter_counts", "forward_flops", "stage_flops", "memory_per_gpu",
           "plan", "render", "main", "OPENLLAMA_7B", "VIT_B16", "GPUS", "LLAVA15_7B_PUBLISHED"]

# config.json of openlm-research/open_llama_7b and google/vit-base-patch16-224-in21k (the fields that size the model).
OPENLLAMA_7B = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                "max_position_embeddings": 2048, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
                "pad_token_id": 0}
VIT_B16 = {"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
           "intermediate_size": 3072, "image_size": 224, "patch_size": 16, "num_channels": 3}
# Dense bf16 tensor-core peak (FLOP/s) and memory per GPU (bytes).
GPUS = {"a100": {"name": "A100-SXM4-80GB", "peak_flops": 312e12, "memory": 80e9},
        "h100": {"name": "H100-SXM5-80GB", "peak_flops": 989e12, "memory": 80e9}}
# LLaVA-1.5-7B (Liu et al., 2023, "Improved Baselines with Visual Instruction Tuning"): CLIP ViT-L/14 at 336 px
# (576 tokens), Vicuna-7B, 558k pretraining samples (projector only, 1 epoch) and 665k instruction samples (full
# fine-tuning, 1 epoch), on 8 A100s: about 3.5 h and 10 h ("~1 day" in total with the 13B).
LLAVA15_7B_PUBLISHED = {"stage1_hours": 3.5, "stage2_hours": 10.0, "gpus": 8, "stage1_samples": 558_000,
                        "stage2_samples": 665_000, "visual_tokens": 576, "stage1_text_tokens": 60,
                        "stage2_text_tokens": 500}
CLIP_L14_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "num_hidden_layers": 24,
                "num_attention_heads": 16, "intermediate_size": 4096, "image_size": 336, "patch_size": 14}
MIMIC_CXR_TRAIN_STUDIES = 270_790  # R2Gen's MIMIC-CXR split (annotation.json, train)


@dataclass
class PlanInputs:
    """What the estimate assumes beyond the recipe (each printed with the result)."""

    num_gpus: int = 8
    gpu: str = "a100"
    mfu: float = 0.4  # fraction of peak a well-tuned bf16 run reaches; LLaVA's published cost is the sanity check
    zero_stage: int = 2
    train_samples: int = MIMIC_CXR_TRAIN_STUDIES
    views_per_study: float = 1.0  # R2Gen's MIMIC-CXR split has one image per study
    report_tokens: int = 100  # mean LLaMA tokens of a MIMIC-CXR findings section (about 60-70 words)
    prompt_tokens: int = 25  # BOS, instruction and "Report:" of the processor's template


# ------------------------------------------------------------------------------------------------ model
def build_meta_model(vision_config: dict, text_config: dict, recipe: dict):
    """The recipe's rrg model on the meta device, with its stage's freezing (and LoRA) applied."""
    import torch

    from modeling_rrg import RRGConfig, RRGForConditionalGeneration

    from .model_setup import ARCHITECTURE_DEFAULTS, ARCHITECTURE_FIELDS, configure_trainable, lora_config
    from .train import RRGScriptArguments

    fields = {k: v for k, v in recipe.items() if k in RRGScriptArguments.__dataclass_fields__}
    args = RRGScriptArguments(**fields)
    # As training does when it assembles from backbones: the recipe's value, else rrg's default.
    architecture = {name: getattr(args, name) if getattr(args, name) is not None else ARCHITECTURE_DEFAULTS[name]
                    for name in ARCHITECTURE_FIELDS}
    config = RRGConfig(vision_config=dict(vision_config), text_config=dict(text_config),
                       image_token_id=text_config["vocab_size"] - 1, **architecture)
    with torch.device("meta"):
        model = RRGForConditionalGeneration(config)
    use_peft = bool(recipe.get("use_peft", False))
    configure_trainable(model, args, use_peft)
    if args.stage == 2 and use_peft:
        from peft import get_peft_model
        from trl import ModelConfig

        # The recipe's LoRA fields, read as training reads them (trl's ModelConfig + rrg's lora_config).
        model_args = ModelConfig(**{k: v for k, v in recipe.items() if k in ModelConfig.__dataclass_fields__})
        model = get_peft_model(model, lora_config(model, args, model_args))
    return model


def parameter_counts(model) -> dict:
    """Trainable / frozen parameters per top-level module (LoRA weights count under `language_model`)."""
    modules = ("vision_tower", "multi_modal_projector", "language_model", "lm_head")
    counts = {m: {"trainable": 0, "frozen": 0} for m in modules}
    seen = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:  # tied weights count once
            continue
        seen.add(id(param))
        if ".original_module." in name:  # peft's modules_to_save keeps a frozen copy of the projector; not trained
            top = "multi_modal_projector"
        else:
            top = next((m for m in modules if m in name), None)
        if top is None:
            raise ValueError(f"Parameter {name} belongs to no known module; update parameter_counts.")
        counts[top]["trainable" if param.requires_grad else "frozen"] += param.numel()
    return counts


# ------------------------------------------------------------------------------------------------ FLOPs
def forward_flops(vision: dict, text: dict, views: float, visual_tokens: int | None, text_tokens: int,
                  projector_type: str = "linear", head_tokens: float | None = None) -> dict:
    """
    Forward FLOPs (2 per multiply-add) of one study: encoder, projector and LLM (with attention scores and LM head).
    The LM head is counted at every position, or at `head_tokens` positions when given (rrg's training scores it
    at the labelled positions only, `training/sft/fused_head.py`).

    Per transformer layer with `n` tokens, width `d` and MLP width `f`: `2n(4d^2 + k*d*f)` for the projections
    (`k` = 2 for a GELU MLP, 3 for LLaMA's gated MLP) plus `4n^2 d` for the attention scores and their product.
    """
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    n = patches + (1 if vision["model_type"] in ("vit", "clip_vision_model") else 0)  # CLS token
    d, f = vision["hidden_size"], vision["intermediate_size"]
    encoder = views * (vision["num_hidden_layers"] * (2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d)
                       + 2 * patches * 3 * vision["patch_size"] ** 2 * d)
    tokens = views * (visual_tokens or patches)
    h = text["hidden_size"]
    projector = 2 * tokens * (d * h + (h * h if projector_type == "mlp2x_gelu" else 0))
    s = round(tokens + text_tokens)
    kv = text.get("num_key_value_heads", text["num_attention_heads"]) / text["num_attention_heads"]
    layer = 2 * s * ((2 + 2 * kv) * h * h + 3 * h * text["intermediate_size"]) + 4 * s * s * h
    llm = text["num_hidden_layers"] * layer + 2 * (s if head_tokens is None else head_tokens) * h * text["vocab_size"]
    return {"encoder": encoder, "projector": projector, "llm": llm, "sequence_length": s}


def stage_flops(forward: dict, stage: int, lora: bool, gradient_checkpointing: bool, cached_encoder: bool,
                lora_fraction: float = 0.0) -> dict:
    """
    Training FLOPs of one study. A backward costs 2x the forward for trained weights (input and weight gradients)
    and 1x where only the input gradient is needed (a frozen LLM the gradient flows through); the frozen encoder has
    no backward (rrg runs it without autograd) and no forward at all with the feature cache. Gradient checkpointing
    re-runs the LLM's forward once.
    """
    encoder = 0.0 if cached_encoder else forward["encoder"]
    llm_backward = 2.0 if (stage == 2 and not lora) else 1.0 + 2.0 * lora_fraction
    llm = forward["llm"] * (1 + llm_backward + (1 if gradient_checkpointing else 0))
    projector = forward["projector"] * 3
    model_flops = encoder + projector + forward["llm"] * (1 + llm_backward)
    return {"hardware": encoder + projector + llm, "model": model_flops}


# ----------------------------------------------------------------------------------------------- memory
def memory_per_gpu(counts: dict, text: dict, batch: int, seq: int, gradient_checkpointing: bool, zero_stage: int,
                   num_gpus: int, bytes_per_param: int = 2) -> dict:
    """
    Bytes per GPU: weights (bf16; sharded under ZeRO-3), gradients of trainable weights (bf16; sharded from ZeRO-2),
    AdamW state (fp32 master copy + two moments = 12 bytes per trainable parameter; sharded from ZeRO-1) and
    activations (Korthikanti et al., 2022: `s*b*h*(34 + 5*a*s/h)` bytes per layer in 16 bit; with checkpointing only
    each layer's input is kept, plus one layer's full activations during its recompute). trl's fused LM head never
    materialises the `(batch, seq, vocab)` logits, so they are left out.
    """
    total = sum(c["trainable"] + c["frozen"] for c in counts.values())
    trainable = sum(c["trainable"] for c in counts.values())
    weights = total * bytes_per_param / (num_gpus if zero_stage >= 3 else 1)
    grads = trainable * bytes_per_param / (num_gpus if zero_stage >= 2 else 1)
    optimizer = trainable * 12 / (num_gpus if zero_stage >= 1 else 1)
    h, a, layers = text["hidden_size"], text["num_attention_heads"], text["num_hidden_layers"]
    per_layer = seq * batch * h * (34 + 5 * a * seq / h)
    activations = (layers * seq * batch * h * 2 + per_layer) if gradient_checkpointing else layers * per_layer
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations,
            "total": weights + grads + optimizer + activations}


# ------------------------------------------------------------------------------------------------- plan
def _load_recipe(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"No recipe at {path}.")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict) or "stage" not in recipe:
        raise ValueError(f"{path} is not an rrg recipe (a YAML mapping with a `stage` field).")
    return recipe


def _sibling_recipe(path: Path, recipe: dict, stage: int) -> dict | None:
    """The other stage's recipe next to this one (paper_stage1.yaml <-> paper_stage2.yaml), if there is one."""
    other = path.with_name(path.name.replace(f"stage{recipe['stage']}", f"stage{stage}"))
    return _load_recipe(other) if other != path and other.is_file() else None


def plan(recipe_path: str | Path, inputs: PlanInputs | None = None, vision_config: dict | None = None,
         text_config: dict | None = None) -> dict:
    """The estimate for a recipe (and its sibling stage's recipe when present) as a JSON-able dict."""
    inputs = inputs or PlanInputs()
    if inputs.gpu not in GPUS:
        raise ValueError(f"Unknown GPU {inputs.gpu!r}; choose one of {sorted(GPUS)}.")
    if not 0 < inputs.mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {inputs.mfu}.")
    recipe_path = Path(recipe_path)
    recipe = _load_recipe(recipe_path)
    vision, text = dict(vision_config or VIT_B16), dict(text_config or OPENLLAMA_7B)
    gpu = GPUS[inputs.gpu]
    recipes = {recipe["stage"]: recipe}
    for stage in (1, 2):
        if stage not in recipes:
            recipes[stage] = _sibling_recipe(recipe_path, recipe, stage) or {**recipe, "stage": stage,
                                                                               "use_peft": stage == 2}
    text_tokens = inputs.prompt_tokens + inputs.report_tokens
    stages = {}
    for stage, r in sorted(recipes.items()):
        model = build_meta_model(vision, text, r)
        counts = parameter_counts(model)
        lora = stage == 2 and bool(r.get("use_peft", False))
        llm_params = counts["language_model"]["frozen"] + counts["language_model"]["trainable"]
        fwd = forward_flops(vision, text, inputs.views_per_study, r.get("num_visual_tokens"), text_tokens,
                            r.get("projector_type", "linear"))
        cached = bool(r.get("feature_cache_dir")) and not r.get("train_vision_tower", False)
        # transformers 5.24 calls it activation_checkpointing; recipes written for older releases say gradient_
        gc = bool(r.get("activation_checkpointing", r.get("gradient_checkpointing", False)))
        flops = stage_flops(fwd, stage, lora, gc, cached,
                            lora_fraction=counts["language_model"]["trainable"] / max(llm_params, 1))
        batch = int(r.get("per_device_train_batch_size", 8))
        seq = min(fwd["sequence_length"], int(r.get("max_length") or fwd["sequence_length"]))
        memory = memory_per_gpu(counts, text, batch, seq, gc, inputs.zero_stage, inputs.num_gpus)
        epochs = float(r.get("num_train_epochs", 1))
        total = flops["hardware"] * inputs.train_samples * epochs
        wall_hours = total / (inputs.num_gpus * gpu["peak_flops"] * inputs.mfu) / 3600
        stages[stage] = {
            "recipe": str(recipe_path) if r is recipe else "(sibling recipe)" if r.get("output_dir") else "(assumed)",
            "parameters": counts, "lora_r": r.get("lora_r") if lora else None, "lora_mlp": r.get("lora_mlp") if lora
            else None, "precision": r.get("dtype", "float32") + (" autocast" if r.get("bf16") else ""),
            "gradient_checkpointing": gc, "feature_cache": cached, "batch_per_gpu": batch,
            "gradient_accumulation_steps": int(r.get("gradient_accumulation_steps", 1)), "sequence_length": seq,
            "epochs": epochs, "forward_flops": fwd, "train_flops_per_sample": flops, "memory_per_gpu": memory,
            "wall_hours": wall_hours, "gpu_hours": wall_hours * inputs.num_gpus,
        }
    return {"inputs": {**inputs.__dict__, "gpu_name": gpu["name"], "gpu_peak_flops": gpu["peak_flops"],
                       "gpu_memory": gpu["memory"]},
            "vision_config": vision, "text_config": text, "stages": stages,
            "llava15_sanity": _llava_sanity(inputs, gpu)}


def _llava_sanity(inputs: PlanInputs, gpu: dict) -> dict:
    """The same estimate on LLaVA-1.5-7B's published setup, next to its published cost."""
    p = LLAVA15_7B_PUBLISHED
    text = {**OPENLLAMA_7B}  # Vicuna-7B has LLaMA-7B's shape
    out = {}
    for stage, samples, text_tokens in ((1, p["stage1_samples"], p["stage1_text_tokens"]),
                                        (2, p["stage2_samples"], p["stage2_text_tokens"])):
        fwd = forward_flops(CLIP_L14_336, text, 1, None, text_tokens, "mlp2x_gelu")
        flops = stage_flops(fwd, stage, lora=False, gradient_checkpointing=True, cached_encoder=False)
        hours = flops["hardware"] * samples / (p["gpus"] * gpu["peak_flops"] * inputs.mfu) / 3600
        out[stage] = {"estimated_hours": hours, "published_hours": p[f"stage{stage}_hours"], "samples": samples,
                      "sequence_length": fwd["sequence_length"]}
    return out


def _fmt_count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,.0f}"


def render(result: dict) -> str:
    i = result["inputs"]
    lines = [f"rrg plan — {i['gpu_name']} x {i['num_gpus']}, ZeRO-{i['zero_stage']}, assumed MFU {i['mfu']:.0%} "
             f"of {i['gpu_peak_flops'] / 1e12:.0f} TFLOP/s bf16",
             f"data: {i['train_samples']:,} training studies (MIMIC-CXR, R2Gen split), {i['views_per_study']:g} view(s) "
             f"per study, {i['prompt_tokens']} prompt + {i['report_tokens']} report tokens", ""]
    for stage, s in result["stages"].items():
        lines.append(f"stage {stage}  ({s['recipe']})")
        for module, c in s["parameters"].items():
            lines.append(f"  {module:<22} trainable {_fmt_count(c['trainable']):>10}   frozen {_fmt_count(c['frozen']):>10}")
        f, fw = s["train_flops_per_sample"], s["forward_flops"]
        lines += [
            f"  LoRA rank {s['lora_r'] or '-'}, precision {s['precision']}, gradient checkpointing "
            f"{'on' if s['gradient_checkpointing'] else 'off'}, feature cache {'on' if s['feature_cache'] else 'off'}, "
            f"batch {s['batch_per_gpu']}/GPU x {s['gradient_accumulation_steps']} accumulation, sequence {s['sequence_length']}",
            f"  forward FLOPs/sample: encoder {fw['encoder'] / 1e9:.1f} G, projector {fw['projector'] / 1e9:.2f} G, "
            f"LLM {fw['llm'] / 1e12:.2f} T",
            f"  training FLOPs/sample: {f['hardware'] / 1e12:.2f} T executed ({f['model'] / 1e12:.2f} T without "
            "checkpointing recompute)",
            "  memory/GPU: " + ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in s["memory_per_gpu"].items())
            + f" (of {i['gpu_memory'] / 1e9:.0f} GB)",
            f"  {s['epochs']:g} epoch(s): {s['wall_hours']:.2f} h on {i['num_gpus']} GPUs = {s['gpu_hours']:.1f} GPU-hours",
            ""]
    lines.append("sanity check, same estimate on LLaVA-1.5-7B's published setup (8 x A100):")
    for stage, s in result["llava15_sanity"].items():
        lines.append(f"  stage {stage}: {s['samples']:,} samples x {s['sequence_length']} tokens -> estimated "
                     f"{s['estimated_hours']:.1f} h, published {s['published_hours']:.1f} h")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rrg plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="An rrg recipe (e.g. training/sft/recipes/paper_stage2.yaml).")
    parser.add_argument("--vision-config", help="A vision backbone's config.json (default: ViT-B/16's).")
    parser.add_argument("--text-config", help="A causal LM's config.json (default: OpenLLaMA-7B's).")
    defaults = PlanInputs()
    parser.add_argument("--gpu", default=defaults.gpu, choices=sorted(GPUS))
    parser.add_argument("--num-gpus", type=int, default=defaults.num_gpus)
    parser.add_argument("--mfu", type=float, default=defaults.mfu)
    parser.add_argument("--zero-stage", type=int, default=defaults.zero_stage, choices=(0, 1, 2, 3))
    parser.add_argument("--train-samples", type=int, default=defaults.train_samples)
    parser.add_argument("--views-per-study", type=float, default=defaults.views_per_study)
    parser.add_argument("--report-tokens", type=int, default=defaults.report_tokens)
    parser.add_argument("--json", help="Also write the estimate here.")
    args = parser.parse_args(argv)
    inputs = PlanInputs(num_gpus=args.num_gpus, gpu=args.gpu, mfu=args.mfu, zero_stage=args.zero_stage,
                        train_samples=args.train_samples, views_per_study=args.views_per_study,
                        report_tokens=args.report_tokens)
    vision = json.loads(Path(args.vision_config).read_text()) if args.vision_config else None
    text = json.loads(Path(args.text_config).read_text()) if args.text_config else None
    result = plan(args.config, inputs, vision, text)
    sys.stdout.write(render(result))
    if args.json:
        from ..fileio import write_json_atomic

        write_json_atomic(args.json, result)
    return 0
