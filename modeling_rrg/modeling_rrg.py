# Copyright 2026 The rrg authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""rrg: a pretrained vision encoder, a projector and a causal LLM that writes chest X-ray reports.

The projector maps the encoder's patch features into the LLM's token-embedding space, where they are placed at the
image-token positions of the prompt as soft visual prompts (Lu et al., 2023, "Effectively Fine-tune to Improve Large
Multimodal Models for Radiology Report Generation"). The layout follows transformers' LLaVA: a headless `RRGModel`
returning `last_hidden_state` and an `RRGForConditionalGeneration` adding the LM head, which is what trl's
`SFTTrainer` expects of a vision-language model.
"""

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_rrg import RRGConfig


logger = logging.get_logger(__name__)

__all__ = [
    "RRGPreTrainedModel",
    "RRGModel",
    "RRGForConditionalGeneration",
    "RRGMultiModalProjector",
    "RRGModelOutputWithPast",
    "RRGCausalLMOutputWithPast",
    "check_packed_attention",
]


# transformers 5.24 renamed the key/value cache from `past_key_values` to `cache` (output fields and forward
# arguments). Our outputs subclass transformers' own classes, so they carry whichever field the installed release
# has; `_CACHE` is that name, used when building outputs and when calling the language model.
_CACHE = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class RRGModelOutputWithPast(BaseModelOutputWithPast):
    """
    Output of [`RRGModel`]: transformers' [`~modeling_outputs.BaseModelOutputWithPast`] (`last_hidden_state`, the
    key/value cache, `hidden_states`, `attentions`) plus the soft visual prompts.

    Args:
        image_hidden_states (`torch.FloatTensor`, *optional*):
            Soft visual prompts of shape `(num_images, tokens_per_view, hidden_size)`, the projector's output.
        image_outputs ([`~modeling_outputs.BaseModelOutputWithPooling`], *optional*):
            What [`RRGModel.get_image_features`] returned for the images of this call (the vision encoder's
            `last_hidden_state`, `hidden_states` and `attentions`, the soft visual prompts as `pooler_output`), the
            field transformers' vision-language models use for their encoder outputs.
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class RRGCausalLMOutputWithPast(CausalLMOutputWithPast):
    """
    Output of [`RRGForConditionalGeneration`]: transformers' [`~modeling_outputs.CausalLMOutputWithPast`] (`loss`,
    `logits`, the key/value cache, `hidden_states`, `attentions`) plus the soft visual prompts.

    Args:
        image_hidden_states (`torch.FloatTensor`, *optional*): The soft visual prompts (see [`RRGModelOutputWithPast`]).
        image_outputs ([`~modeling_outputs.BaseModelOutputWithPooling`], *optional*): See [`RRGModelOutputWithPast`].
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


def _pop_cache(cache, kwargs: dict, owner: str):
    """The key/value cache, passed as `cache` (transformers >= 5.24) or `past_key_values` (older releases)."""
    legacy = kwargs.pop("past_key_values", None)
    if cache is not None and legacy is not None:
        raise ValueError("Pass the key/value cache once, as `cache` (or `past_key_values` on transformers < 5.24).")
    if legacy is not None and _CACHE == "cache":
        # Same notice as transformers' own models give on releases that renamed the argument.
        warnings.warn(
            f"`past_key_values` is deprecated for `{owner}.forward` on this transformers release; use `cache` instead.",
            FutureWarning,
            stacklevel=3,
        )
    return cache if cache is not None else legacy


# Attention implementations that keep the studies of a packed row apart (see `RRGModel.forward`), read from
# transformers' `masking_utils` and `modeling_flash_attention_utils`: for sdpa, eager and flex attention,
# `create_causal_mask` finds the packed studies in `position_ids` (when there is no 2D attention mask and no cache) and
# builds a block-diagonal causal mask; flash attention builds no mask but splits the row by `position_ids` itself
# (`_is_packed_sequence`), for a single row only.
PACKED_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")
PACKED_FLASH_ATTENTION_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def check_packed_attention(config, rows: int = 1) -> None:
    """Raise unless the language model's attention keeps the studies of `rows` packed rows apart."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    implementation = getattr(text_config, "_attn_implementation", None) or "eager"
    if implementation in PACKED_ATTENTION_IMPLEMENTATIONS:
        return
    if implementation in PACKED_FLASH_ATTENTION_IMPLEMENTATIONS:
        if rows == 1:
            return
        raise ValueError(
            f"{implementation} separates packed studies only in a single row; got {rows} packed rows. Pack the batch "
            "into one row (RRGDataCollator(padding_free=True) does)."
        )
    raise ValueError(
        f"Packed (padding-free) batches need an attention implementation that keeps the studies of a row apart; the "
        f"language model uses {implementation!r}, which transformers does not give a block-diagonal mask from "
        f"position_ids. Use one of {', '.join(PACKED_ATTENTION_IMPLEMENTATIONS + PACKED_FLASH_ATTENTION_IMPLEMENTATIONS)}"
        " or padded batches."
    )


def _packed_study_index(position_ids: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The study each token of packed rows belongs to, numbered across rows: a study starts at each row's first token
    and wherever the position does not follow the previous one (transformers' `find_packed_sequence_indices` rule)."""
    position_ids = position_ids.expand(shape)
    starts = torch.ones(shape, dtype=torch.long, device=position_ids.device)
    starts[:, 1:] = (torch.diff(position_ids, dim=-1) != 1).long()
    return starts.flatten().cumsum(0).view(shape) - 1


def _set_only(**kwargs) -> dict:
    """The keyword arguments that were given. An explicit `None` would hide the sub-model's own config default."""
    return {key: value for key, value in kwargs.items() if value is not None}


class RRGMultiModalProjector(nn.Module):
    """Maps vision features (`vision hidden size`) to soft visual prompts (`text hidden size`)."""

    def __init__(self, config: RRGConfig):
        super().__init__()
        in_dim = config.vision_config.hidden_size
        out_dim = config.text_config.hidden_size
        self.projector_type = config.projector_type
        if config.projector_type == "linear":
            self.linear_1 = nn.Linear(in_dim, out_dim, bias=config.projector_bias)
        else:  # "mlp2x_gelu" (validated by the config)
            self.linear_1 = nn.Linear(in_dim, out_dim, bias=config.projector_bias)
            self.act = ACT2FN["gelu"]
            self.linear_2 = nn.Linear(out_dim, out_dim, bias=config.projector_bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_1(image_features)
        if self.projector_type == "mlp2x_gelu":
            hidden_states = self.linear_2(self.act(hidden_states))
        return hidden_states


class RRGPreTrainedModel(PreTrainedModel):
    config_class = RRGConfig
    config: RRGConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [_CACHE]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class RRGModel(RRGPreTrainedModel):
    r"""
    The headless rrg model: vision tower, projector and language model (without LM head), returning the language
    model's `last_hidden_state`.

    Example:

    ```python
    >>> import torch
    >>> from transformers import ViTConfig, LlamaConfig
    >>> from modeling_rrg import RRGConfig, RRGModel
    >>> config = RRGConfig(
    ...     vision_config=ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
    ...                             num_attention_heads=2, intermediate_size=64),
    ...     text_config=LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                             intermediate_size=64),
    ...     image_token_id=49,
    ... )
    >>> model = RRGModel(config)
    >>> ids = torch.tensor([[1, 49, 49, 49, 49, 5, 6]])  # 4 image tokens: a 16 px image in 8 px patches
    >>> model(input_ids=ids, pixel_values=torch.randn(1, 1, 3, 16, 16)).last_hidden_state.shape
    torch.Size([1, 7, 32])
    ```
    """

    def __init__(self, config: RRGConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = RRGMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ------------------------------------------------------------------ images
    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.dim() != 4:
            raise ValueError(
                "The vision encoder expects pixel_values of shape (num_images, C, H, W), "
                f"got {tuple(pixel_values.shape)}."
            )
        expected = self.config.vision_config.image_size
        expected = tuple(expected) if isinstance(expected, (list, tuple)) else (expected, expected)
        if tuple(pixel_values.shape[-2:]) != expected:
            raise ValueError(
                f"Images are {tuple(pixel_values.shape[-2:])} pixels but the vision encoder expects {expected}; "
                "preprocess them with the model's processor (RRGProcessor) so they are resized."
            )
        num_channels = getattr(self.config.vision_config, "num_channels", 3)
        if pixel_values.shape[1] != num_channels:
            raise ValueError(
                f"Images have {pixel_values.shape[1]} channels but the vision encoder expects {num_channels}; "
                "grayscale X-rays are converted to RGB by RRGProcessor."
            )

    def _encode(self, pixel_values: torch.Tensor, **vision_kwargs) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """Run the vision encoder; return the selected (and pooled) features and the encoder's own outputs."""
        self._check_pixels(pixel_values)
        dtype = next(self.vision_tower.parameters()).dtype
        # A frozen encoder needs no autograd graph: without this, `enable_input_require_grads` (which peft and trl call
        # with gradient checkpointing) hooks the encoder's patch embeddings too, so every step would keep the
        # encoder's activations and run its backward for gradients nobody uses.
        frozen = not pixel_values.requires_grad and not any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():
            outputs = self.vision_tower(
                pixel_values=pixel_values.to(dtype), **{**vision_kwargs, "output_hidden_states": True, "return_dict": True}
            )
        features = outputs.hidden_states[self.config.vision_feature_layer]
        num_patches = self.config.num_patches
        if self.config.vision_feature_select_strategy == "patch":
            if features.shape[1] < num_patches:
                raise ValueError(
                    f"The vision encoder returned {features.shape[1]} tokens, fewer than its {num_patches} patches."
                )
            # CLS / register tokens come first in ViT, CLIP and DINOv2; SigLIP has none.
            features = features[:, features.shape[1] - num_patches :]
        if self.config.num_visual_tokens is not None and self.config.num_visual_tokens != features.shape[1]:
            features = self._pool(features, self.config.num_visual_tokens)
        return features, outputs

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Encoder features of a stack of images, before the projector: what a frozen-encoder feature cache stores.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`).

        Returns:
            `torch.FloatTensor` of shape `(num_images, config.image_seq_length, vision_hidden_size)`.
        """
        return self._encode(pixel_values)[0]

    @staticmethod
    def _pool(features: torch.Tensor, target: int) -> torch.Tensor:
        """Average-pool patch tokens to `target` tokens: on the 2D grid when both counts are squares."""
        n, length, dim = features.shape
        side, target_side = math.isqrt(length), math.isqrt(target)
        if side * side == length and target_side * target_side == target:
            grid = features.transpose(1, 2).reshape(n, dim, side, side)
            pooled = F.adaptive_avg_pool2d(grid, target_side)
            return pooled.flatten(2).transpose(1, 2)
        return F.adaptive_avg_pool1d(features.transpose(1, 2), target).transpose(1, 2)

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        num_views: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """
        Encode the study images and project them to soft visual prompts, one entry per (valid) view in
        sample-then-view order. Returns what transformers' vision-language models return here: a
        [`~modeling_outputs.BaseModelOutputWithPooling`] whose `pooler_output` holds the prompts.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, views, C, H, W)` or `(batch, C, H, W)`, *optional*):
                The study images; views past `num_views[i]` are padding and ignored.
            num_views (`torch.LongTensor` of shape `(batch,)`, *optional*):
                Number of real views per sample (defaults to all views).
            image_features (`torch.FloatTensor` of shape `(batch, views, tokens, vision_hidden)`, *optional*):
                Precomputed [`~RRGModel.get_vision_features`] outputs, used instead of `pixel_values`.
            output_hidden_states / output_attentions (`bool`, *optional*):
                Return the vision encoder's hidden states / attentions (default: the config's setting).
            return_dict (`bool`, *optional*): Return a `ModelOutput` rather than a tuple (default: the config's).
            kwargs: Passed on to the vision encoder.

        Returns:
            [`~modeling_outputs.BaseModelOutputWithPooling`]: `pooler_output` is a `torch.FloatTensor` of shape
            `(num_valid_views, config.image_seq_length, text_hidden_size)`; `last_hidden_state`, `hidden_states`
            and `attentions` are the vision encoder's (with `image_features`, `last_hidden_state` is those features
            and there are no encoder states).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        selected, _ = self._select_views(pixel_values, num_views, image_features)
        output = self._image_outputs(
            selected, pixel_values is not None, output_hidden_states, output_attentions, **kwargs
        )
        return output if return_dict else output.to_tuple()

    def _image_outputs(self, selected, from_pixels, output_hidden_states=None, output_attentions=None, **kwargs):
        """`get_image_features` on already selected views; `kwargs` go to the vision encoder, as in LLaVA."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states or self.config.vision_config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions or self.config.vision_config.output_attentions
        if from_pixels:
            features, encoded = self._encode(selected, output_attentions=output_attentions, **kwargs)
            last_hidden_state = encoded.last_hidden_state
            # The encoder always runs with its hidden states (the feature layer is one of them); they are handed
            # back only when asked for, as transformers' models do.
            hidden_states = encoded.hidden_states if output_hidden_states else None
            attentions = encoded.get("attentions") if output_attentions else None
        else:
            if selected.shape[-1] != self.config.vision_config.hidden_size:
                raise ValueError(
                    f"image_features have dimension {selected.shape[-1]}, but the vision encoder's hidden size is "
                    f"{self.config.vision_config.hidden_size}; pass get_vision_features() outputs, not projected ones."
                )
            features = last_hidden_state = selected
            hidden_states = attentions = None
        projector_dtype = next(self.multi_modal_projector.parameters()).dtype
        prompts = self.multi_modal_projector(features.to(projector_dtype))
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=prompts,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    def _select_views(self, pixel_values, num_views, image_features) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the image inputs; return the real views (sample-then-view order) and the `(batch, views)` mask."""
        if (pixel_values is None) == (image_features is None):
            raise ValueError("Pass exactly one of `pixel_values` or `image_features`.")
        source = pixel_values if pixel_values is not None else image_features
        if pixel_values is not None and pixel_values.dim() == 4:
            source = pixel_values.unsqueeze(1)  # one view per sample
        if image_features is not None and image_features.dim() == 3:
            source = image_features.unsqueeze(1)
        expected_dims = 5 if pixel_values is not None else 4
        if source.dim() != expected_dims:
            raise ValueError(
                f"{'pixel_values' if pixel_values is not None else 'image_features'} has shape {tuple(source.shape)}; "
                f"expected {'(batch, views, C, H, W)' if pixel_values is not None else '(batch, views, tokens, dim)'}."
            )
        batch, views = source.shape[:2]
        if views > self.config.max_views:
            raise ValueError(
                f"Got {views} views per study but the model is configured for at most max_views="
                f"{self.config.max_views}; drop views or build the model with a larger max_views."
            )
        if num_views is None:
            valid = torch.ones(batch, views, dtype=torch.bool, device=source.device)
        else:
            num_views = torch.as_tensor(num_views, device=source.device).view(-1)
            if num_views.numel() != batch:
                raise ValueError(f"num_views has {num_views.numel()} entries for a batch of {batch} samples.")
            if (num_views < 1).any() or (num_views > views).any():
                raise ValueError(
                    f"num_views must be between 1 and {views} (the views dimension); got {num_views.tolist()}."
                )
            valid = torch.arange(views, device=source.device)[None, :] < num_views[:, None]
        selected = source[valid]  # (num_valid_views, ...)
        return selected, valid

    def get_placeholder_mask(
        self,
        input_ids: torch.Tensor | None,
        image_embeds: torch.Tensor,
        num_images_per_sample: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Boolean `(batch, seq_len)` mask of the image-token positions, found in `input_ids` or, without them, as the
        positions of `inputs_embeds` equal to the image token's embedding (as transformers' LLaVA does). Raises when
        a sample's tokens and its views' features do not match.

        With images for more studies than there are rows (packed rows, several studies each), the studies are told
        apart by `position_ids` restarting, and the check is per study.
        """
        if input_ids is not None:
            mask = input_ids == self.config.image_token_id
        else:
            token = torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            mask = (inputs_embeds == self.get_input_embeddings()(token)).all(-1)
        tokens_per_view = image_embeds.shape[1]
        expected = num_images_per_sample.to(mask.device) * tokens_per_view
        unit = "sample"
        if expected.numel() > mask.shape[0] and position_ids is not None:
            unit = "study"
            study = _packed_study_index(position_ids.to(mask.device), mask.shape)
            if int(study[-1, -1]) + 1 != expected.numel():
                raise ValueError(
                    f"Got images for {expected.numel()} studies but the position_ids of the packed rows mark "
                    f"{int(study[-1, -1]) + 1} (a study starts where its positions restart at 0)."
                )
            per_sample = torch.zeros_like(expected).index_add_(0, study[mask], torch.ones_like(study[mask]))
        else:
            per_sample = mask.sum(dim=1)
        if per_sample.shape != expected.shape:
            packed_hint = (
                " Rows packing several studies need position_ids restarting at 0 at each study."
                if expected.numel() > per_sample.numel() else ""
            )
            raise ValueError(
                f"Got images for {expected.numel()} samples but the text has {per_sample.numel()} rows.{packed_hint}"
            )
        if not torch.equal(per_sample, expected):
            bad = int(torch.nonzero(per_sample != expected)[0, 0])
            raise ValueError(
                f"Image features and image tokens do not match: {unit} "
                f"{bad} has {int(per_sample[bad])} image tokens but {int(num_images_per_sample[bad])} view(s) x "
                f"{tokens_per_view} soft visual prompt tokens = {int(expected[bad])} features. Build the inputs with "
                "RRGProcessor, which expands one image placeholder per view to config.image_seq_length tokens."
            )
        return mask

    def _check_packed(self, attention_mask, cache, use_cache, rows: int) -> bool:
        """Refuse what would let the studies of a packed row attend to each other; returns `use_cache` (off)."""
        if attention_mask is not None:
            raise ValueError(
                "Packed rows (images for more studies than rows) take no attention_mask: transformers builds the "
                "block-diagonal causal mask from position_ids only when attention_mask is None."
            )
        if cache is not None or use_cache:
            raise ValueError("Packed rows are for training and scoring; they take no key/value cache (use_cache=False).")
        check_packed_attention(self.config, rows)
        return False  # an empty cache created by the language model would also switch the packed mask off

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        num_views: torch.LongTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> RRGModelOutputWithPast | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): Token ids with image-token placeholders.
            pixel_values (`torch.FloatTensor` of shape `(batch, views, C, H, W)`, *optional*): Study images.
            num_views (`torch.LongTensor` of shape `(batch,)`, *optional*): Real views per sample.
            image_features (`torch.FloatTensor` of shape `(batch, views, tokens, vision_hidden)`, *optional*):
                Cached encoder features ([`~RRGModel.get_vision_features`]) used instead of `pixel_values`.
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq_len, hidden)`, *optional*):
                Used instead of `input_ids`; with images, the image positions are those holding the image token's
                embedding.
            attention_mask, position_ids, cache, use_cache, output_attentions,
            output_hidden_states: as for the underlying language model. The cache may also be passed as
            `past_key_values`, its name before transformers 5.24.

        Packed (padding-free) rows: `input_ids` of shape `(rows, seq_len)` may hold several whole studies each, one
        after another, when the images are given per study (`pixel_values` / `image_features` / `num_views` with one
        entry per study, in row order) and `position_ids` restart at 0 at each study, with no `attention_mask` and no
        cache. The language model then attends within each study only (a block-diagonal causal mask, see
        `PACKED_ATTENTION_IMPLEMENTATIONS`), so every study gets the logits it gets alone.
        """
        cache = _pop_cache(cache, kwargs, type(self).__name__)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if pixel_values is not None and image_features is not None:
            raise ValueError("Pass either `pixel_values` or `image_features`, not both.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        # Without images, image-token ids are embedded like any other token: that is what transformers' LLaVA does,
        # and what its common tests (and text-only uses of the model, e.g. the LM alone on a prompt) expect. The
        # one unambiguous misuse, images whose features do not fill the image tokens, stays an error below.
        image_outputs = None
        if pixel_values is not None or image_features is not None:
            selected, valid = self._select_views(pixel_values, num_views, image_features)
            packed = valid.shape[0] > inputs_embeds.shape[0] and position_ids is not None
            if packed:
                use_cache = self._check_packed(attention_mask, cache, use_cache, inputs_embeds.shape[0])
            image_outputs = self._image_outputs(
                selected, pixel_values is not None, output_hidden_states, output_attentions
            )
            image_embeds = image_outputs.pooler_output
            mask = self.get_placeholder_mask(
                input_ids, image_embeds, valid.sum(dim=1), inputs_embeds=inputs_embeds,
                position_ids=position_ids if packed else None,
            )
            inputs_embeds = inputs_embeds.masked_scatter(
                mask.unsqueeze(-1).to(inputs_embeds.device),
                image_embeds.to(inputs_embeds.device, inputs_embeds.dtype),
            )

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            return_dict=True,
            **_set_only(
                use_cache=use_cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states
            ),
            **{_CACHE: cache},
            **kwargs,
        )
        output = RRGModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
            image_hidden_states=None if image_outputs is None else image_outputs.pooler_output,
            image_outputs=image_outputs,
            **{_CACHE: outputs.get(_CACHE)},
        )
        return output if return_dict else output.to_tuple()


def _vision_half(dual_encoder: PreTrainedModel) -> PreTrainedModel:
    """The vision model of a CLIP / SigLIP style dual encoder, as a standalone vision model with the same weights."""
    half = getattr(dual_encoder, "vision_model", None)
    if half is None:
        raise ValueError(
            f"{type(dual_encoder).__name__} has no `vision_model`; pass a vision-only checkpoint as the vision backbone."
        )
    if isinstance(half, PreTrainedModel):
        return half
    tower = AutoModel.from_config(dual_encoder.config.vision_config).to(next(half.parameters()).dtype)
    source = half.state_dict()
    target_keys = set(tower.state_dict())
    for prefix in ("", "vision_model."):
        renamed = {prefix + key: value for key, value in source.items()}
        if set(renamed) == target_keys:
            tower.load_state_dict(renamed)
            return tower
    raise ValueError(
        f"Could not map the vision weights of {type(dual_encoder).__name__} onto {type(tower).__name__}; "
        "save the vision model on its own (e.g. CLIPVisionModel) and pass that folder."
    )


class RRGForConditionalGeneration(RRGPreTrainedModel, GenerationMixin):
    r"""
    rrg with its language-modeling head: give it the study images and a prompt, it writes the report.

    Example:

    ```python
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> model = AutoModelForImageTextToText.from_pretrained("path/to/rrg-model", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("path/to/rrg-model", trust_remote_code=True)
    >>> inputs = processor(images=["frontal.png", "lateral.png"], return_tensors="pt")
    >>> out = model.generate(**inputs, max_new_tokens=128)
    >>> processor.batch_decode(out)[0]
    ```
    """

    # Tying target -> source; the source name depends on the text model (set per instance in __init__).
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # As LLaVA's: under tensor parallelism the head is split by columns and gathered, which matches the plan
    # transformers' LLaMA-family models give the input embeddings the head is tied to (both sharded, or neither).
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: RRGConfig):
        super().__init__(config)
        self.model = RRGModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{self._input_embedding_name()}.weight"}
        self.post_init()

    def _input_embedding_name(self) -> str:
        embeddings = self.model.language_model.get_input_embeddings()
        for name, module in self.model.language_model.named_modules():
            if module is embeddings:
                return name
        raise ValueError("Could not locate the language model's input embeddings.")

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model.language_model

    @property
    def vision_tower(self):
        return self.model.vision_tower

    @property
    def multi_modal_projector(self):
        return self.model.multi_modal_projector

    @property
    def language_model(self):
        return self.model.language_model

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See [`RRGModel.get_vision_features`]."""
        return self.model.get_vision_features(pixel_values)

    def get_image_features(
        self, pixel_values=None, num_views=None, image_features=None, **kwargs
    ) -> BaseModelOutputWithPooling | tuple:
        """See [`RRGModel.get_image_features`]."""
        return self.model.get_image_features(
            pixel_values=pixel_values, num_views=num_views, image_features=image_features, **kwargs
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        num_views: torch.LongTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> RRGCausalLMOutputWithPast | tuple:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                Target ids (unshifted); positions set to -100 (image tokens, prompt, padding) are ignored by the loss.
            logits_to_keep (`int` or `torch.Tensor`, *optional*):
                Compute logits only for the last `logits_to_keep` positions (0: all), as in transformers' LMs.
            Other arguments: see [`RRGModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        cache = _pop_cache(cache, kwargs, type(self).__name__)
        shift_labels = kwargs.pop("shift_labels", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            num_views=num_views,
            image_features=image_features,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep > 0:
                hidden_states = hidden_states[:, -logits_to_keep:, :]
        else:
            hidden_states = hidden_states[:, logits_to_keep, :]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            # `shift_labels`: targets already shifted by the caller (sequence/context parallelism), which the loss
            # must use instead of shifting `labels` itself.
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                num_items_in_batch=num_items_in_batch,
                **_set_only(shift_labels=shift_labels),
            )
        output = RRGCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
            **{_CACHE: outputs.get(_CACHE)},
        )
        return output if return_dict else output.to_tuple()

    def prepare_inputs_for_generation(
        self,
        input_ids,
        pixel_values=None,
        num_views=None,
        image_features=None,
        inputs_embeds=None,
        is_first_iteration=False,
        **kwargs,
    ):
        # Images enter only on the first iteration of a generate() call (GenerationMixin says which, as it does for
        # LLaVA): afterwards the cache already holds the visual prompts, so the vision encoder runs once per call.
        # Without a cache (use_cache=False) every step needs them. The cache itself travels in `kwargs` under the
        # name the installed GenerationMixin uses (`cache` from 5.24, `past_key_values` before). `inputs_embeds` is
        # named here because GenerationMixin only accepts it for models whose signature says they forward it.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["image_features"] = image_features
            model_inputs["num_views"] = num_views
        return model_inputs

    @classmethod
    def from_pretrained_backbones(
        cls,
        vision_name_or_path: str,
        text_name_or_path: str,
        image_token_id: int | None = None,
        vocab_size: int | None = None,
        dtype: torch.dtype | str | None = None,
        vision_kwargs: dict | None = None,
        text_kwargs: dict | None = None,
        **config_kwargs,
    ) -> "RRGForConditionalGeneration":
        r"""
        Assemble an untrained rrg model from a pretrained vision encoder and a pretrained causal LM, keeping their
        weights; only the projector is newly initialised.

        Args:
            vision_name_or_path (`str`):
                A vision checkpoint (ViT, CLIP, SigLIP, DINOv2, ...). For dual-encoder checkpoints (CLIP, SigLIP) the
                vision half is used.
            text_name_or_path (`str`): A causal LM checkpoint (e.g. `openlm-research/open_llama_7b`).
            image_token_id (`int`, *optional*):
                Id of the image token in the (extended) tokenizer. When it is past the LM's vocabulary, the
                embeddings are resized to `vocab_size` (or `image_token_id + 1`). Use
                [`RRGProcessor.from_pretrained_backbones`] to get a tokenizer with the token added and pass
                `image_token_id=processor.image_token_id, vocab_size=len(processor.tokenizer)`.
            vocab_size (`int`, *optional*): Final vocabulary size (length of the extended tokenizer).
            dtype (`torch.dtype` or `str`, *optional*): Load both backbones in this dtype (e.g. `torch.bfloat16`).
            vision_kwargs / text_kwargs (`dict`, *optional*): Extra `from_pretrained` arguments per backbone.
            config_kwargs: Other [`RRGConfig`] fields (`projector_type`, `num_visual_tokens`, ...).
        """
        from transformers import AutoConfig

        vision_kwargs = dict(vision_kwargs or {})
        text_kwargs = dict(text_kwargs or {})
        if dtype is not None:
            vision_kwargs.setdefault("dtype", dtype)
            text_kwargs.setdefault("dtype", dtype)

        vision_config = AutoConfig.from_pretrained(vision_name_or_path, **{k: v for k, v in vision_kwargs.items() if k in ("revision", "token", "trust_remote_code")})
        if getattr(vision_config, "vision_config", None) is not None and getattr(vision_config, "patch_size", None) is None:
            # Dual encoder (CLIP / SigLIP): keep the vision half.
            full = AutoModel.from_pretrained(vision_name_or_path, **vision_kwargs)
            vision_tower = _vision_half(full)
            del full
        else:
            vision_tower = AutoModel.from_pretrained(vision_name_or_path, **vision_kwargs)
        causal_lm = AutoModelForCausalLM.from_pretrained(text_name_or_path, **text_kwargs)
        language_model = causal_lm.base_model
        lm_head = causal_lm.get_output_embeddings()

        text_config = causal_lm.config
        if image_token_id is None:
            image_token_id = text_config.vocab_size
        config = RRGConfig(
            vision_config=vision_tower.config.to_dict(),
            text_config=text_config.to_dict(),
            image_token_id=min(image_token_id, text_config.vocab_size - 1),  # validated again after resizing
            **config_kwargs,
        )
        # Build the shell on the meta device (no memory for a second 7B copy), then put the real backbones in.
        with torch.device("meta"):
            model = cls(config)
        model.model.vision_tower = vision_tower
        model.model.language_model = language_model
        model.lm_head = lm_head
        projector = RRGMultiModalProjector(config)
        std = getattr(config.text_config, "initializer_range", 0.02) or 0.02
        for module in projector.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        model.model.multi_modal_projector = projector.to(lm_head.weight.dtype)
        new_vocab = max(vocab_size or 0, image_token_id + 1, text_config.vocab_size)
        if new_vocab != text_config.vocab_size:
            model.resize_token_embeddings(new_vocab, mean_resizing=True)
        model.config.image_token_id = image_token_id
        model.config.validate_rrg()
        model.tie_weights()
        return model


# Let `save_pretrained` write `auto_map` and copy this folder's code, so the Hub serves it as remote code.
RRGConfig.register_for_auto_class()
RRGModel.register_for_auto_class("AutoModel")
RRGForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

# For remote-code models (which rrg is, served from the Hub or registered above), GenerationMixin reads
# `inspect.signature(self.forward)` at every decoding step (a `cache_position` check in
# `prepare_inputs_for_generation`, transformers 5.x). Rebuilt from the function each time, that is ~0.1 ms per token,
# several percent of a small model's decoding step; computed once here, `inspect` returns it as is.
for _model_class in (RRGModel, RRGForConditionalGeneration):
    _model_class.forward.__signature__ = inspect.signature(_model_class.forward)

