"""Attention while the report is written: eager attention, a teacher-forced pass, attention shares per category."""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from ..evaluation.generation import generate_batch
from .studies import as_views, batches, check_model, model_device, normalise_studies, unwrap_model

__all__ = ['ATTENTION_CATEGORIES', 'eager_attention', 'generate_records', 'attention_category_shares', 'split_sentences', 'teacher_forced_attention', 'attention_share_analysis']

# Where each key position of the teacher-forced sequence belongs; the shares over these sum to one.
ATTENTION_CATEGORIES = ("visual", "instruction", "report", "padding")
_SENTENCE_END = re.compile(r"[.!?;]\s*$")
# A list number ("1." opening a sentence or following "Findings:") does not end a sentence.
_LIST_NUMBER = re.compile(r"(?:^|:)\s*\d{1,2}\.\s*$")
_DECIMAL = re.compile(r"\d\.\d+\s*$")


@contextmanager
def eager_attention(model):
    """
    Context manager running `model` with the eager attention implementation, which returns attention weights, and
    restoring the previous implementation (e.g. SDPA) afterwards. Eager and SDPA compute the same attention, so the
    model's outputs do not change (up to float rounding).

    Args:
        model ([`RRGForConditionalGeneration`]): The model; its vision tower and language model are switched.

    Raises:
        `ValueError` if the model cannot switch its attention implementation at run time.
    """
    config = model.config
    previous = {
        "": config._attn_implementation,
        "text_config": config.text_config._attn_implementation,
        "vision_config": config.vision_config._attn_implementation,
    }
    model.set_attn_implementation("eager")
    if config.text_config._attn_implementation != "eager":
        raise ValueError(
            f"Could not switch {type(model).__name__} to eager attention at run time; load it with "
            "attn_implementation='eager' for the attention analysis."
        )
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


def generate_records(model, processor, studies, max_new_tokens: int = 64, batch_size: int = 4) -> list[dict]:
    """
    Greedy reports for a set of studies, keeping the token ids the attention pass needs.

    Generation is [`training.evaluation.generation.generate_batch`], the loop `rrg evaluate` uses (image token
    suppressed, so the teacher-forced pass never takes a generated token for a visual-prompt slot).

    Args:
        model ([`RRGForConditionalGeneration`]): The model.
        processor ([`RRGProcessor`]): Its processor.
        studies: `(id, images)` pairs (or dicts with `id` and `images`).
        max_new_tokens (`int`, *optional*, defaults to 64): Report length limit.
        batch_size (`int`, *optional*, defaults to 4): Studies per `generate` call (prompts are left-padded).

    Returns:
        `list[dict]` with `id`, `views` (the loaded images), `prompt_ids` (unpadded), `report_ids` (up to and
        including the first EOS) and `report` (decoded text).
    """
    model = unwrap_model(model)
    check_model(model)
    studies = normalise_studies(studies)
    results = []
    for batch in tqdm(list(batches(studies, batch_size)), desc="Generating", disable=len(studies) <= batch_size):
        views = [as_views(images) for _, images in batch]
        outputs = generate_batch(model, processor, views, {"max_new_tokens": max_new_tokens})
        for (study_id, _), study_views, output in zip(batch, views, outputs):
            results.append({"id": study_id, "views": study_views, **output})
    return results


def attention_category_shares(
    attentions: Sequence[torch.Tensor], key_categories: torch.Tensor, query_mask: torch.Tensor
) -> torch.Tensor:
    """
    Share of attention each layer and head gives to each category of key positions, averaged over query positions.

    Args:
        attentions (`Sequence[torch.FloatTensor]`): Per layer, weights of shape `(batch, heads, queries, keys)` (rows
            sum to one), as returned with `output_attentions=True`.
        key_categories (`torch.LongTensor` of shape `(batch, keys)`): Category index of every key position
            (`0..len(ATTENTION_CATEGORIES)-1`).
        query_mask (`torch.BoolTensor` of shape `(batch, queries)`): Query positions to average over.

    Returns:
        `torch.FloatTensor` of shape `(batch, layers, heads, len(ATTENTION_CATEGORIES))`; rows with no query position
        are NaN.
    """
    if not attentions:
        raise ValueError("No attention weights; run the model with output_attentions=True and eager attention.")
    if any(a is None for a in attentions):
        raise ValueError("Attention weights are None; switch the model to eager attention (see eager_attention).")
    num_categories = len(ATTENTION_CATEGORIES)
    onehot = torch.nn.functional.one_hot(key_categories.long(), num_categories).float()  # (B, K, C)
    weights = query_mask.float()
    counts = weights.sum(dim=1)  # (B,)
    per_layer = []
    for layer in attentions:
        shares = layer.float() @ onehot.to(layer.device)[:, None]  # (B, H, Q, C)
        summed = (shares * weights.to(layer.device)[:, None, :, None]).sum(dim=2)  # (B, H, C)
        per_layer.append(summed.cpu())
    stacked = torch.stack(per_layer, dim=1)  # (B, L, H, C)
    return stacked / counts[:, None, None, None]


def _sentence_spans(tokenizer, report_ids: Sequence[int], eos: set[int]) -> list[tuple[int, int, str]]:
    """`(start, end, text)` token spans of the report's sentences (EOS excluded)."""
    ids = [i for i in report_ids]
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    spans, start = [], 0
    for index in range(len(ids)):
        piece = tokenizer.decode(ids[start : index + 1])
        end = bool(_SENTENCE_END.search(piece)) and not _LIST_NUMBER.search(piece)
        if end and piece.rstrip().endswith(".") and index + 1 < len(ids):
            # "1.5": the next token continues a decimal number.
            end = not _DECIMAL.search(tokenizer.decode(ids[start : index + 2]))
        if end or index == len(ids) - 1:
            text = " ".join(piece.split())
            if text.strip(" .;!?"):
                spans.append((start, index + 1, text))
            start = index + 1
    return spans


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences/findings at `.`, `!`, `?` and `;` (decimal points and list numbers are kept)."""
    parts = re.split(r"(?<=[.!?;])(?<!\d\.)\s+", " ".join(text.split()))
    return [p for p in parts if p.strip(" .;!?")]


@torch.no_grad()
def teacher_forced_attention(
    model,
    records: Sequence[dict],
    pixel_values: torch.Tensor | None = None,
    num_views: torch.Tensor | None = None,
    attribution_layers: Sequence[int] | None = None,
    return_visual_attention: bool = False,
) -> list[dict]:
    """
    One forward pass with attention weights over prompt + report for a batch, reduced to attention shares.

    The batch is right-padded (causal attention then needs no position shift). Call it inside [`eager_attention`].

    Args:
        model ([`RRGForConditionalGeneration`]): The model (eager attention).
        records (`Sequence[dict]`): Per study, `prompt_ids` and `report_ids` (see [`generate_records`]). A text-only
            prompt (no image tokens, `pixel_values=None`) is allowed: its visual share is then zero.
        pixel_values (`torch.FloatTensor` of shape `(batch, views, C, H, W)`, *optional*): The studies' images.
        num_views (`torch.LongTensor` of shape `(batch,)`, *optional*): Views per study.
        attribution_layers (`Sequence[int]`, *optional*): Layers averaged for `visual_attention` (default: all).
        return_visual_attention (`bool`, *optional*): Also return, per predicting position, the attention to each
            visual token averaged over heads and `attribution_layers`.

    Returns:
        `list[dict]` per study: `shares` (`(layers, heads, categories)` numpy array), `bos_share` (`(layers, heads)`),
        `num_queries`, and with `return_visual_attention`, `visual_attention` (`(report_tokens, visual_tokens)`).
    """
    model = unwrap_model(model)
    check_model(model)
    if not records:
        raise ValueError("No studies in the batch.")
    device = model_device(model)
    image_token_id = int(model.config.image_token_id)
    sequences = [list(r["prompt_ids"]) + list(r["report_ids"]) for r in records]
    width = max(len(s) for s in sequences)
    batch = len(records)
    input_ids = torch.zeros((batch, width), dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    categories = torch.full((batch, width), ATTENTION_CATEGORIES.index("padding"), dtype=torch.long)
    query_mask = torch.zeros((batch, width), dtype=torch.bool)
    bos_index = torch.zeros(batch, dtype=torch.long)
    for row, (record, sequence) in enumerate(zip(records, sequences)):
        prompt_len, total = len(record["prompt_ids"]), len(sequence)
        if prompt_len == 0:
            raise ValueError(f"Study {row} has an empty prompt.")
        if image_token_id in record["report_ids"]:
            raise ValueError(f"Study {row}: the report contains the image token; generate with it suppressed.")
        ids = torch.tensor(sequence, dtype=torch.long)
        input_ids[row, :total] = ids
        attention_mask[row, :total] = 1
        prompt = torch.arange(total) < prompt_len
        categories[row, :total] = torch.where(
            prompt,
            torch.tensor(ATTENTION_CATEGORIES.index("instruction")),
            torch.tensor(ATTENTION_CATEGORIES.index("report")),
        )
        categories[row, :total][ids == image_token_id] = ATTENTION_CATEGORIES.index("visual")
        # Position t predicts token t + 1: the last prompt token predicts the first report token.
        query_mask[row, prompt_len - 1 : total - 1] = True
        if not record["report_ids"]:
            query_mask[row, prompt_len - 1] = True
    kwargs = {}
    if pixel_values is not None:
        kwargs = {"pixel_values": pixel_values.to(device), "num_views": None if num_views is None else num_views.to(device)}
    output = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        output_attentions=True,
        use_cache=False,
        return_dict=True,
        logits_to_keep=1,  # the logits are not needed; keep memory for the attention maps
        **kwargs,
    )
    attentions = output.attentions
    shares = attention_category_shares(attentions, categories, query_mask)  # (B, L, H, C)
    bos = torch.stack([a[torch.arange(batch), :, :, bos_index].float().cpu() for a in attentions], dim=1)  # (B, L, H, Q)
    bos = (bos * query_mask[:, None, None, :]).sum(-1) / query_mask.sum(-1)[:, None, None]
    results = []
    layers = list(range(len(attentions))) if attribution_layers is None else list(attribution_layers)
    for row in range(len(records)):
        item = {"shares": shares[row].numpy(), "bos_share": bos[row].numpy(), "num_queries": int(query_mask[row].sum())}
        if return_visual_attention:
            visual = categories[row] == ATTENTION_CATEGORIES.index("visual")
            queries = query_mask[row]
            maps = torch.stack([attentions[i][row].float().mean(0).cpu() for i in layers]).mean(0)  # (Q, K)
            item["visual_attention"] = maps[queries][:, visual].numpy()
        results.append(item)
    del output, attentions
    return results


def attention_share_analysis(
    model,
    processor,
    studies,
    max_new_tokens: int = 64,
    batch_size: int = 4,
) -> dict:
    """
    Attention shares (visual / instruction / report / padding) per layer and head while the report is written.

    Args:
        model ([`RRGForConditionalGeneration`]): The model (switched to eager attention for the analysis pass and back).
        processor ([`RRGProcessor`]): Its processor.
        studies: `(id, images)` pairs (or dicts with `id` and `images`).
        max_new_tokens (`int`, *optional*, defaults to 64): Report length limit.
        batch_size (`int`, *optional*, defaults to 4): Studies per pass.

    Returns:
        `dict` with `categories`, `per_study` (array `(studies, layers, heads, categories)`), `layer_mean` /
        `layer_std` (`(layers, categories)`, head-averaged, spread across studies), `head_mean` / `head_std`
        (`(layers, heads, categories)`), `bos_layer_mean` / `bos_layer_std`, `ids`, `reports`, `num_report_tokens`.
    """
    model = unwrap_model(model)
    records = generate_records(model, processor, studies, max_new_tokens=max_new_tokens, batch_size=batch_size)
    per_study, bos = [], []
    with eager_attention(model):
        for batch in tqdm(list(batches(records, batch_size)), desc="Attention", disable=len(records) <= batch_size):
            pixel_values, num_views = processor.encode_images([r["views"] for r in batch])
            for item in teacher_forced_attention(model, batch, pixel_values, num_views):
                per_study.append(item["shares"])
                bos.append(item["bos_share"].mean(-1))
    per_study = np.stack(per_study)  # (S, L, H, C)
    bos = np.stack(bos)  # (S, L)
    head_avg = per_study.mean(axis=2)  # (S, L, C)
    return {
        "categories": list(ATTENTION_CATEGORIES),
        "ids": [r["id"] for r in records],
        "reports": [r["report"] for r in records],
        "num_report_tokens": [len(r["report_ids"]) for r in records],
        "per_study": per_study,
        "layer_mean": head_avg.mean(axis=0),
        "layer_std": head_avg.std(axis=0),
        "head_mean": per_study.mean(axis=0),
        "head_std": per_study.std(axis=0),
        "bos_layer_mean": bos.mean(axis=0),
        "bos_layer_std": bos.std(axis=0),
    }
