"""Analyses of a trained rrg model: its soft visual prompts and the LLM's attention to them (Lu et al., 2023, §5).

This is the plain-Python API behind `rrg analyze`. Three analyses, each usable on its own:

- **Soft visual prompts vs word embeddings** ([`embedding_analysis`]): L2 norms of the projector's visual tokens
  against the norms of the LLM's (non-special) input word embeddings, and, per visual token, the cosine similarity to
  its nearest word embeddings and which words those are ([`nearest_words`]), aggregated over a split (how often each
  word is a visual token's nearest word, and the most frequent nearest word per visual-token position).
- **Attention shares while the report is written** ([`attention_share_analysis`]): the report is generated
  greedily, then one teacher-forced forward over prompt + generated report runs with eager attention
  ([`eager_attention`], which returns the weights and gives the same logits as SDPA). For every position that
  *predicts* a report token (the last prompt token, then every report token but the last), the attention mass per
  layer and head is split into `visual` (the image-token positions), `instruction` (all other prompt tokens: BOS,
  newlines, the instruction and the `Report:` marker; BOS alone is also given as `bos`), `report` (the report
  tokens written so far) and `padding` (always ~0; it is there so the shares sum to one over all positions). Shares
  are averaged over the predicting positions of a study, then mean and standard deviation are taken across studies.
- **Per-sentence attribution for one study** ([`token_attribution`]): the generated report is split into sentences;
  for each sentence, the attention from the positions predicting its tokens to each visual token is averaged over
  heads and the chosen layers (all by default), renormalised over the visual tokens, mapped back to the patch grid
  (pooled tokens to the pooled grid; CLS/register tokens of the `"full"` strategy are dropped and their share
  reported) and drawn over the X-ray, one panel per sentence and view.

[`run_analysis`] runs everything over a split of an annotation file and writes PNG plots, the numbers behind them
(`analysis.json` and CSVs) and `summary.md`; with a second (e.g. stage 1) model it also writes a comparison.

It scales to a 7B model on a GPU by batching (`batch_size`; attention maps of one batch are reduced as soon as they
are computed, but `output_attentions` still holds all layers of one batch at once, so use a small batch with many
visual tokens) and by sampling a subset of the split (`max_studies`).

Usage::

    rrg analyze --model outputs/demo/stage2 --compare-model outputs/demo/stage1 \\
        --data data/synthetic/annotation.json --split test --max-studies 32 --output-dir outputs/analysis
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import re
import textwrap
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fileio import write_bytes_atomic, write_text_atomic


logger = logging.getLogger(__name__)

__all__ = [
    "ATTENTION_CATEGORIES",
    "eager_attention",
    "load_split_studies",
    "soft_visual_prompts",
    "special_token_ids",
    "nearest_words",
    "embedding_analysis",
    "generate_reports",
    "attention_category_shares",
    "teacher_forced_attention",
    "attention_share_analysis",
    "split_sentences",
    "visual_token_grid",
    "token_attribution",
    "plot_embedding_analysis",
    "plot_attention_shares",
    "plot_attribution",
    "plot_comparison",
    "analyze_model",
    "run_analysis",
    "build_parser",
    "main",
]

# Where each key position of the teacher-forced sequence belongs; the shares over these sum to one.
ATTENTION_CATEGORIES = ("visual", "instruction", "report", "padding")
_SENTENCE_END = re.compile(r"[.!?;]\s*$")
# A list number ("1." opening a sentence or following "Findings:") does not end a sentence.
_LIST_NUMBER = re.compile(r"(?:^|:)\s*\d{1,2}\.\s*$")
_DECIMAL = re.compile(r"\d\.\d+\s*$")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Not JSON serialisable: {type(value).__name__}")


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    _write_text(path, buffer.getvalue())


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _unwrap(model):
    """The `RRGForConditionalGeneration` inside a (non-merged) PeftModel, or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _check_model(model) -> None:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "image_token_id", None) is None or not hasattr(model, "get_image_features"):
        raise TypeError(
            f"Expected an RRGForConditionalGeneration (e.g. from training.sft.loading.load_trained), got {type(model).__name__}."
        )


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _decode_token(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([int(token_id)])
    if "\ufffd" in text or not text.isprintable():
        # A byte-level piece of a multi-byte character, or a control character: show the vocabulary entry instead.
        raw = tokenizer.convert_ids_to_tokens(int(token_id))
        return raw if isinstance(raw, str) and raw.isprintable() else repr(text)
    stripped = text.strip()
    return stripped if stripped else repr(text)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------------------------
# Eager attention
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def load_split_studies(
    data_path: str | os.PathLike,
    split: str = "test",
    image_root: str | os.PathLike | None = None,
    max_studies: int | None = None,
    seed: int = 0,
    include_ids: Sequence[str] = (),
) -> list[dict]:
    """
    Studies of one split of a dataset, optionally a random subset.

    Args:
        data_path (`str` or `os.PathLike`):
            Anything `rrg train` and `rrg evaluate` read: an `annotation.json` (or a folder holding one) or a Hugging
            Face dataset (see [`training.data.loaders.load_splits`]).
        split (`str`, *optional*, defaults to `"test"`): `"train"`, `"val"`/`"validation"` or `"test"`.
        image_root (`str` or `os.PathLike`, *optional*): Folder the image paths are relative to.
        max_studies (`int`, *optional*): Sample this many studies (seeded, kept in file order); `None` keeps all.
        seed (`int`, *optional*, defaults to 0): Seed of the subset.
        include_ids (`Sequence[str]`, *optional*): Study ids that must be in the subset (e.g. the attribution study).

    Returns:
        `list[dict]` with `id`, `images` (list of absolute paths) and `report`.
    """
    from ..data.loaders import load_splits, split_key

    rows = load_splits(data_path, splits=[split], image_root=image_root)[split_key(split)]
    ids = list(rows["id"])
    missing = [i for i in include_ids if i not in ids]
    if missing:
        raise ValueError(
            f"Study id(s) {missing} are not in split {split!r} of {data_path} (first ids: {ids[:5]}); "
            "pass an id of that split or choose another --split."
        )
    indices = list(range(len(ids)))
    if max_studies is not None and max_studies < len(indices):
        if max_studies < 1:
            raise ValueError(f"max_studies must be >= 1, got {max_studies}.")
        forced = {ids.index(i) for i in include_ids}
        rest = [i for i in indices if i not in forced]
        chosen = forced | set(random.Random(seed).sample(rest, max(0, max_studies - len(forced))))
        indices = sorted(chosen)
    return [{"id": ids[i], "images": list(rows[i]["image_path"]), "report": rows[i]["report"]} for i in indices]


def _as_views(images) -> list:
    """A study's views, loading paths with `training.data.images.load_image` (DICOM, 16-bit PNG)."""
    views = list(images) if isinstance(images, (list, tuple)) else [images]
    if not views:
        raise ValueError("A study has no images; every study needs at least one view.")
    out = []
    for view in views:
        if isinstance(view, (str, os.PathLike)):
            from ..data.images import load_image

            view = load_image(view)
        out.append(view)
    return out


def _normalise_studies(studies) -> list[tuple[str, list]]:
    """Accept `[(id, images), ...]` or `[{"id": ..., "images" | "image_path": ...}, ...]`."""
    out = []
    for index, study in enumerate(studies):
        if isinstance(study, dict):
            images = study.get("images", study.get("image_path"))
            if images is None:
                raise ValueError(f"Study {index} has no 'images' (or 'image_path') entry.")
            out.append((str(study.get("id", index)), images))
        elif isinstance(study, (list, tuple)) and len(study) == 2:
            out.append((str(study[0]), study[1]))
        else:
            raise TypeError(
                f"Study {index} is a {type(study).__name__}; pass (id, images) pairs or dicts with 'id' and 'images'."
            )
    if not out:
        raise ValueError("No studies given; pass at least one (id, images) pair.")
    return out


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# Soft visual prompts vs word embeddings
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def soft_visual_prompts(model, processor, studies, batch_size: int = 8) -> list[tuple[str, torch.Tensor]]:
    """
    The projector's output (soft visual prompts) of each study.

    Args:
        model ([`RRGForConditionalGeneration`]): The model.
        processor ([`RRGProcessor`]): Its processor.
        studies: `(id, images)` pairs (or dicts with `id` and `images`); images are paths, PIL images or arrays.
        batch_size (`int`, *optional*, defaults to 8): Studies per encoder pass.

    Returns:
        `list[tuple[str, torch.FloatTensor]]`: per study, its id and a float32 CPU tensor of shape
        `(num_views, tokens_per_view, hidden_size)`.
    """
    model = _unwrap(model)
    _check_model(model)
    studies = _normalise_studies(studies)
    device = _model_device(model)
    out = []
    for batch in tqdm(list(_batches(studies, batch_size)), desc="Soft visual prompts", disable=len(studies) <= batch_size):
        pixel_values, num_views = processor.encode_images([_as_views(images) for _, images in batch])
        features = model.get_image_features(pixel_values.to(device), num_views.to(device)).float().cpu()
        start = 0
        for (study_id, _), count in zip(batch, num_views.tolist()):
            out.append((study_id, features[start : start + count]))
            start += count
    return out


def special_token_ids(tokenizer, vocab_size: int | None = None) -> list[int]:
    """Ids excluded from the nearest-word search: the tokenizer's special tokens (image token included)."""
    ids = set(int(i) for i in tokenizer.all_special_ids)
    image_token = getattr(tokenizer, "image_token", None)
    if image_token:
        ids.add(int(tokenizer.convert_tokens_to_ids(image_token)))
    if vocab_size is not None:
        ids = {i for i in ids if 0 <= i < vocab_size}
    return sorted(ids)


@torch.no_grad()
def nearest_words(
    visual_tokens: torch.Tensor,
    embedding_matrix: torch.Tensor,
    exclude_ids: Sequence[int] = (),
    top_k: int = 5,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Cosine similarity of each visual token to every word embedding, and the `top_k` nearest words.

    Args:
        visual_tokens (`torch.FloatTensor` of shape `(num_tokens, hidden_size)`): Soft visual prompts.
        embedding_matrix (`torch.FloatTensor` of shape `(vocab_size, hidden_size)`): The LLM's input embeddings.
        exclude_ids (`Sequence[int]`, *optional*): Rows never returned (special tokens).
        top_k (`int`, *optional*, defaults to 5): Neighbours per visual token.
        chunk_size (`int`, *optional*, defaults to 1024): Visual tokens per matrix product (memory bound for 7B).

    Returns:
        `(similarities, ids)`, both of shape `(num_tokens, top_k)`, most similar first.
    """
    if visual_tokens.dim() != 2 or embedding_matrix.dim() != 2:
        raise ValueError(
            f"visual_tokens and embedding_matrix must be 2D, got {tuple(visual_tokens.shape)} and "
            f"{tuple(embedding_matrix.shape)}; flatten the views and tokens first."
        )
    if visual_tokens.shape[1] != embedding_matrix.shape[1]:
        raise ValueError(
            f"Visual tokens have dimension {visual_tokens.shape[1]} but word embeddings {embedding_matrix.shape[1]}; "
            "pass the projector's output (soft visual prompts), not the encoder features."
        )
    vocab = embedding_matrix.shape[0]
    allowed = vocab - len({i for i in exclude_ids if 0 <= i < vocab})
    if top_k < 1 or top_k > allowed:
        raise ValueError(f"top_k must be between 1 and {allowed} (the non-excluded vocabulary), got {top_k}.")
    words = torch.nn.functional.normalize(embedding_matrix.float(), dim=-1)
    penalty = torch.zeros(vocab, device=words.device)
    if len(exclude_ids):
        penalty[torch.as_tensor(list(exclude_ids), dtype=torch.long, device=words.device)] = float("-inf")
    sims, ids = [], []
    starts = range(0, visual_tokens.shape[0], chunk_size)
    for start in tqdm(starts, desc="Nearest words", disable=len(starts) < 8):
        chunk = torch.nn.functional.normalize(visual_tokens[start : start + chunk_size].float().to(words.device), dim=-1)
        scores = chunk @ words.T + penalty
        value, index = scores.topk(top_k, dim=-1)
        sims.append(value.cpu())
        ids.append(index.cpu())
    return torch.cat(sims), torch.cat(ids)


def _summary_stats(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


@torch.no_grad()
def embedding_analysis(model, processor, studies, top_k: int = 5, batch_size: int = 8) -> dict:
    """
    Compare the soft visual prompts of a set of studies with the LLM's word embeddings.

    Args:
        model ([`RRGForConditionalGeneration`]): The model.
        processor ([`RRGProcessor`]): Its processor.
        studies: `(id, images)` pairs (or dicts with `id` and `images`).
        top_k (`int`, *optional*, defaults to 5): Nearest words kept per visual token.
        batch_size (`int`, *optional*, defaults to 8): Studies per encoder pass.

    Returns:
        `dict` with `visual_norms` / `text_norms` (arrays: per visual token over all studies, per non-special vocabulary
        row), their summary statistics, `top1_similarity` (array), `word_counts` (top-1 and top-k frequency of each
        word over all visual tokens), `by_position` (most frequent top-1 word per visual-token position) and
        `per_study` (first visual tokens' nearest words of each study).
    """
    model = _unwrap(model)
    _check_model(model)
    tokenizer = processor.tokenizer
    embeddings = model.get_input_embeddings().weight.detach()
    # Rows past the tokenizer (padding to a multiple) are not words.
    vocab = min(embeddings.shape[0], len(tokenizer))
    exclude = special_token_ids(tokenizer, vocab)
    keep = torch.ones(vocab, dtype=torch.bool)
    keep[exclude] = False
    text_norms = embeddings[:vocab].float().norm(dim=-1).cpu()[keep].numpy()

    prompts = soft_visual_prompts(model, processor, studies, batch_size=batch_size)
    tokens_per_view = prompts[0][1].shape[1]
    top1_counts: Counter = Counter()
    topk_counts: Counter = Counter()
    sim_sum: Counter = Counter()
    position_counts = [Counter() for _ in range(tokens_per_view)]
    position_sims = np.zeros(tokens_per_view)
    position_n = np.zeros(tokens_per_view)
    # One search over all visual tokens: the (normalised) embedding matrix is built once, chunks bound the memory.
    flat_all = torch.cat([features.reshape(-1, features.shape[-1]) for _, features in prompts])
    all_sims, all_ids = nearest_words(flat_all, embeddings[:vocab], exclude, top_k=top_k)
    visual_norms, top1_sims, per_study = [], [], []
    start = 0
    for study_id, features in prompts:
        count = features.shape[0] * features.shape[1]
        flat, sims, ids = flat_all[start : start + count], all_sims[start : start + count], all_ids[start : start + count]
        start += count
        visual_norms.append(flat.norm(dim=-1).numpy())
        top1_sims.append(sims[:, 0].numpy())
        for row, (sim_row, id_row) in enumerate(zip(sims.tolist(), ids.tolist())):
            position = row % tokens_per_view
            top1_counts[id_row[0]] += 1
            sim_sum[id_row[0]] += sim_row[0]
            topk_counts.update(id_row)
            position_counts[position][id_row[0]] += 1
            position_sims[position] += sim_row[0]
            position_n[position] += 1
        per_study.append(
            {
                "id": study_id,
                "num_views": int(features.shape[0]),
                "mean_top1_similarity": float(sims[:, 0].mean()),
                "top1_words_first_tokens": [_decode_token(tokenizer, i) for i in ids[:8, 0].tolist()],
            }
        )
    visual_norms = np.concatenate(visual_norms)
    top1_sims = np.concatenate(top1_sims)
    total = int(top1_sims.size)
    word_counts = [
        {
            "token_id": int(token_id),
            "word": _decode_token(tokenizer, token_id),
            "top1_count": int(top1_counts[token_id]),
            "top1_fraction": top1_counts[token_id] / total,
            "topk_count": int(topk_counts[token_id]),
            "mean_top1_similarity": (sim_sum[token_id] / top1_counts[token_id]) if top1_counts[token_id] else None,
        }
        for token_id in sorted(topk_counts, key=lambda i: (-top1_counts[i], -topk_counts[i], i))
    ]
    by_position = []
    for position, counts in enumerate(position_counts):
        token_id, count = counts.most_common(1)[0]
        by_position.append(
            {
                "position": position,
                "word": _decode_token(tokenizer, token_id),
                "token_id": int(token_id),
                "fraction_of_studies": count / position_n[position],
                "mean_top1_similarity": position_sims[position] / position_n[position],
            }
        )
    text_mean = float(text_norms.mean()) if text_norms.size else float("nan")
    return {
        "num_studies": len(prompts),
        "tokens_per_view": int(tokens_per_view),
        "num_visual_tokens": total,
        "top_k": top_k,
        "visual_norms": visual_norms,
        "text_norms": text_norms,
        "visual_norm_stats": _summary_stats(visual_norms),
        "text_norm_stats": _summary_stats(text_norms),
        "norm_ratio": float(visual_norms.mean() / text_mean) if text_mean else float("nan"),
        "top1_similarity": top1_sims,
        "top1_similarity_stats": _summary_stats(top1_sims),
        "distinct_top1_words": len(top1_counts),
        "word_counts": word_counts,
        "by_position": by_position,
        "per_study": per_study,
    }


# --------------------------------------------------------------------------------------------
# Generation + teacher-forced attention
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_reports(model, processor, studies, max_new_tokens: int = 64, batch_size: int = 4) -> list[dict]:
    """
    Greedy reports for a set of studies, keeping the token ids the attention pass needs.

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
    model = _unwrap(model)
    _check_model(model)
    studies = _normalise_studies(studies)
    tokenizer = processor.tokenizer
    device = _model_device(model)
    eos = _eos_ids(model, tokenizer)
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    results = []
    for batch in tqdm(list(_batches(studies, batch_size)), desc="Generating", disable=len(studies) <= batch_size):
        views = [_as_views(images) for _, images in batch]
        inputs = processor(images=views, padding_side="left")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            # A generated image token would be taken for a visual-prompt slot in the teacher-forced pass.
            suppress_tokens=[int(model.config.image_token_id)],
        )
        width = inputs["input_ids"].shape[1]
        for row, (study_id, _) in enumerate(batch):
            prompt = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
            generated = output[row, width:].tolist()
            for index, token in enumerate(generated):
                if token in eos:
                    generated = generated[: index + 1]
                    break
            results.append(
                {
                    "id": study_id,
                    "views": views[row],
                    "prompt_ids": prompt,
                    "report_ids": generated,
                    "report": processor.decode(generated),
                }
            )
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
        records (`Sequence[dict]`): Per study, `prompt_ids` and `report_ids` (see [`generate_reports`]). A text-only
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
    model = _unwrap(model)
    _check_model(model)
    if not records:
        raise ValueError("No studies in the batch.")
    device = _model_device(model)
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
    for row, record in enumerate(records):
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
    model = _unwrap(model)
    records = generate_reports(model, processor, studies, max_new_tokens=max_new_tokens, batch_size=batch_size)
    per_study, bos = [], []
    with eager_attention(model):
        for batch in tqdm(list(_batches(records, batch_size)), desc="Attention", disable=len(records) <= batch_size):
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


# --------------------------------------------------------------------------------------------
# Per-sentence attribution
# --------------------------------------------------------------------------------------------
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
            `report_ids`, `report`, as [`generate_reports`] returns), e.g. the one a user was shown with another
            decoding or an indication; `study` and `max_new_tokens` are then ignored.

    Returns:
        `dict` with `id`, `report`, `views` (images), and `sentences`: per sentence its `text`, `visual_share`
        (raw attention mass on visual tokens) and `maps` (one 2D grid per view, summing to one over all views).
    """
    model = _unwrap(model)
    _check_model(model)
    config = model.config
    num_layers = config.text_config.num_hidden_layers
    if layers is not None:
        bad = [i for i in layers if not -num_layers <= i < num_layers]
        if bad:
            raise ValueError(f"Layer indices {bad} are out of range for a {num_layers}-layer LLM.")
        layers = sorted({i % num_layers for i in layers})
    if record is None:
        record = generate_reports(model, processor, [study], max_new_tokens=max_new_tokens, batch_size=1)[0]
    pixel_values, num_views = processor.encode_images([record["views"]])
    with eager_attention(model):
        result = teacher_forced_attention(
            model, [record], pixel_values, num_views, attribution_layers=layers, return_visual_attention=True
        )[0]
    visual = result["visual_attention"]  # (queries, visual tokens); query j predicts report token j
    tokens_per_view = config.image_seq_length
    eos = _eos_ids(model, processor.tokenizer)
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


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def plot_embedding_analysis(result: dict, path: str | os.PathLike, top_n: int = 20, title: str = "") -> Path:
    """Histogram of visual vs word-embedding norms, top-1 cosine similarities and the most frequent nearest words."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    axes[0].hist(result["text_norms"], bins=40, alpha=0.6, density=True, label="word embeddings")
    axes[0].hist(result["visual_norms"], bins=40, alpha=0.6, density=True, label="soft visual prompts")
    axes[0].set_xlabel("L2 norm")
    axes[0].set_ylabel("density")
    axes[0].set_title("Norms")
    axes[0].legend()
    axes[1].hist(result["top1_similarity"], bins=40, color="tab:green")
    axes[1].set_xlabel("cosine similarity to nearest word")
    axes[1].set_ylabel("visual tokens")
    axes[1].set_title("Nearest-word similarity")
    top = result["word_counts"][:top_n]
    axes[2].barh([w["word"] for w in top][::-1], [w["top1_fraction"] for w in top][::-1], color="tab:purple")
    axes[2].set_xlabel("fraction of visual tokens (top-1)")
    axes[2].set_title(f"Most frequent nearest words (top {len(top)})")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    _save_figure(fig, path)
    return path


def plot_attention_shares(result: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Per-layer attention shares (mean ± std across studies) and a layer x head map of the visual share."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    layers = np.arange(result["layer_mean"].shape[0])
    for name, color in zip(("visual", "instruction", "report"), ("tab:red", "tab:blue", "tab:green")):
        c = result["categories"].index(name)
        mean, std = result["layer_mean"][:, c], result["layer_std"][:, c]
        axes[0].errorbar(layers, mean, yerr=std, marker="o", capsize=3, color=color, label=name)
    axes[0].plot(layers, result["bos_layer_mean"], linestyle="--", color="tab:gray", label="BOS (part of instruction)")
    axes[0].set_xlabel("LLM layer")
    axes[0].set_ylabel("attention share")
    axes[0].set_ylim(0, 1)
    axes[0].set_xticks(layers)
    axes[0].set_title(f"Attention while writing the report ({len(result['ids'])} studies)")
    axes[0].legend()
    visual = result["head_mean"][:, :, result["categories"].index("visual")]
    image = axes[1].imshow(visual, aspect="auto", cmap="viridis", vmin=0)
    # Integer ticks (at most ~16 labels, so a 32 x 32 model stays readable).
    axes[1].set_xticks(np.arange(0, visual.shape[1], max(1, visual.shape[1] // 16)))
    axes[1].set_yticks(np.arange(0, visual.shape[0], max(1, visual.shape[0] // 16)))
    axes[1].set_xlabel("head")
    axes[1].set_ylabel("layer")
    axes[1].set_title("Visual share per head")
    fig.colorbar(image, ax=axes[1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    _save_figure(fig, path)
    return path


def plot_attribution(result: dict, path: str | os.PathLike, max_sentences: int = 8, display_size: int = 256,
                     views: Sequence[int] | None = None) -> Path:
    """Heat maps of each sentence's attention to the visual tokens, over each view (rows: sentences, columns: views);
    `views` picks which views (indices) to draw, default all."""
    from PIL import Image

    from modeling_rrg.processing_rrg import to_pil_image

    plt = _pyplot()
    sentences = result["sentences"][:max_sentences]
    chosen = list(range(len(result["views"]))) if views is None else list(views)
    bad = [i for i in chosen if not 0 <= i < len(result["views"])]
    if bad or not chosen:
        raise ValueError(f"View indices {chosen} out of range for a study with {len(result['views'])} view(s).")
    images = [to_pil_image(result["views"][i]).convert("L").resize((display_size, display_size), Image.BILINEAR)
              for i in chosen]
    rows, cols = max(1, len(sentences)), len(images)
    # Constrained layout reserves room for the figure title, so it is never drawn over the first row's captions.
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    for row in range(rows):
        for col, (view_index, view) in enumerate(zip(chosen, images)):
            ax = axes[row][col]
            ax.imshow(np.asarray(view), cmap="gray", extent=(0, display_size, display_size, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if row < len(sentences):
                sentence = sentences[row]
                # The processor resizes the whole image (no crop), so the token grid spans the full view.
                ax.imshow(sentence["maps"][view_index], cmap="jet", alpha=0.45, interpolation="bilinear",
                          extent=(0, display_size, display_size, 0))
                text = "".join(ch if ch.isprintable() else "?" for ch in sentence["text"])
                text = textwrap.shorten(text, width=90, placeholder="...") or text[:87] + "..."
                text = "\n".join(textwrap.wrap(text, width=45))
                ax.set_title(f"{text}\n(visual share {sentence['visual_share']:.2f}, view {view_index})", fontsize=8)
            else:
                ax.set_title("(no report generated)", fontsize=8)
    title = textwrap.fill(f"Study {result['id']}: attention of each sentence to the visual tokens "
                          f"(layers: {result['layers']})", width=max(40, 48 * cols))
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    _save_figure(fig, path)
    return path


def plot_comparison(results: dict[str, dict], path: str | os.PathLike) -> Path:
    """Norms and per-layer visual attention share of several models (e.g. stage 1 vs stage 2)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    first = next(iter(results.values()))
    axes[0].hist(first["embedding"]["text_norms"], bins=40, alpha=0.4, density=True, color="gray", label="word embeddings")
    for label, result in results.items():
        emb = result["embedding"]
        axes[0].hist(emb["visual_norms"], bins=40, alpha=0.5, density=True, label=f"visual ({label})")
        axes[1].hist(emb["top1_similarity"], bins=40, alpha=0.5, label=label)
        if result.get("attention") is not None:
            att = result["attention"]
            c = att["categories"].index("visual")
            layers = np.arange(att["layer_mean"].shape[0])
            axes[2].errorbar(layers, att["layer_mean"][:, c], yerr=att["layer_std"][:, c], marker="o", capsize=3,
                             label=label)
    axes[0].set_xlabel("L2 norm")
    axes[0].set_title("Norms")
    axes[0].legend()
    axes[1].set_xlabel("cosine similarity to nearest word")
    axes[1].set_title("Nearest-word similarity")
    axes[1].legend()
    axes[2].xaxis.get_major_locator().set_params(integer=True)
    axes[2].set_xlabel("LLM layer")
    axes[2].set_ylabel("visual attention share")
    axes[2].set_title("Attention to visual tokens")
    axes[2].legend()
    fig.tight_layout()
    path = Path(path)
    _save_figure(fig, path)
    return path


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------
def _embedding_json(result: dict, top_n: int = 50) -> dict:
    return {
        key: (value[:top_n] if key == "word_counts" else value)
        for key, value in result.items()
        if key not in ("visual_norms", "text_norms", "top1_similarity")
    }


def _attention_json(result: dict) -> dict:
    return {
        "categories": result["categories"],
        "num_studies": len(result["ids"]),
        "layer_mean": result["layer_mean"],
        "layer_std": result["layer_std"],
        "bos_layer_mean": result["bos_layer_mean"],
        "bos_layer_std": result["bos_layer_std"],
        "overall_mean": result["layer_mean"].mean(axis=0),
        "studies": [
            {"id": i, "report": r, "num_report_tokens": n}
            for i, r, n in zip(result["ids"], result["reports"], result["num_report_tokens"])
        ],
    }


def _write_model_tables(out: Path, label: str, result: dict) -> list[str]:
    files = []
    emb = result["embedding"]
    _write_csv(
        out / f"nearest_words_{label}.csv",
        ["word", "token_id", "top1_count", "top1_fraction", "topk_count", "mean_top1_similarity"],
        [[w["word"], w["token_id"], w["top1_count"], w["top1_fraction"], w["topk_count"], w["mean_top1_similarity"]]
         for w in emb["word_counts"]],
    )
    _write_csv(
        out / f"nearest_words_by_position_{label}.csv",
        ["position", "word", "token_id", "fraction_of_studies", "mean_top1_similarity"],
        [[p["position"], p["word"], p["token_id"], float(p["fraction_of_studies"]), float(p["mean_top1_similarity"])]
         for p in emb["by_position"]],
    )
    _write_csv(
        out / f"norms_{label}.csv",
        ["kind", "count", "mean", "std", "min", "median", "max"],
        [[kind] + [stats.get(k) for k in ("count", "mean", "std", "min", "median", "max")]
         for kind, stats in (("visual", emb["visual_norm_stats"]), ("text", emb["text_norm_stats"]),
                             ("top1_cosine", emb["top1_similarity_stats"]))],
    )
    files += [f"nearest_words_{label}.csv", f"nearest_words_by_position_{label}.csv", f"norms_{label}.csv"]
    att = result.get("attention")
    if att is not None:
        cats = att["categories"]
        _write_csv(
            out / f"attention_layers_{label}.csv",
            ["layer"] + [f"{c}_{s}" for c in cats for s in ("mean", "std")] + ["bos_mean", "bos_std"],
            [[layer] + [float(att[f"layer_{s}"][layer, i]) for i in range(len(cats)) for s in ("mean", "std")]
             + [float(att["bos_layer_mean"][layer]), float(att["bos_layer_std"][layer])]
             for layer in range(att["layer_mean"].shape[0])],
        )
        _write_csv(
            out / f"attention_heads_{label}.csv",
            ["layer", "head"] + [f"{c}_{s}" for c in cats for s in ("mean", "std")],
            [[layer, head] + [float(att[f"head_{s}"][layer, head, i]) for i in range(len(cats)) for s in ("mean", "std")]
             for layer in range(att["head_mean"].shape[0]) for head in range(att["head_mean"].shape[1])],
        )
        files += [f"attention_layers_{label}.csv", f"attention_heads_{label}.csv"]
    return files


def _comparison_rows(results: dict[str, dict]) -> list[list]:
    metrics = [
        ("visual_norm_mean", lambda r: r["embedding"]["visual_norm_stats"]["mean"]),
        ("text_norm_mean", lambda r: r["embedding"]["text_norm_stats"]["mean"]),
        ("visual_to_text_norm_ratio", lambda r: r["embedding"]["norm_ratio"]),
        ("top1_cosine_mean", lambda r: r["embedding"]["top1_similarity_stats"]["mean"]),
        ("distinct_top1_words", lambda r: r["embedding"]["distinct_top1_words"]),
        ("top1_words", lambda r: " ".join(w["word"] for w in r["embedding"]["word_counts"][:5])),
    ]
    for name in ("visual", "instruction", "report"):
        metrics.append(
            (f"attention_{name}_share_mean",
             lambda r, n=name: float(r["attention"]["layer_mean"][:, ATTENTION_CATEGORIES.index(n)].mean())
             if r.get("attention") is not None else None)
        )
    return [[name] + [fn(r) for r in results.values()] for name, fn in metrics]


def _word_overlap(results: dict[str, dict], top_n: int = 20) -> float | None:
    if len(results) < 2:
        return None
    sets = [{w["token_id"] for w in r["embedding"]["word_counts"][:top_n]} for r in results.values()]
    union = set.union(*sets)
    return len(set.intersection(*sets)) / len(union) if union else None


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _summary_markdown(meta: dict, results: dict[str, dict], attribution: dict | None, files: list[str]) -> str:
    lines = ["# Soft visual prompt and attention analysis", ""]
    lines += [f"- {key}: `{value}`" for key, value in meta.items()]
    lines.append("")
    for label, result in results.items():
        emb = result["embedding"]
        lines += [f"## {label}: soft visual prompts vs word embeddings", ""]
        lines += [
            f"{emb['num_visual_tokens']} visual tokens from {emb['num_studies']} studies "
            f"({emb['tokens_per_view']} per view).",
            "",
            "| | mean | std | min | median | max |",
            "|---|---|---|---|---|---|",
        ]
        for kind, stats in (("visual token norm", emb["visual_norm_stats"]), ("word embedding norm", emb["text_norm_stats"]),
                            ("cosine to nearest word", emb["top1_similarity_stats"])):
            lines.append(f"| {kind} | " + " | ".join(_fmt(stats.get(k)) for k in ("mean", "std", "min", "median", "max")) + " |")
        top = ", ".join(f"`{w['word']}` ({w['top1_fraction']:.1%})" for w in emb["word_counts"][:10])
        lines += ["", f"Visual tokens are {emb['norm_ratio']:.3g}x as long as word embeddings on average; "
                  f"{emb['distinct_top1_words']} distinct nearest words. Most frequent: {top}.", ""]
        att = result.get("attention")
        if att is not None:
            lines += [f"## {label}: attention while writing the report", "",
                      "Mean ± std across studies, heads averaged. `instruction` includes BOS (also shown alone).", "",
                      "| layer | visual | instruction | report | BOS |", "|---|---|---|---|---|"]
            for layer in range(att["layer_mean"].shape[0]):
                cells = [f"{att['layer_mean'][layer, i]:.3f} ± {att['layer_std'][layer, i]:.3f}" for i in range(3)]
                cells.append(f"{att['bos_layer_mean'][layer]:.3f} ± {att['bos_layer_std'][layer]:.3f}")
                lines.append(f"| {layer} | " + " | ".join(cells) + " |")
            lines.append("")
    if len(results) > 1:
        labels = list(results)
        lines += ["## Comparison", "", "| metric | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in _comparison_rows(results)]
        overlap = _word_overlap(results)
        lines += ["", f"Jaccard overlap of the 20 most frequent nearest words: {_fmt(overlap)}.", ""]
    if attribution is not None:
        lines += [f"## Attribution for study `{attribution['id']}`", "", f"Report: {attribution['report'] or '(empty)'}", "",
                  f"![attribution](attribution_{_safe(attribution['id'])}.png)", ""]
        for sentence in attribution["sentences"]:
            lines.append(f"- {sentence['text']} — visual share {sentence['visual_share']:.3f}")
        lines.append("")
    lines += ["## Files", ""] + [f"- `{name}`" for name in files]
    lines += ["", "Definitions: a position predicting a report token is the last prompt token and every report token "
              "but the last; its attention is split over the visual (image-token) positions, the other prompt "
              "tokens (instruction, incl. BOS and the `Report:` marker) and the report tokens so far. "
              "Attribution maps average heads and the listed layers and are renormalised over the visual tokens.", ""]
    return "\n".join(lines)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:80]


def analyze_model(
    model,
    processor,
    studies,
    max_new_tokens: int = 64,
    batch_size: int = 4,
    top_k: int = 5,
    attention: bool = True,
) -> dict:
    """Embedding analysis and (optionally) attention shares of one model over `studies`."""
    result = {"embedding": embedding_analysis(model, processor, studies, top_k=top_k, batch_size=batch_size)}
    result["attention"] = (
        attention_share_analysis(model, processor, studies, max_new_tokens=max_new_tokens, batch_size=batch_size)
        if attention
        else None
    )
    return result


def run_analysis(
    model,
    processor,
    studies,
    output_dir: str | os.PathLike,
    compare: tuple | None = None,
    labels: tuple[str, str] = ("model", "compare"),
    attribution_study=None,
    max_new_tokens: int = 64,
    batch_size: int = 4,
    top_k: int = 5,
    attribution_layers: Sequence[int] | None = None,
    meta: dict | None = None,
) -> dict:
    """
    Run all analyses and write plots, CSVs, `analysis.json` and `summary.md` into `output_dir`.

    Args:
        model ([`RRGForConditionalGeneration`]): The model to analyse.
        processor ([`RRGProcessor`]): Its processor.
        studies: `(id, images)` pairs (or dicts with `id` and `images`).
        output_dir (`str` or `os.PathLike`): Created if needed; files are written atomically.
        compare (`tuple` or callable, *optional*): `(model, processor)` of a second model (e.g. stage 1) analysed
            the same way, or a function returning it, called once the first model's analyses are done.
        labels (`tuple[str, str]`, *optional*): Names of the two models in files and tables.
        attribution_study (*optional*): The study for the attribution heat maps (default: the first of `studies`).
        max_new_tokens (`int`, *optional*, defaults to 64): Report length limit.
        batch_size (`int`, *optional*, defaults to 4): Studies per pass.
        top_k (`int`, *optional*, defaults to 5): Nearest words per visual token.
        attribution_layers (`Sequence[int]`, *optional*): LLM layers averaged for attribution (default: all).
        meta (`dict`, *optional*): Extra facts for the summary (paths, split).

    Returns:
        `dict`: the contents of `analysis.json`.
    """
    studies = _normalise_studies(studies)
    if len(set(labels)) != 2 or any(_safe(label) != label for label in labels):
        raise ValueError(f"labels must be two different file-name-safe names, got {labels}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {labels[0]: analyze_model(model, processor, studies, max_new_tokens, batch_size, top_k)}
    attribution_study = studies[0] if attribution_study is None else attribution_study
    attribution = token_attribution(model, processor, attribution_study, max_new_tokens, layers=attribution_layers)
    if compare is not None:
        # A callable lets the caller free the first model before the second is loaded (two 7B models rarely fit).
        compare_model, compare_processor = compare() if callable(compare) else compare
        results[labels[1]] = analyze_model(compare_model, compare_processor, studies, max_new_tokens, batch_size, top_k)
        del compare_model
    files = []
    for label, result in results.items():
        files += _write_model_tables(out, label, result)
        plot_embedding_analysis(result["embedding"], out / f"embeddings_{label}.png", title=label)
        plot_attention_shares(result["attention"], out / f"attention_{label}.png", title=label)
        files += [f"embeddings_{label}.png", f"attention_{label}.png"]
    if compare is not None:
        rows = _comparison_rows(results)
        _write_csv(out / "comparison.csv", ["metric"] + list(results), rows)
        plot_comparison(results, out / "comparison.png")
        files += ["comparison.csv", "comparison.png"]
    name = f"attribution_{_safe(attribution['id'])}"
    plot_attribution(attribution, out / f"{name}.png")
    _write_csv(
        out / f"{name}.csv",
        ["sentence", "text", "visual_share", "view", "row", "col", "weight"],
        [[s_index, sentence["text"], sentence["visual_share"], view, r, c, float(grid[r, c])]
         for s_index, sentence in enumerate(attribution["sentences"])
         for view, grid in enumerate(sentence["maps"])
         for r in range(grid.shape[0]) for c in range(grid.shape[1])],
    )
    files += [f"{name}.png", f"{name}.csv", "analysis.json", "summary.md"]
    meta = {**(meta or {}), "num_studies": len(studies), "max_new_tokens": max_new_tokens, "top_k": top_k,
            "seconds": round(time.perf_counter() - started, 2)}
    report = {
        "meta": meta,
        "models": {
            label: {"embedding": _embedding_json(r["embedding"]), "attention": _attention_json(r["attention"])}
            for label, r in results.items()
        },
        "comparison": None if compare is None else {
            "rows": _comparison_rows(results), "columns": ["metric"] + list(results),
            "top20_word_jaccard": _word_overlap(results),
        },
        "attribution": {
            "id": attribution["id"],
            "report": attribution["report"],
            "layers": attribution["layers"],
            "sentences": [{k: v for k, v in s.items()} for s in attribution["sentences"]],
        },
        "files": files,
    }
    _write_json(out / "analysis.json", report)
    _write_text(out / "summary.md", _summary_markdown(meta, results, attribution, files))
    logger.info("Analysis written to %s in %.1f s", out, meta["seconds"])
    return report


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _parse_layers(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ValueError(f"--attribution-layers must be 'all' or comma-separated ints like '-4,-3,-2,-1', got {text!r}.") from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrg analyze",
        description="Analyse a trained rrg model's soft visual prompts and the LLM's attention to them.",
    )
    parser.add_argument("--model", required=True, help="Trained folder (stage output or its model/ folder).")
    parser.add_argument("--compare-model", help="A second trained folder (e.g. stage 1) analysed the same way.")
    parser.add_argument("--data", required=True, help="annotation.json, a folder holding one, or a HF dataset.")
    parser.add_argument("--image-root", help="Folder the image paths are relative to (default: next to --data).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-studies", type=int, default=32, help="Random subset of the split (0: all).")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=5, help="Nearest words kept per visual token.")
    parser.add_argument("--study-id", help="Study for the attribution heat maps (default: first sampled).")
    parser.add_argument("--attribution-layers", default="all", help="'all' or comma-separated layer indices.")
    parser.add_argument("--labels", default="model,compare", help="Names of --model and --compare-model in outputs.")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="Default: bfloat16 on GPU, float32 on CPU.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=None,
                        help="CPU threads for torch (1 is fastest for the tiny demo model on a busy machine).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `rrg analyze`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..sft.loading import load_trained

    labels = tuple(part.strip() for part in args.labels.split(","))
    if len(labels) != 2:
        raise ValueError(f"--labels takes two comma-separated names, got {args.labels!r}.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise ValueError(f"--num-threads must be >= 1, got {args.num_threads}.")
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    studies = load_split_studies(
        args.data, split=args.split, image_root=args.image_root, max_studies=args.max_studies or None,
        seed=args.seed, include_ids=[args.study_id] if args.study_id else (),
    )
    attribution_study = next((s for s in studies if s["id"] == args.study_id), None) if args.study_id else None
    model, processor = load_trained(args.model, dtype=dtype, device=device)
    compare = None
    if args.compare_model:

        def compare():
            # Park the first model on the CPU so both never share the accelerator.
            if device != "cpu":
                model.to("cpu")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            return load_trained(args.compare_model, dtype=dtype, device=device)

    run_analysis(
        model, processor, studies, args.output_dir, compare=compare, labels=labels,
        attribution_study=attribution_study, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        top_k=args.top_k, attribution_layers=_parse_layers(args.attribution_layers),
        meta={"model": args.model, "compare_model": args.compare_model, "data": args.data, "split": args.split,
              "seed": args.seed, "device": device, "dtype": dtype_name},
    )
    return 0
