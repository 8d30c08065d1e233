"""GREEN (Ostmeier et al., 2024) by RadEval's GREEN code with the user's local judge model, as a registry entry.

GREEN asks a fine-tuned causal LM (the judge, e.g. `StanfordAIMI/GREEN-RadLlama2-7b`) to list the clinically
significant and insignificant errors of a candidate report against its reference and the findings both share; the
score of one report is `matched findings / (matched findings + clinically significant errors)` (0 when nothing
matches). Everything is RadEval 2.2.1's `radeval/metrics/green_score/green.py`: its `GREEN` class loads the judge
(float32 on CPU, float16 on one GPU), builds the prompt (`utils.make_prompt`), applies its chat template, decodes
greedily (batches of 8, `max_length` 2048) and parses the judge's text (`GREEN.parse_error_counts`,
`GREEN.compute_green`). We construct that class with the local folder and one device (`num_gpus=1`, so its
multiprocessing path never runs) and call it; nothing is re-implemented.

Import. `radeval/__init__.py` imports every metric and calls `nltk.download`, so [`radeval_green`] imports `green.py`
alone: the packages above it are bare modules (their `__init__` files do not run) while it loads, and the two
process-wide settings it changes at import (multiprocessing's start method, set to "spawn" when unset, and the
transformers logging level, set to ERROR) are put back.

Model folder. The user's local copy of a released GREEN judge (`--green-model DIR`): `config.json` of a causal LM,
its weights and its tokenizer files. Nothing is downloaded. RadEval loads it with `trust_remote_code=True` (except
for folders whose path names "Phi"), so a folder whose config carries custom code runs that code: pass only folders
you trust. The 7B LLaMA judge needs about 28 GB of memory in float32 on CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import multiprocessing
import os
import sys
import types
from pathlib import Path

from .registry import Inputs, Metric, MetricStats, mean_stats, register

__all__ = ["REXRANK_GREEN_NAME", "radeval_module", "radeval_green", "check_model_folder", "check_green_folder",
           "green_scores"]

logger = logging.getLogger(__name__)

REXRANK_GREEN_NAME = "rexrank/GREEN"
_GREEN_MODULE = "radeval.metrics.green_score.green"
_PACKAGES = ("radeval", "radeval.metrics", "radeval.metrics.green_score")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spm.model")


def radeval_module(name: str, bare: tuple[str, ...] = ("radeval", "radeval.metrics")) -> types.ModuleType:
    """A module of the installed RadEval 2.2.1 (e.g. `radeval.metrics.green_score.green`), imported without running
    `radeval/__init__.py` (which imports every metric and calls `nltk.download`).

    The packages in `bare` that are not imported yet are registered as bare packages (the installed folders as their
    path, their `__init__` not run) while the module loads and removed after; the multiprocessing start method and
    the transformers logging level, which RadEval's `green.py` sets at import, are restored.
    """
    if name in sys.modules:
        return sys.modules[name]
    if "radeval" in sys.modules:
        locations = list(getattr(sys.modules["radeval"], "__path__", []))
    else:
        spec = importlib.util.find_spec("radeval")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(f"{name} is RadEval's code: `pip install --no-deps radeval==2.2.1` (the `dev` extra of "
                          "rrg-cxr installs what it needs: transformers, datasets, pandas).")
    from transformers.utils import logging as hf_logging

    root = Path(locations[0])
    added = []
    for package in bare:
        if package not in sys.modules:
            alias = types.ModuleType(package)
            alias.__path__ = [str(root.joinpath(*package.split(".")[1:]))]
            alias.__package__ = package
            sys.modules[package] = alias
            added.append(package)
    start_method = multiprocessing.get_start_method(allow_none=True)
    verbosity = hf_logging.get_verbosity()
    try:
        module = importlib.import_module(name)
    finally:
        if start_method is None:
            multiprocessing.set_start_method(None, force=True)
        hf_logging.set_verbosity(verbosity)
        for package in added:
            sys.modules.pop(package, None)
    return module


def radeval_green() -> types.ModuleType:
    """RadEval's `radeval/metrics/green_score/green.py` alone (see [`radeval_module`]; the `green_score` package's
    `__init__`, which also imports MammoGREEN, does not run)."""
    return radeval_module(_GREEN_MODULE, _PACKAGES)


def check_model_folder(model_dir, hint: str) -> Path:
    """A local transformers model folder (config.json, weights, tokenizer files), or a clear `FileNotFoundError`
    naming the missing file, followed by `hint` (what the folder should be and the flag that passes it)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder {model_dir} does not exist. {hint}")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'config.json'} is missing. {hint}")
    if not any((model_dir / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(f"{model_dir} holds no weights (one of {', '.join(_WEIGHT_FILES)}). {hint}")
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(f"{model_dir} holds no tokenizer (one of {', '.join(_TOKENIZER_FILES)}). {hint}")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (model_dir / index).is_file():
            shards = set(json.loads((model_dir / index).read_text(encoding="utf-8"))["weight_map"].values())
            for shard in sorted(shards):
                if not (model_dir / shard).is_file():
                    raise FileNotFoundError(f"{model_dir / shard} is missing (listed in {index}). {hint}")
    return model_dir


def check_green_folder(model_dir) -> Path:
    """The judge folder, or a clear `FileNotFoundError` naming the missing file."""
    return check_model_folder(model_dir, "GREEN needs the local folder of a released GREEN judge (e.g. "
                              "StanfordAIMI/GREEN-RadLlama2-7b: config.json, weights, tokenizer files; nothing is "
                              "downloaded); pass it with --green-model.")


def green_scores(predictions: list[str], references: list[str], model_dir, cpu: bool = False) -> dict:
    """Per-report GREEN of `predictions` against `references` by RadEval's `GREEN` class on a local judge.

    Args:
        predictions, references (`list[str]`): Candidate and reference reports, one reference per prediction.
        model_dir (`str` or `os.PathLike`): Local folder of the GREEN judge (see [`check_green_folder`]).
        cpu (`bool`, *optional*, defaults to `False`): Run on CPU even when a GPU is available (RadEval's `cpu`;
            otherwise its single-device path uses cuda:0 in float16 when CUDA is available).

    Returns:
        `dict`: `scores` (per-report GREEN), `analyses` (the judge's text per report) and `mean`.
    """
    from tqdm.auto import tqdm

    model_dir = check_green_folder(model_dir)
    module = radeval_green()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # num_gpus=1: RadEval's single-device path (its multi-GPU path spawns worker processes)
    scorer = module.GREEN(str(model_dir), cpu=cpu, num_gpus=1)
    with tqdm(total=len(predictions), desc="GREEN", unit="report") as bar:
        mean, _, scores, results = scorer(list(references), list(predictions), on_sample_done=lambda: bar.update(1))
    return {"scores": [float(s) for s in scores], "analyses": list(results["green_analysis"]), "mean": float(mean)}


def _green(inputs: Inputs) -> list[MetricStats]:
    settings = inputs.settings
    result = green_scores(*inputs.raw, settings["green_model"])
    inputs.record["rexrank_green_settings"] = (
        f"RadEval {_radeval_version()} GREEN class, judge {settings['green_model']}, greedy decoding (batches of 8, "
        "max_length 2048); GREEN = matched / (matched + clinically significant errors), 0 without matched findings")
    return [mean_stats(REXRANK_GREEN_NAME, result["scores"])]


def _radeval_version() -> str:
    from .ngram import _package_version

    return _package_version("radeval")


register(Metric("rexrank/GREEN", "green", _green, (REXRANK_GREEN_NAME,), needs=("raw text",),
                model=("green_model",), level="mean",
                implementation="RadEval 2.2.1's GREEN class (prompt, greedy judge, parsing, score) on a local judge",
                description="GREEN: matched / (matched + significant errors) by a local GREEN judge (--green-model)"))
