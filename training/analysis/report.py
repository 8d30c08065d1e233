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

    rrg analyze --model outputs/demo/stage2 --compare-model outputs/demo/stage1 \
        --data data/synthetic/annotation.json --split test --max-studies 32 --output-dir outputs/analysis
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arguments import DataArguments, parse_command
from ..fileio import write_text_atomic
from ..model_io import DTYPES, load_trained, parse_dtype
from .attention import ATTENTION_CATEGORIES, attention_share_analysis
from .attribution import token_attribution
from .embeddings import embedding_analysis
from .plots import plot_attention_shares, plot_attribution, plot_comparison, plot_embedding_analysis
from .studies import load_split_studies, normalise_studies

logger = logging.getLogger(__name__)

__all__ = ["AnalyzeArguments", "analyze_model", "run_analysis", "parse_args", "main"]


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
    studies = normalise_studies(studies)
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


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ValueError(f"--attribution-layers must be 'all' or comma-separated ints like '-4,-3,-2,-1', got {text!r}.") from err


@dataclass
class AnalyzeArguments:
    """The fields of `rrg analyze` that belong to this command alone (the data comes from [`DataArguments`], the group
    `rrg train` and `rrg evaluate` read too)."""

    model_name_or_path: str = field(
        metadata={"aliases": ["--model"], "help": "Trained folder (stage output or its model/ folder)."}
    )
    output_dir: str = field(metadata={"help": "Where plots, CSVs, analysis.json and summary.md are written."})
    compare_model: str | None = field(
        default=None, metadata={"help": "A second trained folder (e.g. stage 1) analysed the same way."}
    )
    split: str = field(default="test")
    max_studies: int = field(default=32, metadata={"help": "Random subset of the split (0: all)."})
    batch_size: int = field(default=4)
    max_new_tokens: int = field(default=64)
    top_k: int = field(default=5, metadata={"help": "Nearest words kept per visual token."})
    study_id: str | None = field(default=None, metadata={"help": "Study for the attribution heat maps (default: first sampled)."})
    attribution_layers: str = field(default="all", metadata={"help": "'all' or comma-separated layer indices."})
    labels: str = field(default="model,compare", metadata={"help": "Names of --model and --compare-model in outputs."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    dtype: str | None = field(default=None, metadata={"help": f"{' | '.join(DTYPES)}; default: bfloat16 on GPU, float32 on CPU."})
    seed: int = field(default=0)
    num_threads: int | None = field(
        default=None, metadata={"help": "CPU threads for torch (1 is fastest for the tiny demo model on a busy machine)."}
    )


def parse_args(argv: Sequence[str] | None = None) -> tuple:
    """`rrg analyze`'s flags (and `--config FILE.yaml`) as `(AnalyzeArguments, DataArguments)`."""
    return parse_command("analyze", (AnalyzeArguments, DataArguments), argv,
                         description="Analyse a trained rrg model's soft visual prompts and the LLM's attention to them.")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `rrg analyze`; returns the process exit code."""
    args, data_args = parse_args(argv)
    if data_args.dataset_path is None:
        raise ValueError("rrg analyze needs --data (or --dataset_path): an annotation.json, a folder holding one, or a "
                         "HF dataset.")
    labels = tuple(part.strip() for part in args.labels.split(","))
    if len(labels) != 2:
        raise ValueError(f"--labels takes two comma-separated names, got {args.labels!r}.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = parse_dtype(dtype_name)
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise ValueError(f"--num-threads must be >= 1, got {args.num_threads}.")
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    studies = load_split_studies(
        data_args, split=args.split, max_studies=args.max_studies or None, seed=args.seed,
        include_ids=[args.study_id] if args.study_id else (),
    )
    attribution_study = next((s for s in studies if s["id"] == args.study_id), None) if args.study_id else None
    model, processor = load_trained(args.model_name_or_path, dtype=dtype, device=device)
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
        meta={"model": args.model_name_or_path, "compare_model": args.compare_model, "data": data_args.dataset_path,
              "data_arguments": asdict(data_args), "split": args.split,
              "seed": args.seed, "device": device, "dtype": dtype_name},
    )
    return 0
