"""The model card of an exported folder: the run's records (`rrg_training.json` of each stage, `metrics.json` of an
evaluation) rendered through `hub_cards/model_card.jinja` by `huggingface_hub.ModelCard`."""

import json
import logging
import re
from pathlib import Path

from ..data.loaders import describe_dataset
from ..evaluation.metrics.registry import card_rows
from ..model_io import COMPLETE_MARKER, is_adapter_dir, read_training_summary, resolve_model_dir
from .tested_versions import load_tested_versions, render_tested_versions

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_TRANSFORMERS",
    "TEMPLATE_PACKAGE",
    "PIPELINE_TASK",
    "default_card_template",
    "collect_run_summaries",
    "read_metrics",
    "hub_id_of",
    "build_card_context",
    "render_model_card",
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
    ("train_projector", "Projector trained"),
    ("report_section", "Report section"),
)


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


def _looks_like_hub_id(name: str) -> bool:
    """`org/name` (or `name`) and not a local path."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not Path(name).exists() and not name.startswith(".")


def hub_id_of(name: str) -> str | None:
    """The Hub id a backbone came from: the id itself, or the `org/name` of a Hugging Face cache snapshot folder."""
    if _looks_like_hub_id(name):
        return name
    match = re.search(r"models--([\w.-]+?)--([\w.-]+)/snapshots/", str(Path(name).resolve()) + "/")
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _flat_recipe(summary: dict) -> dict:
    """A stage's recipe as one flat dict (training writes `{"rrg": ..., "data": ..., "model": ..., "training": ...}`)."""
    recipe = summary.get("recipe") or {}
    flat: dict = {}
    for key, value in recipe.items():
        if isinstance(value, dict) and key in ("rrg", "data", "model", "training", "script", "peft"):
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
        3: "reinforcement learning (GRPO): a LoRA (and the projector) maximises the rewards "
           + ", ".join(f"{n} x {w:g}" for n, w in zip((summary.get("rewards") or {}).get("names", []),
                                                     (summary.get("rewards") or {}).get("weights", []), strict=False)),
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
    base_models_override: list[str] | None = None,
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
        base_models_override (`list[str]`, *optional*): Hub ids for `base_model` when the run's backbones were local
            folders (defaults to the recorded backbones that are Hub ids or Hub cache snapshots).
    """
    summaries = collect_run_summaries(model_dir)
    final = summaries[-1]
    bases = _base_models(summaries)
    # The Hub links the model tree through `base_model`: the encoder and LLM the run started from (Hub ids, or the
    # ids of the Hub cache snapshots they were loaded from), plus the stage-1 model an adapter loads onto.
    base_model = [hub_id_of(bases[k]) for k in ("vision", "text") if k in bases and hub_id_of(bases[k])]
    if base_models_override:
        base_model = list(base_models_override)
    if adapter and base_model_id:
        base_model = [base_model_id]
    if not base_model:
        logger.warning(
            "The run started from local backbones (%s) that name no Hub model; the card has no base_model. Pass "
            "--base-model org/name for each.", ", ".join(bases.values()) or "none recorded",
        )
    recorded = [str(d) for s in summaries for d in (s.get("datasets") or [])]
    if datasets is None:
        datasets = [d for d in dict.fromkeys(recorded) if _looks_like_hub_id(d)]
        local = [d for d in dict.fromkeys(recorded) if not _looks_like_hub_id(d)]
        if local:
            logger.warning(
                "The run trained on local data (%s); it is described in the card but not linked in its front matter. "
                "Pass --dataset org/name for Hub datasets.", ", ".join(local),
            )
    trained_on = list(dict.fromkeys(describe_dataset(d) for d in recorded))

    results, ce_rows, labeler, split, eval_dataset = [], [], None, None, None
    if metrics:
        ce = metrics.get("clinical_efficacy") if isinstance(metrics.get("clinical_efficacy"), dict) else {}
        results, ce_rows = card_rows(metrics)  # the metric registry names the rows, as metrics.json holds them
        labeler = ce.get("labeler") or metrics.get("labeler")
        split = metrics.get("split")
        eval_dataset = metrics.get("dataset_name") or metrics.get("data")
        if eval_dataset is not None and not metrics.get("dataset_name"):
            eval_dataset = describe_dataset(str(eval_dataset))
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
        "tested_versions": render_tested_versions(load_tested_versions()),
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
