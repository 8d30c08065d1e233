# Copyright 2026 The rrg authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Configuration of rrg, the radiology report generation model (vision encoder -> projector -> causal LLM)."""

from transformers import AutoConfig, PretrainedConfig
from transformers.utils import logging


logger = logging.get_logger(__name__)

__all__ = ["RRGConfig", "PROJECTOR_TYPES", "FEATURE_SELECT_STRATEGIES"]

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
FEATURE_SELECT_STRATEGIES = ("patch", "full")
# `AutoModelForMultimodalLM` (transformers 5.25+, what the Hub's generated snippets load image-text-to-text models
# with) is named whichever transformers writes the config: the map is plain strings, and a transformers without that
# class never looks the name up, so an export made on 5.0 still loads through it on 5.25.
DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_rrg.RRGConfig",
    "AutoModel": "modeling_rrg.RRGModel",
    "AutoModelForImageTextToText": "modeling_rrg.RRGForConditionalGeneration",
    "AutoModelForMultimodalLM": "modeling_rrg.RRGForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_rrg.RRGForConditionalGeneration",
}


def _as_config(value, default_model_type: str, name: str) -> PretrainedConfig:
    """Turn a dict / config / None into a config object of a model type the Auto classes know."""
    if value is None:
        logger.info("`%s` is None: using a default `%s` config.", name, default_model_type)
        return AutoConfig.for_model(default_model_type)
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", None) or default_model_type
        try:
            return AutoConfig.for_model(model_type, **value)
        except ValueError as err:
            raise ValueError(
                f"`{name}` has model_type={model_type!r}, which the installed transformers does not know. "
                "Use a model type registered with AutoConfig (e.g. 'vit', 'clip_vision_model', "
                "'siglip_vision_model', 'dinov2' for vision; 'llama', 'mistral', 'qwen2', 'gpt2' for text)."
            ) from err
    raise TypeError(f"`{name}` must be a dict, a PretrainedConfig or None, got {type(value).__name__}.")


class RRGConfig(PretrainedConfig):
    r"""
    Configuration of an [`RRGForConditionalGeneration`]: a pretrained vision encoder whose patch features are
    projected into a causal language model's embedding space, where they act as soft visual prompts placed at
    image-token positions before the text instruction ("Effectively Fine-tune to Improve Large Multimodal Models for
    Radiology Report Generation", Lu et al., 2023).

    Args:
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the vision backbone; any model type known to `AutoModel` whose output has `hidden_states`
            (ViT, CLIP-vision, SigLIP-vision, DINOv2, ...). Defaults to a ViT-base config.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the causal language model (LLaMA / OpenLLaMA, Mistral, Qwen2, GPT-2, ...). Defaults to a
            LLaMA config.
        image_token_id (`int`, *optional*, defaults to 32000):
            Id of the image placeholder token; each placeholder is replaced by one soft visual prompt token.
        projector_type (`str`, *optional*, defaults to `"linear"`):
            `"linear"` (the paper's single linear layer) or `"mlp2x_gelu"` (LLaVA-1.5's two-layer MLP).
        projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have a bias.
        num_visual_tokens (`int`, *optional*):
            Soft visual prompt tokens per view. `None` uses every patch token as it is; an integer pools the patch
            grid to that many tokens (2D adaptive average pooling when both the grid and the count are squares,
            1D otherwise), so a 7B LLM is not fed 1,024 tokens per view.
        vision_feature_layer (`int`, *optional*, defaults to -1):
            Index into the encoder's `hidden_states` to take features from (-1: last layer, -2: penultimate as
            in LLaVA).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"patch"`):
            `"patch"` keeps only patch tokens (drops CLS / register tokens, whatever the backbone prepends);
            `"full"` keeps every token the encoder returns.
        max_views (`int`, *optional*, defaults to 2):
            Maximum number of images (views, e.g. frontal + lateral) per study.
        tie_word_embeddings (`bool`, *optional*):
            Whether `lm_head` shares the LLM's input embeddings; defaults to the text config's value.

    Example:

    ```python
    >>> from transformers import ViTConfig, LlamaConfig
    >>> from modeling_rrg import RRGConfig, RRGForConditionalGeneration
    >>> config = RRGConfig(
    ...     vision_config=ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
    ...                             num_attention_heads=2, intermediate_size=64),
    ...     text_config=LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=64),
    ...     image_token_id=99,
    ... )
    >>> model = RRGForConditionalGeneration(config)
    ```
    """

    model_type = "rrg"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}
    # `RRGConfig()` alone is not a valid model (the default image token lies outside the default vocabulary). Saying
    # so stops older transformers (5.0-5.x) from building a default instance when serialising or printing a config.
    has_no_defaults_at_init = True

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        image_token_id: int = 32000,
        projector_type: str = "linear",
        projector_bias: bool = True,
        num_visual_tokens: int | None = None,
        vision_feature_layer: int = -1,
        vision_feature_select_strategy: str = "patch",
        max_views: int = 2,
        tie_word_embeddings: bool | None = None,
        **kwargs,
    ):
        self.vision_config = _as_config(vision_config, "vit", "vision_config")
        self.text_config = _as_config(text_config, "llama", "text_config")
        self.image_token_id = image_token_id
        self.projector_type = projector_type
        self.projector_bias = projector_bias
        self.num_visual_tokens = num_visual_tokens
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.max_views = max_views
        if tie_word_embeddings is None:
            tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.tie_word_embeddings = tie_word_embeddings
        # One model class can register one Auto class; the full map says which class each Auto class loads.
        kwargs["auto_map"] = {**DEFAULT_AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)
        self.validate_rrg()

    def validate_rrg(self):
        """Check the multimodal fields; raises `ValueError` naming the field and what to change."""
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}.")
        if self.vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {FEATURE_SELECT_STRATEGIES}, "
                f"got {self.vision_feature_select_strategy!r}."
            )
        if self.num_visual_tokens is not None and (
            not isinstance(self.num_visual_tokens, int) or self.num_visual_tokens < 1
        ):
            raise ValueError(f"num_visual_tokens must be None or a positive int, got {self.num_visual_tokens!r}.")
        if not isinstance(self.max_views, int) or self.max_views < 1:
            raise ValueError(f"max_views must be a positive int, got {self.max_views!r}.")
        for attr in ("hidden_size", "image_size", "patch_size"):
            if getattr(self.vision_config, attr, None) is None:
                raise ValueError(
                    f"vision_config ({self.vision_config.model_type}) has no `{attr}`; rrg needs a ViT-style "
                    "encoder (ViT, CLIP-vision, SigLIP-vision, DINOv2, ...)."
                )
        num_layers = getattr(self.vision_config, "num_hidden_layers", None)
        if num_layers is not None and not -(num_layers + 1) <= self.vision_feature_layer <= num_layers:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer} is out of range for a vision encoder with "
                f"{num_layers} layers (valid: {-(num_layers + 1)}..{num_layers})."
            )
        vocab_size = getattr(self.text_config, "vocab_size", None)
        if vocab_size is not None and not 0 <= self.image_token_id < vocab_size:
            raise ValueError(
                f"image_token_id={self.image_token_id} is outside the text model's vocabulary (size {vocab_size}); "
                "add the image token to the tokenizer and resize the embeddings first "
                "(RRGForConditionalGeneration.from_pretrained_backbones does both)."
            )
        if self.num_visual_tokens is not None and self.vision_feature_select_strategy != "patch":
            raise ValueError("num_visual_tokens (pooling) needs vision_feature_select_strategy='patch'.")
        if self.num_visual_tokens is not None and self.num_visual_tokens > self.num_patches:
            raise ValueError(
                f"num_visual_tokens={self.num_visual_tokens} exceeds the encoder's {self.num_patches} patches "
                f"(image_size={self.vision_config.image_size}, patch_size={self.vision_config.patch_size}); "
                "pooling can only reduce the count."
            )

    @property
    def num_patches(self) -> int:
        """Number of patch tokens the vision encoder produces per image."""
        size = self.vision_config.image_size
        patch = self.vision_config.patch_size
        size = size if isinstance(size, (list, tuple)) else (size, size)
        patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
        return (size[0] // patch[0]) * (size[1] // patch[1])

    @property
    def image_seq_length(self) -> int:
        """Soft visual prompt tokens per view (what the processor expands one image placeholder to)."""
        if self.num_visual_tokens is not None:
            return self.num_visual_tokens
        if self.vision_feature_select_strategy == "full":
            return self.num_patches + num_prefix_tokens(self.vision_config)
        return self.num_patches


def num_prefix_tokens(vision_config) -> int:
    """Tokens a ViT-style encoder puts before its patch tokens (CLS and register tokens; none for SigLIP)."""
    if "siglip" in vision_config.model_type:
        return 0
    return 1 + int(getattr(vision_config, "num_register_tokens", 0) or 0)
