"""Padding: plain random batches vs length-grouped batches vs padding-free (packed) batches, through SFTTrainer.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/padding.py [--shape demo] [--batch-size 8] [--studies 128]
        [--rounds 3] [--stage 1] [--json out.json] [--smoke]

rrg alone, on studies of two views whose reports have a lognormal spread of lengths (median ~40 words, as findings
sections vary), the model at the demo's architecture by default. Each round trains one epoch of the same studies
with each variant in turn (alternating, so load on the shared machine hits all alike):
- `random`: the default sampler, right-padded batches;
- `group_by_length`: `train_sampling_strategy: group_by_length` (transformers' `LengthGroupedSampler`, lengths from
  `add_length_column`), right-padded batches of similar lengths;
- `padding_free`: random order, each batch's studies in one row without padding (`RRGDataCollator(padding_free=True)`).
Reported: the padding fraction of the batches each variant trained on (pad tokens / tokens in the batch tensors),
the median step time per round (first step dropped, data loading included), and the ratio variant / random per
round (min / median / max).
"""

import argparse
import logging
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import setup  # noqa: E402
from peer import SHAPES, build_pair, make_rows  # noqa: E402
from sidebyside import _freeze_for_stage1, _lora, _time_rounds, _trainer  # noqa: E402

logger = logging.getLogger("padding")

VARIANTS = ("random", "group_by_length", "padding_free")


def lognormal_reports(rows: list[dict], median_words: int, sigma: float = 0.5, seed: int = 0) -> list[dict]:
    """`rows` with reports of lognormally spread lengths (5 to 4x the median words), from `make_rows`' reports."""
    rng = np.random.default_rng(seed)
    words = " ".join(row["report"] for row in rows).split()
    lengths = np.clip(rng.lognormal(np.log(median_words), sigma, len(rows)).astype(int), 5, 4 * median_words)
    return [{**row, "report": " ".join(words[j] for j in rng.integers(0, len(words), n)) + "."}
            for row, n in zip(rows, lengths)]


class _PaddingCounter:
    """Wraps a collator; counts the pad tokens and all tokens of the batches it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.pad = self.total = 0

    def __call__(self, rows):
        batch = self.collator(rows)
        mask = batch.get("attention_mask")
        self.total += batch["input_ids"].numel()
        self.pad += 0 if mask is None else int((mask == 0).sum())
        return batch


def _trainers(model, processor, rows, shape, steps: int, tmp: Path) -> dict:
    from datasets import Dataset

    from training.sft.train import RRGDataCollator, add_length_column

    dataset = add_length_column(Dataset.from_list(rows), RRGDataCollator(processor))
    trainers = {}
    for name in VARIANTS:
        counter = _PaddingCounter(RRGDataCollator(processor, padding_free=name == "padding_free"))
        # sidebyside's trainer: rrg's LM head at label positions, as train() sets it up
        trainer, timer = _trainer(model, counter, dataset, shape, tmp / name, steps, processor,
                                  train_sampling_strategy="group_by_length" if name == "group_by_length" else "random")
        trainers[name] = (trainer, timer, counter)
    return trainers


def run(shape, studies: int, rounds: int, stage: int, tmp: Path) -> dict:
    rows = lognormal_reports(make_rows(tmp / "images", shape, studies), median_words=shape.report_words)
    rrg, llava, processor = build_pair(shape)
    del llava
    if stage == 1:
        _freeze_for_stage1(rrg)
        model = rrg
    else:
        model = _lora(rrg)
    steps = studies // shape.batch_size  # one epoch per round
    trainers = _trainers(model, processor, rows, shape, steps, tmp)
    times = _time_rounds({name: (trainer, timer) for name, (trainer, timer, _) in trainers.items()}, rounds)
    from training.sft.train import RRGDataCollator

    lengths = RRGDataCollator(processor).study_lengths({k: [r[k] for r in rows] for k in ("image_path", "report")})
    result = {"shape": shape.name, "batch_size": shape.batch_size, "studies": studies, "rounds": rounds,
              "stage": stage, "steps_per_round": steps,
              "study_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
              "variants": {}}
    for name, (_, _, counter) in trainers.items():
        ratios = [t / r for t, r in zip(times[name], times["random"])]
        result["variants"][name] = {
            "padding_fraction": counter.pad / max(counter.total, 1),
            "step_s": times[name],
            "ratio_to_random": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)},
        }
    return result


def render(result: dict) -> str:
    tokens = result["study_tokens"]
    lines = [f"{result['shape']}, stage {result['stage']}, batch {result['batch_size']}, {result['studies']} studies "
             f"({result['steps_per_round']} steps per round, {result['rounds']} rounds); tokens per study "
             f"{tokens['min']} / {tokens['median']:g} / {tokens['max']} (min / median / max).", "",
             "| batches | padding fraction | step time, median of rounds | step time / random, min / median / max |",
             "| --- | ---: | ---: | ---: |"]
    for name, v in result["variants"].items():
        r = v["ratio_to_random"]
        lines.append(f"| {name} | {100 * v['padding_fraction']:.1f}% | {statistics.median(v['step_s']):.3f} s | "
                     f"{r['min']:.2f} / **{r['median']:.2f}** / {r['max']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    setup()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="demo", choices=list(SHAPES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--studies", type=int, default=128, help="Studies per epoch (one epoch per round).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stage", type=int, default=1, choices=(1, 2), help="1: projector; 2: LoRA + projector.")
    parser.add_argument("--smoke", action="store_true", help="Smallest size: tiny model, batch 2, 8 studies (tests).")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    shape = replace(shape.smallest(), batch_size=2) if args.smoke else replace(shape, batch_size=args.batch_size)
    studies = 8 if args.smoke else args.studies
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(shape, studies, args.rounds, args.stage, Path(tmp))
    if args.json:
        from training.fileio import write_json_atomic

        write_json_atomic(Path(args.json), result)
    sys.stdout.write(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
