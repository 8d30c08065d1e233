"""Per-sentence attribution: which visual tokens each sentence of a generated report attends to."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..evaluation.generation import eos_token_ids
from .attention import _sentence_spans, eager_attention, generate_records, teacher_forced_attention
from .studies import check_model, unwrap_model

__all__ = ['visual_token_grid', 'token_attribution']


def _grid_shape(config) -> tuple[int, int]:
    size = config.vision_config.image_size
    patch = config.vision_config.patch_size
    size = size if isinstance(size, (list, tuple)) else (size, size)
    patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
    return size[0] // patch[0], size[1] // patch[1]


def visual_token_grid(values: np.ndarray, config) -> tuple[np.ndarray, float]:
    """
    Map one view's per-visual-token values onto its spatial grid.

    Patch tokens map to the patch grid; tokens pooled on the 2D grid (`num_visual_tokens` a square) map to the pooled
    grid (upsampled when drawn); tokens pooled in 1D (raster order) are spread back over the patches they average.
    With `vision_feature_select_strategy="full"` the leading CLS/register tokens have no place and are dropped.

    Args:
        values (`np.ndarray` of shape `(tokens_per_view,)`): One value per visual token of the view.
        config ([`RRGConfig`]): The model's config.

    Returns:
        `(grid, prefix_share)`: the 2D grid and the part of `values` on the dropped prefix tokens.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (config.image_seq_length,):
        raise ValueError(f"Expected {config.image_seq_length} values (one per visual token), got shape {values.shape}.")
    grid_h, grid_w = _grid_shape(config)
    num_patches = grid_h * grid_w
    prefix = 0.0
    if config.vision_feature_select_strategy == "full":
        prefix = float(values[: values.size - num_patches].sum())
        values = values[values.size - num_patches :]
    count = values.size
    if count == num_patches:
        return values.reshape(grid_h, grid_w), prefix
    side = math.isqrt(count)
    if side * side == count and math.isqrt(num_patches) ** 2 == num_patches:
        return values.reshape(side, side), prefix
    # adaptive_avg_pool1d bin i covers patches [floor(i L / T), ceil((i + 1) L / T)).
    out = np.zeros(num_patches)
    hits = np.zeros(num_patches)
    for index in range(count):
        start = (index * num_patches) // count
        end = -((-(index + 1) * num_patches) // count)
        out[start:end] += values[index]
        hits[start:end] += 1
    return (out / np.maximum(hits, 1)).reshape(grid_h, grid_w), prefix


@torch.no_grad()
def token_attribution(
    model,
    processor,
    study,
    max_new_tokens: int = 64,
    layers: Sequence[int] | None = None,
    record: dict | None = None,
) -> dict:
    """
    Which visual tokens each generated sentence attends to, for one study.

    For each sentence of the greedy report, the attention from the positions predicting its tokens to the visual
    tokens is averaged over heads and `layers` and renormalised to sum to one over the visual tokens, so maps of
    different sentences are comparable whatever their total visual share.

    Args:
        model ([`RRGForConditionalGeneration`]): The model.
        processor ([`RRGProcessor`]): Its processor.
        study: `(id, images)` or a dict with `id` and `images`.
        max_new_tokens (`int`, *optional*, defaults to 64): Report length limit.
        layers (`Sequence[int]`, *optional*): LLM layers averaged (default: all; negative indices allowed).
        record (`dict`, *optional*): A report already written for the study (`id`, `views`, `prompt_ids`,
            `report_ids`, `report`, as [`~training.analysis.attention.generate_records`] returns), e.g. the one a
            user was shown with another decoding or an indication; `study` and `max_new_tokens` are then ignored.

    Returns:
        `dict` with `id`, `report`, `views` (images), and `sentences`: per sentence its `text`, `visual_share`
        (raw attention mass on visual tokens) and `maps` (one 2D grid per view, summing to one over all views).
    """
    model = unwrap_model(model)
    check_model(model)
    config = model.config
    num_layers = config.text_config.num_hidden_layers
    if layers is not None:
        bad = [i for i in layers if not -num_layers <= i < num_layers]
        if bad:
            raise ValueError(f"Layer indices {bad} are out of range for a {num_layers}-layer LLM.")
        layers = sorted({i % num_layers for i in layers})
    if record is None:
        record = generate_records(model, processor, [study], max_new_tokens=max_new_tokens, batch_size=1)[0]
    pixel_values, num_views = processor.encode_images([record["views"]])
    with eager_attention(model):
        result = teacher_forced_attention(
            model, [record], pixel_values, num_views, attribution_layers=layers, return_visual_attention=True
        )[0]
    visual = result["visual_attention"]  # (queries, visual tokens); query j predicts report token j
    tokens_per_view = config.image_seq_length
    eos = eos_token_ids(model, processor.tokenizer)
    spans = _sentence_spans(processor.tokenizer, record["report_ids"], eos)
    if not spans and record["report_ids"]:
        spans = [(0, len(record["report_ids"]), record["report"] or "(empty report)")]
    sentences = []
    for start, end, text in spans:
        vector = visual[start:end].mean(axis=0)
        share = float(vector.sum())
        normalised = vector / share if share > 0 else vector
        maps, prefix = [], 0.0
        for view in range(len(record["views"])):
            grid, dropped = visual_token_grid(normalised[view * tokens_per_view : (view + 1) * tokens_per_view], config)
            maps.append(grid)
            prefix += dropped
        sentences.append(
            {
                "text": text,
                "token_span": [start, end],
                "visual_share": share,
                "prefix_token_share": prefix,
                "maps": maps,
            }
        )
    return {
        "id": record["id"],
        "report": record["report"],
        "views": record["views"],
        "layers": "all" if layers is None else layers,
        "sentences": sentences,
    }
