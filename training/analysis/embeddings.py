"""Soft visual prompts against the LLM's word embeddings: norms, nearest words, their frequencies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .studies import as_views, batches, check_model, decode_token, model_device, normalise_studies, unwrap_model

__all__ = ['soft_visual_prompts', 'special_token_ids', 'nearest_words', 'embedding_analysis']


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
    model = unwrap_model(model)
    check_model(model)
    studies = normalise_studies(studies)
    device = model_device(model)
    out = []
    for batch in tqdm(list(batches(studies, batch_size)), desc="Soft visual prompts", disable=len(studies) <= batch_size):
        pixel_values, num_views = processor.encode_images([as_views(images) for _, images in batch])
        features = model.get_image_features(pixel_values.to(device), num_views.to(device)).pooler_output.float().cpu()
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
    model = unwrap_model(model)
    check_model(model)
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
                "top1_words_first_tokens": [decode_token(tokenizer, i) for i in ids[:8, 0].tolist()],
            }
        )
    visual_norms = np.concatenate(visual_norms)
    top1_sims = np.concatenate(top1_sims)
    total = int(top1_sims.size)
    word_counts = [
        {
            "token_id": int(token_id),
            "word": decode_token(tokenizer, token_id),
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
                "word": decode_token(tokenizer, token_id),
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
