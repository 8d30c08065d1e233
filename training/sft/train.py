"""The paper's two-stage training on trl's `SFTTrainer`, one entry point for both stages.

Stage 1 (alignment): the vision encoder and the LLM are frozen, only the projector trains.
Stage 2 (fine-tuning): LoRA adapters on the LLM's attention (and optionally MLP) projections, selected by module
name under `model.language_model` so the vision tower is never touched, train together with the projector (saved in
the adapter through peft's `modules_to_save`). Options: full fine-tuning instead of LoRA (`--use_peft false`),
unfreezing the encoder (`--train_vision_tower`), QLoRA (`--load_in_4bit`, GPU + bitsandbytes), stage 2 straight from
the backbones (the paper's ablation without stage 1).

Usage:

```bash
rrg train --config training/sft/recipes/demo_stage1.yaml
rrg train --config training/sft/recipes/demo_stage2.yaml --model_name_or_path outputs/demo/stage1
# several processes (DDP, FSDP2, DeepSpeed ZeRO-2/3; on CPU too, see training/sft/distributed.py and the README):
torchrun --nproc_per_node 2 -m training.sft.train --config training/sft/recipes/demo_stage1.yaml
accelerate launch --config_file training/sft/recipes/accelerate/deepspeed_zero2.yaml -m training.sft.train --config training/sft/recipes/paper_stage2.yaml
```

A recipe holds four argument groups side by side, parsed by trl's `TrlParser`: [`RRGScriptArguments`] (stage, splits,
model building), [`training.arguments.DataArguments`] (the data fields `rrg evaluate` and `rrg analyze` take too),
trl's `SFTConfig` and `ModelConfig`. Every recipe field can be overridden on the command line (`--learning_rate 1e-4`,
`--image_column image_path`). Each stage writes checkpoints
(`checkpoint-*`), TensorBoard logs (`runs/`) and, at the end, a complete `save_pretrained` folder `model/` (written to a
temporary folder and renamed into place, with `rrg_training.json` written last), so an interrupted run never leaves a
folder that looks finished.
"""

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..arguments import DataArguments
from ..fileio import atomic_dir, write_json_atomic
from . import distributed
from .fused_head import score_label_positions_only

logger = logging.getLogger(__name__)

__all__ = [
    "RRGScriptArguments",
    "RRGDataCollator",
    "pack_studies",
    "add_length_column",
    "load_recipe_splits",
    "train",
    "start_run",
    "run_summary",
    "feature_cache",
    "resume_checkpoint",
    "finish_run",
    "parse_args",
    "main",
]

@dataclass
class RRGScriptArguments:
    """rrg-specific recipe fields of a training stage. The data fields (`dataset_path`, columns, cleaning, bad rows)
    are [`training.arguments.DataArguments`], shared with `rrg evaluate` and `rrg analyze`; the rest come from trl's
    `SFTConfig` and `ModelConfig`. A recipe holds all four groups' fields side by side."""

    stage: int = field(default=1, metadata={"help": "1: align (projector only); 2: fine-tune (LoRA or full + projector); "
                                                     "3: reinforcement learning with clinical rewards (training/rl)."})
    train_split: str = field(default="train")
    eval_split: str | None = field(default="validation", metadata={"help": "Split to evaluate on; none to skip."})
    overwrite: bool = field(
        default=False, metadata={"help": "Delete a previous run in output_dir (finished, or of another recipe) first."}
    )
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    vision_model: str | None = field(default=None, metadata={"help": "Vision backbone (when not starting from an rrg folder)."})
    text_model: str | None = field(default=None, metadata={"help": "LLM backbone (when not starting from an rrg folder)."})
    # The projector / visual-token fields build the projector when starting from backbones (unset: linear, no
    # pooling, last layer, 2 views); from a trained folder they must match it or be left unset.
    projector_type: str | None = field(default=None, metadata={"help": "linear (the paper, default) | mlp2x_gelu"})
    num_visual_tokens: int | None = field(default=None, metadata={"help": "Pool each view to this many tokens."})
    vision_feature_layer: int | None = field(default=None, metadata={"help": "Encoder layer to read (default -1)."})
    max_views: int | None = field(
        default=None, metadata={"help": "Views per study (default 2); extra views are dropped (and counted)."}
    )
    instruction: str | None = field(
        default=None,
        metadata={"help": "The prompt's instruction; saved in the processor, so evaluation and serving use it too."},
    )
    lora_mlp: bool = field(default=False, metadata={"help": "Stage 2 LoRA also on the MLP projections."})
    train_vision_tower: bool = field(default=False, metadata={"help": "Unfreeze the vision encoder."})
    train_projector: bool = field(
        default=True,
        metadata={"help": "Stages 2-3: train the projector with the LLM (the paper's stage 2); false keeps the "
                          "starting model's projector frozen (refused in stage 1, which trains only the projector)."},
    )
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache frozen-encoder features here (reused across epochs and stages)."}
    )
    merge_adapter: bool = field(default=False, metadata={"help": "Stage 2 LoRA: also write a merged model to merged/."})


# --------------------------------------------------------------------------------------------------- data
def load_recipe_splits(args: RRGScriptArguments, data_args: DataArguments):
    """Load the train / eval splits named by the recipe (see [`training.data.loaders.load_splits`])."""
    from ..data.loaders import load_splits

    if data_args.dataset_path is None:
        raise ValueError("The recipe has no dataset_path; set it to an annotation.json, a dataset folder or a HF dataset.")
    return load_splits(data_args, splits=[args.train_split, args.eval_split])


class RRGDataCollator:
    """
    Turns dataset rows (`image_path` list, `report`) into model batches through the processor, the single source of
    prompt formatting. With a [`FeatureCache`], cached encoder features are passed as `image_features` instead of
    pixels (identical logits, no encoder forward).

    Args:
        processor ([`RRGProcessor`]): The model's processor.
        max_length (`int`, *optional*): Truncate reports so sequences fit; prompts (and image tokens) are never cut.
        feature_cache ([`FeatureCache`], *optional*): Use cached features.
        image_loader (`callable`, *optional*): Path -> PIL image (defaults to `training.data.images.load_image`).
        instruction (`str`, *optional*): Instruction override.
        padding_free (`bool`, *optional*): Concatenate the batch's studies into one row without padding:
            `position_ids` restart at 0 at each study and there is no `attention_mask`, so transformers' masking
            gives each study its own causal block (see `RRGModel.forward`); images stay one entry per study.
            `max_length` still applies per study.
    """

    def __init__(self, processor, max_length=None, feature_cache=None, image_loader=None, instruction=None,
                 padding_free=False):
        if image_loader is None:
            from ..data.images import load_image

            image_loader = load_image
        self.processor = processor
        self.max_length = max_length
        self.feature_cache = feature_cache
        self.image_loader = image_loader
        self.instruction = instruction
        self.padding_free = padding_free
        self.dropped_views = 0

    def _views(self, row, count_dropped: bool = True) -> list:
        views = list(row["image_path"])
        if len(views) > self.processor.max_views:
            if count_dropped:
                self.dropped_views += len(views) - self.processor.max_views
            views = views[: self.processor.max_views]
        return views

    def _text(self, reports) -> dict:
        """The processor arguments that shape a study's tokens (what `study_lengths` must see too)."""
        return dict(report=reports, instruction=self.instruction, max_length=self.max_length,
                    truncation=self.max_length is not None, padding_side="right")

    def __call__(self, rows: list[dict]) -> dict:
        batch = self._batch(rows, self._text([row["report"] for row in rows]))
        return pack_studies(batch) if self.padding_free else batch

    def prompt_batch(self, rows: list[dict]) -> dict:
        """The studies' prompts alone (no report), left-padded, with their images or cached features: what
        generation starts from (stage 3), token for token the prompt part of what `__call__` trains on."""
        return self._batch(rows, dict(instruction=self.instruction, padding_side="left"))

    def _batch(self, rows: list[dict], text_kwargs: dict) -> dict:
        studies = [self._views(row) for row in rows]
        if self.feature_cache is not None:
            features, num_views = self.feature_cache.load_studies(studies)
            batch = self.processor(num_views=num_views, **text_kwargs)
            batch["image_features"] = features
        else:
            images = [[self.image_loader(p) for p in views] for views in studies]
            batch = self.processor(images=images, **text_kwargs)
        return dict(batch)

    def study_lengths(self, rows: dict) -> list[int]:
        """Tokens each study takes in a batch (prompt with its image tokens, report, EOS; truncated as in `__call__`),
        from the tokenizer alone: `rows` is a column dict (`image_path`, `report`), as `Dataset.iter` yields."""
        num_views = [len(self._views({"image_path": paths}, count_dropped=False)) for paths in rows["image_path"]]
        batch = self.processor(num_views=num_views, **self._text(list(rows["report"])))
        return batch["attention_mask"].sum(dim=1).tolist()


def pack_studies(batch: dict) -> dict:
    """A right-padded batch as one row of its studies back to back (see `RRGDataCollator(padding_free=True)`)."""
    keep = batch.pop("attention_mask").bool()
    lengths = keep.sum(dim=1)
    packed = {key: value for key, value in batch.items() if key not in ("input_ids", "labels")}
    packed["input_ids"] = batch["input_ids"][keep][None]
    packed["position_ids"] = torch.cat([torch.arange(int(n)) for n in lengths])[None]
    if "labels" in batch:
        labels = batch["labels"][keep][None]
        # The loss shifts labels by one, so each study's first label is what the previous study's last token would be
        # scored on. It is a prompt token (-100) already; masked here anyway, so no label ever crosses a study boundary.
        labels[0, torch.cumsum(lengths, 0) - lengths] = -100
        packed["labels"] = labels
    return packed


def add_length_column(dataset, collator: RRGDataCollator, column: str = "length", batch_size: int = 1024):
    """`dataset` with `column` holding each study's token count ([`RRGDataCollator.study_lengths`]), what
    transformers' length-grouped sampler (`train_sampling_strategy: group_by_length`) sorts by."""
    if column in dataset.column_names:
        logger.warning("Replacing the dataset's %r column with the studies' token counts (length_column_name).", column)
        dataset = dataset.remove_columns(column)
    lengths = [n for rows in dataset.select_columns(["image_path", "report"]).iter(batch_size=batch_size)
               for n in collator.study_lengths(rows)]
    return dataset.add_column(column, lengths)


# ----------------------------------------------------------------------------------------------- outputs
def _save_base(model, processor, folder: Path, base_models: dict) -> Path:
    from ..model_io import COMPLETE_MARKER

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json_atomic(tmp / COMPLETE_MARKER, {"stage": 0, "mode": "assembled backbones, untrained projector",
                                                   "base_models": dict(base_models)})
    return folder.resolve()


def save_stage_outputs(trainer, processor, args, training_args, summary: dict, state_dict=None) -> Path:
    """
    Write the final `model/` folder (and `merged/` on request) atomically; `rrg_training.json` goes in last.
    `state_dict`: the full weights when the model is sharded (gathered on all ranks by `distributed.full_state_dict`).
    """
    from peft import PeftModel

    from ..model_io import COMPLETE_MARKER

    out = Path(training_args.output_dir)
    final = out / "model"
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel):
        model.peft_config["default"].base_model_name_or_path = summary["base_models"]["init"]
    with atomic_dir(final) as tmp:
        with distributed.original_class(model):
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        processor.save_pretrained(tmp)
        write_json_atomic(tmp / COMPLETE_MARKER, summary)
    if isinstance(model, PeftModel) and args.merge_adapter:
        from ..model_io import load_trained

        merged, merged_processor = load_trained(final, merge=True)
        with atomic_dir(out / "merged") as tmp:
            merged.save_pretrained(tmp)
            merged_processor.save_pretrained(tmp)
            write_json_atomic(tmp / COMPLETE_MARKER, {**summary, "merged_from": str(final.resolve())})
    return final


# -------------------------------------------------------------------------------------------------- train
def train(args: RRGScriptArguments, data_args: DataArguments, training_args, model_args) -> Path:
    """
    Run one stage; returns the final model folder.

    Args:
        args ([`RRGScriptArguments`]): The stage, splits, model-building and run-safety fields.
        data_args ([`training.arguments.DataArguments`]): Where the studies are and how they are read.
        training_args (`trl.SFTConfig`), model_args (`trl.ModelConfig`): trl's groups.
    """
    from accelerate import PartialState
    from transformers import set_seed
    from trl import SFTTrainer

    from ..model_io import parse_dtype
    from ..run_guard import LogOnSaveCallback
    from .model_setup import build_model_and_processor, configure_trainable, count_parameters, lora_config

    start = time.time()
    training_args = distributed.setup(training_args)  # first: multi-process on CPU, or refuse
    state = PartialState()
    set_seed(training_args.seed)  # the projector's initialisation must be reproducible too, not only the data order
    dtype = parse_dtype(model_args.dtype)
    manifest = run_manifest(args, data_args, training_args, model_args)
    train_dataset, eval_dataset, skipped_images = start_run(args, data_args, training_args, manifest, state)

    with distributed.model_init_context(training_args):
        model, processor, base_models = build_model_and_processor(args, model_args, dtype=dtype)
    use_peft = bool(model_args.use_peft)
    configure_trainable(model, args, use_peft)
    peft_config = lora_config(model, args, model_args) if (args.stage == 2 and use_peft) else None
    if peft_config is not None and "init" not in base_models and state.is_main_process:
        # Stage 2 without stage 1 (the ablation): an adapter needs a base rrg folder to load onto, so the assembled
        # (untrained-projector) model is saved next to it first.
        base_models["init"] = str(_save_base(model, processor, Path(training_args.output_dir) / "base", base_models))
    elif peft_config is not None and "init" not in base_models:
        base_models["init"] = str((Path(training_args.output_dir) / "base").resolve())

    cache = feature_cache(args, model, processor, (train_dataset, eval_dataset), state)

    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    padding_free = _padding_free(training_args, model)
    # The prompt (instruction included) comes from the processor, which is saved with the model: train = serve.
    collator = RRGDataCollator(processor, max_length=training_args.max_length, feature_cache=cache,
                               padding_free=padding_free)
    if training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        # transformers' samplers read the lengths from this column; rows hold image paths and text, not input_ids.
        column = training_args.length_column_name
        train_dataset = add_length_column(train_dataset, collator, column)
        eval_dataset = add_length_column(eval_dataset, collator, column) if eval_dataset is not None else None
    trainer_cls = distributed.trainer_class(SFTTrainer, training_args)
    training_args.padding_free = False  # trl's own padding-free refuses custom collators; ours packs (above)
    try:
        trainer = trainer_cls(model=model, args=training_args, train_dataset=train_dataset,
                              eval_dataset=eval_dataset, processing_class=processor, data_collator=collator,
                              peft_config=peft_config, callbacks=[LogOnSaveCallback()])
    finally:
        training_args.padding_free = padding_free  # recorded as asked in the run summary
    score_label_positions_only(trainer.model)  # the LM head projects the report's positions only, CPU included
    counts = count_parameters(trainer.model)
    logger.info(
        "Stage %d: %s trainable parameters, %s frozen (%s).", args.stage, f"{counts['trainable_parameters']:,}",
        f"{counts['frozen_parameters']:,}",
        ", ".join(f"{k}: {v['trainable']:,} trainable / {v['frozen']:,} frozen" for k, v in counts["by_module"].items()),
    )

    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    if collator.dropped_views:
        logger.warning("Dropped %d views beyond max_views=%d per study.", collator.dropped_views, processor.max_views)

    eval_metrics = trainer.evaluate() if eval_dataset is not None else {}
    mode = "lora" if peft_config is not None else ("projector" if args.stage == 1 else "full")
    summary = run_summary(args, data_args, training_args, model_args, trainer, result, state, mode=mode, counts=counts,
                          base_models=base_models, train_rows=len(train_dataset), skipped_images=skipped_images,
                          manifest=manifest, eval_metrics=eval_metrics, start=start)
    return finish_run(trainer, processor, args, training_args, model_args, summary, state)


def run_summary(args, data_args, training_args, model_args, trainer, result, state, *, mode: str, counts: dict,
                base_models: dict, train_rows: int, skipped_images: dict, manifest: dict, eval_metrics: dict,
                start: float) -> dict:
    """What `rrg_training.json` records about a finished stage (every stage writes these fields)."""
    from ..run_guard import whole_run_loss

    return {
        "stage": args.stage,
        "mode": mode,
        "recipe": {"rrg": asdict(args), "data": asdict(data_args), "model": _jsonable(asdict(model_args)),
                   "training": _jsonable(training_args.to_dict())},
        **{k: counts[k] for k in ("trainable_parameters", "frozen_parameters")},
        "parameters_by_module": counts["by_module"],
        "base_models": base_models,
        "datasets": [str(data_args.dataset_path)],
        "train_rows": train_rows,
        "rows_skipped_for_images": skipped_images,
        # Over the whole run: a resumed run's own `training_loss` covers only the steps after the resume.
        "train_loss": whole_run_loss(trainer.state.log_history, trainer.state.global_step) or result.training_loss,
        "run_manifest": manifest,
        "eval": eval_metrics,
        "global_step": trainer.state.global_step,
        "gradient_checkpointing": _checkpointing_active(trainer.model),
        "world_size": state.num_processes,
        "distributed": distributed.backend_name(trainer),
        "runtime_seconds": round(time.time() - start, 1),
        "versions": _versions(),
    }


def start_run(args: RRGScriptArguments, data_args: DataArguments, training_args, manifest: dict, state):
    """Before anything is written to output_dir, check it is ours to write (new, or the resume of this very run;
    `training.run_guard`), then load the recipe's splits and decode their images. Returns `(train_dataset,
    eval_dataset, skipped_images)`."""
    from ..data.loaders import split_key
    from ..run_guard import guard_training_dir

    resume_requested = training_args.resume_from_checkpoint not in (None, False, "", "false", "False")
    guard_training_dir(training_args.output_dir, manifest, resume_requested, args.overwrite, write=False)
    state.wait_for_everyone()
    if state.is_main_process:
        guard_training_dir(training_args.output_dir, manifest, resume_requested, args.overwrite, write=True)
    state.wait_for_everyone()
    dataset = load_recipe_splits(args, data_args)
    train_split = split_key(args.train_split)
    eval_split = split_key(args.eval_split) if args.eval_split else None
    train_dataset = dataset[train_split]
    eval_dataset = dataset[eval_split] if eval_split else None
    if args.max_train_samples:
        train_dataset = train_dataset.select(range(min(args.max_train_samples, len(train_dataset))))
    if eval_dataset is not None and args.max_eval_samples:
        eval_dataset = eval_dataset.select(range(min(args.max_eval_samples, len(eval_dataset))))
    if len(train_dataset) == 0:
        raise ValueError(f"The {train_split!r} split of {data_args.dataset_path} has no rows.")
    with state.main_process_first():  # the others then read the check cache
        return _check_split_images(args, data_args, train_dataset, eval_dataset)


def feature_cache(args: RRGScriptArguments, model, processor, splits, state):
    """The frozen encoder's [`FeatureCache`] filled for the images of `splits` (`None` without feature_cache_dir)."""
    from .feature_cache import FeatureCache

    if not args.feature_cache_dir:
        return None
    if args.train_vision_tower:
        raise ValueError("feature_cache_dir needs a frozen encoder; drop it or train_vision_tower.")
    cache = FeatureCache(args.feature_cache_dir, model, processor)
    paths = [p for split in splits if split is not None for row in split["image_path"] for p in row[: processor.max_views]]
    with state.main_process_first():
        cache.precompute(paths)
    return cache


def resume_checkpoint(training_args):
    """`resume_from_checkpoint` with `last` (or `auto`, `true`) resolved to the newest checkpoint, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("last", "auto", "true"):
        resume = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if resume is None:
            logger.info("No checkpoint in %s to resume from; starting fresh.", training_args.output_dir)
        else:
            logger.info("Resuming from %s", resume)
    return resume


def finish_run(trainer, processor, args, training_args, model_args, summary: dict, state) -> Path:
    """Write `model/` (rank 0, full weights gathered on every rank first) and mark the run finished."""
    from ..run_guard import mark_training_finished

    final = None
    state_dict = distributed.full_state_dict(trainer)  # collective: every rank takes part
    if state.is_main_process:
        final = save_stage_outputs(trainer, processor, args, training_args, summary, state_dict)
        mark_training_finished(training_args.output_dir, summary)
        logger.info("Stage %d done: %s", args.stage, final)
    state.wait_for_everyone()
    return final or Path(training_args.output_dir) / "model"


def _padding_free(training_args, model) -> bool:
    """SFTConfig's `padding_free`, done by rrg's collator (whole studies per row); trl's `packing` cuts tokenized
    text into fixed-length rows, which the image tokens of a study do not survive: an error."""
    if training_args.packing or training_args.eval_packing:
        raise ValueError(
            "packing / eval_packing (trl's, which cuts tokenized text into rows of max_length) cannot split studies "
            "with images; use padding_free: true, which packs whole studies into one row per batch."
        )
    if training_args.padding_free:
        from modeling_rrg.modeling_rrg import check_packed_attention

        check_packed_attention(model.config, rows=1)
    return bool(training_args.padding_free)


# Fields that do not change what a run computes: they may differ between a run and its resume.
_VOLATILE_TRAINING_FIELDS = {
    "output_dir", "logging_dir", "resume_from_checkpoint", "run_name", "report_to", "logging_steps",
    "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "disable_tqdm", "save_total_limit",
    "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_persistent_workers", "push_to_hub",
    "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision",
    "overwrite_output_dir", "local_rank", "log_level", "log_level_replica", "log_on_each_node",
    "trackio_space_id", "project",
}


def run_manifest(args: RRGScriptArguments, data_args: DataArguments, training_args, model_args) -> dict:
    """What identifies a stage's run (see `training.run_guard`): the recipe (every field of the four groups, data
    included), the starting model (folder + weights hash, or the backbones) and the data (path + content hash)."""
    from ..manifest import data_fingerprint, model_fingerprint

    rrg = {k: v for k, v in asdict(args).items() if k not in ("overwrite",)}
    training = {k: v for k, v in _jsonable(training_args.to_dict()).items() if k not in _VOLATILE_TRAINING_FIELDS}
    if model_args.model_name_or_path and Path(model_args.model_name_or_path).exists():
        start = model_fingerprint(model_args.model_name_or_path)
    elif model_args.model_name_or_path:
        start = {"folder": str(model_args.model_name_or_path)}  # a missing folder is reported when it is loaded
    else:
        start = {name: _backbone_identity(path) for name, path in (("vision", args.vision_model),
                                                                    ("text", args.text_model))}
    return {
        "recipe": {"rrg": _jsonable(rrg), "data": _jsonable(asdict(data_args)), "model": _jsonable(asdict(model_args)),
                   "training": training},
        "start_model": start,
        "data": data_fingerprint(data_args.dataset_path) if data_args.dataset_path else None,
    }


def _backbone_identity(path: str | None) -> dict:
    """A local backbone folder by its weights; a Hub id by name."""
    from ..manifest import files_fingerprint

    if path and Path(path).is_dir():
        folder = Path(path).resolve()
        files = [f for f in folder.iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin")]
        return {"folder": str(folder), "weights_sha256": files_fingerprint(files, folder) if files else None}
    return {"name": path}


def _check_split_images(args: RRGScriptArguments, data_args: DataArguments, train_dataset, eval_dataset):
    """Decode every image of the rows this run uses before the first step (cached; see `training.data.image_check`)."""
    from ..data.image_check import check_rows

    skipped = {}
    out = []
    for name, split in ((args.train_split, train_dataset), (args.eval_split, eval_dataset)):
        if split is None:
            out.append(None)
            continue
        good = check_rows(split, name, str(data_args.dataset_path), data_args.on_bad_rows)
        skipped[name] = len(split) - len(good)
        out.append(split if len(good) == len(split) else split.select(good))
    return out[0], out[1], skipped


def _checkpointing_active(model) -> bool:
    """Whether gradient checkpointing is really on in the LLM (not only requested)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(getattr(m, "gradient_checkpointing", False) for m in base.modules() if m is not base)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _versions() -> dict:
    import peft
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__}


# transformers 5.24 renamed `gradient_checkpointing*` to `activation_checkpointing*` (the old names warn and go in v6);
# releases before it know only the old names. Recipes use the new names; either is accepted and translated to what the
# installed TrainingArguments has, so one recipe runs on every supported release without a deprecation warning.
_CHECKPOINTING_NAMES = (("gradient_checkpointing", "activation_checkpointing"),
                        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"))


def _checkpointing_field_names(argv: list[str], config_class) -> list[str]:
    import dataclasses
    import tempfile

    import yaml

    fields = {f.name for f in dataclasses.fields(config_class)}
    wanted = {old: new for old, new in _CHECKPOINTING_NAMES} if "activation_checkpointing" in fields else \
        {new: old for old, new in _CHECKPOINTING_NAMES}
    out = []
    for index, token in enumerate(argv):
        flag, sep, value = token.partition("=")
        if flag.startswith("--") and flag[2:] in wanted:
            token = f"--{wanted[flag[2:]]}{sep}{value}"
        elif index > 0 and argv[index - 1] == "--config" and Path(token).is_file():
            recipe = yaml.safe_load(Path(token).read_text()) or {}
            if isinstance(recipe, dict) and any(key in wanted for key in recipe):
                renamed = {wanted.get(key, key): value for key, value in recipe.items()}
                handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="rrg-recipe-", delete=False)
                with handle:
                    yaml.safe_dump(renamed, handle)
                logger.info("Recipe %s: %s read as %s for this transformers release.", token,
                            ", ".join(k for k in recipe if k in wanted), ", ".join(wanted[k] for k in recipe if k in wanted))
                token = handle.name
        out.append(token)
    return out


def parse_args(argv=None):
    """Parse `--config recipe.yaml` plus command-line overrides into
    `(RRGScriptArguments, DataArguments, SFTConfig, ModelConfig)`."""
    from trl import ModelConfig, SFTConfig

    from ..arguments import parse_command

    argv = _checkpointing_field_names(list(sys.argv[1:] if argv is None else argv), SFTConfig)
    return parse_command("train", (RRGScriptArguments, DataArguments, SFTConfig, ModelConfig), argv)


def requested_stage(argv: list[str]) -> int | None:
    """The stage a command line asks for (`--stage N`, else its `--config` recipe's), read before parsing: stage 3
    parses trl's `GRPOConfig` instead of `SFTConfig`."""
    import yaml

    stage = None
    for index, token in enumerate(argv):
        flag, sep, value = token.partition("=")
        if flag == "--stage":
            stage = value if sep else (argv[index + 1] if index + 1 < len(argv) else None)
        elif token == "--config" and index + 1 < len(argv) and stage is None and Path(argv[index + 1]).is_file():
            recipe = yaml.safe_load(Path(argv[index + 1]).read_text()) or {}
            stage = recipe.get("stage") if isinstance(recipe, dict) else None
    try:
        return None if stage is None else int(stage)
    except (TypeError, ValueError):
        return None  # the parser reports it


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if requested_stage(argv) == 3:
            from ..rl.grpo import main as stage3_main  # reinforcement learning (trl's GRPOTrainer), training/rl

            return stage3_main(argv)
        train(*parse_args(argv))
        return 0
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear the process group down before the interpreter exits. Left to interpreter shutdown, gloo's threads raced
    it: a rank sometimes aborted ("terminate called without an active exception", SIGABRT) after a finished run, and
    the launcher then failed the whole run (seen with FSDP2 and ZeRO-3 on CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _exit_launched_rank(code: int) -> None:
    """End a rank of a multi-process launch after its run: Python's exit handlers (logging, trackers) run and the
    streams are flushed, then the process exits without the interpreter's teardown. Even with the process group
    destroyed, a rank sometimes aborted in that teardown ("terminate called without an active exception", SIGABRT,
    a C++ thread of the communication stack destroyed unjoined) after a finished, saved run, and the launcher then
    reported the whole run failed (seen once in ZeRO-3's test under a loaded clean-clone CI)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":  # `python -m training.sft.train` (torchrun / accelerate launch): same as `rrg train`
    from training.cli import main as rrg

    code = rrg(["train", *sys.argv[1:]])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_launched_rank(code)
    sys.exit(code)
