"""Tiny, offline stand-ins of the real backbones: a BPE tokenizer trained on local text, tiny ViT / SigLIP / CLIP /
DINOv2 encoders and tiny LLaMA / Mistral / Qwen2 / GPT-2 language models, built from configs (no downloads).

They have the same shapes and code paths as the real ones (OpenLLaMA-7B, a ViT-class encoder), so tests and the
demo exercise exactly what a GPU user runs, only smaller.
"""

import logging
from collections.abc import Iterable
from pathlib import Path

from transformers import (
    CLIPVisionConfig,
    Dinov2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
    ViTConfig,
    ViTImageProcessor,
)

from modeling_rrg import RRGConfig, RRGForConditionalGeneration, RRGProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "SPECIAL_TOKENS",
    "train_bpe_tokenizer",
    "tiny_vision_config",
    "tiny_text_config",
    "tiny_image_processor",
    "build_tiny_model",
    "save_backbone",
]

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
IMAGE_TOKEN = "<image>"

_DEFAULT_CORPUS = [
    "Generate a comprehensive and detailed diagnosis report for this chest X-ray image.",
    "Report: FINDINGS: The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "IMPRESSION: No acute cardiopulmonary process. Indication: shortness of breath, cough, fever, chest pain.",
    "Moderate cardiomegaly. Small left pleural effusion. Right upper lobe consolidation. Endotracheal tube.",
]


def train_bpe_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512, image_token: str = IMAGE_TOKEN):
    """
    Train a byte-level BPE tokenizer offline and wrap it as a transformers fast tokenizer with BOS/EOS/PAD/UNK and
    the image token as special tokens.

    Args:
        texts (`Iterable[str]`, *optional*): Training text (e.g. the synthetic reports); a small built-in corpus
            of radiology phrases is always added so the prompt words are known.
        vocab_size (`int`, *optional*, defaults to 512): Target vocabulary size.
        image_token (`str`, *optional*): The image placeholder token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = list(_DEFAULT_CORPUS) + [t for t in (texts or []) if t]
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = [SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token", "unk_token")] + [image_token]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos_id = tokenizer.token_to_id(SPECIAL_TOKENS["bos_token"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS['bos_token']} $A",
        pair=f"{SPECIAL_TOKENS['bos_token']} $A $B",
        special_tokens=[(SPECIAL_TOKENS["bos_token"], bos_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=4096, padding_side="right", **SPECIAL_TOKENS
    )
    wrapped.add_special_tokens({"additional_special_tokens": [image_token]})
    return wrapped


def tiny_vision_config(kind: str = "vit", image_size: int = 32, patch_size: int = 8, hidden_size: int = 32,
                       num_layers: int = 2, num_heads: int = 2):
    """A tiny vision encoder config of the given family ("vit", "siglip", "clip", "dinov2")."""
    common = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  intermediate_size=hidden_size * 2, image_size=image_size, patch_size=patch_size)
    classes = {"vit": ViTConfig, "siglip": SiglipVisionConfig, "clip": CLIPVisionConfig, "dinov2": Dinov2Config}
    if kind == "dinov2":
        common["mlp_ratio"] = 2
    if kind in classes:
        return classes[kind](**common)
    raise ValueError(f"Unknown vision kind {kind!r}; use 'vit', 'siglip', 'clip' or 'dinov2'.")


def tiny_text_config(kind: str = "llama", vocab_size: int = 512, hidden_size: int = 32, num_layers: int = 2,
                     num_heads: int = 2, max_positions: int = 512, **extra):
    """A tiny causal LM config of the given family ("llama", "mistral", "qwen2", "gpt2")."""
    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                          n_positions=max_positions, bos_token_id=1, eos_token_id=2, **extra)
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, num_key_value_heads=num_heads, intermediate_size=hidden_size * 2,
                  max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)
    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    if kind in classes:
        return classes[kind](**common)
    raise ValueError(f"Unknown text kind {kind!r}; use 'llama', 'mistral', 'qwen2' or 'gpt2'.")


def tiny_image_processor(image_size: int = 32):
    """A ViT-style image processor resizing to `image_size` and normalising to [-1, 1]."""
    return ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                             image_std=[0.5] * 3, do_resize=True, do_rescale=True, do_normalize=True)


def build_tiny_model(
    tokenizer=None,
    vision_kind: str = "vit",
    text_kind: str = "llama",
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    vision_hidden_size: int | None = None,
    num_visual_tokens: int | None = None,
    projector_type: str = "linear",
    max_views: int = 2,
    seed: int = 0,
    **config_kwargs,
):
    """
    A randomly initialised tiny rrg model and its processor (tokenizer trained offline if not given).

    Returns:
        `(RRGForConditionalGeneration, RRGProcessor)`
    """
    import torch

    tokenizer = tokenizer if tokenizer is not None else train_bpe_tokenizer()
    vision = tiny_vision_config(vision_kind, image_size, patch_size, vision_hidden_size or hidden_size,
                                num_layers, num_heads)
    text = tiny_text_config(text_kind, vocab_size=len(tokenizer), hidden_size=hidden_size, num_layers=num_layers,
                            num_heads=num_heads)
    config = RRGConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        num_visual_tokens=num_visual_tokens,
        projector_type=projector_type,
        max_views=max_views,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = RRGForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    processor = RRGProcessor(
        image_processor=tiny_image_processor(image_size),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
        max_views=max_views,
    )
    return model, processor


def save_backbone(model, path: str | Path, tokenizer=None, image_processor=None) -> Path:
    """Save a standalone backbone (and its tokenizer / image processor) like a Hub checkpoint folder."""
    path = Path(path)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if image_processor is not None:
        image_processor.save_pretrained(path)
    return path

