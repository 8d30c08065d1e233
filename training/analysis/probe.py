"""The reading ceiling of a run: `rrg probe`.

Is my encoder or my LLM losing this finding? For each of the 14 CheXpert observations, a linear probe is fitted on the
frozen encoder's features of the training studies and scored on the evaluated split, next to the report model's own
F1 for that observation on the same studies against the same labels:

- **Features** are what the projector receives ([`RRGModel.get_vision_features`]: the configured encoder layer, CLS /
  register tokens dropped as the model drops them, pooled to `num_visual_tokens` when the model pools), read from the
  training feature cache when one is given (the same entries `rrg train` wrote; missing ones are added) and computed
  through the same call otherwise. Each view's `(tokens, dim)` block is pooled to one vector (`pooling`: `mean` over
  tokens, `mean_max` mean and max concatenated, `flat` every token in place, as the LLM receives them; `auto`, the
  default, is `flat` for small inputs like the demo's and `mean` for large ones), and a study's vector is the mean over its
  views (the first `max_views`, as the model reads them): studies have one to several views in no fixed order, and a
  mean keeps one feature space for all of them.
- **Labels**: the dataset's own CheXpert labels when it has them (the synthetic benchmark's ground truth, a HF dataset's
  `chexpert_column`), else the labeler's labels of the reference reports (MIMIC-CXR's R2Gen annotation has none).
  Only 1 is positive (uncertain, negative, blank are not), as in rrg's clinical efficacy.
- **Probe**: per observation, L2-regularised logistic regression on features standardised with the training split's
  mean and standard deviation, fitted by scipy's L-BFGS-B in float64 (no scikit-learn dependency for ~40 lines). The
  penalty (from `l2_grid`) and the decision threshold (the one maximising F1) are chosen per observation by k-fold
  cross-validation on the training split, so no validation split is needed and the evaluated split is touched only
  once, for the final scores. An observation without positives in the training split is not probed (reported as such,
  and predicted negative in the micro / macro rows).
- **Report model**: the labeler's labels of its reports (`predictions.jsonl` from `rrg evaluate`, matched by study id,
  or generated here) against the same labels, counted by the evaluation code's `ce_counts`, so its per-observation F1 is
  the one `rrg evaluate` reports when the labels are the labeler's.

Per observation the table gives positives, the prior (test prevalence), the F1 of an uninformed classifier that calls
every study positive (`2p / (1 + p)`, the most an encoder that sees nothing can expect), probe AUROC and F1, report F1
and the gap (probe F1 - report F1): a low probe F1 means the encoder does not carry the finding (linearly); a high probe
F1 with a low report F1 means the projector / LLM loses it. Outputs: `probe.json`, `probe.md`, `probe.png`.

Usage::

    rrg probe --model outputs/demo/stage2 --dataset_path outputs/demo/data --feature_cache_dir outputs/demo/features \
        --predictions outputs/demo/eval/predictions.jsonl --output_dir outputs/demo/probe
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..arguments import DataArguments, GenerationArguments, parse_command
from ..data.chexpert import CHEXPERT_OBSERVATIONS
from ..data.loaders import dataset_labels, load_rows, split_key
from ..fileio import write_json_atomic, write_text_atomic
from .studies import batches, unwrap_model

logger = logging.getLogger(__name__)

__all__ = [
    "POOLINGS",
    "AUTO_FLAT_LIMIT",
    "resolve_pooling",
    "DEFAULT_L2_GRID",
    "ProbeArguments",
    "study_features",
    "fit_logistic",
    "fit_probe",
    "auroc",
    "best_f1_threshold",
    "run_probe",
    "probe_markdown",
    "plot_probe",
    "main",
]

POOLINGS = ("mean", "mean_max", "flat")
# `auto` keeps every token in place while a view's projector input is this small (the demo: 16 tokens x 96), else
# means them: a probe on 150k numbers per study (MIMIC-CXR, ViT-B/16) would need more studies than there are.
AUTO_FLAT_LIMIT = 8192
# Penalties on the mean log-loss of standardised features (lambda * ||w||^2 / 2): from almost none to strong.
DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# ----------------------------------------------------------------------------------------------------- features
def resolve_pooling(model, pooling: str) -> str:
    """`pooling`, with `"auto"` resolved: `"flat"` when a view's projector input has at most [`AUTO_FLAT_LIMIT`]
    numbers (tokens x encoder width), else `"mean"`."""
    if pooling == "auto":
        config = unwrap_model(model).config
        size = config.image_seq_length * config.vision_config.hidden_size
        return "flat" if size <= AUTO_FLAT_LIMIT else "mean"
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be auto or one of {POOLINGS}, got {pooling!r}.")
    return pooling


def _pool(features: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector from a view's `(tokens, dim)` projector input."""
    features = features.to(torch.float32)
    if pooling == "mean":
        return features.mean(0)
    if pooling == "mean_max":
        return torch.cat([features.mean(0), features.amax(0)])
    if pooling == "flat":
        return features.flatten()
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")


@torch.no_grad()
def study_features(model, processor, studies: Sequence[Sequence[str]], pooling: str = "auto",
                   feature_cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                   image_loader=None) -> np.ndarray:
    """
    One feature vector per study from what the projector receives for each of its views.

    Args:
        model ([`RRGForConditionalGeneration`], or a `PeftModel` over one): The model whose encoder is probed.
        processor ([`RRGProcessor`]): Its processor (image preprocessing, `max_views`).
        studies (`Sequence[Sequence[str]]`): Image paths of each study; views past `processor.max_views` are
            dropped, as the model drops them.
        pooling (`str`, *optional*, defaults to `"auto"`): `"mean"`, `"mean_max"` or `"flat"` over each view's tokens
            (see the module docstring), or `"auto"` ([`resolve_pooling`]); views are then averaged.
        feature_cache_dir (`str`, *optional*): A training feature cache ([`FeatureCache`]): cached entries are read,
            missing ones computed and stored. Without it the features are computed by the same
            `get_vision_features` call, in memory.
        batch_size (`int`, *optional*, defaults to 32): Images per encoder call.
        image_loader (`callable`, *optional*): Path -> PIL image (defaults to `training.data.images.load_image`).

    Returns:
        `np.ndarray` of shape `(len(studies), dim)`, float32.
    """
    pooling = resolve_pooling(model, pooling)
    if image_loader is None:
        from ..data.images import load_image

        image_loader = load_image
    model = unwrap_model(model)
    studies = [list(views)[: processor.max_views] for views in studies]
    empty = [i for i, views in enumerate(studies) if not views]
    if empty:
        raise ValueError(f"Studies {empty[:5]} have no image; every study needs at least one view.")
    paths = list(dict.fromkeys(p for views in studies for p in views))
    pooled: dict[str, torch.Tensor] = {}
    if feature_cache_dir is not None:
        from ..sft.feature_cache import FeatureCache

        cache = FeatureCache(feature_cache_dir, model, processor, image_loader=image_loader)
        cache.precompute(paths, batch_size=batch_size)
        for path in tqdm(paths, desc="Reading cached features", unit="image", disable=len(paths) < 1000):
            pooled[path] = _pool(cache.load(path), pooling)
    else:
        tower = model.model
        was_training = tower.training
        tower.eval()
        device = next(tower.vision_tower.parameters()).device
        for chunk in tqdm(list(batches(paths, batch_size)), desc="Encoding images", unit="batch"):
            # As FeatureCache.precompute encodes them: each image alone, through the model's own feature call.
            pixels, _ = processor.encode_images([[image_loader(p)] for p in chunk])
            features = tower.get_vision_features(pixels[:, 0].to(device)).to("cpu", torch.float32)
            for path, feature in zip(chunk, features):
                pooled[path] = _pool(feature, pooling)
        tower.train(was_training)
    return torch.stack([torch.stack([pooled[p] for p in views]).mean(0) for views in studies]).numpy()


# -------------------------------------------------------------------------------------------------------- probe
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float | np.ndarray, max_iter: int = 300,
                 tolerance: float = 1e-6, products: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    """
    Independent L2-regularised logistic regressions, one per column of `y`, fitted together by L-BFGS-B.

    Each column `k` minimises `mean_i BCE(x_i @ w_k + b_k, y_ik) + l2_k / 2 * ||w_k||^2` (the intercept is not
    penalised). The columns share no parameter, so minimising the sum minimises each; one joint problem reads `x`
    once per step for all columns. numpy + scipy with the analytic gradient: on small problems torch's per-op
    overhead (autograd, thread pool) costs more than the arithmetic.

    Args:
        x (`np.ndarray` of shape `(n, d)`): Features (standardise them first).
        y (`np.ndarray` of shape `(n, k)`): 0 / 1 targets.
        l2 (`float` or `np.ndarray` of shape `(k,)`): Penalty per column.
        max_iter (`int`, *optional*): L-BFGS-B iterations.
        tolerance (`float`, *optional*): Stop when the projected gradient's largest entry falls below it (or the
            objective improves by less than its square, relatively).
        products (`str`, *optional*, defaults to `"float64"`): Precision of the two products with `x` per step (the
            `n x d x k` work; everything else is float64). `"float32"` halves the time; the solution then agrees with
            the float64 one to ~1e-4 only (the gradient is float32-accurate), which a probe's scores do not notice.

    Returns:
        `(weights, bias)` of shapes `(d, k)` and `(k,)`, float64.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, d = x.shape
    k = y.shape[1]
    l2 = np.broadcast_to(np.asarray(l2, dtype=np.float64), (k,))
    # Start at the prior, so a column the features cannot explain stays there.
    prior = y.mean(0).clip(1e-6, 1 - 1e-6)
    start = np.concatenate([np.zeros(d * k), np.log(prior / (1 - prior))])

    if products not in ("float64", "float32"):
        raise ValueError(f"products must be 'float64' or 'float32', got {products!r}.")
    xp = x.astype(products)

    def objective(theta):
        weights, bias = theta[: d * k].reshape(d, k), theta[d * k :]
        logits = (xp @ weights.astype(products)).astype(np.float64) + bias
        loss = (np.logaddexp(0, logits) - y * logits).mean(0) + 0.5 * l2 * (weights * weights).sum(0)
        residual = (expit(logits) - y) / n
        gradient = np.concatenate([((xp.T @ residual.astype(products)).astype(np.float64) + l2 * weights).ravel(),
                                   residual.sum(0)])
        return loss.sum(), gradient

    theta = minimize(objective, start, jac=True, method="L-BFGS-B",
                     options={"maxiter": max_iter, "gtol": tolerance, "ftol": tolerance**2}).x
    return theta[: d * k].reshape(d, k), theta[d * k :]


def _predict(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(np.asarray(x, dtype=np.float64) @ weights + bias)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); `None` without both classes."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold `t` (predict positive when `score >= t`) with the highest F1 on these scores, and that F1."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    if positives == 0:
        return float("inf"), 0.0
    order = np.argsort(-scores, kind="stable")
    sorted_scores, true_positives = scores[order], np.cumsum(labels[order])
    # Only cut between distinct scores: tied studies are predicted alike.
    cuts = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    f1 = 2 * true_positives[cuts] / (cuts + 1 + positives)
    best = int(np.argmax(f1))
    return float(sorted_scores[cuts[best]]), float(f1[best])


def _f1(predicted: np.ndarray, labels: np.ndarray) -> float:
    tp = int((predicted & labels).sum())
    fp, fn = int((predicted & ~labels).sum()), int((~predicted & labels).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


_CV: dict = {}  # a cross-validation worker's standardised features and labels (set once per process)


def _cv_worker_init(x: np.ndarray, y: np.ndarray) -> None:
    _CV.update(x=x, y=y)


def _held_out_scores(x: np.ndarray, y: np.ndarray, l2: float, held: np.ndarray) -> np.ndarray:
    """Scores of the `held` studies by a probe fitted with penalty `l2` on the others."""
    weights, bias = fit_logistic(x[~held], y[~held], float(l2), products="float32")
    return _predict(x[held], weights, bias)


def _cv_fit(job: tuple[float, np.ndarray]) -> np.ndarray:
    """A worker's [`_held_out_scores`] of one (penalty, held-out mask) on its data."""
    return _held_out_scores(_CV["x"], _CV["y"], *job)


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, l2_grid: Sequence[float] = DEFAULT_L2_GRID, folds: int = 3,
              seed: int = 0, num_workers: int | None = None) -> dict:
    """
    Fit the per-observation probes: penalty and threshold by `folds`-fold cross-validation on the training studies,
    then one fit on all of them.

    Args:
        train_x (`np.ndarray` of shape `(n, d)`): Study features.
        train_y (`np.ndarray` of shape `(n, k)`): 0 / 1 labels (columns without positives must be left out).
        l2_grid (`Sequence[float]`): Penalties tried; per column the one with the lowest out-of-fold log-loss wins.
        folds (`int`): Cross-validation folds (>= 2).
        seed (`int`): Seed of the fold assignment.
        num_workers (`int`, *optional*): Processes for the `len(l2_grid) x folds` cross-validation fits (each fit is
            deterministic, so the result does not depend on it); defaults to the number of CPU cores, 1 fits in this
            process.

    Returns:
        `dict` with `mean`, `std` (standardisation), `weights` `(d, k)`, `bias` `(k,)`, `l2` `(k,)`, `threshold`
        `(k,)` and `cv_f1` `(k,)` (out-of-fold F1 at the chosen threshold); pass it to [`_probe_scores`].
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}.")
    if len(l2_grid) == 0:
        raise ValueError("l2_grid is empty; give at least one penalty.")
    n = train_x.shape[0]
    if n < folds:
        raise ValueError(f"{n} training studies are too few for {folds}-fold cross-validation.")
    mean = train_x.mean(0)
    std = train_x.std(0)
    std = np.where(std > 1e-8 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, 1.0)  # constant features stay 0
    x = (train_x - mean) / std
    y = np.asarray(train_y, dtype=np.float64)
    fold = np.random.default_rng(seed).permutation(n) % folds
    out_of_fold = np.zeros((len(l2_grid),) + tuple(y.shape))
    cells = [(g, fold == f) for g in range(len(l2_grid)) for f in range(folds)]  # (penalty index, held-out mask)
    jobs = [(l2_grid[g], held) for g, held in cells]
    workers = min(len(jobs), max(1, num_workers or os.cpu_count() or 1))
    with tqdm(total=len(jobs), desc="Cross-validating the probe", unit="fit") as bar:
        results = []
        if workers == 1:
            for l2, held in jobs:
                results.append(_held_out_scores(x, y, l2, held))
                bar.update(1)
        else:
            # spawn, not fork: the parent has torch's thread pools running, which a forked child must not inherit
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # One BLAS thread per worker (read by numpy at import in the spawned process): the products are small,
            # and `workers` processes x the cores' threads each were 1.8x slower than one process.
            threads = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            saved = {name: os.environ.get(name) for name in threads}
            os.environ.update(dict.fromkeys(threads, "1"))
            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_cv_worker_init, initargs=(x, y)) as pool:
                    for result in pool.map(_cv_fit, jobs):
                        results.append(result)
                        bar.update(1)
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
    for (g, held), scores in zip(cells, results, strict=True):
        out_of_fold[g][held] = scores
    eps = 1e-12
    labels = y
    log_loss = -(labels * np.log(out_of_fold + eps) + (1 - labels) * np.log(1 - out_of_fold + eps)).mean(1)  # (g, k)
    chosen = log_loss.argmin(0)
    l2 = np.asarray(l2_grid, dtype=float)[chosen]
    thresholds, cv_f1 = zip(*(best_f1_threshold(out_of_fold[chosen[j], :, j], labels[:, j] > 0.5)
                              for j in range(labels.shape[1])))
    weights, bias = fit_logistic(x, y, l2, products="float32")
    return {"mean": mean, "std": std, "weights": weights, "bias": bias, "l2": l2,
            "threshold": np.asarray(thresholds), "cv_f1": np.asarray(cv_f1)}


def _probe_scores(probe: dict, x: np.ndarray) -> np.ndarray:
    return _predict((x - probe["mean"]) / probe["std"], probe["weights"], probe["bias"])


# ------------------------------------------------------------------------------------------------------- labels
def _positive_matrix(labels: Sequence[dict]) -> np.ndarray:
    from ..evaluation.metrics.clinical import positive_matrix

    return positive_matrix(list(labels), policy="negative")  # only label 1 counts, as in rrg's CE


def _read_prediction_rows(path: str | os.PathLike, ids: Sequence[str]) -> dict[str, str]:
    from ..evaluation.evaluator import read_predictions

    path = Path(path)
    if path.is_dir():
        path = path / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"Predictions file not found: {path} (pass rrg evaluate's predictions.jsonl).")
    by_id = {}
    for line, row in enumerate(read_predictions(path), start=1):
        if not isinstance(row, dict) or "id" not in row or "prediction" not in row:
            raise ValueError(f"{path}, line {line}: expected an object with 'id' and 'prediction' (rrg evaluate's "
                             f"predictions.jsonl), got {str(row)[:80]!r}.")
        by_id[str(row["id"])] = row["prediction"]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{path} has no prediction for {len(missing)} of the {len(ids)} studies probed (e.g. {missing[:5]}); "
            "evaluate the same split of the same data (rrg evaluate --split ...), or leave out --predictions to "
            "generate the reports here."
        )
    return {i: by_id[i] for i in ids}


# ---------------------------------------------------------------------------------------------------- the probe
def _subsample(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    if not limit or limit >= len(rows):
        return rows
    keep = sorted(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False).tolist())
    return [rows[i] for i in keep]


def run_probe(model, data, output_dir, processor=None, split: str = "test", train_split: str = "train",
              predictions: str | os.PathLike | None = None, report: bool = True,
              feature_cache_dir: str | os.PathLike | None = None, pooling: str = "auto", labels_from: str = "auto",
              labeler="rule", labeler_kwargs: dict | None = None, max_train_studies: int | None = None,
              max_studies: int | None = None, l2_grid: Sequence[float] = DEFAULT_L2_GRID, folds: int = 3,
              batch_size: int = 32, generation_kwargs: dict | None = None, generation_batch_size: int = 8,
              device: str | None = None, seed: int = 0, chexpert_column: str | None = None, plot: bool = True) -> dict:
    """
    Probe a model's frozen encoder per CheXpert observation and compare it with the report model on the same studies.

    Args:
        model (`str`, `Path` or a loaded model): A trained folder (stage output, `model/`, export) or a loaded
            [`RRGForConditionalGeneration`] (then pass `processor`).
        data ([`DataArguments`], `str` or `Path`): The data, as every command reads it (a path: its defaults).
        output_dir (`str` or `Path`): Where `probe.json`, `probe.md`, `probe.png` (and generated predictions) go.
        processor ([`RRGProcessor`], *optional*): The processor of a loaded `model`.
        split (`str`, *optional*, defaults to `"test"`): Split the probe and the report model are scored on.
        train_split (`str`, *optional*, defaults to `"train"`): Split the probe is fitted on.
        predictions (`str`, *optional*): `rrg evaluate`'s `predictions.jsonl` (or its folder) for `split`; every
            probed study must be in it. Without it the reports are generated (greedy, `generation_kwargs`).
        report (`bool`, *optional*, defaults to `True`): `False` probes the encoder only (no report column).
        feature_cache_dir (`str`, *optional*): The training feature cache (see [`study_features`]).
        pooling (`str`, *optional*, defaults to `"auto"`): See [`study_features`].
        labels_from (`str`, *optional*, defaults to `"auto"`): `"dataset"`, `"labeler"` (reference reports), or
            `"auto"` (the dataset's labels when every study has them).
        labeler (`str` or labeler, *optional*, defaults to `"rule"`): Labels the reports (and the references when
            the data has no labels); a name for [`get_labeler`] (with `labeler_kwargs`) or an object.
        max_train_studies / max_studies (`int`, *optional*): Seeded random subsets of the two splits.
        l2_grid, folds: See [`fit_probe`].
        batch_size (`int`, *optional*, defaults to 32): Images per encoder call.
        generation_kwargs (`dict`, *optional*): Passed to `generate` when the reports are generated here.
        generation_batch_size (`int`, *optional*, defaults to 8): Studies per `generate` call.
        device (`str`, *optional*): Where a model loaded from a folder goes (default: cuda if available).
        seed (`int`, *optional*): Seed of the subsets and the folds.
        chexpert_column (`str`, *optional*): A HF dataset's column of CheXpert labels (dict or JSON), the ground
            truth (an annotation.json carries them in each entry).
        plot (`bool`, *optional*): Write `probe.png`.

    Returns:
        `dict`: what `probe.json` holds (`observations` per label, `summary` micro / macro rows, `meta`).
    """
    from ..evaluation.labeler import get_labeler
    from ..evaluation.metrics.clinical import ce_counts

    started = time.perf_counter()
    output_dir = Path(output_dir)
    model_name = None
    if isinstance(model, (str, os.PathLike)):
        from ..model_io import load_trained, resolve_model_dir

        model_name = str(resolve_model_dir(model))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, processor = load_trained(model, merge=True, device=device)
    elif processor is None:
        raise ValueError("Pass the processor with a loaded model (or give the model's folder).")
    if isinstance(labeler, str):
        labeler = get_labeler(labeler, **(labeler_kwargs or {}))
    if split_key(split) == split_key(train_split):
        raise ValueError(f"The probe must be fitted and scored on different splits; both are {split!r}.")

    pooling = resolve_pooling(model, pooling)
    data_args = data if isinstance(data, DataArguments) else DataArguments(dataset_path=str(data))
    rows = load_rows(data_args, [train_split, split], chexpert_column=chexpert_column)
    train_rows = _subsample(rows[train_split], max_train_studies, seed)
    test_rows = _subsample(rows[split], max_studies, seed)
    train_labels, label_source = dataset_labels(train_rows, labels_from, labeler, train_split)
    test_labels, test_source = dataset_labels(test_rows, labels_from, labeler, split)
    if test_source != label_source:
        raise ValueError(f"Split {train_split!r} got its labels from {label_source} but {split!r} from {test_source}; "
                         "set labels_from to 'dataset' or 'labeler' explicitly.")
    train_y, test_y = _positive_matrix(train_labels), _positive_matrix(test_labels)
    reports = None
    if report and predictions is not None:  # before the heavy work: a file that misses studies fails at once
        texts = _read_prediction_rows(predictions, [str(r["id"]) for r in test_rows])
        reports = [texts[str(r["id"])] for r in test_rows]

    train_x = study_features(model, processor, [r["image_path"] for r in train_rows], pooling=pooling,
                             feature_cache_dir=feature_cache_dir, batch_size=batch_size)
    test_x = study_features(model, processor, [r["image_path"] for r in test_rows], pooling=pooling,
                            feature_cache_dir=feature_cache_dir, batch_size=batch_size)
    probed = [j for j in range(len(CHEXPERT_OBSERVATIONS)) if 0 < train_y[:, j].sum() < len(train_y)]
    probe = fit_probe(train_x, train_y[:, probed].astype(float), l2_grid=l2_grid, folds=folds, seed=seed)
    scores = np.zeros(test_y.shape)
    predicted = np.zeros(test_y.shape, dtype=bool)
    scores[:, probed] = _probe_scores(probe, test_x)
    predicted[:, probed] = scores[:, probed] >= probe["threshold"]
    for j in range(len(CHEXPERT_OBSERVATIONS)):
        if j not in probed and train_y[:, j].all():  # always positive in training: the probe says positive
            predicted[:, j] = True

    report_counts = None
    if report:
        if reports is None:
            reports = _generate(model, processor, test_rows, output_dir, generation_batch_size, generation_kwargs)
        # One counting of true / false positives for rrg: the evaluation code's (only label 1 is positive).
        report_counts = ce_counts(labeler.label_batch(reports), test_labels)["negative"].sum(0)  # (3, 14)

    observations = []
    for j, name in enumerate(CHEXPERT_OBSERVATIONS):
        y = test_y[:, j]
        prior = float(y.mean())
        entry = {
            "observation": name, "train_positives": int(train_y[:, j].sum()), "positives": int(y.sum()),
            "prior": prior, "chance_f1": 2 * prior / (1 + prior), "probed": j in probed,
            "probe_auroc": None, "probe_f1": _f1(predicted[:, j], y), "probe_threshold": None, "probe_l2": None,
            "probe_cv_f1": None, "report_f1": None, "gap": None,
        }
        if j in probed:
            k = probed.index(j)
            entry.update(probe_auroc=auroc(scores[:, j], y), probe_threshold=float(probe["threshold"][k]),
                         probe_l2=float(probe["l2"][k]), probe_cv_f1=float(probe["cv_f1"][k]))
        else:
            entry["skipped"] = "no positives in the training split" if not train_y[:, j].any() else \
                "every training study is positive"
        if report_counts is not None:
            tp, fp, fn = (int(v) for v in report_counts[:, j])
            entry.update(report_f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                         report_predicted=tp + fp)
            entry["gap"] = entry["probe_f1"] - entry["report_f1"]
        observations.append(entry)

    summary = _summary_rows(predicted, test_y, report_counts)
    meta = {
        "model": model_name, "data": str(data_args.dataset_path), "split": split, "train_split": train_split,
        "num_train_studies": len(train_rows), "num_studies": len(test_rows), "labels": label_source,
        "labeler": labeler.name, "pooling": pooling, "feature_dim": int(train_x.shape[1]),
        "vision_feature_layer": model.config.vision_feature_layer,
        "vision_feature_select_strategy": model.config.vision_feature_select_strategy,
        "num_visual_tokens": model.config.num_visual_tokens,
        "feature_cache_dir": str(feature_cache_dir) if feature_cache_dir else None,
        "predictions": str(predictions) if predictions else ("generated" if report else None),
        "l2_grid": list(l2_grid), "folds": folds, "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    result = {"meta": meta, "observations": observations, "summary": summary,
              "files": ["probe.json", "probe.md"] + (["probe.png"] if plot else [])
              + (["predictions.jsonl"] if report and predictions is None else [])}
    write_json_atomic(output_dir / "probe.json", result)
    write_text_atomic(output_dir / "probe.md", probe_markdown(result))
    if plot:
        plot_probe(result, output_dir / "probe.png")
    logger.info("Probe written to %s: probe micro-F1 %.3f%s", output_dir, summary["probe"]["f1_micro"],
                "" if report_counts is None else f", report micro-F1 {summary['report']['f1_micro']:.3f}")
    return result


def _generate(model, processor, rows, output_dir: Path, batch_size: int, generation_kwargs) -> list[str]:
    """Generate the reports of `rows` and keep them as `predictions.jsonl` in `output_dir` (written atomically)."""
    from ..evaluation.evaluator import generate_reports

    with tempfile.TemporaryDirectory(prefix=".probe-generate-", dir=_existing(output_dir)) as tmp:
        path = Path(tmp) / "predictions.jsonl"
        generated = generate_reports(model, processor, rows, path, batch_size=batch_size,
                                     generation_kwargs=generation_kwargs)
        write_text_atomic(output_dir / "predictions.jsonl", path.read_text(encoding="utf-8"))
    return [row["prediction"] for row in generated]


def _existing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _summary_rows(predicted: np.ndarray, truth: np.ndarray, report_counts: np.ndarray | None) -> dict:
    """Micro (pooled counts) and macro (mean of per-observation F1, 0 when undefined) over the 14 observations."""
    tp = (predicted & truth).sum(0)
    fp, fn = (predicted & ~truth).sum(0), (~predicted & truth).sum(0)
    out = {"probe": _micro_macro(tp, fp, fn)}
    if report_counts is not None:
        out["report"] = _micro_macro(*report_counts)
    return out


def _micro_macro(tp, fp, fn) -> dict:
    tp, fp, fn = (np.asarray(v, dtype=float) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    per_label = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    pooled = 2 * tp.sum() + fp.sum() + fn.sum()
    return {"f1_micro": float(2 * tp.sum() / pooled) if pooled else 0.0, "f1_macro": float(per_label.mean())}


# ------------------------------------------------------------------------------------------------------ outputs
def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and abs(value) < 0.5 * 10**-digits:
        value = 0.0  # no "-0.000"
    return f"{value:+.{digits}f}" if isinstance(value, float) and value < 0 else (
        f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def probe_markdown(result: dict) -> str:
    """The probe table as markdown (one row per observation, then the micro / macro rows)."""
    meta = result["meta"]
    has_report = "report" in result["summary"]
    lines = [
        "# Reading ceiling: linear probe on the frozen encoder vs the report model", "",
        f"Probe fitted on {meta['num_train_studies']} `{meta['train_split']}` studies, scored on "
        f"{meta['num_studies']} `{meta['split']}` studies; labels: {meta['labels']}; features: `{meta['pooling']}` "
        f"pooling of the projector's input ({meta['feature_dim']} dimensions, encoder layer "
        f"{meta['vision_feature_layer']}, strategy `{meta['vision_feature_select_strategy']}`); report labels: "
        f"`{meta['labeler']}`.", "",
        "*Chance F1* is what calling every study positive scores (an encoder that sees nothing). A low probe F1: the "
        "encoder does not carry the finding. A high probe F1 with a low report F1 (large gap): the projector / LLM "
        "loses it.", "",
        "| observation | positives | prior | chance F1 | probe AUROC | probe F1 | report F1 | gap |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in result["observations"]:
        probe_f1 = _cell(o["probe_f1"]) if o["probed"] else f"{_cell(o['probe_f1'])} (not probed: {o['skipped']})"
        lines.append(f"| {o['observation']} | {o['positives']} | {_cell(o['prior'])} | {_cell(o['chance_f1'])} | "
                     f"{_cell(o['probe_auroc'])} | {probe_f1} | {_cell(o['report_f1'])} | {_cell(o['gap'])} |")
    for average in ("micro", "macro"):
        probe_value = result["summary"]["probe"][f"f1_{average}"]
        report_value = result["summary"]["report"][f"f1_{average}"] if has_report else None
        gap = probe_value - report_value if has_report else None
        lines.append(f"| **{average}-F1 (14)** | | | | | **{_cell(probe_value)}** | **{_cell(report_value)}** | "
                     f"{_cell(gap)} |")
    lines += ["", f"Predictions: {meta['predictions'] or 'none (encoder only)'}; model: `{meta['model']}`; data: "
              f"`{meta['data']}`; {meta['seconds']} s."]
    return "\n".join(lines) + "\n"


def plot_probe(result: dict, path: str | os.PathLike) -> Path:
    """Bars per observation: probe F1 and report F1, the chance F1 as a tick, probe AUROC as a dot."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    observations = result["observations"]
    names = [o["observation"] for o in observations]
    x = np.arange(len(names))
    has_report = "report" in result["summary"]
    width = 0.38 if has_report else 0.6
    fig, ax = plt.subplots(figsize=(13, 4.8))
    ax.bar(x - (width / 2 if has_report else 0), [o["probe_f1"] for o in observations], width,
           label=f"probe F1 (micro {result['summary']['probe']['f1_micro']:.3f})", color="tab:blue")
    if has_report:
        ax.bar(x + width / 2, [o["report_f1"] for o in observations], width,
               label=f"report F1 (micro {result['summary']['report']['f1_micro']:.3f})", color="tab:orange")
    ax.scatter(x, [o["chance_f1"] for o in observations], marker="_", s=400, color="black", zorder=3,
               label="chance F1 (all positive)")
    aurocs = [(i, o["probe_auroc"]) for i, o in enumerate(observations) if o["probe_auroc"] is not None]
    if aurocs:
        ax.scatter([i for i, _ in aurocs], [a for _, a in aurocs], marker="o", color="tab:green", zorder=3,
                   label="probe AUROC")
    for i, o in enumerate(observations):
        ax.text(i, -0.04, f"n={o['positives']}", ha="center", va="top", fontsize=7)
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.set_ylabel("score on the evaluated split")
    meta = result["meta"]
    ax.set_title(f"Reading ceiling: linear probe on the frozen encoder ({meta['pooling']} features) vs the report "
                 f"model, {meta['num_studies']} {meta['split']} studies")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: the bars reach the top
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------- CLI
@dataclass
class ProbeArguments:
    """The fields of `rrg probe` that belong to this command alone (the data comes from [`DataArguments`], the
    generation of missing reports from [`GenerationArguments`], the groups `rrg evaluate` reads too)."""

    model_name_or_path: str = field(
        metadata={"aliases": ["--model"], "help": "Trained folder (stage output, its model/, or an export)."})
    output_dir: str = field(metadata={"help": "Where probe.json, probe.md and probe.png are written."})
    split: str = field(default="test", metadata={"help": "Split the probe and the report model are scored on."})
    train_split: str = field(default="train", metadata={"help": "Split the probe is fitted on."})
    predictions: str | None = field(
        default=None, metadata={"help": "rrg evaluate's predictions.jsonl for --split (default: generate reports)."})
    no_report: bool = field(default=False, metadata={"help": "Probe the encoder only (no report-model column)."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "The training feature cache (read; missing entries are added)."})
    pooling: str = field(
        default="auto", metadata={"help": "auto | mean | mean_max | flat, over each view's tokens (auto: flat when a "
                                          f"view's projector input has <= {AUTO_FLAT_LIMIT} numbers, else mean)."})
    labels_from: str = field(
        default="auto", metadata={"help": "auto | dataset | labeler (label the reference reports)."})
    chexpert_column: str | None = field(
        default=None, metadata={"help": "HF datasets: column of CheXpert labels (dict or JSON) used as ground truth."})
    labeler: str = field(default="rule", metadata={"help": "rule | chexbert"})
    chexbert_checkpoint: str | None = field(default=None, metadata={"help": "chexbert.pth (never downloaded)."})
    chexbert_tokenizer: str | None = field(default=None, metadata={"help": "Local bert-base-uncased tokenizer."})
    max_train_studies: int | None = field(default=None, metadata={"help": "Random subset of the training split."})
    max_studies: int | None = field(default=None, metadata={"help": "Random subset of the scored split."})
    folds: int = field(default=3, metadata={"help": "Cross-validation folds choosing penalty and threshold."})
    encoder_batch_size: int = field(default=32, metadata={"help": "Images per encoder call."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    seed: int = field(default=0)

    def __post_init__(self):
        if self.pooling not in ("auto",) + POOLINGS:
            raise ValueError(f"--pooling must be auto or one of {', '.join(POOLINGS)}; got {self.pooling!r}.")
        if self.labels_from not in ("auto", "dataset", "labeler"):
            raise ValueError(f"--labels_from must be auto, dataset or labeler; got {self.labels_from!r}.")
        if self.labeler not in ("rule", "chexbert"):
            raise ValueError(f"--labeler must be rule or chexbert; got {self.labeler!r}.")


def parse_args(argv: Sequence[str] | None = None) -> tuple:
    """`rrg probe`'s flags (and `--config FILE.yaml`) as `(ProbeArguments, DataArguments, GenerationArguments)`."""
    return parse_command("probe", (ProbeArguments, DataArguments, GenerationArguments), argv,
                         description=__doc__.split("\n\n")[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `rrg probe`; returns the process exit code."""
    a, data_args, generation_args = parse_args(argv)
    if data_args.dataset_path is None:
        raise ValueError("rrg probe needs --dataset_path (or --data): an annotation.json, a folder holding one, or a "
                         "HF dataset.")
    labeler_kwargs = {}
    if a.labeler == "chexbert":
        labeler_kwargs = {"checkpoint_path": a.chexbert_checkpoint, "tokenizer_name_or_path": a.chexbert_tokenizer}
    result = run_probe(
        a.model_name_or_path, data_args, a.output_dir, split=a.split, train_split=a.train_split,
        predictions=a.predictions, report=not a.no_report, feature_cache_dir=a.feature_cache_dir, pooling=a.pooling,
        labels_from=a.labels_from, labeler=a.labeler, labeler_kwargs=labeler_kwargs,
        max_train_studies=a.max_train_studies, max_studies=a.max_studies, folds=a.folds,
        batch_size=a.encoder_batch_size, generation_kwargs=generation_args.to_generation_kwargs(),
        generation_batch_size=generation_args.batch_size, device=a.device, seed=a.seed,
        chexpert_column=a.chexpert_column,
    )
    sys.stdout.write(probe_markdown(result))
    return 0
