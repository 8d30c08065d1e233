"""Scoring protocols: named lists of registry entries with their settings, nothing else.

- `r2gen` (the default of `rrg evaluate`): BLEU-1..4, METEOR, ROUGE-L, CIDEr on R2Gen-cleaned text (pycocoevalcap's
  scorers), every named clinical-efficacy variant, and BERTScore / RadGraph-F1 when their model folders are given.
- `rexrank`: the columns of the ReXrank leaderboard (CXR-Report-Metric's code), under names that state the protocol:
  `rexrank/BLEU-2` (per-report BLEU-2 averaged over reports) and, when their folders are given,
  `rexrank/BERTScore-F1`, `rexrank/SembScore`, `RadGraph-F1-{entity,relation,combined}/radgraph`,
  `rexrank/RadCliQ-v1`, `rexrank/1/RadCliQ-v1`, `rexrank/GREEN` and `rexrank/RaTEScore`.

Adding a metric to a protocol is adding a [`ProtocolEntry`] to its list; `optional=True` entries are skipped when
their model folder is not given, every other entry fails with an error naming the flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ProtocolEntry", "Protocol", "PROTOCOLS", "get_protocol"]


@dataclass(frozen=True)
class ProtocolEntry:
    """One registry entry in a protocol.

    Attributes:
        metric (`str`): Registry name.
        settings (`dict`): Settings passed to the metric's `compute` (they override the run's settings).
        optional (`bool`): Skip the entry when its model folder is not given (instead of failing).
    """

    metric: str
    settings: dict = field(default_factory=dict)
    optional: bool = False


@dataclass(frozen=True)
class Protocol:
    """A named list of registry entries.

    Attributes:
        name (`str`): Protocol name (`--protocol`).
        entries (`tuple[ProtocolEntry, ...]`): In metrics.json order.
        description (`str`): What the protocol reproduces.
    """

    name: str
    entries: tuple[ProtocolEntry, ...]
    description: str = ""


PROTOCOLS: dict[str, Protocol] = {
    "r2gen": Protocol(
        "r2gen",
        (
            ProtocolEntry("bleu"),
            ProtocolEntry("meteor"),
            ProtocolEntry("rouge_l"),
            ProtocolEntry("cider"),
            ProtocolEntry("clinical_efficacy"),
            ProtocolEntry("bertscore", optional=True),
            ProtocolEntry("radgraph", optional=True),
        ),
        "R2Gen / R2GenCMN tables: pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L, CIDEr on R2Gen-cleaned reports; named "
        "CheXpert clinical-efficacy variants; BERTScore and RadGraph-F1 when their model folders are given",
    ),
    "rexrank": Protocol(
        "rexrank",
        (
            ProtocolEntry("rexrank/BLEU-2"),
            ProtocolEntry("rexrank/BERTScore", optional=True),
            ProtocolEntry("rexrank/SembScore", optional=True),
            ProtocolEntry("rexrank/RadGraph", optional=True),
            ProtocolEntry("rexrank/RadCliQ-v1", optional=True),
            ProtocolEntry("rexrank/1/RadCliQ-v1", optional=True),
            ProtocolEntry("rexrank/GREEN", optional=True),
            ProtocolEntry("rexrank/RaTEScore", optional=True),
        ),
        "ReXrank leaderboard (CXR-Report-Metric): per-report BLEU-2 (fast-bleu, i.e. nltk's sentence_bleu with "
        "weights (1/2, 1/2) and smoothing method 1) on lower-cased reports with '.' split off, averaged over reports; "
        "BERTScore-F1 (distilroberta-base layer 5, baseline-rescaled, no idf), SembScore (CheXbert embedding cosine), "
        "RadGraph entity/relation/combined on the original model, RadCliQ-v1 and 1/RadCliQ-v1, GREEN and RaTEScore (RadEval's "
        "code on local models) when their folders are given",
    ),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`, or a clear error listing the known ones."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown scoring protocol {name!r}; choose one of {sorted(PROTOCOLS)}.")
    return PROTOCOLS[name]
