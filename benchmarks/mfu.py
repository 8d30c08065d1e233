"""Model FLOP utilisation on this CPU: a training step's achieved FLOP/s against a matmul micro-benchmark's peak.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mfu.py [--shapes demo encoder_heavy] [--stages 1 2] [--steps 4]
        [--rounds 2] [--json out.json] [--smoke]

Peak: fp32 `torch.mm` of square matrices of a few sizes with torch's threads as configured, best GFLOP/s over
repeats; measured before and after the training steps (the machine is shared) and the higher one is the peak.
Achieved: training FLOPs per step / step time through trl's `SFTTrainer` (as in `benchmarks/sidebyside.py`: step end
to step end, so data loading, the optimizer and the Trainer's bookkeeping count as time; per round the median step,
the first dropped; the median over rounds). FLOPs per step are `rrg plan`'s analytic count (`training/sft/plan.py`,
`stage_flops`), not a profiler's: a forward, then a backward of 2x the forward for trained weights and 1x (input
gradient only) where the gradient passes through frozen weights, no backward for the frozen encoder (rrg runs it
without autograd). "Model" FLOPs leave out the activation-checkpointing recompute (MFU); "hardware" FLOPs include it
(HFU). Sequence lengths are the padded ones the step computes.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import json_saver, setup  # noqa: E402
from peer import SHAPES  # noqa: E402
from scaling import measure_point  # noqa: E402

logger = logging.getLogger("mfu")


def gemm_peak(sizes=(256, 512, 1024, 2048), repeats: int = 5) -> dict:
    """Best fp32 GFLOP/s of `n x n @ n x n` per size (2 n^3 FLOPs), with torch's current thread count."""
    out = {}
    warm = torch.randn(max(sizes), max(sizes))
    for _ in range(3):  # wakes the thread pool (and the core clocks) before anything is timed
        torch.mm(warm, warm)
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        torch.mm(a, b, out=c)  # warm-up
        calls = max(1, int(2e9 / (2 * n ** 3)))  # ~2 GFLOP per timing, so small sizes are not timer noise
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                torch.mm(a, b, out=c)
            best = min(best, (time.perf_counter() - start) / calls)
        out[str(n)] = 2 * n ** 3 / best / 1e9
    return out


def run(shapes: list[str], stages: list[int], steps: int, rounds: int, smoke: bool, save) -> dict:
    sizes = (64, 128) if smoke else (256, 512, 1024, 2048)
    result = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "gemm_gflops_before": gemm_peak(sizes),
              "points": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in shapes:
            shape = SHAPES[name].smallest() if smoke else SHAPES[name]
            for stage in stages:
                logger.info("%s, stage %d", shape.name, stage)
                load = os.getloadavg()[0]
                point = measure_point(shape, stage, steps, Path(tmp) / f"{name}_{stage}", cached=False,
                                      rounds=rounds)
                point.update(shape=shape.name, stage=stage, load_before=load, load_after=os.getloadavg()[0])
                result["points"].append(point)
                save(result)
    result["gemm_gflops_after"] = gemm_peak(sizes)
    result["peak_gflops"] = max([*result["gemm_gflops_before"].values(), *result["gemm_gflops_after"].values()])
    for point in result["points"]:
        point["achieved_gflops"] = point["train_flops_per_step"] / point["step_s"] / 1e9
        point["achieved_gflops_hardware"] = point["train_flops_per_step_hardware"] / point["step_s"] / 1e9
        point["mfu"] = point["achieved_gflops"] / result["peak_gflops"]
        point["hfu"] = point["achieved_gflops_hardware"] / result["peak_gflops"]
    save(result)
    return result


def render(result: dict) -> str:
    gemm = " / ".join(f"{n}: {result['gemm_gflops_before'][n]:.1f}, {result['gemm_gflops_after'][n]:.1f}"
                      for n in result["gemm_gflops_before"])
    lines = [f"fp32 GEMM GFLOP/s with {result['threads']} threads, before, after the steps (size n: n x n @ n x n): "
             f"{gemm}; peak {result['peak_gflops']:.1f} GFLOP/s.", "",
             "| shape | stage | sequence | encoder share of fwd FLOPs | train GFLOP/step (model / with recompute) | "
             "step (s) | achieved GFLOP/s | MFU | HFU | load |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in result["points"]:
        lines.append(f"| {p['shape']} | {p['stage']} | {p['sequence_length']} | "
                     f"{100 * p['encoder_share_of_forward']:.0f}% | {p['train_flops_per_step'] / 1e9:.1f} / "
                     f"{p['train_flops_per_step_hardware'] / 1e9:.1f} | {p['step_s']:.3f} | "
                     f"{p['achieved_gflops']:.1f} | {100 * p['mfu']:.1f}% | {100 * p['hfu']:.1f}% | "
                     f"{p['load_before']:.1f}-{p['load_after']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    setup()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2], choices=(1, 2))
    parser.add_argument("--steps", type=int, default=4, help="Trainer steps per round (the first is dropped).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds per point; the median is reported.")
    parser.add_argument("--smoke", action="store_true", help="Smallest size of each shape (tests).")
    parser.add_argument("--json", default=None)
    parser.add_argument("--from-json", help="Only render an earlier --json output.")
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        torch.manual_seed(0)
        result = run(args.shapes, args.stages, args.steps, args.rounds, args.smoke, json_saver(args.json))
    sys.stdout.write(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
