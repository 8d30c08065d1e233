"""Generate reports for a split and score them: `rrg evaluate`.

Writes `predictions.jsonl` (id, reference, prediction, image paths; appended batch by batch, so a killed run resumes
from what it already wrote), `metrics.json` (BLEU-1..4, METEOR, ROUGE-L, CIDEr equal to pycocoevalcap's, every named
clinical-efficacy variant, optional BERTScore / RadGraph-F1, 95% bootstrap intervals, the cleaning and reference
protocol) and `metrics.md` (see `training.evaluation.scorecard`).

Usage:

```bash
rrg evaluate --model outputs/demo/stage2 --data outputs/demo/data --split test --output-dir outputs/demo/eval \
    --num-beams 3 --max-new-tokens 100 --repetition-penalty 1.0
# a Hugging Face dataset with R2Gen-style columns, read with the same flags `rrg train` takes (or --config eval.yaml)
rrg evaluate --model outputs/stage2 --data data/mimic_hf --image_column image_path --report_column findings \
    --image_root data/mimic/images --output-dir outputs/eval
```

The flags are the fields of [`EvaluateArguments`] and of the shared groups of `training.arguments` (`DataArguments`,
`GenerationArguments`, `ScoringArguments`), each under its own name and with dashes (`--num_beams`, `--num-beams`).
"""

import json
import logging
import os
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..arguments import DataArguments, GenerationArguments, ScoringArguments, parse_command
from ..data.loaders import describe_dataset
from ..fileio import write_json_atomic, write_text_atomic
from .generation import DEFAULT_GENERATION, generate_batch

logger = logging.getLogger(__name__)

__all__ = ["EvaluateArguments", "generate_reports", "score_predictions", "read_predictions", "evaluate", "parse_args",
           "main"]


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


@dataclass
class EvaluateArguments:
    """The fields of `rrg evaluate` that belong to this command alone (with [`DataArguments`],
    [`GenerationArguments`] and [`ScoringArguments`], the groups every command shares)."""

    model_name_or_path: str = field(
        metadata={"aliases": ["--model"], "help": "Trained folder (full, adapter or merged; a stage folder works)."}
    )
    output_dir: str = field(metadata={"help": "Where predictions.jsonl, metrics.json and metrics.md are written."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N studies of the split."})
    shuffle_images_seed: int | None = field(
        default=None, metadata={"aliases": ["--shuffle-images"], "help": "Control: give each study another study's "
                                                                         "images (a permutation with this seed)."}
    )
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Delete predictions/metrics already in --output-dir and start fresh (needed when they came "
                          "from another model, data or settings)."},
    )


def evaluate(
    model_path: str | os.PathLike | None,
    data_args: DataArguments | str | os.PathLike,
    generation_args: GenerationArguments | None = None,
    scoring_args: ScoringArguments | None = None,
    output_dir: str | os.PathLike = "outputs/eval",
    split: str = "test",
    max_samples: int | None = None,
    shuffle_images_seed: int | None = None,
    device: str | None = None,
    model=None,
    processor=None,
    overwrite: bool = False,
) -> dict:
    """
    Generate + score one split; returns the metrics dict (also written to `output_dir`).

    `predictions.jsonl` is resumed only when its `manifest.json` (model weights, data and every data field, split,
    sample limit, generation settings) equals this call's; otherwise it is refused, naming the differing fields
    (`overwrite=True` deletes it and starts fresh). Every image of the evaluated rows is decoded before the first
    batch (`on_bad_rows="skip"` skips and counts rows with a bad image, duplicate id or image path outside the image
    root).

    Args:
        model_path (`str`, *optional*): A trained folder (`None` with `model` / `processor` in memory).
        data_args ([`DataArguments`] or `str`): The data; a path is `DataArguments(dataset_path=path)`.
        generation_args ([`GenerationArguments`], *optional*): Decoding and generation batch size (default: greedy).
        scoring_args ([`ScoringArguments`], *optional*): Labeler and scorer settings (default: R2Gen protocol).
        output_dir (`str`): Where the files go.
        split (`str`, defaults to `"test"`), max_samples (`int`, *optional*): The studies evaluated.
        shuffle_images_seed (`int`, *optional*): Control experiment: each study gets another study's images.
        device (`str`, *optional*): Where the model is loaded (default: cuda if available, else cpu).
        model, processor (*optional*): A loaded model instead of `model_path`.
        overwrite (`bool`): Start fresh instead of refusing earlier outputs of another run.
    """
    from ..data.image_check import check_rows
    from ..data.loaders import load_splits, split_key
    from ..manifest import data_fingerprint, model_fingerprint
    from ..model_io import load_trained, resolve_model_dir
    from ..run_guard import guard_predictions
    from .labeler import get_labeler

    if not isinstance(data_args, DataArguments):
        data_args = DataArguments(dataset_path=data_args)
    generation_args = generation_args or GenerationArguments()
    scoring_args = scoring_args or ScoringArguments()
    data = data_args.dataset_path
    output_dir = Path(output_dir)
    generation = {**DEFAULT_GENERATION, **generation_args.to_generation_kwargs()}
    data_fields = asdict(data_args)
    if data_fields["image_root"]:
        data_fields["image_root"] = str(Path(data_fields["image_root"]).resolve())
    manifest = {
        "model": model_fingerprint(model_path) if model_path else model_fingerprint(model=model),
        "data": {**data_fingerprint(data), "arguments": data_fields},
        "split": split_key(split), "max_samples": max_samples,
        "generation": generation, "generation_batch_size": generation_args.batch_size,
        "shuffle_images_seed": shuffle_images_seed,
    }
    # Refuse before loading anything heavy: these predictions must not mix with another model's or setting's.
    guard_predictions(output_dir, manifest, overwrite=overwrite)
    if model is None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, processor = load_trained(model_path, merge=True, device=device)
    rows = list(load_splits(data_args, splits=[split])[split_key(split)])
    if max_samples:
        rows = rows[:max_samples]
    good = check_rows(rows, split, str(data), data_args.on_bad_rows, max_views=processor.max_views)
    skipped = len(rows) - len(good)
    rows = [rows[i] for i in good]
    predictions = generate_reports(model, processor, rows, output_dir / "predictions.jsonl",
                                   batch_size=generation_args.batch_size,
                                   generation_kwargs=generation_args.to_generation_kwargs(),
                                   shuffle_images_seed=shuffle_images_seed)
    labeler = get_labeler(scoring_args.labeler, **scoring_args.labeler_kwargs())
    score_kwargs = scoring_args.score_kwargs()
    if scoring_args.radgraph_annotations:
        score_kwargs["radgraph_annotations"] = load_radgraph_annotations(scoring_args.radgraph_annotations, predictions)
    metrics = score_predictions(predictions, labeler=labeler, **score_kwargs)
    metrics.update({
        "model": str(resolve_model_dir(model_path)) if model_path else None,
        "data": str(data), "dataset_name": describe_dataset(str(data)), "split": split,
        "num_samples": len(predictions), "rows_skipped_for_images": skipped,
        "generation": generation,
        "images_shuffled": shuffle_images_seed is not None,
    })
    from .scoring import metrics_to_markdown

    write_json_atomic(output_dir / "metrics.json", metrics)
    write_text_atomic(output_dir / "metrics.md", metrics_to_markdown(metrics))
    logger.info("Metrics written to %s", output_dir / "metrics.json")
    return metrics


def parse_args(argv=None) -> tuple:
    """`rrg evaluate`'s flags (and `--config FILE.yaml`) as `(EvaluateArguments, DataArguments, GenerationArguments,
    ScoringArguments)`."""
    return parse_command("evaluate", (EvaluateArguments, DataArguments, GenerationArguments, ScoringArguments), argv,
                         description=__doc__.split("\n\n")[0])


def main(argv=None) -> int:
    args, data_args, generation_args, scoring_args = parse_args(argv)
    if data_args.dataset_path is None:
        raise ValueError("rrg evaluate needs --data (or --dataset_path): an annotation.json, a folder holding one, or "
                         "a HF dataset.")
    metrics = evaluate(args.model_name_or_path, data_args, generation_args, scoring_args, output_dir=args.output_dir,
                       split=args.split, max_samples=args.max_samples, shuffle_images_seed=args.shuffle_images_seed,
                       device=args.device, overwrite=args.overwrite)
    from .scoring import metrics_to_markdown

    sys.stdout.write(metrics_to_markdown(metrics) + "\n")
    return 0
