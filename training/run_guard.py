"""Guard resumable outputs: an output folder is resumed only by the run that wrote it.

* `rrg evaluate`: `manifest.json` beside `predictions.jsonl` ([`guard_predictions`]).
* `rrg train`: `rrg_run.json` in the stage's `output_dir` ([`guard_training_dir`]), with the run's status
  (`running` until `model/` is written, then `finished`). A folder holding a finished run, or a run of another recipe,
  model or data, is refused: resuming into it would mix two runs, and checkpoint rotation would delete the other run's
  checkpoints. `--overwrite` starts fresh (the run's own files are deleted first).

Also here: the whole-run training loss across resumes ([`LogOnSaveCallback`], [`whole_run_loss`]).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

from .manifest import diff_manifests, read_manifest, write_manifest

logger = logging.getLogger(__name__)

__all__ = [
    "PREDICTIONS_MANIFEST",
    "RUN_MANIFEST",
    "guard_predictions",
    "guard_training_dir",
    "mark_training_finished",
    "LogOnSaveCallback",
    "whole_run_loss",
]

PREDICTIONS_MANIFEST = "manifest.json"
RUN_MANIFEST = "rrg_run.json"
# What `rrg evaluate` writes into its output folder (removed by --overwrite).
_EVAL_FILES = ("predictions.jsonl", "metrics.json", "metrics.md", PREDICTIONS_MANIFEST)
# What `rrg train` writes into a stage folder (removed by --overwrite); anything else there is left alone.
_RUN_GLOBS = ("checkpoint-*", "model", "model.tmp", "merged", "merged.tmp", "base", "base.tmp", "runs", RUN_MANIFEST)


def _refusal(folder: Path, what: str, differences: list[str], flag: str) -> ValueError:
    listed = "; ".join(differences[:12]) + (f"; and {len(differences) - 12} more" if len(differences) > 12 else "")
    return ValueError(f"{folder} holds {what}. Differing fields: {listed}. Use another output folder, or {flag} to "
                      "delete it and start fresh.")


def guard_predictions(output_dir: str | Path, manifest: dict, overwrite: bool = False) -> None:
    """
    Make `output_dir` safe to append predictions for `manifest` to, or refuse.

    Existing predictions are resumed only when their manifest equals `manifest`; predictions without a manifest
    (another tool, an older rrg) are refused too. `overwrite` deletes what `rrg evaluate` wrote there first.
    """
    output_dir = Path(output_dir)
    predictions = output_dir / "predictions.jsonl"
    if overwrite:
        for name in _EVAL_FILES:
            (output_dir / name).unlink(missing_ok=True)
    old = read_manifest(output_dir / PREDICTIONS_MANIFEST)
    has_rows = predictions.exists() and predictions.stat().st_size > 0
    if has_rows and old is None:
        raise ValueError(f"{predictions} was written without a manifest (by another tool or an older rrg), so it "
                         "cannot be told apart from another model's or setting's predictions. Use another "
                         "--output-dir, or --overwrite to delete it and start fresh.")
    if has_rows:
        differences = diff_manifests(old, manifest)
        if differences:
            raise _refusal(output_dir, "predictions of a different evaluation (model, data or settings)", differences,
                           "--overwrite")
    elif old is not None and old != manifest:
        logger.info("%s has a manifest but no predictions yet; replacing it.", output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(output_dir / PREDICTIONS_MANIFEST, manifest)


# What makes a folder hold a run: a checkpoint or a saved model (a manifest alone is a run that failed to start).
_STATE_GLOBS = ("checkpoint-*", "model", "merged")


def _run_files(folder: Path, patterns=_RUN_GLOBS) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern)})


def guard_training_dir(output_dir: str | Path, manifest: dict, resume: bool, overwrite: bool = False,
                       write: bool = True) -> None:
    """
    Decide whether a training stage may use `output_dir`, or refuse.

    Allowed: an empty or new folder; the resume (`resume=True`) of an unfinished run with the same manifest; anything
    with `overwrite=True` (the previous run's files are deleted first, when `write`). Refused: a finished run; a run
    with another manifest (recipe, starting model or data), resumed or not; an unfinished run of the same recipe
    without `resume` (starting over would mix its checkpoints with the new run's and rotation would delete them);
    a run folder without a manifest.

    Args:
        output_dir: The stage folder.
        manifest (`dict`): What identifies this run.
        resume (`bool`): `--resume_from_checkpoint` was given.
        overwrite (`bool`): `--overwrite` was given.
        write (`bool`): Delete (on overwrite) and write the manifest; `False` only checks (non-main processes).
    """
    folder = Path(output_dir)
    existing = _run_files(folder) if folder.is_dir() else []
    if overwrite:
        if write and existing:
            logger.warning("--overwrite: deleting the previous run's files in %s (%s).", folder,
                           ", ".join(p.name for p in existing))
            for path in existing:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif _run_files(folder, _STATE_GLOBS) if folder.is_dir() else False:
        record = read_manifest(folder / RUN_MANIFEST)
        if record is None:
            raise ValueError(f"{folder} holds a training run without {RUN_MANIFEST} (another tool or an older rrg); "
                             "it cannot be resumed safely. Use another output_dir, or --overwrite to delete it and "
                             "start fresh.")
        differences = diff_manifests(record.get("manifest", {}), manifest)
        if differences:
            raise _refusal(folder, "a different training run (recipe, starting model or data)", differences,
                           "--overwrite")
        if record.get("status") == "finished":
            raise ValueError(f"{folder} holds a finished run of this recipe (its model/ is complete). Use another "
                             "output_dir, or --overwrite to delete it and train again.")
        if not resume:
            raise ValueError(f"{folder} holds an unfinished run of this recipe. Resume it with "
                             "`--resume_from_checkpoint last`, or pass --overwrite to delete it and start fresh.")
        logger.info("Resuming the unfinished run in %s (same recipe, model and data).", folder)
    if write:
        write_manifest(folder / RUN_MANIFEST, {"status": "running", "manifest": manifest})


def mark_training_finished(output_dir: str | Path, summary: dict | None = None) -> None:
    folder = Path(output_dir)
    record = read_manifest(folder / RUN_MANIFEST) or {}
    record.update({"status": "finished"})
    if summary is not None:
        record["train_loss"] = summary.get("train_loss")
        record["global_step"] = summary.get("global_step")
    write_manifest(folder / RUN_MANIFEST, record)


class LogOnSaveCallback(TrainerCallback):
    """
    Log the loss at every checkpoint and at the last step, so the log history saved in each checkpoint covers every
    step up to it: the whole-run loss can then be rebuilt after a resume ([`whole_run_loss`]). Without this, the
    loss of the steps between the last log and a checkpoint is lost when a run is killed and resumed.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_training_stop or state.global_step >= state.max_steps:
            control.should_log = True
        return control


def whole_run_loss(log_history: list[dict], global_step: int) -> float | None:
    """Mean training loss over all `global_step` steps, from the logged interval means (weighted by their steps);
    `None` when the logs do not cover every step."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] > last:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    if global_step <= 0 or last != global_step:
        return None
    return total / global_step
