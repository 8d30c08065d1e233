"""rrg vs transformers' LLaVA + trl's SFTTrainer, side by side, on the same backbones and the same weights.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sidebyside.py [--shapes demo encoder_heavy] [--rounds 3]
        [--steps 3] [--json out.json] [--smoke]

For each shape: LLaVA is built, its state dict copied into rrg and the logits compared (must match); then, alternating
rrg and LLaVA within each round so load on the (shared) machine hits both alike:
- stage-1 and stage-2 (LoRA + projector) steps through `SFTTrainer` (same SFTConfig, batch, collator output), rrg also
  with its frozen-encoder feature cache (LLaVA has none), timed step end to step end, so data loading is included;
- peak memory of a training step (one fresh subprocess per model: peak RSS above the RSS before the step);
- greedy generation tokens/s at batch 1 and 8, and the time to the first token.
Ratios are rrg / LLaVA per round; the table shows their min / median / max.
"""

import argparse
import ctypes
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import json_saver, save_figure, setup  # noqa: E402
from peer import SHAPES, build_pair, check_equal_logits, flops_per_sample, llava_batch, make_rows  # noqa: E402

logger = logging.getLogger("sidebyside")

# rrg / LLaVA; for the "lower is better" rows a ratio <= target is met, for throughput rows >= target.
TARGETS = {
    "stage1_step": ("<=", 1.0),
    "stage1_step_cached": ("<=", 0.8),
    "stage2_step": ("<=", 1.0),
    "stage2_step_cached": ("<=", 0.9),
    "peak_memory_stage1": ("<=", 1.0),
    "peak_memory_stage2": ("<=", 1.0),
    "generate_tokens_per_s_b1": (">=", 1.0),
    "generate_tokens_per_s_b8": (">=", 1.0),
    "time_to_first_token_b1": ("<=", 1.0),
}


class _StepTimer:
    """A `TrainerCallback` recording the wall time between consecutive step ends (data loading included)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                timer.last = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                now = time.perf_counter()
                timer.times.append(now - timer.last)
                timer.last = now

        self.callback = Callback()
        self.times: list[float] = []
        self.last = 0.0


def _sft_config(out: Path, shape, steps: int):
    from trl import SFTConfig

    # transformers 5.24 renamed gradient_checkpointing to activation_checkpointing (the old name warns)
    _CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__
                      else "gradient_checkpointing")
    return SFTConfig(output_dir=str(out), per_device_train_batch_size=shape.batch_size, max_steps=steps,
                     learning_rate=1e-4, lr_scheduler_type="constant", logging_steps=10_000, save_strategy="no",
                     report_to=[], use_cpu=True, dataloader_num_workers=0, max_length=None, disable_tqdm=True,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, seed=0,
                     bf16=False, **{_CHECKPOINTING: True})  # as the paper recipes (training/sft/recipes/paper_*)


def _trainer(model, collator, rows, shape, out: Path, steps: int, processor, **config):
    """An `SFTTrainer` with a step timer on `rows` (a list of dicts or a `Dataset`); `config` overrides SFTConfig fields."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    timer = _StepTimer()
    args = _sft_config(out, shape, steps)
    for name, value in config.items():
        setattr(args, name, value)
    dataset = rows if isinstance(rows, Dataset) else Dataset.from_list(rows)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         data_collator=collator, callbacks=[timer.callback])
    trainer.remove_callback(PrinterCallback)  # the per-run summary dicts would flood the table
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ == "RRGForConditionalGeneration":
        from training.sft.fused_head import score_label_positions_only

        score_label_positions_only(trainer.model)  # as rrg's train() does (LLaVA keeps trl's default path)
    return trainer, timer


def _freeze_for_stage1(model):
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)


def _collators(processor, cache):
    from training.sft.train import RRGDataCollator

    plain = RRGDataCollator(processor)
    cached = RRGDataCollator(processor, feature_cache=cache) if cache is not None else None

    def for_llava(rows):
        return llava_batch(plain(rows))

    return plain, cached, for_llava


def _time_rounds(trainers: dict, rounds: int) -> dict:
    """Alternate the trainers within each round; per trainer, the median step of each round (first step dropped)."""
    per_round = {name: [] for name in trainers}
    for round_index in range(rounds):
        for name in _rotated(list(trainers), round_index):
            trainer, timer = trainers[name]
            timer.times.clear()
            trainer.train()
            steps = timer.times[1:] or timer.times
            per_round[name].append(statistics.median(steps))
    return per_round


def _rotated(names: list, round_index: int) -> list:
    """The run order of one round: rotated by one each round, so no variant always runs first or right after another."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def _ratios(a: list[float], b: list[float], invert: bool = False) -> dict:
    ratios = [(y / x if invert else x / y) for x, y in zip(a, b)]
    return {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios),
            "rrg": statistics.median(a), "llava": statistics.median(b)}


# ------------------------------------------------------------------------------------------------ memory
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no {field}")


def memory_worker(shape_name: str, kind: str, stage: int, rows_dir: str, smoke: bool) -> dict:
    """One model, one training step through SFTTrainer; peak RSS above the RSS just before the step (kB)."""
    from training.sft.train import RRGDataCollator

    shape = SHAPES[shape_name].smallest() if smoke else SHAPES[shape_name]
    rrg, llava, processor = build_pair(shape)
    model = rrg if kind == "rrg" else llava
    del rrg, llava
    model = _stage_model(model, stage)
    rows = make_rows(rows_dir, shape, shape.batch_size)
    plain = RRGDataCollator(processor)
    collator = plain if kind == "rrg" else (lambda r: llava_batch(plain(r)))
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = _trainer(model, collator, rows, shape, Path(tmp), 1, processor)
        return step_memory(trainer)


def step_memory(trainer) -> dict:
    """`trainer.train()` once; peak RSS above the RSS just before it (kB). Run it in a fresh process."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass
    before = _rss_kb("VmRSS")
    trainer.train()
    peak = _rss_kb("VmHWM")
    return {"before_kb": before, "peak_kb": peak, "step_kb": peak - before}


def run_worker(script: str, args: list[str]) -> dict:
    """Run `script args` in a fresh Python process; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stage_model(model, stage: int):
    """Stage 1: only the projector trains. Stage 2: LoRA on the LLM's attention + the projector (as in the recipes)."""
    if stage == 1:
        _freeze_for_stage1(model)
        return model
    return _lora(model)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    from training.sft.model_setup import lora_target_regex

    model.requires_grad_(False)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=lora_target_regex("llama"),
                        modules_to_save=["multi_modal_projector"], task_type=None)
    return get_peft_model(model, config)


def _memory(shape_name: str, stage: int, rows_dir: str, smoke: bool, rounds: int) -> dict:
    """Peak step memory of each model, alternating fresh subprocesses; ratios rrg / LLaVA per round."""
    results = {"rrg": [], "llava": []}
    for round_index in range(rounds):
        for kind in _rotated(["rrg", "llava"], round_index):
            args = ["--memory-worker", kind, "--shapes", shape_name, "--stage", str(stage),
                    "--rows-dir", rows_dir] + (["--smoke"] if smoke else [])
            results[kind].append(run_worker(__file__, args)["step_kb"] / 1024)
    return _ratios(results["rrg"], results["llava"])


# ------------------------------------------------------------------------------------------- generation
@torch.no_grad()
def _generation(rrg, llava, processor, rows, rounds: int, new_tokens: int) -> dict:
    from training.data.images import load_image

    rrg.eval()
    llava.eval()
    out = {}
    for batch_size in (1, 8):
        studies = [[load_image(p) for p in rows[i % len(rows)]["image_path"]] for i in range(batch_size)]
        batch = dict(processor(images=studies, padding_side="left"))
        inputs = {"rrg": batch, "llava": llava_batch(batch)}
        models = {"rrg": rrg, "llava": llava}
        kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        tps = {"rrg": [], "llava": []}
        ttft = {"rrg": [], "llava": []}
        for name in models:  # warm-up
            models[name].generate(**inputs[name], **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})
        for round_index in range(rounds):
            for name in _rotated(list(models), round_index):
                start = time.perf_counter()
                models[name].generate(**inputs[name], do_sample=False, max_new_tokens=1)
                ttft[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                generated = models[name].generate(**inputs[name], **kwargs)
                seconds = time.perf_counter() - start
                tps[name].append(batch_size * (generated.shape[1] - batch["input_ids"].shape[1]) / seconds)
        out[f"generate_tokens_per_s_b{batch_size}"] = _ratios(tps["rrg"], tps["llava"])
        out[f"time_to_first_token_b{batch_size}"] = _ratios(ttft["rrg"], ttft["llava"])
    # Greedy outputs must be the same tokens (same weights): a check, not a timing.
    one = dict(processor(images=[[load_image(p) for p in rows[0]["image_path"]]]))
    a = rrg.generate(**one, do_sample=False, max_new_tokens=8)
    b = llava.generate(**llava_batch(one), do_sample=False, max_new_tokens=8)
    if not torch.equal(a, b):
        raise ValueError(f"Greedy generations differ on the same weights: rrg {a.tolist()} vs LLaVA {b.tolist()}.")
    return out


# ----------------------------------------------------------------------------------------------- driver
def _time_stage(stage, models, collators, rows, shape, tmp, steps, processor, rounds) -> dict:
    """One SFTTrainer per variant (rrg, rrg with the feature cache, LLaVA), alternated within each round."""
    trainers = {name: _trainer(models[name], collators[name], rows, shape, tmp / f"s{stage}_{name}", steps, processor)
                for name in models}
    times = _time_rounds(trainers, rounds)
    return {f"stage{stage}_step": _ratios(times["rrg"], times["llava"]),
            f"stage{stage}_step_cached": _ratios(times["rrg_cached"], times["llava"])}


def run_shape(shape, tmp: Path, rounds: int, steps: int, smoke: bool, new_tokens: int,
              parts=("generation", "training", "memory"), save=None) -> dict:
    rows = make_rows(tmp / "images", shape, max(8, shape.batch_size * (steps + 1)))
    rrg, llava, processor = build_pair(shape)
    plain, _, for_llava = _collators(processor, None)
    probe = plain(rows[: shape.batch_size])
    result = {"shape": shape.name, "logit_max_abs_diff": check_equal_logits(rrg, llava, probe)}
    text_tokens = int(probe["attention_mask"].sum(1).float().mean()) - shape.views * processor.image_seq_length
    result["flops"] = flops_per_sample(shape, text_tokens)
    result["params_m"] = {"vision": sum(p.numel() for p in rrg.model.vision_tower.parameters()) / 1e6,
                          "llm": (sum(p.numel() for p in rrg.model.language_model.parameters())
                                  + rrg.lm_head.weight.numel()) / 1e6}
    logger.info("%s: logits equal (max diff %.2g); encoder share of forward FLOPs %.1f%%", shape.name,
                result["logit_max_abs_diff"], 100 * result["flops"]["encoder_share"])

    save = save or (lambda r: None)  # called with the partial result after each part (long runs keep what they got)
    if "generation" in parts:
        result.update(_generation(rrg, llava, processor, rows, rounds, new_tokens))
        save(result)
    if "training" in parts:
        _training(result, rrg, llava, processor, rows, shape, tmp, steps, rounds)
        save(result)
    del rrg, llava
    gc.collect()
    if "memory" in parts:
        for stage in (1, 2):
            result[f"peak_memory_stage{stage}"] = _memory(shape.name.removesuffix("-smoke"), stage,
                                                          str(tmp / "images"), smoke, max(1, rounds - 1))
            save(result)
    return result


def _training(result, rrg, llava, processor, rows, shape, tmp, steps, rounds):
    from training.sft.feature_cache import FeatureCache

    plain, _, for_llava = _collators(processor, None)

    cache = FeatureCache(tmp / "features", rrg, processor)
    cache.precompute([p for r in rows for p in r["image_path"]])
    _, cached, _ = _collators(processor, cache)

    for model in (rrg, llava):
        _freeze_for_stage1(model)
    collators = {"rrg": plain, "rrg_cached": cached, "llava": for_llava}
    result.update(_time_stage(1, {"rrg": rrg, "rrg_cached": rrg, "llava": llava}, collators, rows, shape, tmp, steps,
                              processor, rounds))
    rrg_peft, llava_peft = _lora(rrg), _lora(llava)
    result.update(_time_stage(2, {"rrg": rrg_peft, "rrg_cached": rrg_peft, "llava": llava_peft}, collators, rows,
                              shape, tmp, steps, processor, rounds))


LABELS = {
    "stage1_step": ("stage-1 step (projector), SFTTrainer", "s"),
    "stage1_step_cached": ("stage-1 step, rrg with feature cache", "s"),
    "stage2_step": ("stage-2 step (LoRA + projector), SFTTrainer", "s"),
    "stage2_step_cached": ("stage-2 step, rrg with feature cache", "s"),
    "peak_memory_stage1": ("peak memory of a stage-1 step", "MB"),
    "peak_memory_stage2": ("peak memory of a stage-2 step", "MB"),
    "generate_tokens_per_s_b1": ("greedy generation, batch 1", "tok/s"),
    "generate_tokens_per_s_b8": ("greedy generation, batch 8", "tok/s"),
    "time_to_first_token_b1": ("time to first token, batch 1", "s"),
    "time_to_first_token_b8": ("time to first token, batch 8", "s"),
}


def render(results: list[dict]) -> str:
    lines = []
    for result in results:
        f = result["flops"]
        lines += [f"### {result['shape']}", "",
                  f"vision {result['params_m']['vision']:.1f} M parameters, LLM {result['params_m']['llm']:.1f} M; "
                  f"sequence {f['sequence_length']} tokens; encoder share of forward FLOPs "
                  f"{100 * f['encoder_share']:.1f}%; max |logit difference| rrg vs LLaVA "
                  f"{result['logit_max_abs_diff']:.2g}.", "",
                  "| measurement | rrg | LLaVA | ratio rrg/LLaVA min / median / max | target | met |",
                  "| --- | ---: | ---: | ---: | ---: | :---: |"]
        for key, (label, unit) in LABELS.items():
            if key not in result:
                continue
            r = result[key]
            op, target = TARGETS.get(key, (None, None))
            met = ""
            if op is not None:
                ok = r["median"] <= target if op == "<=" else r["median"] >= target
                met = "yes" if ok else f"NO ({r['median'] - target:+.2f})"
            lines.append(f"| {label} | {r['rrg']:.4g} {unit} | {r['llava']:.4g} {unit} | {r['min']:.2f} / "
                         f"**{r['median']:.2f}** / {r['max']:.2f} | {'' if op is None else f'{op} {target}'} | {met} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> Path:
    """Bars of the median rrg / LLaVA ratio per measurement and shape, min-max as error bars; 1.0 marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    keys = [k for k in LABELS if all(k in r for r in results)]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(results), 1)
    for i, result in enumerate(results):
        med = [result[k]["median"] for k in keys]
        err = [[m - result[k]["min"] for k, m in zip(keys, med)], [result[k]["max"] - m for k, m in zip(keys, med)]]
        ax.bar([x + i * width for x in range(len(keys))], med, width, yerr=err, capsize=3, label=result["shape"])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([LABELS[k][0] for k in keys], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("rrg / LLaVA (min-median-max over rounds)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> int:
    setup()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="Trainer steps per round (the first is dropped).")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="Smallest size of each shape (tests).")
    parser.add_argument("--json", default=None)
    parser.add_argument("--parts", nargs="+", default=["generation", "training", "memory"],
                        choices=["generation", "training", "memory"])
    parser.add_argument("--plot", default=None, help="Write the ratio chart here (PNG).")
    parser.add_argument("--from-json", nargs="+", help="Only render (and plot) earlier --json outputs.")
    parser.add_argument("--memory-worker", choices=("rrg", "llava"), help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--rows-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        sys.stdout.write(json.dumps(memory_worker(args.shapes[0], args.memory_worker, args.stage, args.rows_dir,
                                                  args.smoke)) + "\n")
        return 0
    if args.from_json:
        results = [r for path in args.from_json for r in json.loads(Path(path).read_text())]
        sys.stdout.write(render(results))
        if args.plot:
            plot(results, Path(args.plot))
        return 0
    torch.manual_seed(0)
    results = []
    write = json_saver(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            shape = SHAPES[name].smallest() if args.smoke else SHAPES[name]
            def save(partial, done=list(results)):  # noqa: B006 (a snapshot taken per shape, on purpose)
                write(done + [partial])

            results.append(run_shape(shape, Path(tmp) / name, args.rounds, args.steps, args.smoke, args.new_tokens,
                                     args.parts, save))
    sys.stdout.write(render(results))
    if args.plot:
        plot(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
