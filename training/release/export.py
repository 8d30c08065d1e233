"""Turn a trained rrg folder into a Hub-ready folder (`rrg export`) and upload it (`rrg push`).

The exported folder is what the Hub serves: safetensors weights (LoRA merged into the LLM, or kept as an adapter on
request), the remote code (`configuration_rrg.py`, `modeling_rrg.py`, `processing_rrg.py`, `pipeline_rrg.py`), the
processor with its tokenizer and chat template, the generation config and a model card rendered from
`hub_cards/model_card.jinja` with what the run recorded (`rrg_training.json` of each stage, `metrics.json` of an
evaluation). It loads with only transformers, torch and Pillow installed:

```python
from transformers import pipeline
reporter = pipeline("radiology-report-generation", model="org/rrg-model", trust_remote_code=True)
```

Usage:

```bash
rrg export outputs/demo/stage2 --output-dir outputs/demo/hub --metrics outputs/demo/eval --repo-id org/rrg-model
rrg push outputs/demo/hub --repo-id org/rrg-model --private --dry-run
rrg push outputs/demo/hub --repo-id org/rrg-model --private --revision v1 --commit-message "First release"
```
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path

from ..fileio import atomic_dir
from ..model_io import DTYPES, is_adapter_dir, parse_dtype, resolve_model_dir
from .card import (
    DEFAULT_LICENSE,
    DEFAULT_MAX_NEW_TOKENS,
    SUPPORTED_TRANSFORMERS,
    build_card_context,
    read_metrics,
    render_model_card,
)

logger = logging.getLogger(__name__)

__all__ = ["SUPPORTED_TRANSFORMERS", "export_model", "export_main"]


# Remote code every exported folder must carry (the pipeline file is copied explicitly: no model class imports it).
REMOTE_CODE_FILES = ("configuration_rrg.py", "modeling_rrg.py", "processing_rrg.py", "pipeline_rrg.py")


def _remote_code_dir() -> Path:
    import modeling_rrg

    return Path(modeling_rrg.__file__).resolve().parent


def export_model(
    model_dir: str | Path,
    output_dir: str | Path,
    merge_lora: bool = True,
    base_model_id: str | None = None,
    base_models: list[str] | None = None,
    metrics: str | Path | dict | None = None,
    repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    max_shard_size: str | int = "5GB",
    dtype: str | None = None,
    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS,
    overwrite: bool = False,
) -> Path:
    r"""
    Write a Hub-ready folder from a trained rrg folder (full model, or stage-2 LoRA adapter + projector).

    Args:
        model_dir: The trained folder (or a stage output folder holding `model/`); it must hold `rrg_training.json`.
        output_dir: Where the export goes; written to a temporary folder first and moved in place at the end.
        merge_lora (`bool`, *optional*, defaults to `True`): Merge the LoRA weights into the LLM (a plain
            transformers model). `False` keeps the adapter (with the trained projector): the folder then needs peft
            and the stage-1 model on the Hub, named by `base_model_id`.
        base_model_id (`str`, *optional*): Hub id of the exported stage-1 model; required with `merge_lora=False`.
        base_models (`list[str]`, *optional*): Hub ids for the card's `base_model` when the backbones were local folders.
        metrics (`str`, `Path` or `dict`, *optional*): An evaluation folder / `metrics.json` (or its content).
        repo_id (`str`, *optional*): The Hub id the card's quick start loads (`org/name`).
        license (`str`, *optional*): License id for the card.
        datasets (`list[str]`, *optional*): Hub dataset ids for the card (default: those the run recorded).
        max_shard_size (`str` or `int`, *optional*): Safetensors shard size (`"5GB"`, `"500MB"`, ...).
        dtype (`str`, *optional*): Save the weights in `"float32"`, `"bfloat16"` or `"float16"`.
        max_new_tokens (`int`, *optional*): Default report length written to `generation_config.json` when the
            model has none.
        overwrite (`bool`, *optional*): Replace an existing `output_dir`.

    Returns:
        `Path`: the exported folder.
    """
    from modeling_rrg.pipeline_rrg import custom_pipelines_entry

    from ..model_io import load_trained

    source = resolve_model_dir(model_dir)
    output_dir = Path(output_dir)
    if output_dir.resolve() == source.resolve() or source.resolve() in output_dir.resolve().parents:
        raise ValueError(f"output_dir {output_dir} must not be the trained folder or inside it.")
    if output_dir.exists() and not overwrite:
        raise ValueError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it.")
    adapter = is_adapter_dir(source)
    keep_adapter = adapter and not merge_lora
    if keep_adapter and not base_model_id:
        raise ValueError(
            "Keeping the LoRA adapter needs --base-model-id: the Hub id of the exported stage-1 model it loads onto "
            "(export and push the stage-1 folder first), or drop --keep-adapter to merge."
        )
    if base_model_id and not keep_adapter:
        logger.warning("--base-model-id is only used with --keep-adapter on an adapter folder; ignoring it.")
        base_model_id = None
    metrics_dict = metrics if isinstance(metrics, dict) or metrics is None else read_metrics(metrics)
    context = build_card_context(
        source, metrics=metrics_dict, repo_id=repo_id, license=license, datasets=datasets, adapter=keep_adapter,
        base_model_id=base_model_id, base_models_override=base_models,
    )
    card = render_model_card(context)

    with atomic_dir(output_dir) as tmp:
        model, processor = load_trained(source, merge=not keep_adapter, dtype=parse_dtype(dtype))
        base = model.get_base_model() if keep_adapter else model
        if max_new_tokens is not None and getattr(base.generation_config, "max_new_tokens", None) is None:
            base.generation_config.max_new_tokens = int(max_new_tokens)
        tokenizer = processor.tokenizer
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            if getattr(base.generation_config, name, None) is None and getattr(tokenizer, name, None) is not None:
                setattr(base.generation_config, name, getattr(tokenizer, name))
        if keep_adapter:
            model.peft_config["default"].base_model_name_or_path = base_model_id
            # The embeddings are the stage-1 model's (LoRA does not train them); saving them is not needed, and
            # deciding it would look the base model up on the Hub.
            model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
            base.generation_config.save_pretrained(tmp)
        else:
            model.config.custom_pipelines = custom_pipelines_entry()
            model.save_pretrained(tmp, max_shard_size=max_shard_size, safe_serialization=True)
            # The pipeline's code is not imported by the model classes, so save_pretrained does not copy it.
            shutil.copy2(_remote_code_dir() / "pipeline_rrg.py", tmp / "pipeline_rrg.py")
        processor.save_pretrained(tmp)
        card.save(tmp / "README.md")
        _check_export(tmp, keep_adapter)
        del model, base
    size = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())
    logger.info("Exported %s to %s (%s, %.1f MB).", source, output_dir,
                "LoRA adapter" if keep_adapter else "merged model", size / 1e6)
    return output_dir


def _check_export(folder: Path, adapter: bool):
    """Refuse to finish an export that lacks what the Hub needs (or that would ship pickles)."""
    names = {p.name for p in folder.iterdir()}
    if any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in names):
        raise ValueError(f"The export in {folder} holds pickle weights ({sorted(names)}); only safetensors ship.")
    required = {"README.md", "processor_config.json"}
    if adapter:
        required |= {"adapter_config.json", "adapter_model.safetensors"}
    else:
        required |= {"config.json", "generation_config.json", *REMOTE_CODE_FILES}
        if not any(name.endswith(".safetensors") for name in names):
            raise ValueError(f"The export in {folder} has no safetensors weights.")
    missing = sorted(required - names)
    if missing:
        raise ValueError(f"The export in {folder} is missing {missing}.")


def export_main(argv=None) -> int:
    """`rrg export`: trained folder -> Hub-ready folder. Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="rrg export",
        description="Turn a trained rrg folder (stage-2 LoRA adapter + projector, or full) into a Hub-ready folder.",
    )
    parser.add_argument("model", help="Trained folder (e.g. outputs/demo/stage2 or its model/ subfolder).")
    parser.add_argument("--output-dir", required=True, help="Where to write the Hub-ready folder.")
    parser.add_argument("--keep-adapter", action="store_true",
                        help="Keep the LoRA adapter instead of merging it (needs --base-model-id and peft to load).")
    parser.add_argument("--base-model-id", help="With --keep-adapter: Hub id of the exported stage-1 model.")
    parser.add_argument("--base-model", action="append", dest="base_models",
                        help="Hub id of a backbone the run started from, for the card's base_model (repeatable; default: "
                        "the recorded backbones that are Hub ids or Hub cache snapshots).")
    parser.add_argument("--metrics", help="Evaluation folder (or metrics.json) whose results go in the card.")
    parser.add_argument("--repo-id", help="Hub id (org/name) the card's quick start loads.")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help=f"License id for the card (default {DEFAULT_LICENSE}).")
    parser.add_argument("--dataset", action="append", dest="datasets",
                        help="Hub dataset id for the card (repeatable); default: those the run recorded.")
    parser.add_argument("--max-shard-size", default="5GB", help="Safetensors shard size (default 5GB).")
    parser.add_argument("--dtype", choices=DTYPES, help="Save the weights in this dtype.")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="Default report length for generation_config.json when the model has none.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    args = parser.parse_args(argv)
    out = export_model(
        args.model, args.output_dir, merge_lora=not args.keep_adapter, base_model_id=args.base_model_id,
        metrics=args.metrics, repo_id=args.repo_id, license=args.license, datasets=args.datasets,
        base_models=args.base_models, max_shard_size=args.max_shard_size, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
        overwrite=args.overwrite,
    )
    sys.stdout.write(f"{out}\n")
    return 0
