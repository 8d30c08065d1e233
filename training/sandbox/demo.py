"""The main job on the embedded default: `rrg demo` (what `make demo` runs).

On a fresh machine, with no download: generate the synthetic chest X-ray benchmark, pretrain small backbones on it
(a LLaMA-architecture LM on the reports, a ViT on the images), assemble rrg from them, run stage 1 (projector) and
stage 2 (LoRA + projector), evaluate on the test split — with the true images and, as a control, with the images
shuffled between studies — and export a Hub-ready folder. Layout of `outputs/demo/`:

```
data/                  synthetic benchmark (annotation.json + images/)
pretrain_corpus/       the ViT's own pretraining corpus (same generator, seed + 1, train split only, no test)
backbones/text         pretrained LM + tokenizer      backbones/vision   pretrained ViT + image processor
features/              frozen-encoder feature cache (shared by both stages)
stage1/ stage2/        checkpoints, TensorBoard runs/, and model/ (the complete save_pretrained folder)
stage3/                GRPO from stage 2 (training/rl): the same, plus samples.jsonl (completions with their rewards)
eval/ eval_shuffled/   predictions.jsonl, metrics.json, metrics.md (true vs shuffled images)
eval_stage3/ eval_stage3_shuffled/ compare_stage2_stage3{,_ground_truth}.{json,md}   stage 3, and stage 3 vs stage 2
                       (CE against the reference reports' labels, and against the benchmark's ground truth)
probe/                 `rrg probe`: linear probe on the frozen encoder vs the stage-2 reports, per CheXpert label
export/                Hub-ready folder (merged model, remote code, processor, model card)
summary.json summary.md
```
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo", "main"]

RECIPES = Path(__file__).resolve().parents[1] / "sft" / "recipes"
RL_RECIPES = Path(__file__).resolve().parents[1] / "rl" / "recipes"


@dataclass
class DemoConfig:
    """Sizes of the demo; `quick()` is a seconds-long version for tests."""

    num_train: int = 2400
    num_val: int = 100
    num_test: int = 200
    image_size: int = 64
    patch_size: int = 16  # 4 x 4 = 16 patch tokens per view
    vision_hidden: int = 96
    vision_layers: int = 3
    text_hidden: int = 96
    text_layers: int = 3
    heads: int = 4
    vocab_size: int = 600
    lm_steps: int = 300
    # The ViT is pretrained on a corpus of its own (the benchmark's generator with seed + 1, no report, no test
    # split), as a real chest X-ray encoder is pretrained on other hospitals' images: on the 2,400 training images
    # alone it memorised them (probe AUROC 1.0 on train, 0.8 on test for nodules and fractures).
    pretrain_studies: int = 20000  # 0: pretrain on the benchmark's training split instead
    vit_epochs: int = 12
    vit_learning_rate: float = 3e-3
    vit_batch_size: int = 32  # more, smaller steps than 64 in the same time: what a small ViT from scratch needs
    vit_positive_weight: float = 5.0  # most targets are rare and most patches empty; 1.0 learned the small findings slower
    dense_targets: bool = True  # per-patch targets (where each finding is drawn), besides the study-level ones
    stage1_epochs: float = 1
    stage2_epochs: float = 6
    num_visual_tokens: int | None = None  # every patch token
    eval_batch_size: int = 32
    max_new_tokens: int = 96
    stage3_steps: int = 60  # GRPO steps of stage 3 (training/rl/recipes/demo_stage3.yaml); 0 skips stage 3
    seed: int = 0

    @classmethod
    def small(cls) -> "DemoConfig":
        """A few-minute version that still learns to read the images (used by the end-to-end learning test)."""
        return cls(num_train=1200, num_val=16, num_test=100, lm_steps=150, pretrain_studies=3000, vit_epochs=6,
                   stage1_epochs=1,
                   stage2_epochs=5, max_new_tokens=80, stage3_steps=20)  # stage 3 shortened: a test runs it

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(num_train=96, num_val=8, num_test=16, vision_hidden=32, vision_layers=2, text_hidden=32,
                   text_layers=2, heads=2, vocab_size=400, lm_steps=20, pretrain_studies=0, vit_epochs=1, stage1_epochs=1,
                   stage2_epochs=1, eval_batch_size=16, max_new_tokens=24, stage3_steps=2)


def _timed(name, timings):
    class _Timer:
        def __enter__(self):
            self.start = time.time()
            logger.info("== %s", name)

        def __exit__(self, *exc):
            timings[name] = round(time.time() - self.start, 1)
            return False

    return _Timer()


def run_demo(output_dir="outputs/demo", config: DemoConfig | None = None, export: bool = True,
             evaluate_stage1: bool = True) -> dict:
    """Run the whole demo; returns (and writes) the summary."""
    from transformers import AutoTokenizer

    from ..arguments import GenerationArguments, ScoringArguments
    from ..evaluation.evaluator import evaluate
    from ..sft.train import parse_args, train
    from .pretrain import finding_patch_targets, finding_targets, pretrain_language_model, pretrain_vision_encoder
    from .synthetic import generate_synthetic_dataset
    from .tiny import tiny_image_processor, tiny_text_config, tiny_vision_config, train_bpe_tokenizer

    config = config or DemoConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    total_start = time.time()

    data = out / "data"
    with _timed("data", timings):
        if not (data / "annotation.json").exists():
            generate_synthetic_dataset(data, num_train=config.num_train, num_val=config.num_val,
                                       num_test=config.num_test, image_size=config.image_size, seed=config.seed)
        annotation = json.loads((data / "annotation.json").read_text())
    train_rows = annotation["train"]

    text_dir, vision_dir = out / "backbones" / "text", out / "backbones" / "vision"
    with _timed("pretrain_lm", timings):
        if not (text_dir / "config.json").exists():
            # The image token is not in the LM's vocabulary, as with a real LLM: rrg adds it when assembling.
            tokenizer = train_bpe_tokenizer([r["report"] for r in train_rows], vocab_size=config.vocab_size,
                                            image_token="<reserved_0>")
            text_config = tiny_text_config("llama", vocab_size=len(tokenizer), hidden_size=config.text_hidden,
                                           num_layers=config.text_layers, num_heads=config.heads)
            pretrain_language_model([r["report"] for r in train_rows], tokenizer, text_config, text_dir,
                                    steps=config.lm_steps, batch_size=16, seed=config.seed)
    with _timed("pretrain_vision", timings):
        if not (vision_dir / "config.json").exists():
            corpus, corpus_rows, corpus_seed = data, train_rows, config.seed
            if config.pretrain_studies:
                corpus, corpus_seed = out / "pretrain_corpus", config.seed + 1
                if not (corpus / "annotation.json").exists():
                    generate_synthetic_dataset(corpus, num_train=config.pretrain_studies, num_val=0, num_test=0,
                                               image_size=config.image_size, seed=corpus_seed, overwrite=True)
                corpus_rows = json.loads((corpus / "annotation.json").read_text())["train"]
            vision_config = tiny_vision_config("vit", image_size=config.image_size, patch_size=config.patch_size,
                                               hidden_size=config.vision_hidden, num_layers=config.vision_layers,
                                               num_heads=config.heads)
            paths = [str(corpus / "images" / r["image_path"][0]) for r in corpus_rows]
            targets = [finding_targets(r["findings"]) for r in corpus_rows]
            patch_targets = (finding_patch_targets(corpus_rows, corpus_seed, config.image_size // config.patch_size)
                             if config.dense_targets else None)
            pretrain_vision_encoder(paths, targets, vision_config, tiny_image_processor(config.image_size),
                                    vision_dir, epochs=config.vit_epochs, batch_size=config.vit_batch_size,
                                    learning_rate=config.vit_learning_rate, seed=config.seed,
                                    patch_targets=patch_targets, positive_weight=config.vit_positive_weight)

    pooling = ["--num_visual_tokens", str(config.num_visual_tokens)] if config.num_visual_tokens else []
    common = ["--dataset_path", str(data), "--feature_cache_dir", str(out / "features"), *pooling, "--use_cpu", "true",
              "--disable_tqdm", "false", "--eval_strategy", "no", "--seed", str(config.seed),
              "--overwrite", "true"]  # a demo rerun retrains its stages (and so re-evaluates) from scratch
    stage1_dir, stage2_dir = out / "stage1", out / "stage2"
    with _timed("stage1", timings):
        args = parse_args(["--config", str(RECIPES / "demo_stage1.yaml"), "--output_dir", str(stage1_dir),
                           "--vision_model", str(vision_dir), "--text_model", str(text_dir),
                           "--num_train_epochs", str(config.stage1_epochs), *common])
        train(*args)
    with _timed("stage2", timings):
        args = parse_args(["--config", str(RECIPES / "demo_stage2.yaml"), "--output_dir", str(stage2_dir),
                           "--model_name_or_path", str(stage1_dir), "--num_train_epochs", str(config.stage2_epochs),
                           *common])
        train(*args)

    generation = GenerationArguments(max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size)
    with _timed("evaluate", timings):
        from ..model_io import load_trained

        model, processor = load_trained(stage2_dir, merge=True)
        true_metrics = evaluate(stage2_dir, data, generation, output_dir=out / "eval", split="test", model=model,
                                processor=processor, overwrite=True)
        shuffled_metrics = evaluate(stage2_dir, data, generation, output_dir=out / "eval_shuffled", split="test",
                                    model=model, processor=processor, shuffle_images_seed=config.seed, overwrite=True)
        stage1_metrics = None
        if evaluate_stage1:
            stage1_model, stage1_processor = load_trained(stage1_dir)
            stage1_metrics = evaluate(stage1_dir, data, generation, ScoringArguments(meteor=False),
                                      output_dir=out / "eval_stage1", split="test", model=stage1_model,
                                      processor=stage1_processor, overwrite=True)

    with _timed("probe", timings):
        # The reading ceiling (`rrg probe`): what the frozen encoder's features carry per label vs what the stage-2
        # reports say, both against the benchmark's ground truth.
        from ..analysis.probe import run_probe

        probe = run_probe(model, data, out / "probe", processor=processor, predictions=out / "eval",
                          feature_cache_dir=out / "features", seed=config.seed)

    stage3 = _stage3(out, data, config, common, generation, timings) if config.stage3_steps else None

    exported = None
    if export:
        with _timed("export", timings):
            exported = _export(stage2_dir, out / "export", out / "eval")

    stage_summaries = {name: json.loads((out / name / "model" / "rrg_training.json").read_text())
                       for name in ("stage1", "stage2", "stage3") if (out / name / "model").is_dir()}
    summary = {
        "config": asdict(config),
        "timings_seconds": {**timings, "total": round(time.time() - total_start, 1)},
        "stages": {name: {k: s[k] for k in ("mode", "trainable_parameters", "frozen_parameters", "train_loss",
                                            "global_step")} for name, s in stage_summaries.items()},
        "test": {"stage2_true_images": _headline(true_metrics), "stage2_shuffled_images": _headline(shuffled_metrics),
                 "stage1_true_images": _headline(stage1_metrics) if stage1_metrics else {}},
        "test_intervals": {"stage2_true_images": _headline_intervals(true_metrics),
                           "stage2_shuffled_images": _headline_intervals(shuffled_metrics),
                           "stage1_true_images": _headline_intervals(stage1_metrics) if stage1_metrics else {}},
        "probe": probe["summary"],
        "probe_table": str(out / "probe" / "probe.md"),
        **(stage3 or {}),
        "export": str(exported) if exported else None,
        "tokenizer_vocab": len(AutoTokenizer.from_pretrained(text_dir)),
    }
    if stage3:
        for key in ("test", "test_intervals"):
            summary[key].update(summary.pop(f"stage3_{key}"))
    from ..analysis.probe import probe_markdown
    from ..fileio import write_json_atomic, write_text_atomic

    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", summary_table(summary) + "\n" + probe_markdown(probe))
    return summary


def _stage3(out: Path, data: Path, config: DemoConfig, common: list, generation, timings: dict) -> dict:
    """Stage 3 (GRPO with clinical rewards) from stage 2, evaluated like stage 2 (true and shuffled images), and the
    paired test of stage 3 against stage 2 on the same studies (`rrg compare`)."""
    from ..evaluation.compare import compare_predictions, ground_truth_labels, to_markdown
    from ..evaluation.evaluator import evaluate
    from ..fileio import write_json_atomic, write_text_atomic
    from ..model_io import load_trained
    from ..rl.grpo import parse_args as parse_stage3_args
    from ..rl.grpo import train as train_stage3

    stage3_dir = out / "stage3"
    with _timed("stage3", timings):
        train_stage3(*parse_stage3_args([
            "--config", str(RL_RECIPES / "demo_stage3.yaml"), "--output_dir", str(stage3_dir),
            "--model_name_or_path", str(out / "stage2"), "--max_steps", str(config.stage3_steps),
            "--max_completion_length", str(config.max_new_tokens), *common]))
    with _timed("evaluate_stage3", timings):
        model, processor = load_trained(stage3_dir, merge=True)
        true_metrics = evaluate(stage3_dir, data, generation, output_dir=out / "eval_stage3", split="test",
                                model=model, processor=processor, overwrite=True)
        shuffled_metrics = evaluate(stage3_dir, data, generation, output_dir=out / "eval_stage3_shuffled",
                                    split="test", model=model, processor=processor, shuffle_images_seed=config.seed,
                                    overwrite=True)
        pair = (out / "eval" / "predictions.jsonl", out / "eval_stage3" / "predictions.jsonl")
        comparison = compare_predictions(*pair)
        # The same test against the benchmark's ground-truth labels (`rrg compare --labels_from dataset`): a gain
        # that only agrees better with the reference *text* would not show here.
        truth = compare_predictions(*pair, reference_labels=ground_truth_labels(data, "test"))
        for name, result in (("compare_stage2_stage3", comparison), ("compare_stage2_stage3_ground_truth", truth)):
            write_json_atomic(out / f"{name}.json", result)
            write_text_atomic(out / f"{name}.md", to_markdown(result))
    rows = ("BLEU-4", "ROUGE-L", "ce_rule_f1_micro_14_uncertain_negative")
    truth_rows = ("ce_rule_f1_micro_14_uncertain_negative", "ce_rule_f1_macro_14_uncertain_negative",
                  "ce_rule_precision_micro_14_uncertain_negative", "ce_rule_recall_micro_14_uncertain_negative")
    return {
        "stage3_test": {"stage3_true_images": _headline(true_metrics),
                        "stage3_shuffled_images": _headline(shuffled_metrics)},
        "stage3_test_intervals": {"stage3_true_images": _headline_intervals(true_metrics),
                                  "stage3_shuffled_images": _headline_intervals(shuffled_metrics)},
        "stage3_vs_stage2": {name: comparison["metrics"][name] for name in rows if name in comparison["metrics"]},
        "stage3_vs_stage2_ground_truth": {name: truth["metrics"][name] for name in truth_rows
                                          if name in truth["metrics"]},
    }


def _export(stage2_dir: Path, export_dir: Path, eval_dir: Path):
    from ..release.export import export_model

    # The demo's data is local and synthetic, so the card's front matter names no Hub dataset.
    return export_model(stage2_dir, export_dir, metrics=eval_dir, repo_id="your-org/rrg-demo", datasets=[],
                        overwrite=True)


HEADLINE = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _headline(metrics: dict) -> dict:
    ce = metrics["clinical_efficacy"]
    out = {k: metrics[k] for k in HEADLINE if k in metrics}
    out.update({"CE-F1 (micro-14)": ce["f1_micro_14"], "CE-F1 (macro-14)": ce["f1_macro_14"],
                "CE-F1 (micro-5)": ce["f1_micro_5"], "CE-P (micro-14)": ce["precision_micro_14"],
                "CE-R (micro-14)": ce["recall_micro_14"]})
    return out


def _headline_intervals(metrics: dict) -> dict:
    """95% bootstrap intervals `[low, high]` of the headline rows (CE rows: the labeler's uncertain-as-negative)."""
    out = _headline(metrics)
    intervals = metrics.get("confidence_intervals") or {}
    labeler = metrics.get("ce_labeler", "rule")
    ce_keys = {"CE-F1 (micro-14)": "f1_micro_14", "CE-F1 (macro-14)": "f1_macro_14", "CE-F1 (micro-5)": "f1_micro_5",
               "CE-P (micro-14)": "precision_micro_14", "CE-R (micro-14)": "recall_micro_14"}
    for name in list(out):
        key = name if name in intervals else None
        if name in ce_keys:
            metric, averaging, labels = ce_keys[name].split("_")
            key = f"ce_{labeler}_{metric}_{averaging}_{labels}_uncertain_negative"
        ci = intervals.get(key) if key else None
        out[name] = [ci["low"], ci["high"]] if ci else None
    return out


def _cell(value, interval=None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


COLUMNS = (("stage2_true_images", "stage 2, true images"), ("stage2_shuffled_images", "stage 2, shuffled images"),
           ("stage1_true_images", "stage 1, true images"), ("stage3_true_images", "stage 3, true images"),
           ("stage3_shuffled_images", "stage 3, shuffled images"))


def summary_table(summary: dict) -> str:
    test = summary["test"]
    names = list(test["stage2_true_images"].keys())
    columns = [(key, title) for key, title in COLUMNS if key in test]
    lines = ["Values with 95% paired-bootstrap intervals [low, high].", "",
             "| metric | " + " | ".join(title for _, title in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for name in names:
        row = [test[k].get(name) for k, _ in columns]
        cis = [summary.get("test_intervals", {}).get(k, {}).get(name) for k, _ in columns]
        lines.append(f"| {name} | " + " | ".join(_cell(v, ci) for v, ci in zip(row, cis)) + " |")
    for key, against in (("stage3_vs_stage2", "the reference reports' labels"),
                         ("stage3_vs_stage2_ground_truth", "the benchmark's ground-truth labels")):
        if not summary.get(key):
            continue
        lines += ["", f"Stage 3 - stage 2 on the same test studies, clinical efficacy against {against} (paired "
                      "bootstrap, `rrg compare`):", "",
                  "| metric | stage 2 | stage 3 | stage 3 - stage 2 | 95% CI | p |",
                  "| --- | ---: | ---: | ---: | :---: | ---: |"]
        for name, r in summary[key].items():
            lines.append(f"| {name} | {r['a']:.3f} | {r['b']:.3f} | {r['difference']:+.3f} | "
                         f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['p_value']:.4f} |")
    lines += ["", "| stage | mode | trainable | frozen | train loss | steps |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, s in summary["stages"].items():
        lines.append(f"| {name} | {s['mode']} | {s['trainable_parameters']:,} | {s['frozen_parameters']:,} | "
                     f"{s['train_loss']:.3f} | {s['global_step']} |")
    lines += ["", "Time (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_seconds"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rrg demo", description="Run the whole pipeline on the synthetic benchmark.")
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--quick", action="store_true", help="A seconds-long smoke version (tiny sizes).")
    parser.add_argument("--no-export", action="store_true")
    a = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    summary = run_demo(a.output_dir, DemoConfig.quick() if a.quick else DemoConfig(), export=not a.no_export)
    sys.stdout.write("\n" + summary_table(summary))
    if summary.get("probe_table"):  # the reading ceiling (`rrg probe`), next to the report metrics
        sys.stdout.write("\n" + Path(summary["probe_table"]).read_text())
    sys.stdout.write(f"\nOutputs in {a.output_dir} (see README: 'The demo').\n")
    if summary.get("export"):
        # The venv's script when `rrg` is not on PATH (make demo runs .venv/bin/rrg).
        rrg = "rrg" if shutil.which("rrg") else str(Path(sys.executable).with_name("rrg"))
        sys.stdout.write(f"Serve the model it trained in a browser:\n    {rrg} serve {summary['export']}\n")
    return 0
