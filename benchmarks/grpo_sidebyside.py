"""rrg's stage-3 GRPO step vs trl's `GRPOTrainer` on transformers' LLaVA, same backbones, same weights.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/grpo_sidebyside.py [--shapes demo encoder_heavy] [--rounds 3]
        [--steps 3] [--completion-length 32] [--threads 1] [--json out.json] [--smoke] [--from-json a.json ...]

For each shape LLaVA is built and its state dict copied into rrg (`peer.build_pair`; logits checked equal before
anything is timed). Both get LoRA on the LLM + the projector (as stage 2/3 recipes), one `GRPOConfig` (same
num_generations, max_completion_length, sampling, beta, loss, batch, steps; bf16 off, use_cpu), the same studies and
the same reward (BLEU-4 against the study's report, `training.rl.rewards`):
- rrg through `RRGGRPOTrainer` as `training/rl/grpo.py` sets it up (the processor's training prompt and the
  collator's `pixel_values` / `num_views`, seeded sampling: one batched `generate`, a generator per row);
- LLaVA through trl's own `GRPOTrainer` the way trl takes a VLM out of the box: a conversational `prompt` column and
  an `images` column of PIL images, a `LlavaProcessor` (rrg's chat template, so the prompt renders to the same tokens)
  doing the chat template and the image preprocessing inside the step.
Every completion is exactly `max_completion_length` tokens for both (`generation_kwargs={"min_new_tokens": L}` keeps
EOS out until then), so both generate and score the same number of tokens per step. A step is timed from
`on_step_begin` to `on_step_end` (generation, rewards, reference / old log-probs, loss, backward, optimizer), the first
step of each run dropped; rrg and LLaVA alternate within each round, the order rotated each round; the table shows
min / median / max of the per-round ratio rrg / LLaVA. Generation's share is the time inside trl's `_generate`
(prompt rendering / tokenisation + `generate`) over the step.
"""

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import json_saver, setup  # noqa: E402
from peer import SHAPES, build_pair, check_equal_logits, llava_batch, make_rows  # noqa: E402
from sidebyside import _lora, _ratios, _rotated  # noqa: E402

logger = logging.getLogger("grpo_sidebyside")

TARGET = ("<=", 1.0)  # rrg / LLaVA per optimizer step, generation included (issue 22, item 5)
VARIANTS = ("rrg", "rrg_batched", "llava")


class _StepTimer:
    """A `TrainerCallback` timing each optimizer step (`on_step_begin` to `on_step_end`) and, of it, the time spent in
    the trainer's `_generate` (wrapped on the instance by [`_StepTimer.watch`])."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.generating = 0.0
                timer.start, timer.cpu_start = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                timer.steps.append(time.perf_counter() - timer.start)
                timer.cpu.append(time.process_time() - timer.cpu_start)
                timer.generation.append(timer.generating)

        self.callback = Callback()
        self.steps: list[float] = []
        self.generation: list[float] = []
        self.cpu: list[float] = []  # CPU seconds of the process per step (all threads): less sensitive to load
        self.lengths: set[int] = set()  # completion lengths seen (must be the one fixed length)
        self.generating = 0.0
        self.start = self.cpu_start = 0.0

    def watch(self, trainer):
        inner = trainer._generate

        def _generate(prompts):
            start = time.perf_counter()
            try:
                out = inner(prompts)
            finally:
                self.generating += time.perf_counter() - start
            self.lengths.update(len(ids) for ids in out[1])  # completion_ids of every row
            return out

        trainer._generate = _generate

    def clear(self):
        self.steps.clear()
        self.generation.clear()
        self.cpu.clear()


def grpo_config(out: Path, shape, steps: int, num_generations: int, completion_length: int):
    """The one `GRPOConfig` both trainers get (sampling as `training/rl/recipes/demo_stage3.yaml`)."""
    from trl import GRPOConfig

    # transformers 5.24 renamed gradient_checkpointing to activation_checkpointing (the old name warns)
    checkpointing = ("activation_checkpointing" if "activation_checkpointing" in GRPOConfig.__dataclass_fields__
                     else "gradient_checkpointing")
    return GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=shape.batch_size * num_generations // 2,
        num_generations=num_generations, max_completion_length=completion_length,
        generation_kwargs={"min_new_tokens": completion_length},  # fixed length: EOS suppressed until the maximum
        temperature=0.7, top_p=0.95, top_k=0, repetition_penalty=1.0, loss_type="dapo", beta=0.0,
        scale_rewards="group", max_steps=steps, learning_rate=5e-4, lr_scheduler_type="constant",
        logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
        dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False, log_completions=False, seed=0,
        **{checkpointing: False},  # as the stage-3 recipe (training/rl/recipes/demo_stage3.yaml)
    )


def llava_processor(processor):
    """trl's way in for LLaVA: a `LlavaProcessor` on the same tokenizer and image processor, with rrg's chat template
    (so a `[image, image, text]` user message renders to rrg's prompt; the placeholders expand to the same count)."""
    from transformers import LlavaProcessor

    from modeling_rrg.processing_rrg import DEFAULT_CHAT_TEMPLATE

    return LlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                          patch_size=processor.image_processor.size["height"] // int(processor.image_seq_length ** 0.5),
                          vision_feature_select_strategy="default", chat_template=DEFAULT_CHAT_TEMPLATE,
                          image_token=processor.image_token, num_additional_image_tokens=1)


def llava_dataset(rows, processor):
    """trl's VLM dataset format: a conversational prompt (one image part per view + the instruction) and the views."""
    from datasets import Dataset

    from training.data.images import load_image

    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": [*({"type": "image"} for _ in r["image_path"]),
                                                 {"type": "text", "text": processor.instruction}]}],
         "images": [load_image(p).convert("RGB") for p in r["image_path"]], "report": r["report"], "id": r["id"]}
        for r in rows])


def check_same_prompt(processor, llava_proc, rows) -> int:
    """The LLaVA chat path must feed the model rrg's prompt tokens and pixels; returns the prompt length."""
    from training.sft.train import RRGDataCollator

    rrg = RRGDataCollator(processor).prompt_batch(rows[:1])
    data = llava_dataset(rows[:1], processor)
    from trl.data_utils import prepare_multimodal_messages

    # what GRPOTrainer._generate_and_score_completions / _tokenize_prompts do with a conversational VLM row
    messages = prepare_multimodal_messages(data[0]["prompt"], images=data[0]["images"])
    ours = llava_proc.apply_chat_template(conversation=[messages], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)
    ids = rrg["input_ids"][0][rrg["attention_mask"][0].bool()]
    if list(ours["input_ids"][0]) != ids.tolist():
        raise ValueError(f"LLaVA's chat prompt ({len(ours['input_ids'][0])} tokens) is not rrg's prompt "
                         f"({len(ids)} tokens); the two would not generate from the same input.")
    diff = float((torch.as_tensor(np.array(ours["pixel_values"])) - llava_batch(rrg)["pixel_values"]).abs().max())
    if diff > 1e-5:
        raise ValueError(f"LLaVA's processor and rrg's give pixel values {diff:.3g} apart.")
    return len(ids)


def trainers(rrg, llava, processor, rows, shape, tmp: Path, steps: int, num_generations: int,
             completion_length: int) -> dict:
    """`{variant: (trainer, timer)}` on the same rows, config and reward: "rrg" (`RRGGRPOTrainer` as stage 3 runs it,
    seeded sampling: one batched `generate`, each row drawing from its own generator), "rrg_batched"
    (`seeded_generation=False`: trl's one batched `generate` on the global RNG, as LLaVA) and "llava" (trl's
    `GRPOTrainer`)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    from training.rl.grpo import _grpo_trainer_class, build_prompt_dataset
    from training.rl.rewards import build_reward
    from training.sft.train import RRGDataCollator

    reward = build_reward("bleu", order=4, clean="mimic")
    llava_proc = llava_processor(processor)
    out = {}
    for name in VARIANTS:
        timer = _StepTimer()
        args = grpo_config(tmp / name, shape, steps, num_generations, completion_length)
        if name.startswith("rrg"):
            trainer = _grpo_trainer_class()(
                model=rrg, reward_funcs=[reward], args=args, processing_class=processor,
                train_dataset=build_prompt_dataset(Dataset.from_list(rows), processor),
                collator=RRGDataCollator(processor), callbacks=[timer.callback],
                seeded_generation=name == "rrg")
        else:
            trainer = GRPOTrainer(model=llava, reward_funcs=[reward], args=args, processing_class=llava_proc,
                                  train_dataset=llava_dataset(rows, processor), callbacks=[timer.callback])
        trainer.remove_callback(PrinterCallback)
        timer.watch(trainer)
        out[name] = (trainer, timer)
    return out


def run_shape(shape, tmp: Path, rounds: int, steps: int, num_generations: int, completion_length: int,
              profile: Path | None = None) -> dict:
    studies = shape.batch_size // 2 * steps  # distinct studies per run (a step takes batch_size // 2 of them)
    rows = make_rows(tmp / "images", shape, max(4, studies))
    rrg, llava, processor = build_pair(shape)
    from training.sft.train import RRGDataCollator

    probe = RRGDataCollator(processor)(rows[: shape.batch_size])
    result = {"shape": shape.name, "logit_max_abs_diff": check_equal_logits(rrg, llava, probe),
              "prompt_tokens": check_same_prompt(processor, llava_processor(processor), rows),
              "num_generations": num_generations, "completion_length": completion_length,
              "rows_per_step": shape.batch_size * num_generations // 2}
    rrg, llava = _lora(rrg), _lora(llava)
    pair = trainers(rrg, llava, processor, rows, shape, tmp, steps, num_generations, completion_length)
    times = {name: [] for name in pair}
    cpu = {name: [] for name in pair}
    shares = {name: [] for name in pair}
    for round_index in range(rounds):
        for name in _rotated(list(pair), round_index):
            trainer, timer = pair[name]
            timer.clear()
            trainer.train()
            keep = slice(1, None) if len(timer.steps) > 1 else slice(None)  # the first step warms up
            times[name].append(statistics.median(timer.steps[keep]))
            cpu[name].append(statistics.median(timer.cpu[keep]))
            shares[name].append(statistics.median(g / s for g, s in zip(timer.generation[keep], timer.steps[keep])))
            logger.info("%s round %d %s: steps %s s, generation %s s", shape.name, round_index, name,
                        [round(t, 3) for t in timer.steps], [round(t, 3) for t in timer.generation])
    for name, (_, timer) in pair.items():
        if timer.lengths != {completion_length}:
            raise ValueError(f"{name} generated completions of {sorted(timer.lengths)} tokens, not the fixed "
                             f"{completion_length}: the two would not generate the same number of tokens.")
    result["generation_share"] = {name: statistics.median(shares[name]) for name in pair}
    for name in ("rrg", "rrg_batched"):
        suffix = "" if name == "rrg" else "_batched"
        result["step" + suffix] = _ratios(times[name], times["llava"])
        result["step_cpu" + suffix] = _ratios(cpu[name], cpu["llava"])
        result["generation" + suffix] = _ratios([t * s for t, s in zip(times[name], shares[name])],
                                                [t * s for t, s in zip(times["llava"], shares["llava"])])
        result["rest" + suffix] = _ratios([t * (1 - s) for t, s in zip(times[name], shares[name])],
                                          [t * (1 - s) for t, s in zip(times["llava"], shares["llava"])])
    tokens = result["rows_per_step"] * completion_length
    result["generated_tokens_per_step"] = tokens
    if profile is not None:
        result["profile"] = profile_step(pair, profile)
    return result


def profile_step(pair, folder: Path) -> dict:
    """cProfile of one training run of each trainer (`steps` steps); the top functions by cumulative time."""
    import cProfile
    import io
    import pstats

    folder.mkdir(parents=True, exist_ok=True)
    top = {}
    for name, (trainer, _) in pair.items():
        profiler = cProfile.Profile()
        profiler.runcall(trainer.train)
        profiler.dump_stats(str(folder / f"{name}.prof"))
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        (folder / f"{name}.txt").write_text(text.getvalue())
        top[name] = str(folder / f"{name}.txt")
    return top


ROWS = (
    ("step", "GRPO optimizer step, generation included (wall)", True),
    ("step_cpu", "GRPO optimizer step, CPU time of the process (all threads)", False),
    ("generation", "of the step: generation (`_generate`)", False),
    ("rest", "of the step: rewards, log-probs, loss, backward, optimizer", False),
)


def render(results: list[dict]) -> str:
    lines = []
    op, target = TARGET
    for r in results:
        share = r["generation_share"]
        lines += [f"### {r['shape']}", "",
                  f"max |logit difference| rrg vs LLaVA {r['logit_max_abs_diff']:.2g}; prompt {r['prompt_tokens']} "
                  f"tokens (the same ids for both); {r['rows_per_step']} completions per step "
                  f"({r['num_generations']} per study) of exactly {r['completion_length']} tokens = "
                  f"{r['generated_tokens_per_step']} generated tokens per step for each model; generation's share of "
                  f"the step: rrg {100 * share['rrg']:.0f}%, rrg batched {100 * share['rrg_batched']:.0f}%, LLaVA "
                  f"{100 * share['llava']:.0f}%.", "",
                  "| measurement | rrg | LLaVA | ratio rrg/LLaVA min / median / max | target | met |",
                  "| --- | ---: | ---: | ---: | ---: | :---: |"]
        for suffix, variant in (("", "rrg (seeded per-row sampling, one batched generate, stage 3's default)"),
                                ("_batched", "rrg, `seeded_generation=False` (trl's sampling, one batched generate)")):
            for key, label, targeted in ROWS:
                x = r[key + suffix]
                met = ("yes" if x["median"] <= target else f"NO ({x['median'] - target:+.2f})") if targeted else ""
                lines.append(f"| {variant}: {label} | {x['rrg']:.4g} s | {x['llava']:.4g} s | {x['min']:.2f} / "
                             f"**{x['median']:.2f}** / {x['max']:.2f} | {f'{op} {target}' if targeted else ''} "
                             f"| {met} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    setup()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["demo"], choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps per round (the first is dropped).")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="Smallest size of each shape (tests).")
    parser.add_argument("--profile", default=None, help="Also cProfile one run of each trainer into this folder.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 keeps a loaded machine's wait out of each op.")
    parser.add_argument("--json", default=None)
    parser.add_argument("--from-json", nargs="+", help="Only render earlier --json outputs.")
    args = parser.parse_args(argv)
    if args.from_json:
        sys.stdout.write(render([r for path in args.from_json for r in json.loads(Path(path).read_text())]))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    write = json_saver(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            shape = SHAPES[name].smallest() if args.smoke else SHAPES[name]
            results.append(run_shape(shape, Path(tmp) / name, args.rounds, args.steps, args.num_generations,
                                     args.completion_length, Path(args.profile) / name if args.profile else None))
            write(results)
    sys.stdout.write(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
