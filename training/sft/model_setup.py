"""The model a stage trains: where it starts from, what is frozen, its LoRA and quantization configs.

Every recipe field that shapes the model either takes effect here or raises an error saying why it cannot:
LoRA and quantization are built by trl (`get_peft_config` / `get_quantization_config`, so every `ModelConfig` field
they know is honoured) and only rrg's specifics are overridden: LoRA targets scoped to the LLM, the projector kept as
a trainable module, the encoder / projector / LM head kept unquantized.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..model_io import load_trained, resolve_model_dir
from . import distributed

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_TARGETS",
    "ARCHITECTURE_FIELDS",
    "lora_target_regex",
    "build_model_and_processor",
    "quantization_config",
    "configure_trainable",
    "lora_config",
    "count_parameters",
]

# Attention (and MLP) projection names per LLM family, used to build LoRA targets under `model.language_model`.
LORA_TARGETS = {
    "attention": {
        "gpt2": ["attn.c_attn", "attn.c_proj"],
        "default": ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    "mlp": {
        "gpt2": ["mlp.c_fc", "mlp.c_proj"],
        "default": ["gate_proj", "up_proj", "down_proj"],
    },
}
# Recipe fields that define the projector / visual tokens: applied when assembling from backbones, checked against
# the folder's config when a stage starts from a trained folder (a trained projector cannot change shape).
ARCHITECTURE_FIELDS = ("projector_type", "num_visual_tokens", "vision_feature_layer", "max_views")
# Built when assembling from backbones for fields the recipe leaves unset.
ARCHITECTURE_DEFAULTS = {"projector_type": "linear", "num_visual_tokens": None, "vision_feature_layer": -1,
                         "max_views": 2}
# Kept in full precision under QLoRA: only the LLM's linear layers are quantized.
UNQUANTIZED_MODULES = ["vision_tower", "multi_modal_projector", "lm_head"]
# rrg is a causal LM with image inputs; peft's other task types wrap models rrg is not.
SUPPORTED_LORA_TASK_TYPES = (None, "CAUSAL_LM")


def lora_target_regex(text_model_type: str | None = None, include_mlp: bool = False,
                      names: list[str] | str | None = None) -> str:
    """
    A peft `target_modules` regex matching only the LLM's modules (never the vision tower or the projector).

    Args:
        text_model_type (`str`, *optional*): The LLM's `model_type`, to pick its projection names (gpt2 differs).
        include_mlp (`bool`, *optional*): Also the MLP projections.
        names (`list[str]` or `str`, *optional*): Module names to target instead of the family's projections.
    """
    if names:
        names = [names] if isinstance(names, str) else list(names)
    else:
        family = "gpt2" if text_model_type == "gpt2" else "default"
        names = list(LORA_TARGETS["attention"][family]) + (LORA_TARGETS["mlp"][family] if include_mlp else [])
    alternatives = "|".join(re.escape(name) for name in names)
    return rf"^(?:.*\.)?model\.language_model\..*\.(?:{alternatives})$"


def _check_revision(model_args, what: str) -> None:
    revision = getattr(model_args, "model_revision", "main")
    if revision not in (None, "main"):
        raise ValueError(
            f"model_revision={revision!r} selects a Hub revision, but {what} is a local folder (it has no revisions); "
            "drop model_revision or point at a Hub id."
        )


def _resolve_backbone(name: str, revision: str | None) -> str:
    """A backbone path to load from: a local folder as is, a Hub id at `revision` as its local snapshot.

    Resolving the snapshot once means the weights, the tokenizer and the image processor all come from the same
    revision (the processor's loaders take no revision argument).
    """
    if Path(name).exists():
        if revision not in (None, "main"):
            raise ValueError(
                f"model_revision={revision!r} selects a Hub revision, but {name} is a local folder (it has no "
                "revisions); drop model_revision or use a Hub id."
            )
        return name
    if revision in (None, "main"):
        return name
    from huggingface_hub import snapshot_download

    return snapshot_download(name, revision=revision)


def _check_architecture(args, config, folder: Path) -> None:
    """Recipe fields that shape the projector must match the folder a stage starts from."""
    mismatched = []
    for name in ARCHITECTURE_FIELDS:
        wanted = getattr(args, name, None)
        if wanted is None:
            continue
        have = getattr(config, name, None)
        if wanted != have:
            mismatched.append(f"{name}={wanted!r} (the folder has {have!r})")
    if mismatched:
        raise ValueError(
            f"The recipe sets {', '.join(mismatched)}, but the stage starts from {folder}, whose projector was "
            "trained with the folder's values and cannot change shape. Drop these fields from the recipe (the "
            "folder's values are used), or start from the backbones (vision_model + text_model) to build a new "
            "projector."
        )


def _apply_prompt(args, processor) -> None:
    """Recipe fields that shape the prompt go into the processor, which is saved with the model and used to serve."""
    if args.instruction is not None and args.instruction != processor.instruction:
        logger.info("Instruction from the recipe: %r (was %r).", args.instruction, processor.instruction)
        processor.instruction = args.instruction


def build_model_and_processor(args, model_args, dtype=None):
    """
    The model a stage starts from: an rrg folder (`model_name_or_path`, e.g. stage 1's output, or a LoRA folder,
    merged) or, without one, the two pretrained backbones (`vision_model` + `text_model`).

    Returns:
        `(model, processor, base_models)`; the processor carries the recipe's prompt (`instruction`).
    """
    from modeling_rrg import RRGForConditionalGeneration, RRGProcessor

    quantization = quantization_config(model_args)
    if quantization is not None:
        _check_quantization_backend()
    attn_implementation = getattr(model_args, "attn_implementation", None)
    if model_args.model_name_or_path:
        source = Path(model_args.model_name_or_path)
        if not source.exists():
            raise FileNotFoundError(
                f"model_name_or_path={source} does not exist. For stage 2 point it at stage 1's output folder "
                "(e.g. outputs/demo/stage1), or drop it and set vision_model + text_model to start from the backbones."
            )
        _check_revision(model_args, f"model_name_or_path={source}")
        folder = resolve_model_dir(source)  # refuses a stage folder whose run did not finish
        if quantization is not None:
            model = RRGForConditionalGeneration.from_pretrained(folder, quantization_config=quantization, dtype=dtype)
            processor = RRGProcessor.from_pretrained(folder)
        else:
            model, processor = load_trained(folder, merge=True, dtype=dtype)
        _check_architecture(args, model.config, folder)
        base_models = {"init": str(folder.resolve())}
    else:
        if not (args.vision_model and args.text_model):
            raise ValueError(
                "Set model_name_or_path (an rrg folder, e.g. stage 1's output) or both vision_model and text_model."
            )
        revision = getattr(model_args, "model_revision", None)
        vision = _resolve_backbone(args.vision_model, revision)
        text = _resolve_backbone(args.text_model, revision)
        arch = {name: ARCHITECTURE_DEFAULTS[name] if getattr(args, name) is None else getattr(args, name)
                for name in ARCHITECTURE_FIELDS}
        processor = RRGProcessor.from_pretrained_backbones(vision, text, image_seq_length=1,
                                                           max_views=arch["max_views"])
        text_kwargs = {"quantization_config": quantization} if quantization is not None else {}
        model = RRGForConditionalGeneration.from_pretrained_backbones(
            vision, text, image_token_id=processor.image_token_id, vocab_size=len(processor.tokenizer), dtype=dtype,
            text_kwargs=text_kwargs, **arch,
        )
        processor.image_seq_length = model.config.image_seq_length
        tok = processor.tokenizer
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.bos_token_id = tok.bos_token_id
        model.config.get_text_config().pad_token_id = tok.pad_token_id
        base_models = {"vision": args.vision_model, "text": args.text_model}
        if revision not in (None, "main"):
            base_models["revision"] = revision
    if attn_implementation:
        # Public API; raises a ValueError naming the choices for an unknown or unavailable implementation.
        model.set_attn_implementation(attn_implementation)
    _apply_prompt(args, processor)
    model.train()
    return model, processor, base_models


def quantization_config(model_args):
    """trl's `get_quantization_config`, with the encoder, projector and LM head kept unquantized (QLoRA)."""
    from trl import get_quantization_config

    config = get_quantization_config(model_args)
    if config is not None:
        config.llm_int8_skip_modules = list(UNQUANTIZED_MODULES)
    return config


def _check_quantization_backend() -> None:
    if not torch.cuda.is_available():
        raise ValueError("QLoRA (load_in_4bit / load_in_8bit) needs a CUDA GPU; none is available here.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError("QLoRA needs bitsandbytes: pip install bitsandbytes") from err


def configure_trainable(model, args, use_peft: bool) -> None:
    """
    Freeze / unfreeze by module name for the stage.

    Stage 1: projector only. Stage 2 (and 3) LoRA: adapters on the LLM + projector (as `modules_to_save`). Stage 2
    (and 3) full: LLM + LM head + projector. `train_vision_tower` adds the encoder in any stage.
    """
    if args.stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3 (reinforcement learning, training/rl), got {args.stage}.")
    if args.stage == 1 and use_peft:
        raise ValueError("Stage 1 trains only the projector; set use_peft false (LoRA belongs to stage 2).")
    if args.stage == 1 and not args.train_projector:
        raise ValueError("Stage 1 trains only the projector; train_projector false leaves nothing to train.")
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(args.train_projector)
    if args.train_vision_tower:
        model.model.vision_tower.requires_grad_(True)
    if args.stage >= 2 and not use_peft:  # stage 3 trains what stage 2 trains
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)


def lora_config(model, args, model_args):
    """
    trl's `get_peft_config(model_args)` with rrg's specifics: `target_modules` scoped to the LLM (the family's
    projections, or `lora_target_modules`), and the projector (plus the encoder with `train_vision_tower`) added to
    `lora_modules_to_save`. `lora_target_parameters` must name LLM parameters only.
    """
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is None:
        return None
    task_type = getattr(config.task_type, "value", config.task_type)
    if task_type not in SUPPORTED_LORA_TASK_TYPES:
        raise ValueError(
            f"lora_task_type={task_type!r} is not supported: an rrg model is a causal LM with image inputs; use "
            "CAUSAL_LM (the default)."
        )
    config.target_modules = lora_target_regex(
        model.config.text_config.model_type, args.lora_mlp, names=model_args.lora_target_modules
    )
    own = (["multi_modal_projector"] if args.train_projector else []) + (
        ["vision_tower"] if args.train_vision_tower else [])
    config.modules_to_save = own + [m for m in (model_args.lora_modules_to_save or []) if m not in own]
    targets = getattr(config, "target_parameters", None)
    if targets:
        targets = [targets] if isinstance(targets, str) else list(targets)
        names = [name for name, _ in model.named_parameters()]
        for target in targets:
            hits = [n for n in names if n == target or n.endswith("." + target)]
            if not hits:
                raise ValueError(f"lora_target_parameters entry {target!r} matches no parameter of the model.")
            outside = [n for n in hits if ".language_model." not in f".{n}"]
            if outside:
                raise ValueError(
                    f"lora_target_parameters entry {target!r} also matches {outside[:3]} outside the LLM; rrg puts "
                    "LoRA on the LLM only. Give a longer, LLM-only name (e.g. 'language_model.layers.0.mlp.experts."
                    "gate_up_proj')."
                )
    return config


def count_parameters(model) -> dict:
    trainable = frozen = 0
    by_module = {}
    for name, param in model.named_parameters():
        n = distributed.num_parameters(param)  # ZeRO-3 partitions: the full count, not the shard
        if param.requires_grad:
            trainable += n
        else:
            frozen += n
        top = next((m for m in ("vision_tower", "multi_modal_projector", "language_model", "lm_head") if m in name),
                   "other")
        entry = by_module.setdefault(top, {"trainable": 0, "frozen": 0})
        entry["trainable" if param.requires_grad else "frozen"] += n
    return {"trainable_parameters": trainable, "frozen_parameters": frozen, "by_module": by_module}
