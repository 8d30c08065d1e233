"""A short stage-1 + stage-2 run on tiny backbones and synthetic data, for comparing library stacks.

`python tests/compat_train_run.py OUT` trains both stages under OUT, saves the stage-2 model's logits on a fixed batch
to OUT/logits.pt and prints one JSON line: the training losses and the versions of the stack it ran on. Run by
tests/test_remote_code_compat.py in the locked environment and in one holding the newest releases.
"""

import importlib.metadata
import json
import sys
from pathlib import Path

import torch
import yaml

from helpers import build_training_workspace  # tests/ is on sys.path: this script runs from there
from training.model_io import load_trained
from training.sft.train import parse_args, train


def main(out: Path) -> None:
    build_training_workspace(out, num_train=24, num_eval=4)
    data = out / "data"
    common = {
        "dataset_path": str(data), "num_visual_tokens": 4, "max_steps": 3, "per_device_train_batch_size": 4,
        "learning_rate": 0.01, "logging_steps": 1, "save_strategy": "no", "bf16": False, "report_to": "none",
        "max_length": 256, "use_cpu": True, "eval_strategy": "no", "seed": 0, "data_seed": 0, "disable_tqdm": True,
    }
    stages = {
        1: {"stage": 1, "vision_model": str(out / "vision"), "text_model": str(out / "text"),
            "output_dir": str(out / "stage1")},
        2: {"stage": 2, "model_name_or_path": str(out / "stage1" / "model"), "output_dir": str(out / "stage2"),
            "use_peft": True, "lora_r": 4, "lora_alpha": 8},
    }
    losses = []
    for stage, fields in stages.items():
        recipe = out / f"stage{stage}.yaml"
        recipe.write_text(yaml.safe_dump({**common, **fields}))
        train(*parse_args(["--config", str(recipe)]))
        summary = json.loads((out / f"stage{stage}" / "model" / "rrg_training.json").read_text())
        losses.append(summary["train_loss"])
    model, processor = load_trained(out / "stage2" / "model", merge=True)
    rng = torch.Generator().manual_seed(0)
    images = [(torch.rand(64, 64, generator=rng) * 255).to(torch.uint8).numpy() for _ in range(3)]
    batch = processor(images=[[images[0], images[1]], [images[2]]], report=["Normal heart.", "Left effusion."])
    with torch.no_grad():
        torch.save(model(**batch).logits, out / "logits.pt")
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "trl", "peft", "accelerate", "datasets")}
    print(json.dumps({"losses": losses, "versions": versions}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
