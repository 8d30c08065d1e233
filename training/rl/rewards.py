"""Rewards for stage 3 (GRPO): named, composable functions with trl's reward signature.

Every reward is a callable `reward(prompts, completions, **kwargs) -> list[float]`, as trl's `GRPOTrainer` calls it:
`completions` are the decoded reports (the processor's `batch_decode`), and `kwargs` carry the dataset's columns
for each completion, `report` (the reference) among them. A recipe names them and weighs them:

```yaml
reward_funcs: [clinical_f1, bleu, length]
reward_weights: [1.0, 0.5, 0.2]
```

trl logs each one per step as `rewards/<name>/mean` (and `/std`). The scores are the evaluation's own, per report:
each is the metric registry's per-report score (`training.evaluation.metrics.registry.per_report_scores`: the
labeler evaluation uses, `rule` or CheXbert with a checkpoint; sentence BLEU-n, ROUGE-L and RadGraph-F1 on text
prepared as `rrg evaluate` prepares it) — there is no second labeler or BLEU here. Negative / uncertain mentions
pool their counts with `ce_counts`'s positive ones.

- `clinical_f1`: F1 of the CheXpert mentions of a completion against its reference (per report; 1.0 when neither
  mentions anything). `mentions` picks which mentions count (`positive`, and optionally `negative`, `uncertain`:
  "no effusion" then has to match "no effusion"); `uncertain` says whether an uncertain mention counts as positive
  (`positive`) or not at all (`negative`, the R2Gen convention of the CE tables).
- `bleu`: sentence BLEU-n (default 4) against the reference; `rouge_l`: ROUGE-L F.
- `length`: `min(words) / max(words)` of completion and reference, 0 for an empty completion or one that ran into
  `max_completion_length` without ending (no EOS): keeps the text honest in length and format.
- `radgraph`: RadGraph-F1 (`partial`, RG_ER) with a local RadGraph model folder (`radgraph_model`).
- `null`: a control carrying no information (a hash of the completion's text in [0, 1)): what stage 3's updates do
  without a signal; a real reward should beat it.
- any `module:function` (or `module.function`) with trl's signature, e.g. `radeval:make_reward_fn` products wrapped
  in a module of yours.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "REWARDS",
    "MENTIONS",
    "ClinicalF1Reward",
    "BleuReward",
    "RougeLReward",
    "LengthReward",
    "RadGraphReward",
    "NullReward",
    "build_reward",
    "build_rewards",
]

MENTIONS = ("positive", "negative", "uncertain")


def _references(kwargs: dict, column: str, count: int) -> list[str]:
    refs = kwargs.get(column)
    if refs is None:
        raise ValueError(
            f"The reward needs the reference report in the dataset column {column!r}, which the trainer did not pass "
            f"(columns passed: {sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))})."
        )
    if len(refs) != count:
        raise ValueError(f"Got {len(refs)} references for {count} completions.")
    return [str(r) for r in refs]


def _texts(completions) -> list[str]:
    """Completions as text: trl passes strings for plain prompts, message lists for conversational ones."""
    out = []
    for c in completions:
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list) and c and isinstance(c[-1], dict):
            content = c[-1].get("content", "")
            out.append(content if isinstance(content, str) else " ".join(p.get("text", "") for p in content))
        else:
            raise TypeError(f"A completion must be a string or a list of chat messages, got {type(c).__name__}.")
    return out


class _Reward:
    """Base: a named callable with trl's reward signature (`__name__` is what trl logs it under)."""

    name = "reward"

    def __init__(self, reference_column: str = "report"):
        self.reference_column = reference_column
        self.__name__ = self.name

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        texts = _texts(completions)
        refs = _references(kwargs, self.reference_column, len(texts))
        return [float(v) for v in self.score(texts, refs, **kwargs)]

    def score(self, predictions: list[str], references: list[str], **kwargs) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class ClinicalF1Reward(_Reward):
    """
    Per-report F1 of the CheXpert mentions (see the module docstring).

    Args:
        labeler (`str` or labeler, *optional*, defaults to `"rule"`): A labeler name for
            [`training.evaluation.labeler.get_labeler`] (`"rule"`, `"chexbert"`) or a labeler object.
        mentions (`Sequence[str]`, *optional*, defaults to `("positive",)`): The mention kinds that must agree.
        uncertain (`str`, *optional*, defaults to `"negative"`): `"negative"` (an uncertain mention is not a
            positive one) or `"positive"` (it is).
        zero_division (`float`, *optional*, defaults to 1.0): The score when neither report has a counted mention.
        labeler_kwargs (`dict`, *optional*): Passed to `get_labeler` (`checkpoint_path`, `tokenizer_name_or_path`).
    """

    name = "clinical_f1"

    def __init__(self, labeler="rule", mentions: Sequence[str] = ("positive",), uncertain: str = "negative",
                 zero_division: float = 1.0, reference_column: str = "report", labeler_kwargs: dict | None = None):
        super().__init__(reference_column)
        mentions = tuple(mentions)
        unknown = [m for m in mentions if m not in MENTIONS]
        if not mentions or unknown:
            raise ValueError(f"clinical_f1 mentions must be a non-empty subset of {MENTIONS}, got {list(mentions)}.")
        if uncertain not in ("negative", "positive"):
            raise ValueError(f"clinical_f1 uncertain must be 'negative' or 'positive', got {uncertain!r}.")
        if uncertain == "positive" and "uncertain" in mentions:
            raise ValueError("clinical_f1: uncertain='positive' already counts uncertain mentions as positive; drop "
                             "'uncertain' from mentions (or set uncertain='negative').")
        if isinstance(labeler, str):
            from ..evaluation.labeler import get_labeler

            labeler = get_labeler(labeler, **(labeler_kwargs or {}))
        self.labeler = labeler
        self.mentions, self.uncertain, self.zero_division = mentions, uncertain, float(zero_division)
        self._labels: dict[str, dict] = {}  # references repeat num_generations times and across epochs

    def labels(self, reports: list[str]) -> list[dict]:
        todo = [r for r in dict.fromkeys(reports) if r not in self._labels]
        if todo:
            self._labels.update(zip(todo, self.labeler.label_batch(todo), strict=True))
        out = [self._labels[r] for r in reports]
        if len(self._labels) > 50_000:  # completions are rarely seen twice; keep the memory bounded
            self._labels.clear()
        return out

    def counts(self, predictions: list[str], references: list[str]) -> np.ndarray:
        """`(reports, 3)` true positives, false positives and false negatives of the counted mentions."""
        from ..data.chexpert import CHEXPERT_OBSERVATIONS, NEGATIVE, UNCERTAIN
        from ..evaluation.metrics.clinical import ce_counts

        pred, ref = self.labels(predictions), self.labels(references)
        total = np.zeros((len(predictions), 3), dtype=float)
        if "positive" in self.mentions:  # exactly the CE tables' counts (`ce_counts`, per uncertainty policy)
            total += ce_counts(pred, ref)[self.uncertain].sum(axis=2)
        for kind, value in (("negative", NEGATIVE), ("uncertain", UNCERTAIN)):
            if kind in self.mentions:  # the same tp / fp / fn, for "no X" (or "possible X") mentions
                p = np.array([[row.get(o) == value for o in CHEXPERT_OBSERVATIONS] for row in pred], dtype=bool)
                r = np.array([[row.get(o) == value for o in CHEXPERT_OBSERVATIONS] for row in ref], dtype=bool)
                total += np.stack([(p & r).sum(1), (p & ~r).sum(1), (r & ~p).sum(1)], axis=1)
        return total

    @property
    def variant(self) -> str:
        """The metrics.json name whose per-report score this reward is (positive mentions only)."""
        from ..evaluation.metrics.clinical import labeler_key

        return f"ce_{labeler_key(self.labeler.name)}_f1_example_14_uncertain_{self.uncertain}"

    def score(self, predictions, references, **kwargs) -> np.ndarray:
        if self.mentions == ("positive",):  # exactly the registry's per-report example-based CE-F1
            return _registry_scores(self.variant, predictions, references, labeler=_CachedLabeler(self),
                                    zero_division=self.zero_division)
        tp, fp, fn = self.counts(predictions, references).T
        denominator = 2 * tp + fp + fn
        out = np.full(len(predictions), self.zero_division)
        np.divide(2 * tp, denominator, out=out, where=denominator > 0)
        return out


class _CachedLabeler:
    """The reward's labeler behind its label cache (references repeat num_generations times)."""

    def __init__(self, reward: ClinicalF1Reward):
        self.name, self.label_batch = reward.labeler.name, reward.labels


def _registry_scores(name: str, predictions, references, **settings) -> np.ndarray:
    """One score per pair from the evaluation's metric registry (`per_report_scores`): the one implementation."""
    from ..evaluation.metrics.registry import per_report_scores

    return np.asarray(per_report_scores(name, list(predictions), list(references), **settings), dtype=float)


class BleuReward(_Reward):
    """Sentence BLEU-`order` of each completion (evaluation's `bleu_stats`, one report at a time).

    Args:
        order (`int`, *optional*, defaults to 4): BLEU-1..4.
        clean (`str`, *optional*, defaults to `"mimic"`): Text cleaning before scoring (`"mimic"`, `"iu"`, `None`).
    """

    name = "bleu"

    def __init__(self, order: int = 4, clean: str | None = "mimic", reference_column: str = "report"):
        super().__init__(reference_column)
        if order not in (1, 2, 3, 4):
            raise ValueError(f"bleu order must be 1..4, got {order}.")
        self.order, self.clean = order, clean

    def score(self, predictions, references, **kwargs) -> np.ndarray:
        return _registry_scores(f"BLEU-{self.order}", predictions, references, clean=self.clean)


class RougeLReward(_Reward):
    """ROUGE-L F of each completion (pycocoevalcap's `Rouge`, as evaluation computes it)."""

    name = "rouge_l"

    def __init__(self, clean: str | None = "mimic", reference_column: str = "report"):
        super().__init__(reference_column)
        self.clean = clean

    def score(self, predictions, references, **kwargs) -> np.ndarray:
        return _registry_scores("ROUGE-L", predictions, references, clean=self.clean)


class LengthReward(_Reward):
    """`min / max` of the completion's and the reference's word counts; 0 when empty or cut off without EOS.

    Args:
        eos_token_ids (`Sequence[int]`, *optional*): Token ids that end a report; with them (and trl's
            `completion_ids`), a completion that did not end is scored 0.
    """

    name = "length"

    def __init__(self, eos_token_ids: Sequence[int] | None = None, reference_column: str = "report"):
        super().__init__(reference_column)
        self.eos_token_ids = set(eos_token_ids or ())

    def score(self, predictions, references, completion_ids=None, **kwargs) -> np.ndarray:
        n_pred = np.array([len(p.split()) for p in predictions], dtype=float)
        n_ref = np.array([len(r.split()) for r in references], dtype=float)
        out = np.minimum(n_pred, n_ref) / np.maximum(np.maximum(n_pred, n_ref), 1.0)
        if completion_ids is not None and self.eos_token_ids:
            ended = np.array([bool(ids) and int(ids[-1]) in self.eos_token_ids for ids in completion_ids])
            out = np.where(ended, out, 0.0)
        return out


class RadGraphReward(_Reward):
    """RadGraph-F1 per report (`partial`, RG_ER, by default) with a local RadGraph model folder; the registry's
    `RadGraph-F1-<level>/<model type>` (the model type read from the folder's vocabulary)."""

    name = "radgraph"

    def __init__(self, radgraph_model=None, level: str = "partial", reference_column: str = "report",
                 radgraph_encoder=None):
        super().__init__(reference_column)
        from ..evaluation.metrics.radgraph import (
            RADGRAPH_LEVELS,
            check_radgraph_folder,
            radgraph_metric_name,
            radgraph_model_type,
        )

        if radgraph_model is None:
            raise ValueError("The radgraph reward needs a RadGraph model folder: set reward_radgraph_model to a "
                             "released RadGraph model extracted locally (config.json, vocabulary/, weights.th).")
        if level not in RADGRAPH_LEVELS:
            raise ValueError(f"radgraph level must be one of {RADGRAPH_LEVELS}, got {level!r}.")
        self.radgraph_model, self.level = str(check_radgraph_folder(radgraph_model)), level
        self.radgraph_encoder = radgraph_encoder
        self.metric = radgraph_metric_name(level, radgraph_model_type(self.radgraph_model))

    def score(self, predictions, references, **kwargs) -> np.ndarray:
        return _registry_scores(self.metric, predictions, references, radgraph_model=self.radgraph_model,
                                radgraph_encoder=self.radgraph_encoder)


class NullReward(_Reward):
    """A control, not a goal: a number that carries nothing about the image or the reference — the SHA-256 of the
    completion's text read as a fraction in [0, 1), the same for the same text in every run. Stage 3 with it samples,
    normalises advantages and updates the weights exactly as with a real reward, so its model shows what the updates
    alone do (drift); a reward worth its name beats it on the test split (`rrg compare`)."""

    name = "null"

    def score(self, predictions, references, **kwargs) -> np.ndarray:
        return np.array([int.from_bytes(hashlib.sha256(p.encode("utf-8")).digest()[:8], "big") / 2.0**64
                         for p in predictions])


REWARDS: dict[str, type[_Reward]] = {
    cls.name: cls for cls in (ClinicalF1Reward, BleuReward, RougeLReward, LengthReward, RadGraphReward, NullReward)
}


def _load_callable(spec: str) -> Callable:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"Unknown reward {spec!r}: use one of {sorted(REWARDS)} or 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"Reward {spec!r}: cannot import module {module_name!r} ({err}).") from err
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"Reward {spec!r}: {module_name} has no callable {attr!r}.")
    return func


def build_reward(name: str, **settings) -> Callable:
    """One reward by name (see [`REWARDS`]) or dotted path; `settings` go to the reward's constructor (ignored,
    with a warning, for a dotted-path callable, which is used as it is)."""
    if name in REWARDS:
        return REWARDS[name](**settings)
    func = _load_callable(name)
    if settings:
        raise ValueError(f"Reward {name!r} is a callable from a module; it takes no settings (got {sorted(settings)}).")
    return func


def build_rewards(names: Sequence[str], settings: dict[str, dict] | None = None) -> list[Callable]:
    """The recipe's `reward_funcs` as callables; `settings` maps a reward name to its constructor arguments."""
    if not names:
        raise ValueError(f"Stage 3 needs at least one reward in reward_funcs (one of {sorted(REWARDS)} or "
                         "'package.module:function').")
    settings = settings or {}
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(f"Reward settings given for {unknown}, which are not in reward_funcs {list(names)}.")
    return [build_reward(name, **settings.get(name, {})) for name in names]
