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
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from ..fileio import replace_dir
from ..sft.loading import COMPLETE_MARKER, DTYPES, is_adapter_dir, parse_dtype, read_training_summary, resolve_model_dir

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_TRANSFORMERS",
    "TEMPLATE_PACKAGE",
    "default_card_template",
    "PIPELINE_TASK",
    "collect_run_summaries",
    "read_metrics",
    "build_card_context",
    "render_model_card",
    "export_model",
    "list_upload_files",
    "check_hub_access",
    "push_to_hub",
    "export_main",
    "push_main",
]

# The transformers range the remote code is tested against (oldest and newest, tests/test_remote_code_compat.py);
# keep it equal to the `transformers` requirement in pyproject.toml (a test checks that).
SUPPORTED_TRANSFORMERS = ">=5.0,<6"
# The card template lives in the top-level `hub_cards/` folder, which the wheel ships as a data-only package
# (pyproject.toml: packages + package-data), so it is found through importlib.resources in an editable install and in
# a wheel install alike; nothing depends on where training/ sits on disk.
TEMPLATE_PACKAGE = "hub_cards"
MODEL_CARD_TEMPLATE = "model_card.jinja"
PIPELINE_TASK = "radiology-report-generation"
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_MAX_NEW_TOKENS = 256
# Remote code every exported folder must carry (the pipeline file is copied explicitly: no model class imports it).
REMOTE_CODE_FILES = ("configuration_rrg.py", "modeling_rrg.py", "processing_rrg.py", "pipeline_rrg.py")
# Hyperparameters shown in the card's recipe table, in this order, when the run recorded them.
RECIPE_KEYS = (
    ("mode", "What trains"),
    ("learning_rate", "Learning rate"),
    ("num_train_epochs", "Epochs"),
    ("max_steps", "Max steps"),
    ("per_device_train_batch_size", "Batch size per device"),
    ("gradient_accumulation_steps", "Gradient accumulation"),
    ("lr_scheduler_type", "LR schedule"),
    ("warmup_ratio", "Warm-up ratio"),
    ("weight_decay", "Weight decay"),
    ("optim", "Optimizer"),
    ("max_length", "Max sequence length"),
    ("bf16", "bf16"),
    ("fp16", "fp16"),
    ("seed", "Seed"),
    ("use_peft", "LoRA"),
    ("lora_r", "LoRA rank"),
    ("lora_alpha", "LoRA alpha"),
    ("lora_dropout", "LoRA dropout"),
    ("lora_mlp", "LoRA on MLP too"),
    ("projector_type", "Projector"),
    ("num_visual_tokens", "Visual tokens per view"),
    ("max_views", "Views per study"),
    ("train_vision_tower", "Vision encoder trained"),
    ("report_section", "Report section"),
)
NLG_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
CE_METRICS = tuple(
    (f"{name}_{avg}_{n}", f"CE {short} ({avg}, {n} obs.)")
    for n in ("14", "5")
    for avg in ("micro", "macro")
    for name, short in (("precision", "P"), ("recall", "R"), ("f1", "F1"))
)


# ------------------------------------------------------------------------------------------------ run records
def collect_run_summaries(model_dir: str | Path, max_depth: int = 4) -> list[dict]:
    """
    The run summaries (`rrg_training.json`) of a trained folder and of the folders it was trained from, oldest
    first: for a stage-2 LoRA adapter, `[stage 1, stage 2]`.

    The chain follows the adapter's `base_model_name_or_path` and the summary's `base_models["init"]`.

    Raises:
        ValueError: when `model_dir` has no `rrg_training.json` (an interrupted or hand-made folder).
    """
    folder = resolve_model_dir(model_dir)
    summaries: list[dict] = []
    seen: set[Path] = set()
    while folder is not None and folder.resolve() not in seen and len(summaries) < max_depth:
        seen.add(folder.resolve())
        summary = read_training_summary(folder)
        if summary is None:
            if not summaries:
                raise ValueError(
                    f"{folder} has no {COMPLETE_MARKER}: training writes it last, so this folder is unfinished or was "
                    "not produced by `rrg train`. Export a completed stage folder."
                )
            logger.warning("%s has no %s; the card will not describe that stage.", folder, COMPLETE_MARKER)
            break
        summaries.append(summary)
        parent = None
        if is_adapter_dir(folder):
            parent = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        parent = parent or (summary.get("base_models") or {}).get("init")
        try:
            folder = resolve_model_dir(parent) if parent else None
        except FileNotFoundError:
            logger.warning("Base folder %s of %s is gone; the card describes the later stages only.", parent, folder)
            folder = None
    return summaries[::-1]


def read_metrics(path: str | Path | None) -> dict | None:
    """`metrics.json` of an evaluation (a folder holding it, or the file); `None` when `path` is `None`."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"No metrics file at {path}; pass the folder `rrg evaluate` wrote (with metrics.json).")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} must hold a JSON object of metrics, got {type(metrics).__name__}.")
    return metrics


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # drops NaN


def _looks_like_hub_id(name: str) -> bool:
    """`org/name` (or `name`) and not a local path."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not Path(name).exists() and not name.startswith(".")


def _flat_recipe(summary: dict) -> dict:
    """A stage's recipe as one flat dict (training writes `{"rrg": ..., "model": ..., "training": ...}`)."""
    recipe = summary.get("recipe") or {}
    flat: dict = {}
    for key, value in recipe.items():
        if isinstance(value, dict) and key in ("rrg", "model", "training", "script", "peft"):
            flat.update(value)
        else:
            flat[key] = value
    if "mode" in summary:
        flat.setdefault("mode", summary["mode"])
    return flat


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _stage_context(summary: dict) -> dict:
    recipe = _flat_recipe(summary)
    skip_lora = recipe.get("use_peft") is False  # LoRA settings of a stage that used no LoRA are noise
    rows = [
        (label, _format_value(recipe[key]))
        for key, label in RECIPE_KEYS
        if recipe.get(key) not in (None, "") and not (skip_lora and key.startswith("lora_"))
    ]
    stage = summary.get("stage")
    purpose = {
        0: "assembled backbones (untrained projector)",
        1: "alignment: the projector learns to map image features to soft visual prompts",
        2: "fine-tuning: LoRA on the LLM attention (and the projector) learns to write reports",
    }.get(stage, "training")
    return {
        "stage": stage,
        "purpose": purpose,
        "rows": rows,
        "trainable_parameters": summary.get("trainable_parameters"),
        "frozen_parameters": summary.get("frozen_parameters"),
        "train_rows": summary.get("train_rows"),
        "global_step": summary.get("global_step"),
    }


def _base_models(summaries: list[dict]) -> dict:
    found: dict = {}
    for summary in summaries:
        for key, value in (summary.get("base_models") or {}).items():
            if key in ("vision", "text") and value:
                found.setdefault(key, str(value))
    return found


def build_card_context(
    model_dir: str | Path,
    metrics: dict | None = None,
    repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    adapter: bool = False,
    base_model_id: str | None = None,
) -> dict:
    """
    Everything the model card template needs, read from the run (never typed by hand).

    Args:
        model_dir: The trained folder being exported.
        metrics (`dict`, *optional*): The `metrics.json` of an evaluation (see [`read_metrics`]).
        repo_id (`str`, *optional*): The Hub id the card's code uses (`org/name`).
        license (`str`, *optional*): SPDX-style license id for the front matter.
        datasets (`list[str]`, *optional*): Hub dataset ids; defaults to the ones the run recorded (local paths are
            left out of the front matter).
        adapter (`bool`, *optional*): The export keeps a LoRA adapter instead of merging it.
        base_model_id (`str`, *optional*): With `adapter`, the Hub id of the stage-1 model the adapter loads onto.
    """
    summaries = collect_run_summaries(model_dir)
    final = summaries[-1]
    bases = _base_models(summaries)
    base_model = [bases[k] for k in ("vision", "text") if k in bases and _looks_like_hub_id(bases[k])]
    if adapter and base_model_id:
        base_model = [base_model_id]
    recorded = [str(d) for s in summaries for d in (s.get("datasets") or [])]
    if datasets is None:
        datasets = [d for d in dict.fromkeys(recorded) if _looks_like_hub_id(d)]
        local = [d for d in dict.fromkeys(recorded) if not _looks_like_hub_id(d)]
        if local:
            logger.warning(
                "The run trained on local data (%s); it is described in the card but not linked in its front matter. "
                "Pass --dataset org/name for Hub datasets.", ", ".join(local),
            )
    trained_on = list(dict.fromkeys([Path(d).name if not _looks_like_hub_id(d) else d for d in recorded]))

    results, ce_rows, labeler, split, eval_dataset = [], [], None, None, None
    if metrics:
        ce = metrics.get("clinical_efficacy") if isinstance(metrics.get("clinical_efficacy"), dict) else {}
        flat_ce = {**{k: v for k, v in metrics.items() if k in dict(CE_METRICS)}, **ce}
        results = [(name, float(metrics[name])) for name in NLG_METRICS if _is_number(metrics.get(name))]
        ce_rows = [(label, float(flat_ce[key])) for key, label in CE_METRICS if _is_number(flat_ce.get(key))]
        labeler = ce.get("labeler") or metrics.get("labeler")
        split = metrics.get("split")
        eval_dataset = metrics.get("data")
        if eval_dataset is not None:
            eval_dataset = str(eval_dataset) if _looks_like_hub_id(str(eval_dataset)) else Path(str(eval_dataset)).name
    model_name = repo_id.split("/")[-1] if repo_id else Path(model_dir).resolve().name
    max_views = _max_views(model_dir)
    return {
        "repo_id": repo_id or f"your-org/{model_name}",
        "model_name": model_name,
        "license": license,
        "base_model": base_model,
        "base_models": bases,
        "datasets": list(datasets),
        "trained_on": trained_on,
        "stages": [_stage_context(s) for s in summaries if s.get("stage") != 0],
        "final_stage": final.get("stage"),
        "adapter": adapter,
        "base_model_id": base_model_id,
        "nlg_results": results,
        "ce_results": ce_rows,
        "labeler": labeler,
        "eval_split": split,
        "eval_dataset": eval_dataset,
        "num_eval_samples": (metrics or {}).get("num_samples"),
        "generation": (metrics or {}).get("generation"),
        "supported_transformers": SUPPORTED_TRANSFORMERS,
        "pipeline_task": PIPELINE_TASK,
        "max_views": max_views,
        "example_views": ["frontal.png", "lateral.png"][: max(1, min(max_views, 2))],
    }


def _max_views(model_dir) -> int:
    """`max_views` from the model config (the adapter's base config for an adapter folder); 1 when unknown."""
    folder = resolve_model_dir(model_dir)
    for _ in range(4):
        config_path = folder / "config.json"
        if config_path.is_file():
            return int(json.loads(config_path.read_text()).get("max_views", 2))  # RRGConfig default
        if not is_adapter_dir(folder):
            break
        parent = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not parent:
            break
        try:
            folder = resolve_model_dir(parent)
        except FileNotFoundError:
            break
    return 1


def default_card_template() -> Path:
    """The path of `hub_cards/model_card.jinja` as installed (editable or wheel)."""
    from importlib.resources import files

    try:
        resource = files(TEMPLATE_PACKAGE) / MODEL_CARD_TEMPLATE
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            f"The {TEMPLATE_PACKAGE!r} package (model card template) is not installed; reinstall rrg."
        ) from err
    # Packages install as plain folders (editable or wheel), so the resource is a real file path.
    return Path(str(resource))


def render_model_card(context: dict, template_path: str | Path | None = None):
    """
    Render the model card (`huggingface_hub.ModelCard`) from [`build_card_context`]'s output.

    The front matter carries `library_name`, `pipeline_tag`, `base_model`, `datasets`, `license`, `tags` and a
    `model-index` with the evaluation results when there are any.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if template_path is None:
        template_path = default_card_template()
    template_path = Path(template_path)
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template not found at {template_path}; pass the path of a Jinja template.")
    eval_results = None
    if context["nlg_results"] or context["ce_results"]:
        dataset_name = context.get("eval_dataset") or (context["trained_on"] or ["evaluation set"])[0]
        dataset_type = dataset_name if _looks_like_hub_id(dataset_name) and "/" in dataset_name else "custom"
        eval_results = [
            EvalResult(
                task_type="image-text-to-text",
                task_name="Radiology report generation",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=context.get("eval_split"),
                metric_type=name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
                .replace(".", ""),
                metric_name=name,
                metric_value=round(value, 4),
            )
            for name, value in [*context["nlg_results"], *context["ce_results"]]
        ]
    card_data = ModelCardData(
        library_name="peft" if context["adapter"] else "transformers",
        pipeline_tag="image-text-to-text",
        base_model=context["base_model"] or None,
        datasets=context["datasets"] or None,
        license=context["license"],
        tags=["radiology", "chest-x-ray", "medical", "report-generation", "custom_code", "rrg"]
        + (["lora"] if context["adapter"] else []),
        model_name=context["model_name"],
        eval_results=eval_results,
    )
    return ModelCard.from_template(card_data, template_path=str(template_path), **context)


# ------------------------------------------------------------------------------------------------------ export
def _remote_code_dir() -> Path:
    import modeling_rrg

    return Path(modeling_rrg.__file__).resolve().parent


def export_model(
    model_dir: str | Path,
    output_dir: str | Path,
    merge_lora: bool = True,
    base_model_id: str | None = None,
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

    from ..sft.loading import load_trained

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
        base_model_id=base_model_id,
    )
    card = render_model_card(context)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
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
        replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


# -------------------------------------------------------------------------------------------------------- push
def list_upload_files(folder: str | Path) -> list[tuple[str, int]]:
    """`(relative path, size in bytes)` of every file `push_to_hub` uploads from `folder`, sorted."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            files.append((relative.as_posix(), path.stat().st_size))
    return files


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def check_hub_access(token: str | None = None, endpoint: str | None = None) -> str:
    """
    Make sure an upload can work before doing any: Hub access allowed (not `HF_HUB_OFFLINE`), a token available
    (`token`, `HF_TOKEN` or `hf auth login`), and the Hub reachable and accepting the token.

    Returns:
        `str`: the token.

    Raises:
        ValueError: saying which of the three is missing and how to fix it.
    """
    from huggingface_hub import HfApi, get_token

    if _env_flag("HF_HUB_OFFLINE"):
        raise ValueError("HF_HUB_OFFLINE is set: uploads need the Hub. Unset it (and check the network) to push.")
    token = token or get_token()
    if not token:
        raise ValueError(
            "No Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write access, then retry."
        )
    try:
        HfApi(endpoint=endpoint, token=token).whoami()
    except Exception as err:  # connection errors and HTTP errors have no common public base class
        raise ValueError(
            f"Cannot reach the Hugging Face Hub or the token was refused ({type(err).__name__}: {err}). Check the "
            "network and that the token is valid and has write access."
        ) from err
    return token


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
):
    r"""
    Upload an exported folder to the Hub: create the repository (`private` or public), the branch `revision` when
    it is not `main`, then one commit with every file.

    Access (not offline, a token, the Hub reachable) is checked before any work; `dry_run=True` contacts nothing and
    returns the plan.

    Args:
        folder: The folder `export_model` wrote.
        repo_id (`str`): Target model repository, `org/name`.
        private (`bool`, *optional*): Create the repository private (an existing repository keeps its visibility).
        revision (`str`, *optional*): Branch to commit to (created from `main` if missing); default `main`.
        commit_message (`str`, *optional*): The commit message.
        token (`str`, *optional*): Token to use instead of `HF_TOKEN` / the stored login.
        dry_run (`bool`, *optional*): Only list what would be uploaded.

    Returns:
        With `dry_run`, a `dict` with `repo_id`, `revision`, `private` and `files` (`(path, bytes)` pairs);
        otherwise the `CommitInfo` of the upload.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Export folder not found: {folder}; run `rrg export` first.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"Invalid repo id {repo_id!r}: {err}") from err
    if "/" not in repo_id:
        raise ValueError(f"repo_id must be 'org/name' (or 'user/name'), got {repo_id!r}.")
    files = list_upload_files(folder)
    if not {"README.md"} <= {name for name, _ in files} or not any(n.endswith(".safetensors") for n, _ in files):
        raise ValueError(f"{folder} does not look like an `rrg export` folder (README.md and safetensors weights).")
    readme = (folder / "README.md").read_text(encoding="utf-8")
    if repo_id not in readme:
        logger.warning("The model card in %s does not mention %s; re-export with --repo-id %s so its code loads it.",
                       folder, repo_id, repo_id)
    plan = {"repo_id": repo_id, "revision": revision or "main", "private": private, "files": files}
    if dry_run:
        return plan

    from huggingface_hub import HfApi

    token = check_hub_access(token)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    logger.info("Repository ready: %s", url)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    message = commit_message or f"Upload {folder.name} with rrg export"
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=message,
        ignore_patterns=[".*", "**/.*", "__pycache__/*", "**/__pycache__/*"],
    )
    logger.info("Uploaded %d files to %s@%s.", len(files), repo_id, revision or "main")
    return info


# --------------------------------------------------------------------------------------------------------- CLI
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
    try:
        out = export_model(
            args.model, args.output_dir, merge_lora=not args.keep_adapter, base_model_id=args.base_model_id,
            metrics=args.metrics, repo_id=args.repo_id, license=args.license, datasets=args.datasets,
            max_shard_size=args.max_shard_size, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
            overwrite=args.overwrite,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    sys.stdout.write(f"{out}\n")
    return 0


def push_main(argv=None) -> int:
    """`rrg push`: upload an exported folder to the Hub (or list what would be uploaded). Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="rrg push",
        description="Upload an `rrg export` folder to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`).",
    )
    parser.add_argument("folder", help="The folder `rrg export` wrote.")
    parser.add_argument("--repo-id", required=True, help="Target model repository, org/name.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--revision", help="Branch to commit to (created if missing); default main.")
    parser.add_argument("--commit-message", help="Commit message.")
    parser.add_argument("--dry-run", action="store_true", help="List what would be uploaded; contact nothing.")
    args = parser.parse_args(argv)
    try:
        result = push_to_hub(
            args.folder, args.repo_id, private=args.private, revision=args.revision,
            commit_message=args.commit_message, dry_run=args.dry_run,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    if args.dry_run:
        total = sum(size for _, size in result["files"])
        lines = [f"Would upload to {result['repo_id']}@{result['revision']} "
                 f"({'private' if result['private'] else 'public'} if created):"]
        lines += [f"  {size:>14,d}  {name}" for name, size in result["files"]]
        lines.append(f"  {total:>14,d}  total ({len(result['files'])} files)")
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        sys.stdout.write(f"{getattr(result, 'commit_url', result)}\n")
    return 0
