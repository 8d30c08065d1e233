"""Generate reports for a split and score them: `rrg evaluate`.

Writes `predictions.jsonl` (id, reference, prediction, image paths; appended batch by batch, so a killed run resumes
from what it already wrote), `metrics.json` (BLEU-1..4, METEOR, ROUGE-L, CIDEr equal to pycocoevalcap's, every named
clinical-efficacy variant, optional BERTScore / RadGraph-F1, 95% bootstrap intervals, the cleaning and reference
protocol) and `metrics.md` (see `training.evaluation.scorecard`).

Usage:

```bash
rrg evaluate --model outputs/demo/stage2 --data outputs/demo/data --split test --output-dir outputs/demo/eval \
    --num-beams 3 --max-new-tokens 100 --repetition-penalty 1.0
```
"""

import argparse
import json
import logging
import os
import random
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.loaders import describe_dataset
from ..fileio import write_json_atomic, write_text_atomic
from .generation import DEFAULT_GENERATION, generate_batch

logger = logging.getLogger(__name__)

__all__ = ["generate_reports", "score_predictions", "read_predictions", "evaluate", "main"]


def read_predictions(path: Path) -> list[dict]:
    """Rows already written; a last line cut by a crash is dropped (and rewritten on resume)."""
    if not path.exists():
        return []
    rows, good_bytes = [], 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        logger.warning("%s ends with a partial line (interrupted write); it is discarded.", path)
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return rows


@torch.no_grad()
def generate_reports(model, processor, rows: list[dict], predictions_path: str | Path, batch_size: int = 8,
                     generation_kwargs: dict | None = None, image_loader=None, instruction: str | None = None,
                     shuffle_images_seed: int | None = None) -> list[dict]:
    """
    Generate a report for every row (`id`, `image_path`, `report`), appending to `predictions_path`.

    Args:
        model, processor: A loaded rrg model (eval mode) and its processor.
        rows (`list[dict]`): Dataset rows.
        predictions_path: JSONL file; rows whose id is already there are skipped (resume).
        batch_size (`int`): Studies per `generate` call (left padding).
        generation_kwargs (`dict`): Passed to `generate` (num_beams, max_new_tokens, repetition_penalty, ...).
        image_loader (`callable`, *optional*): Path -> PIL image (defaults to `training.data.images.load_image`).
        instruction (`str`, *optional*): Instruction override.
        shuffle_images_seed (`int`, *optional*): Control experiment: pair each study with another study's images
            (a fixed permutation), to measure how much the model reads the images.

    Returns:
        All prediction rows (previously written ones included), in dataset order.
    """
    if image_loader is None:
        from ..data.images import load_image

        image_loader = load_image
    predictions_path = Path(predictions_path)
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    done = {row["id"]: row for row in read_predictions(predictions_path)}
    image_sets = [list(row["image_path"])[: processor.max_views] for row in rows]
    if shuffle_images_seed is not None:
        order = list(range(len(rows)))
        random.Random(shuffle_images_seed).shuffle(order)
        image_sets = [image_sets[i] for i in order]
    todo = [(row, images) for row, images in zip(rows, image_sets) if row["id"] not in done]
    if done:
        logger.info("Resuming: %d of %d predictions already in %s.", len(done), len(rows), predictions_path)
    with open(predictions_path, "a", encoding="utf-8") as handle:
        for start in tqdm(range(0, len(todo), batch_size), desc="Generating reports", unit="batch"):
            chunk = todo[start : start + batch_size]
            studies = [[image_loader(p) for p in images] for _, images in chunk]
            outputs = generate_batch(model, processor, studies, generation_kwargs, instruction=instruction)
            lines = []
            for (row, images), output in zip(chunk, outputs):
                record = {"id": row["id"], "reference": row["report"], "prediction": output["report"],
                          "image_path": [str(p) for p in images]}
                done[row["id"]] = record
                lines.append(json.dumps(record) + "\n")
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
    return [done[row["id"]] for row in rows]


def score_predictions(predictions: list[dict], labeler=None, tokenization: str = "r2gen", clean: str | None = "mimic",
                      meteor: bool = True, **scoring_kwargs) -> dict:
    """Every metric with its bootstrap interval ([`~training.evaluation.scorecard.score_reports`]): NLG metrics on
    R2Gen-cleaned text, the named CE variants on raw text; `scoring_kwargs` (reference_max_tokens, bertscore_model,
    radgraph_model, replicates, ...) are passed on."""
    from .scorecard import score_reports

    return score_reports([row["prediction"] for row in predictions], [row["reference"] for row in predictions],
                         labeler=labeler, clean=clean, tokenization=tokenization, meteor=meteor, **scoring_kwargs)


def load_radgraph_annotations(path, predictions: list[dict]) -> tuple[list, list]:
    """Saved RadGraph graphs (`{study id: {"prediction": graph, "reference": graph}}`) in prediction order."""
    graphs = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(graphs, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by study id, got {type(graphs).__name__}.")
    missing = [str(row["id"]) for row in predictions if str(row["id"]) not in graphs]
    if missing:
        raise ValueError(f"{path}: no RadGraph annotations for {len(missing)} studies (e.g. {missing[:3]}).")
    pairs = [graphs[str(row["id"])] for row in predictions]
    return [p.get("prediction") for p in pairs], [p.get("reference") for p in pairs]


def evaluate(model_path, data, split="test", output_dir="outputs/eval", batch_size=8, max_samples=None,
             generation_kwargs=None, labeler="rule", labeler_kwargs=None, tokenization="r2gen", clean="mimic",
             meteor=True, image_root=None, dataset_format="auto", shuffle_images_seed=None, device=None,
             model=None, processor=None, bertscore_model=None, radgraph_annotations_path=None, on_bad_rows="raise",
             allow_outside_image_root=False, overwrite=False, **scoring_kwargs) -> dict:
    """
    Generate + score one split; returns the metrics dict (also written to `output_dir`).

    `predictions.jsonl` is resumed only when its `manifest.json` (model weights, data, split, sample limit, generation
    settings) equals this call's; otherwise it is refused, naming the differing fields (`overwrite=True` deletes it
    and starts fresh). Every image of the evaluated rows is decoded before the first batch (`on_bad_rows="skip"`
    skips and counts rows with a bad image, duplicate id or image path outside the image root). `scoring_kwargs`
    go to the scorer (`protocol`, BERTScore layer, RadGraph model, reference truncation, bootstrap replicates).
    """
    from ..data.image_check import check_rows
    from ..data.loaders import load_splits, split_key
    from ..manifest import data_fingerprint, model_fingerprint
    from ..run_guard import guard_predictions
    from ..sft.loading import load_trained, resolve_model_dir
    from .labeler import get_labeler

    output_dir = Path(output_dir)
    generation_kwargs = dict(generation_kwargs or {})
    manifest = {
        "model": model_fingerprint(model_path) if model_path else model_fingerprint(model=model),
        "data": {**data_fingerprint(data), "format": dataset_format,
                 "image_root": str(Path(image_root).resolve()) if image_root else None},
        "split": split_key(split), "max_samples": max_samples, "on_bad_rows": on_bad_rows,
        "generation": {**DEFAULT_GENERATION, **generation_kwargs},
        "shuffle_images_seed": shuffle_images_seed,
    }
    # Refuse before loading anything heavy: these predictions must not mix with another model's or setting's, and
    # a scoring protocol that lists a metric whose model folder is missing fails now, not after generation.
    from .scorecard import check_protocol

    check_protocol(scoring_kwargs.get("protocol", "r2gen"), bertscore_model=bertscore_model,
                   radgraph_annotations=radgraph_annotations_path,
                   **{k: v for k, v in scoring_kwargs.items() if k != "protocol"})
    guard_predictions(output_dir, manifest, overwrite=overwrite)
    if model is None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, processor = load_trained(model_path, merge=True, device=device)
    dataset = load_splits(data, splits=[split], dataset_format=dataset_format, image_root=image_root,
                          on_error=on_bad_rows, allow_outside_root=allow_outside_image_root)
    rows = list(dataset[split_key(split)])
    if max_samples:
        rows = rows[:max_samples]
    good = check_rows(rows, split, str(data), on_bad_rows, max_views=processor.max_views)
    skipped = len(rows) - len(good)
    rows = [rows[i] for i in good]
    predictions = generate_reports(model, processor, rows, output_dir / "predictions.jsonl", batch_size=batch_size,
                                   generation_kwargs=generation_kwargs, shuffle_images_seed=shuffle_images_seed)
    labeler_obj = get_labeler(labeler, **(labeler_kwargs or {}))
    if radgraph_annotations_path:
        scoring_kwargs["radgraph_annotations"] = load_radgraph_annotations(radgraph_annotations_path, predictions)
    metrics = score_predictions(predictions, labeler=labeler_obj, tokenization=tokenization, clean=clean,
                                meteor=meteor, bertscore_model=bertscore_model, **scoring_kwargs)
    metrics.update({
        "model": str(resolve_model_dir(model_path)) if model_path else None,
        "data": str(data), "dataset_name": describe_dataset(str(data)), "split": split,
        "num_samples": len(predictions), "rows_skipped_for_images": skipped,
        "generation": {**DEFAULT_GENERATION, **generation_kwargs},
        "images_shuffled": shuffle_images_seed is not None,
    })
    from .scorecard import metrics_to_markdown

    write_json_atomic(output_dir / "metrics.json", metrics)
    write_text_atomic(output_dir / "metrics.md", metrics_to_markdown(metrics))
    logger.info("Metrics written to %s", output_dir / "metrics.json")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rrg evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Trained folder (full, adapter or merged; a stage folder works).")
    p.add_argument("--data", required=True, help="annotation.json, a folder holding one, or a HF dataset.")
    p.add_argument("--dataset-format", default="auto", choices=["auto", "annotation", "hf"])
    p.add_argument("--image-root", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0)
    p.add_argument("--labeler", default="rule", choices=["rule", "chexbert"])
    p.add_argument("--chexbert-checkpoint", default=None, help="Path of chexbert.pth (never downloaded).")
    p.add_argument("--chexbert-tokenizer", default=None, help="Local bert-base-uncased tokenizer folder.")
    p.add_argument("--tokenization", default="r2gen", choices=["r2gen", "ptb"])
    p.add_argument("--clean", default="mimic", choices=["mimic", "iu", "none"],
                   help="R2Gen-style cleaning of both sides before the NLG metrics (clinical efficacy uses raw text).")
    p.add_argument("--no-meteor", action="store_true")
    p.add_argument("--bertscore-model", default=None,
                   help="Local encoder checkpoint folder for BERTScore (optional; nothing is downloaded).")
    p.add_argument("--bertscore-layer", type=int, default=None, help="Hidden layer for BERTScore (default: last).")
    p.add_argument("--radgraph-model", default=None,
                   help="Local RadGraph model folder (config.json, vocabulary/, weights.th) for RadGraph-F1.")
    p.add_argument("--radgraph-annotations", default=None, metavar="JSON",
                   help="RadGraph annotations saved elsewhere: {study id: {'prediction': graph, 'reference': graph}}.")
    p.add_argument("--reference-max-tokens", type=int, default=None, metavar="N",
                   help="R2Gen protocol: cut references to max sequence length N before scoring (default: untruncated).")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="REPLICATES",
                   help="Bootstrap replicates for the 95%% intervals (0: none).")
    p.add_argument("--shuffle-images", type=int, default=None, metavar="SEED",
                   help="Control: give each study another study's images.")
    p.add_argument("--on-bad-rows", default="raise", choices=["raise", "skip"],
                   help="Rows with a missing/corrupt image, an empty report, a duplicate id or an image path outside "
                        "the image root: stop with an error naming them (raise) or skip and count them (skip).")
    p.add_argument("--allow-outside-image-root", action="store_true",
                   help="Accept image paths that leave the image root (absolute, or '..').")
    p.add_argument("--overwrite", action="store_true",
                   help="Delete predictions/metrics already in --output-dir and start fresh (needed when they came "
                        "from another model, data or settings).")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    labeler_kwargs = {}
    if a.labeler == "chexbert":
        labeler_kwargs = {"checkpoint_path": a.chexbert_checkpoint, "tokenizer_name_or_path": a.chexbert_tokenizer}
    generation = {"num_beams": a.num_beams, "max_new_tokens": a.max_new_tokens,
                  "repetition_penalty": a.repetition_penalty}
    if a.no_repeat_ngram_size:
        generation["no_repeat_ngram_size"] = a.no_repeat_ngram_size
    metrics = evaluate(a.model, a.data, split=a.split, output_dir=a.output_dir, batch_size=a.batch_size,
                       max_samples=a.max_samples, generation_kwargs=generation, labeler=a.labeler,
                       labeler_kwargs=labeler_kwargs, tokenization=a.tokenization,
                       clean=None if a.clean == "none" else a.clean, meteor=not a.no_meteor,
                       image_root=a.image_root, dataset_format=a.dataset_format, shuffle_images_seed=a.shuffle_images,
                       bertscore_model=a.bertscore_model, bertscore_layer=a.bertscore_layer,
                       radgraph_model=a.radgraph_model, radgraph_annotations_path=a.radgraph_annotations,
                       reference_max_tokens=a.reference_max_tokens, replicates=a.bootstrap,
                       on_bad_rows=a.on_bad_rows, allow_outside_image_root=a.allow_outside_image_root,
                       overwrite=a.overwrite)
    from .scorecard import metrics_to_markdown

    sys.stdout.write(metrics_to_markdown(metrics) + "\n")
    return 0
