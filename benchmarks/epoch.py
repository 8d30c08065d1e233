"""Stage-1 epoch wall time including data loading, on radiograph JPEGs of real size, with and without the feature cache.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/epoch.py [--studies 24] [--width 2500 --height 3000] [--json out.json]

rrg alone (LLaVA has no feature cache). The studies are one-view JPEGs of MIMIC-CXR-JPG's size (about 2500 x 3000
pixels, smooth content plus noise, quality 95, about 1-2 MB each like the real files); the model is the demo's
architecture. Two epochs through `SFTTrainer` each way: without the cache every epoch decodes and resizes every JPEG
and runs the encoder; with it, the first epoch also fills the cache (its time includes `FeatureCache.precompute`) and
later epochs read 196 x hidden floats per view instead.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("epoch")


def make_jpegs(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        path = folder / f"study{i}.jpg"
        coarse = Image.fromarray(rng.integers(0, 256, (height // 100, width // 100), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path, quality=95)
        rows.append({"id": str(i), "image_path": [str(path)],
                     "report": "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."})
    return rows


class _EpochTimer:
    def __init__(self):
        from transformers import TrainerCallback

        timer = self
        self.epochs: list[float] = []

        class Callback(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kwargs):
                timer.start = time.perf_counter()

            def on_epoch_end(self, args, state, control, **kwargs):
                timer.epochs.append(time.perf_counter() - timer.start)

        self.callback = Callback()


def run(rows: list[dict], tmp: Path, cached: bool, epochs: int, batch_size: int) -> list[float]:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from training.sandbox.tiny import build_tiny_model, train_bpe_tokenizer
    from training.sft.feature_cache import FeatureCache
    from training.sft.train import RRGDataCollator

    model, processor = build_tiny_model(tokenizer=train_bpe_tokenizer(vocab_size=600), image_size=64, patch_size=16,
                                        hidden_size=96, num_layers=3, num_heads=4, max_views=1)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    precompute = 0.0
    cache = None
    if cached:
        start = time.perf_counter()
        cache = FeatureCache(tmp / "features", model, processor)
        cache.precompute([p for r in rows for p in r["image_path"]])
        precompute = time.perf_counter() - start
    timer = _EpochTimer()
    args = SFTConfig(output_dir=str(tmp / ("cached" if cached else "plain")), per_device_train_batch_size=batch_size,
                     num_train_epochs=epochs, learning_rate=1e-3, logging_steps=10_000, save_strategy="no",
                     report_to=[], use_cpu=True, dataloader_num_workers=0, max_length=None, disable_tqdm=True,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor,
                         data_collator=RRGDataCollator(processor, feature_cache=cache), callbacks=[timer.callback])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    times = list(timer.epochs)
    times[0] += precompute
    return times


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--width", type=int, default=2500)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        rows = make_jpegs(tmp / "jpg", args.studies, args.width, args.height)
        sizes = [Path(r["image_path"][0]).stat().st_size for r in rows]
        logger.info("Wrote %d JPEGs of %dx%d (mean %.2f MB) in %.1f s", len(rows), args.width, args.height,
                    np.mean(sizes) / 1e6, time.perf_counter() - start)
        plain = run(rows, tmp, cached=False, epochs=args.epochs, batch_size=args.batch_size)
        cached = run(rows, tmp, cached=True, epochs=args.epochs, batch_size=args.batch_size)
    result = {"studies": args.studies, "image_size": [args.width, args.height], "mean_jpeg_mb": float(np.mean(sizes)) / 1e6,
              "epoch_s_no_cache": plain, "epoch_s_cache": cached,
              "speedup_from_epoch_2": plain[-1] / cached[-1] if len(plain) > 1 else None,
              "speedup_epoch_1": plain[0] / cached[0]}
    lines = ["| epoch | no cache (s) | feature cache (s) | speedup |", "| ---: | ---: | ---: | ---: |"]
    for i, (a, b) in enumerate(zip(plain, cached), 1):
        lines.append(f"| {i} | {a:.2f} | {b:.2f}{' (incl. precompute)' if i == 1 else ''} | {a / b:.2f}x |")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        from training.fileio import write_json_atomic

        write_json_atomic(Path(args.json), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
