"""Speed and memory benchmarks (CPU). Results go to BENCHMARKS.md; targets live here, never in tests.

    make benchmark          # or: HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run.py [--output benchmarks/results/self.md]

Measures, on the demo-size architecture (ViT 64 px / 16 px patches, 3 layers, hidden 96; LLaMA 3 layers, hidden 96):
synthetic data generation, stage-2 training steps with images vs with the frozen-encoder feature cache, generation
with and without the KV cache and batched vs one by one, `rrg serve` latency (benchmarks/serve.py), and peak memory.
"""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Targets for this 2-core CPU machine; a run that misses one is flagged in the report (not a test failure).
TARGETS = {
    "synthetic_studies_per_s_128px": 50.0,
    "feature_cache_train_speedup": 1.0,  # the demo encoder is tiny; the cache must at least not cost time
    "kv_cache_generation_speedup": 1.5,
    "batched_generation_speedup": 2.0,
    "serve_stream_vs_pipeline_speed": 0.8,  # streaming to the page may cost at most a quarter of pipeline()'s time
    "peak_rss_mb": 3000.0,
}


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_synthetic(tmp: Path) -> dict:
    from training.sandbox.synthetic import generate_synthetic_dataset

    n = 600
    start = time.perf_counter()
    generate_synthetic_dataset(tmp / "synthetic", num_train=n, num_val=1, num_test=1, image_size=128, seed=0)
    seconds = time.perf_counter() - start
    return {"synthetic_studies": n + 2, "synthetic_seconds": round(seconds, 2),
            "synthetic_studies_per_s_128px": round((n + 2) / seconds, 1)}


def demo_model():
    from training.sandbox.tiny import build_tiny_model, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(vocab_size=600)
    model, processor = build_tiny_model(tokenizer=tokenizer, image_size=64, patch_size=16, hidden_size=96,
                                        num_layers=3, num_heads=4)
    return model, processor


def bench_training(tmp: Path, model, processor) -> dict:
    from peft import LoraConfig, get_peft_model

    from training.data.loaders import load_synthetic
    from training.sft.feature_cache import FeatureCache
    from training.sft.model_setup import lora_target_regex
    from training.sft.train import RRGDataCollator

    rows = list(load_synthetic(tmp / "synthetic")["train"].select(range(16)))
    cache = FeatureCache(tmp / "features", model, processor)
    cache.precompute([p for r in rows for p in r["image_path"]])
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules=lora_target_regex("llama", True),
                                                  modules_to_save=["multi_modal_projector"]))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    plain, cached = RRGDataCollator(processor, 256), RRGDataCollator(processor, 256, feature_cache=cache)

    def step(collate):
        def run():
            batch = collate(rows)
            loss = peft_model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return run

    t_plain, t_cached = timed(step(plain)), timed(step(cached))
    peft_model.unload()
    return {"train_step_s_images": round(t_plain, 4), "train_step_s_feature_cache": round(t_cached, 4),
            "feature_cache_train_speedup": round(t_plain / t_cached, 2)}


def bench_generation(tmp: Path, model, processor) -> dict:
    from training.data.images import load_image
    from training.data.loaders import load_synthetic

    model.eval()
    rows = list(load_synthetic(tmp / "synthetic")["train"].select(range(16)))
    studies = [[load_image(p) for p in r["image_path"]] for r in rows]
    kwargs = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False)
    batch = processor(images=studies, padding_side="left")
    with torch.no_grad():
        t_batched = timed(lambda: model.generate(**batch, **kwargs), repeat=2)
        singles = [processor(images=[s]) for s in studies[:4]]
        t_single = timed(lambda: [model.generate(**b, **kwargs) for b in singles], repeat=2) * len(studies) / 4
        one = processor(images=[studies[0]])
        t_cache = timed(lambda: model.generate(**one, use_cache=True, **kwargs), repeat=2)
        t_nocache = timed(lambda: model.generate(**one, use_cache=False, **kwargs), repeat=2)
    return {"generate_16_studies_batched_s": round(t_batched, 3), "generate_16_studies_one_by_one_s": round(t_single, 3),
            "batched_generation_speedup": round(t_single / t_batched, 2),
            "generate_1_study_kv_cache_s": round(t_cache, 3), "generate_1_study_no_cache_s": round(t_nocache, 3),
            "kv_cache_generation_speedup": round(t_nocache / t_cache, 2), "reports_per_s_batched": round(16 / t_batched, 1)}


def render(results: dict, command: str) -> str:
    lines = ["# Benchmarks", "", f"Command: `{command}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads; measured {time.strftime('%Y-%m-%d')}.", "",
             "| measurement | value | target | met |", "| --- | ---: | ---: | :---: |"]
    for key, value in results.items():
        target = TARGETS.get(key)
        met = ""
        if target is not None:
            met = "yes" if (value <= target if key == "peak_rss_mb" else value >= target) else "NO"
        lines.append(f"| {key} | {value} | {'' if target is None else target} | {met} |")
    lines += ["", "Targets are for the 2-core CPU machines this project runs on; `peak_rss_mb` is an upper bound, the",
              "others lower bounds. The demo's own timings are in `outputs/demo/summary.md` after `make demo`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "self.md"))  # BENCHMARKS.md cites it
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results.update(bench_synthetic(tmp))
        model, processor = demo_model()
        results.update(bench_training(tmp, model, processor))
        results.update(bench_generation(tmp, model, processor))
        from serve import bench_serve  # benchmarks/serve.py

        results.update(bench_serve(tmp, model, processor))
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    text = render(results, "make benchmark")
    from training.fileio import write_text_atomic

    write_text_atomic(args.output, text)
    sys.stdout.write(text)
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
