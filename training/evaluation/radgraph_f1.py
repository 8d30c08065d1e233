"""RadGraph-F1 (Delbrouck et al., 2022) through the maintained `radgraph` package, with a local model folder.

The package's `RadGraph` annotates reports (entities and relations) and its `compute_reward` turns a pair of
annotations into F1 at three levels: `simple` (entities: tokens + label), `partial` (entities + whether they have
a relation; the "RG_ER" that LLaVA-Rad, MAIRA-2 and ReXrank call RadGraph-F1) and `complete` (entities and every
relation). We never download: the user passes the folder of a released model (`config.json`, `vocabulary/`,
`weights.th`, as in the package's `radgraph.tar.gz` / `radgraph-xl.tar.gz`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = [
    "RADGRAPH_LEVELS",
    "check_radgraph_folder",
    "check_radgraph_runtime",
    "radgraph_pair_f1",
    "radgraph_f1_from_annotations",
    "RadGraphScorer",
]

RADGRAPH_LEVELS = ("simple", "partial", "complete")


def check_radgraph_folder(model_dir) -> Path:
    """The model folder, or a clear error naming what is missing."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"RadGraph model folder {model_dir} does not exist. RadGraph-F1 needs a released RadGraph model extracted "
            "locally (config.json, vocabulary/, weights.th; nothing is downloaded); pass it with --radgraph-model."
        )
    missing = [n for n in ("config.json", "vocabulary", "weights.th") if not (model_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"RadGraph model folder {model_dir} lacks {', '.join(missing)} (expected the "
                                "content of the package's radgraph.tar.gz or radgraph-xl.tar.gz).")
    return model_dir


def radgraph_pair_f1(hypothesis: dict, reference: dict) -> dict[str, float]:
    """F1 of one hypothesis/reference pair of RadGraph annotations (`{"entities": {...}}`), at every level,
    computed by the `radgraph` package's `compute_reward`."""
    from radgraph.rewards import compute_reward

    simple, partial, complete = compute_reward(hypothesis, reference, "all")
    return {"simple": float(simple), "partial": float(partial), "complete": float(complete)}


def check_radgraph_runtime() -> None:
    """The `radgraph` package (0.1.18, the newest release) tokenizes with `tokenizer.encode_plus`, which
    transformers 5 removed: say so plainly instead of failing deep inside the package."""
    from transformers import PreTrainedTokenizerBase

    if not hasattr(PreTrainedTokenizerBase, "encode_plus"):
        import transformers

        raise RuntimeError(
            f"The installed radgraph package cannot annotate reports with transformers {transformers.__version__}: "
            "it calls tokenizer.encode_plus, which transformers 5 removed. Annotate the reports with radgraph in an "
            "environment with transformers<5 and score the saved annotations with "
            "training.evaluation.radgraph_f1.radgraph_f1_from_annotations."
        )


def radgraph_f1_from_annotations(hypotheses: list[dict | None], references: list[dict | None]) -> dict[str, list]:
    """Per-report RadGraph-F1 at each level from RadGraph annotations (the package's output per report); a missing
    annotation (`None`, an empty report) scores 0, as in the package's `F1RadGraph`."""
    if len(hypotheses) != len(references):
        raise ValueError(f"Got {len(hypotheses)} hypothesis annotations but {len(references)} reference annotations.")
    per_report = {f"RadGraph-F1-{level}": [] for level in RADGRAPH_LEVELS}
    for i, (h, r) in enumerate(zip(hypotheses, references)):
        if h is None or r is None:
            f1 = dict.fromkeys(RADGRAPH_LEVELS, 0.0)
        else:
            if not isinstance(h, dict) or "entities" not in h or not isinstance(r, dict) or "entities" not in r:
                raise ValueError(f"Report {i}: a RadGraph annotation is a dict with an 'entities' mapping.")
            f1 = radgraph_pair_f1(h, r)
        for level in RADGRAPH_LEVELS:
            per_report[f"RadGraph-F1-{level}"].append(f1[level])
    return per_report


class RadGraphScorer:
    """Annotate reports with a local RadGraph model and score pairs.

    Args:
        model_dir: Local model folder (see [`check_radgraph_folder`]).
        model_type (`str`, *optional*): The package's model type the folder holds; read from the folder name when
            it is one of them, else `"radgraph-xl"`.
        batch_size (`int`): Reports per forward pass.
    """

    def __init__(self, model_dir, model_type: str | None = None, batch_size: int = 8):
        model_dir = check_radgraph_folder(model_dir).resolve()
        known = ("radgraph", "radgraph-xl", "modern-radgraph-xl", "echograph")
        self.model_type = model_type or (model_dir.name if model_dir.name in known else "radgraph-xl")
        self.model_dir = model_dir
        try:
            from radgraph import RadGraph
        except ImportError as error:
            raise ImportError("RadGraph-F1 needs the `radgraph` package: `pip install radgraph` (or the `radgraph` extra of rrg-cxr).") from error
        check_radgraph_runtime()

        # the package looks for `<cache dir>/<model_type>` and downloads when it is absent: point it at a
        # temporary cache holding a link to the user's folder, so it can only load that
        self._cache = tempfile.TemporaryDirectory(prefix="rrg-radgraph-")
        os.symlink(model_dir, Path(self._cache.name) / self.model_type)
        self.model = RadGraph(model_type=self.model_type, model_cache_dir=self._cache.name, batch_size=batch_size,
                              cuda=-1)

    def annotate(self, reports: list[str]) -> list[dict]:
        out = self.model(list(reports))
        return [out[str(i)] for i in range(len(reports))]

    def score(self, predictions: list[str], references: list[str]) -> dict:
        """Per-report RadGraph-F1 at each level (an empty report scores 0, as in the package's `F1RadGraph`)."""
        keep = [i for i, (p, r) in enumerate(zip(predictions, references, strict=True)) if p.strip() and r.strip()]
        annotations = self.annotate([predictions[i] for i in keep] + [references[i] for i in keep]) if keep else []
        hyp, ref = [None] * len(predictions), [None] * len(predictions)
        for j, i in enumerate(keep):
            hyp[i], ref[i] = annotations[j], annotations[j + len(keep)]
        per_report = radgraph_f1_from_annotations(hyp, ref)
        return {"per_report": per_report, "radgraph_model": str(self.model_dir), "radgraph_model_type": self.model_type,
                "radgraph_settings": "radgraph package compute_reward; partial = RG_ER (the usual RadGraph-F1)"}
