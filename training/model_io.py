"""Trained folders: load what training wrote (a full model folder, or a LoRA adapter folder on top of its base model),
find the model inside a stage folder, read its run summary, name dtypes.

It sits at the top level of `training/`, beside `fileio.py` and `manifest.py`, because every floor reads trained
folders (training resumes and stacks stages, evaluation and the analyses load them, the manifests hash them, release
exports them): nothing here imports from a package of `training/`, so no import runs back up the house.
"""

import json
import logging
from pathlib import Path

import torch

from modeling_rrg import RRGForConditionalGeneration, RRGProcessor

logger = logging.getLogger(__name__)

__all__ = ["COMPLETE_MARKER", "DTYPES", "parse_dtype", "resolve_model_dir", "is_adapter_dir", "load_trained",
           "read_training_summary"]

# Written last into every model folder training produces; a folder without it is an interrupted write.
COMPLETE_MARKER = "rrg_training.json"
# The dtypes a trained folder is loaded or saved in; "auto" / None keep the checkpoint's own.
DTYPES = ("float32", "bfloat16", "float16")


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """
    The `torch.dtype` named by a recipe or a command-line flag (`"bfloat16"`, ...); `None` and `"auto"` give `None`.

    Raises:
        `ValueError` for any other name.
    """
    if value is None or isinstance(value, torch.dtype) or value == "auto":
        return None if value in (None, "auto") else value
    if value not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or auto, got {value!r}.")
    return getattr(torch, value)


def resolve_model_dir(path: str | Path) -> Path:
    """
    Accept a model folder, or a stage output folder holding one in `model/`, and check it is complete.

    Raises:
        FileNotFoundError: when the folder does not exist or holds no model.
        ValueError: when the folder was left half-written (no completion marker).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Model folder not found: {path}")
    if (path / "model").is_dir() and not (path / "config.json").exists() and not is_adapter_dir(path):
        path = path / "model"
    if not (path / "config.json").exists() and not is_adapter_dir(path) and any(path.glob("checkpoint-*")):
        raise ValueError(
            f"Training in {path} did not finish: it has checkpoints but no model/ folder. Resume it with "
            "`--resume_from_checkpoint last` (same command and output_dir) before using its output."
        )
    if not (path / "config.json").exists() and not is_adapter_dir(path):
        raise FileNotFoundError(
            f"{path} holds no model (no config.json or adapter_config.json); point at a stage output folder "
            "(e.g. outputs/demo/stage1) or its model/ subfolder."
        )
    return path


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def read_training_summary(path: str | Path) -> dict | None:
    """The run summary (stage, recipe, parameter counts) saved with a trained folder, if any."""
    marker = Path(path) / COMPLETE_MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


def load_trained(path: str | Path, merge: bool = True, dtype: torch.dtype | None = None, device: str | None = None,
                 require_complete: bool = False):
    """
    Load a trained rrg folder (full model, or LoRA adapter + projector over its base model) and its processor.

    Args:
        path: A model folder or a stage output folder (its `model/` is used).
        merge (`bool`, *optional*, defaults to `True`): Merge LoRA weights into the LLM (a plain model is returned);
            `False` returns the `PeftModel`.
        dtype (`torch.dtype`, *optional*): Load in this dtype.
        device (`str`, *optional*): Move the model there.
        require_complete (`bool`, *optional*): Refuse folders without the completion marker (interrupted writes).

    Returns:
        `(model, processor)`
    """
    path = resolve_model_dir(path)
    if require_complete and not (path / COMPLETE_MARKER).exists():
        raise ValueError(
            f"{path} has no {COMPLETE_MARKER}: it was not finished by training (interrupted?). Re-run or resume the stage."
        )
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if is_adapter_dir(path):
        from peft import PeftConfig, PeftModel

        peft_config = PeftConfig.from_pretrained(str(path))
        base_path = resolve_model_dir(peft_config.base_model_name_or_path)
        base = RRGForConditionalGeneration.from_pretrained(base_path, **kwargs)
        model = PeftModel.from_pretrained(base, str(path))
        if merge:
            model = model.merge_and_unload()
    else:
        model = RRGForConditionalGeneration.from_pretrained(path, **kwargs)
    processor = RRGProcessor.from_pretrained(path)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, processor
