"""How a training step's time and peak memory grow with visual tokens, views and report length, and how a stage-1
epoch's wall time grows with the number of studies (rrg alone, through trl's `SFTTrainer`).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scaling.py [--axes visual_tokens views report studies] [--steps 4]
        [--rounds 2] [--stage 2] [--json out.json] [--plot out.png] [--smoke]

The base shape is `peer.SHAPES["encoder_heavy"]` cut to fit a 2-core CPU: ViT-B/16 width at 224 px (768 wide, 12
heads, MLP 3072, 196 patches per view) with 2 of its 12 layers, in front of a 2-layer LLaMA 512 wide (MLP 1408, 8k
vocabulary); batch 2, 2 views, ~90-token reports. One axis varies at a time from there:

- visual_tokens: tokens per view after average pooling (the config's `num_visual_tokens`): 196 (none), 100, 49, 16;
- views: views per study, 1-4;
- report: report length, ~32-256 tokens (the measured mean is what is plotted);
- studies: stage-1 epoch wall time against the number of studies, with and without the feature cache, on
  radiograph-size JPEGs and the demo's architecture (`benchmarks/epoch.py`'s machinery).

Per point of the first three axes: the step time (step end to step end, data loading included; per round the median
step, the first dropped; the median over `--rounds` rounds, images and cache alternating within each round) without
and with the frozen-encoder feature cache, the peak memory of one step in a fresh subprocess
(sidebyside's measurement: peak RSS above the RSS just before the step), and the training FLOPs per step counted as
`rrg plan` counts them (`training/sft/plan.py`: forward + input-gradient-only backward through frozen parts, 2x the
forward for trained weights, the checkpointing recompute, no encoder backward; with the cache no encoder forward).
"""

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import json_saver, save_figure, setup  # noqa: E402
from peer import SHAPES, Shape, backbone_configs, build_rrg, make_rows  # noqa: E402
from sidebyside import _collators, _stage_model, _time_rounds, _trainer, run_worker, step_memory  # noqa: E402

logger = logging.getLogger("scaling")

BASE = replace(SHAPES["encoder_heavy"], name="scaling", vision_layers=2, text_hidden=512, text_layers=2, text_heads=8,
               text_intermediate=1408, vocab_size=8000)
# Axis -> (label, Shape field, values at full size, values at the smoke size). report_words ~2.3 tokens per word.
AXES = {
    "visual_tokens": ("visual tokens per view (pooled)", "num_visual_tokens", [None, 100, 49, 16], [None, 1]),
    "views": ("views per study", "views", [1, 2, 3, 4], [1, 2]),
    "report": ("report tokens (mean)", "report_words", [14, 28, 56, 112], [4, 8]),
}
STUDIES = ([8, 16, 32, 64], [2, 3])


def train_flops(shape: Shape, stage: int, text_tokens: int, model, cached: bool, head_tokens: float | None = None) -> dict:
    """Training FLOPs of one study as `rrg plan` counts them, for the (staged) model and `text_tokens` per study; the LM
    head at `head_tokens` positions (rrg's training scores only the labelled ones)."""
    from training.sft.plan import forward_flops, parameter_counts, stage_flops

    vision, text = backbone_configs(shape)
    forward = forward_flops(vision, text, shape.views, shape.num_visual_tokens, text_tokens, "mlp2x_gelu",
                            head_tokens=head_tokens)
    llm = parameter_counts(model)["language_model"]
    flops = stage_flops(forward, stage, lora=stage == 2, gradient_checkpointing=True, cached_encoder=cached,
                        lora_fraction=llm["trainable"] / max(llm["trainable"] + llm["frozen"], 1))
    return {**flops, "forward": forward}


def measure_point(shape: Shape, stage: int, steps: int, tmp: Path, cached: bool = True, rounds: int = 1) -> dict:
    """
    Step time through SFTTrainer without and with the feature cache (alternating within each round; per round the
    median step, first dropped; `step_s` is the median over rounds), and the training FLOPs per step.
    """
    from training.sft.feature_cache import FeatureCache

    model, processor = build_rrg(shape)
    rows = make_rows(tmp / f"images{shape.image_size}", shape, shape.batch_size * steps)
    plain, _, _ = _collators(processor, None)
    probe = plain(rows[: shape.batch_size])
    visual = shape.views * processor.image_seq_length
    text_tokens = probe["input_ids"].shape[1] - visual  # padded: what the step computes
    collators = {"plain": plain}
    if cached:
        cache = FeatureCache(tmp / "features", model, processor)
        cache.precompute([p for r in rows for p in r["image_path"]])
        collators["cached"] = _collators(processor, cache)[1]
    model = _stage_model(model, stage)
    trainers = {name: _trainer(model, c, rows, shape, tmp / f"run_{name}", steps, processor)
                for name, c in collators.items()}
    times = _time_rounds(trainers, rounds)
    labelled = float((probe["labels"][:, 1:] != -100).sum(1).float().mean())  # positions the LM head scores
    per_study = {name: train_flops(shape, stage, text_tokens, model, cached=name == "cached", head_tokens=labelled)
                 for name in collators}
    return {
        "visual_tokens_per_view": processor.image_seq_length, "views": shape.views,
        "report_tokens": float((probe["labels"] != -100).sum(1).float().mean()),
        "sequence_length": int(probe["input_ids"].shape[1]), "batch_size": shape.batch_size,
        **{f"step_s{'' if name == 'plain' else '_cached'}": statistics.median(times[name]) for name in collators},
        **{f"step_s{'' if name == 'plain' else '_cached'}_rounds": times[name] for name in collators},
        **{f"train_flops_per_step{'' if name == 'plain' else '_cached'}": f["model"] * shape.batch_size
           for name, f in per_study.items()},
        "train_flops_per_step_hardware": per_study["plain"]["hardware"] * shape.batch_size,
        "encoder_share_of_forward": _encoder_share(per_study["plain"]["forward"]),
    }


def _encoder_share(forward: dict) -> float:
    return forward["encoder"] / (forward["encoder"] + forward["projector"] + forward["llm"])


def memory_worker(shape: Shape, stage: int, rows_dir: str) -> dict:
    """One training step of `shape` at `stage` through SFTTrainer in this (fresh) process; see `step_memory`."""
    model, processor = build_rrg(shape)
    model = _stage_model(model, stage)
    rows = make_rows(rows_dir, shape, shape.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = _trainer(model, _collators(processor, None)[0], rows, shape, Path(tmp), 1, processor)
        return step_memory(trainer)


def _peak_memory_mb(shape: Shape, stage: int, rows_dir: Path) -> float:
    args = ["--memory-worker", "--point", json.dumps(asdict(shape)), "--stage", str(stage), "--rows-dir", str(rows_dir)]
    return run_worker(__file__, args)["step_kb"] / 1024


def run_axis(axis: str, base: Shape, values: list, stage: int, steps: int, rounds: int, tmp: Path,
             save) -> list[dict]:
    _, field, _, _ = AXES[axis]
    points = []
    for value in values:
        shape = replace(base, **{field: value})
        logger.info("%s = %s", axis, value)
        point = {"value": value, "load_before": os.getloadavg()[0]}
        point.update(measure_point(shape, stage, steps, tmp, rounds=rounds))
        point["peak_step_mb"] = _peak_memory_mb(shape, stage, tmp / f"images{shape.image_size}")
        point["load_after"] = os.getloadavg()[0]
        points.append(point)
        save(axis, points)
    return points


def run_studies(counts: list[int], width: int, height: int, epochs: int, batch_size: int, rounds: int, tmp: Path,
                save) -> list[dict]:
    """
    Stage-1 epochs (demo architecture, radiograph-size JPEGs) with and without the cache, per data-set size; each
    round runs both (a fresh cache each round), and per epoch the median over rounds is kept.
    """
    from epoch import make_jpegs, run

    rows = make_jpegs(tmp / "jpg", max(counts), width, height)
    points = []
    for count in counts:
        logger.info("studies = %d", count)
        point = {"studies": count, "load_before": os.getloadavg()[0]}
        runs = {False: [], True: []}
        for i in range(rounds):
            for cached in (False, True):
                runs[cached].append(run(rows[:count], tmp / f"n{count}_{i}", cached, epochs, batch_size))
        for cached, times in runs.items():
            key = "epoch_s_cache" if cached else "epoch_s_no_cache"
            point[key] = [statistics.median(epoch) for epoch in zip(*times)]
            point[key + "_rounds"] = times
        point["load_after"] = os.getloadavg()[0]
        points.append(point)
        save("studies", points)
    return points


# ------------------------------------------------------------------------------------------------ report
X_KEY = {"visual_tokens": "visual_tokens_per_view", "views": "views", "report": "report_tokens"}


def render(result: dict) -> str:
    lines = []
    for axis, points in result["axes"].items():
        if axis == "studies":
            lines += ["### data-set size (stage-1 epochs, demo architecture, real-size JPEGs)", "",
                      "| studies | epoch 1, no cache (s) | epoch 2, no cache (s) | epoch 1, cache incl. precompute (s) "
                      "| epoch 2, cache (s) | s / study, epoch 2: no cache / cache |",
                      "| ---: | ---: | ---: | ---: | ---: | ---: |"]
            for p in points:
                a, b = p["epoch_s_no_cache"], p["epoch_s_cache"]
                lines.append(f"| {p['studies']} | {a[0]:.2f} | {a[-1]:.2f} | {b[0]:.2f} | {b[-1]:.2f} | "
                             f"{a[-1] / p['studies']:.3f} / {b[-1] / p['studies']:.3f} |")
            lines.append("")
            continue
        lines += [f"### {AXES[axis][0]}", "",
                  "| visual tokens/view | views | report tokens | sequence | encoder share of fwd FLOPs | "
                  "train GFLOP/step | step (s) | step, cache (s) | peak step memory (MB) | load |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in points:
            cached = f"{p['step_s_cached']:.3f}" if "step_s_cached" in p else "-"
            lines.append(f"| {p['visual_tokens_per_view']} | {p['views']} | {p['report_tokens']:.0f} | "
                         f"{p['sequence_length']} | {100 * p['encoder_share_of_forward']:.0f}% | "
                         f"{p['train_flops_per_step'] / 1e9:.1f} | {p['step_s']:.3f} | {cached} | "
                         f"{p['peak_step_mb']:.0f} | {p['load_before']:.1f}-{p['load_after']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """One panel per axis: step time without / with the cache (left) and peak step memory (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(result["axes"])
    cols = 2 if len(axes) > 1 else 1
    rows = (len(axes) + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(6 * cols, 3.8 * rows), squeeze=False)
    for ax, axis in zip(grid.flat, axes):
        points = result["axes"][axis]
        if axis == "studies":
            x = [p["studies"] for p in points]
            for key, label in (("epoch_s_no_cache", "no cache"), ("epoch_s_cache", "feature cache")):
                ax.plot(x, [p[key][0] for p in points], "o-", label=f"epoch 1, {label}")
                ax.plot(x, [p[key][-1] for p in points], "s--", label=f"epoch 2, {label}")
            ax.set_xlabel("studies in the data set")
            ax.set_ylabel("stage-1 epoch wall time (s)")
            width, height = result.get("jpeg_size", ("?", "?"))
            ax.set_title(f"data-set size (demo model, {width}x{height} JPEGs)", fontsize=9)
            ax.legend(fontsize=7)
            continue
        x = [p[X_KEY[axis]] for p in points]
        for key, marker, label in (("step_s", "o-", "step, images"), ("step_s_cached", "s-", "step, feature cache")):
            if all(key in p for p in points):
                ys = [p[key] for p in points]
                spread = [p.get(key + "_rounds", [p[key]]) for p in points]  # min-max over rounds as error bars
                ax.errorbar(x, ys, yerr=[[y - min(r) for y, r in zip(ys, spread)], [max(r) - y for y, r in
                                                                                     zip(ys, spread)]],
                            fmt=marker, capsize=3, label=label)
        ax.set_xlabel(AXES[axis][0])
        ax.set_ylabel(f"stage-{result['stage']} step (s, median)")
        ax.set_ylim(bottom=0)
        mem = ax.twinx()
        mem.plot(x, [p["peak_step_mb"] for p in points], "^:", color="tab:red", label="peak step memory")
        mem.set_ylabel("peak step memory (MB)", color="tab:red")
        mem.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()[0] + mem.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")
        ax.set_title(AXES[axis][0], fontsize=9)
    for ax in list(grid.flat)[len(axes):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> int:
    setup()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--axes", nargs="+", default=[*AXES, "studies"], choices=[*AXES, "studies"])
    parser.add_argument("--steps", type=int, default=4, help="Trainer steps per round (the first is dropped).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds per point; the median is reported.")
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2))
    parser.add_argument("--studies", type=int, nargs="+", help="Data-set sizes (default 8 16 32 64; smoke 2 3).")
    parser.add_argument("--width", type=int, default=2500, help="JPEG width for the studies axis.")
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="Smallest shape and sizes (tests).")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="Write the panels here (PNG).")
    parser.add_argument("--from-json", help="Only render (and plot) an earlier --json output.")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--rows-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        shape = Shape(**json.loads(args.point))
        sys.stdout.write(json.dumps(memory_worker(shape, args.stage, args.rows_dir)) + "\n")
        return 0
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        torch.manual_seed(0)
        base = BASE.smallest() if args.smoke else BASE
        result = {"base_shape": asdict(base), "stage": args.stage, "steps": args.steps, "rounds": args.rounds,
                  "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "axes": {}}

        write = json_saver(args.json)

        def save(axis, points):  # after each point
            result["axes"][axis] = points
            write(result)

        with tempfile.TemporaryDirectory() as tmp:
            for axis in args.axes:
                if axis == "studies":
                    counts = args.studies or STUDIES[1 if args.smoke else 0]
                    width, height = (64, 80) if args.smoke else (args.width, args.height)
                    result["jpeg_size"] = [width, height]
                    run_studies(counts, width, height, args.epochs, 2 if args.smoke else 4, args.rounds, Path(tmp),
                                save)
                else:
                    values = AXES[axis][3 if args.smoke else 2]
                    run_axis(axis, base, values, args.stage, args.steps, args.rounds, Path(tmp) / axis, save)
    sys.stdout.write(render(result))
    if args.plot:
        plot(result, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
