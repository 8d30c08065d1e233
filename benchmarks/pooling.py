"""Pooled visual tokens against the full set on the demo: training and evaluation time next to BLEU-4, CIDEr, CE-F1.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/pooling.py [--size full|small|quick] [--tokens 4]
        [--output-dir DIR] [--json out.json] [--smoke]

Runs the demo pipeline (`training.sandbox.demo.run_demo`) twice: with `DemoConfig()` (the demo's ViT gives 16 patch
tokens per view, all passed to the LLM) and with `num_visual_tokens=4` (average-pooled on the 4 x 4 patch grid to
2 x 2). Both settings use the same synthetic data and the same pretrained backbones (the second run gets copies of
the first run's `data/` and `backbones/`, which `run_demo` then reuses), so the pooling is the only difference.
Export and the stage-1 evaluation are skipped. Stage times are `run_demo`'s wall times: stage 1 includes filling the
feature cache (one encoder pass per image), both include the Trainer's setup and saving the model; evaluation is the
test split generated twice (true and shuffled images). Metrics are the demo summary's headline rows (`_headline`).
`--size small` runs `DemoConfig.small()`, `--smoke` `DemoConfig.quick()` (seconds; for the tests).
"""

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import json_saver, setup  # noqa: E402

logger = logging.getLogger("pooling")

METRICS = ("BLEU-4", "CIDEr", "CE-F1 (micro-14)", "CE-F1 (macro-14)")


def _config(size: str):
    from training.sandbox.demo import DemoConfig

    return {"full": DemoConfig, "small": DemoConfig.small, "quick": DemoConfig.quick}[size]()


def row(summary: dict, tokens_per_view: int) -> dict:
    """One setting's line of the table, from a demo summary."""
    times = summary["timings_seconds"]
    stages = summary["stages"]
    true, shuffled = summary["test"]["stage2_true_images"], summary["test"]["stage2_shuffled_images"]
    intervals = summary["test_intervals"]["stage2_true_images"]
    return {
        "num_visual_tokens": summary["config"]["num_visual_tokens"], "visual_tokens_per_view": tokens_per_view,
        "stage1_s": times["stage1"], "stage2_s": times["stage2"], "evaluate_s": times["evaluate"],
        "stage1_steps": stages["stage1"]["global_step"], "stage2_steps": stages["stage2"]["global_step"],
        "stage2_s_per_step": times["stage2"] / max(stages["stage2"]["global_step"], 1),
        "train_loss": {name: s["train_loss"] for name, s in stages.items()},
        "metrics": {k: true.get(k) for k in METRICS}, "intervals": {k: intervals.get(k) for k in METRICS},
        "shuffled_ce_f1_micro_14": shuffled.get("CE-F1 (micro-14)"),
    }


def run(size: str, tokens: int, root: Path, save) -> dict:
    from training.sandbox.demo import run_demo

    base = _config(size)
    patches = (base.image_size // base.patch_size) ** 2
    result = {"size": size, "config": asdict(base), "settings": []}
    first = None
    for pooled in (None, tokens):
        out = root / ("full" if pooled is None else f"pooled{pooled}")
        if first is not None:  # the same data and backbones: pooling is the only difference
            for sub in ("data", "backbones"):
                shutil.copytree(first / sub, out / sub, dirs_exist_ok=True)
        logger.info("demo (%s), visual tokens per view: %s", size, pooled or patches)
        summary = run_demo(out, replace(base, num_visual_tokens=pooled), export=False, evaluate_stage1=False)
        result["settings"].append(row(summary, pooled or patches))
        result["settings"][-1]["load_after"] = os.getloadavg()[0]
        save(result)
        first = first or out
    return result


def render(result: dict) -> str:
    from training.sandbox.demo import _cell

    lines = ["| visual tokens / view | stage 1 (s) | stage 2 (s) | stage-2 s/step | evaluation (s) | "
             + " | ".join(METRICS) + " | CE-F1 (micro-14), shuffled images |",
             "| ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in METRICS) + " | ---: |"]
    for s in result["settings"]:
        lines.append(f"| {s['visual_tokens_per_view']} | {s['stage1_s']:.1f} | {s['stage2_s']:.1f} | "
                     f"{s['stage2_s_per_step']:.3f} | {s['evaluate_s']:.1f} | "
                     + " | ".join(_cell(s["metrics"][k], s["intervals"][k]) for k in METRICS)
                     + f" | {_cell(s['shuffled_ce_f1_micro_14'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    setup()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full", choices=("full", "small", "quick"))
    parser.add_argument("--tokens", type=int, default=4, help="Pooled visual tokens per view.")
    parser.add_argument("--smoke", action="store_true", help="Same as --size quick.")
    parser.add_argument("--output-dir", help="Keep both demos' outputs here (default: a temporary folder).")
    parser.add_argument("--json", default=None)
    parser.add_argument("--from-json", help="Only render an earlier --json output.")
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        save = json_saver(args.json)
        size = "quick" if args.smoke else args.size
        if args.output_dir:
            result = run(size, args.tokens, Path(args.output_dir), save)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                result = run(size, args.tokens, Path(tmp), save)
    sys.stdout.write(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
