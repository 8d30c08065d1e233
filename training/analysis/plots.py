"""Plots of the analyses (PNG files written atomically; matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..fileio import write_bytes_atomic

__all__ = ['plot_embedding_analysis', 'plot_attention_shares', 'plot_attribution', 'plot_comparison']


def save_figure(fig, path: str | os.PathLike, title: str = "") -> Path:
    """Lay out `fig` (with a title), write it as PNG atomically and close it; returns the path."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    if fig.get_layout_engine() is None:  # figures made with a layout engine (constrained) lay themselves out
        fig.tight_layout()
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_embedding_analysis(result: dict, path: str | os.PathLike, top_n: int = 20, title: str = "") -> Path:
    """Histogram of visual vs word-embedding norms, top-1 cosine similarities and the most frequent nearest words."""
    plt = pyplot()
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
    return save_figure(fig, path, title)


def plot_attention_shares(result: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Per-layer attention shares (mean ± std across studies) and a layer x head map of the visual share."""
    plt = pyplot()
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
    return save_figure(fig, path, title)


def plot_attribution(result: dict, path: str | os.PathLike, max_sentences: int = 8, display_size: int = 256,
                     views: Sequence[int] | None = None) -> Path:
    """Heat maps of each sentence's attention to the visual tokens, over each view (rows: sentences, columns: views);
    `views` picks which views (indices) to draw, default all."""
    from PIL import Image

    from modeling_rrg.processing_rrg import to_pil_image

    plt = pyplot()
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
    return save_figure(fig, path)


def plot_comparison(results: dict[str, dict], path: str | os.PathLike) -> Path:
    """Norms and per-layer visual attention share of several models (e.g. stage 1 vs stage 2)."""
    plt = pyplot()
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
    return save_figure(fig, path)
