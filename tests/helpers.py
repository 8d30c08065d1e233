"""Small helpers shared by tests (images, subprocess runner)."""

import os
import subprocess
import sys
import textwrap

import numpy as np


def xray(seed: int = 0, size: int = 40, dtype=np.uint8) -> np.ndarray:
    """A random grayscale 'radiograph' array."""
    rng = np.random.default_rng(seed)
    if dtype == np.uint16:
        return rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    return rng.integers(0, 256, size=(size, size), dtype=np.uint8)


# Run in a subprocess where neither `modeling_rrg` nor `training` can be imported: the saved folder must carry all
# the code it needs (that is what the Hub serves).
BLOCK_PROJECT = textwrap.dedent(
    """
    import sys
    for name in ("modeling_rrg", "training"):
        sys.modules[name] = None  # makes `import name` raise ImportError
    try:
        import modeling_rrg  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("project still importable")
    """
)


def run_isolated(code: str, cwd, env_extra=None, timeout=600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_PROJECT + textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc.stdout


# ------------------------------------------------------------------------------------------------- training recipes
def train_recipe(workspace, out, **overrides):
    """Write a tiny CPU training recipe (see the `workspace` fixture) next to `out`; fields override the defaults."""
    from pathlib import Path

    import yaml

    base = {
        "stage": 1, "dataset_path": str(workspace / "data"), "vision_model": str(workspace / "vision"),
        "text_model": str(workspace / "text"), "num_visual_tokens": 4, "output_dir": str(out), "max_steps": 4,
        "per_device_train_batch_size": 4, "learning_rate": 0.01, "logging_steps": 2, "save_steps": 2,
        "bf16": False, "gradient_checkpointing": False, "report_to": "none", "max_length": 256, "use_cpu": True,
        "eval_strategy": "no", "seed": 0, "data_seed": 0, "disable_tqdm": True, "save_only_model": False,
    }
    base.update(overrides)
    path = Path(out).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base))
    return path


def train_run(path, *extra):
    """Run `rrg train --config path [extra ...]` in process; returns the final model folder."""
    from training.sft.train import parse_args, train

    args, training_args, model_args = parse_args(["--config", str(path), *extra])
    return train(args, training_args, model_args)


def weights(folder):
    from pathlib import Path

    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))
