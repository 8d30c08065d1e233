"""The structured ground truth of a synthetic study: which findings it has, where and how severe."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FINDING_NAMES", "sample_findings"]

FINDING_NAMES = (
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "consolidation",
    "edema",
    "atelectasis",
    "nodule",
    "support_device",
    "fracture",
)

# Laterality and lung zones the findings are sampled over (the renderer and the report writer use the same names).
_SIDES = ("left", "right")
_ZONES = ("upper", "middle", "lower")


def sample_findings(rng: np.random.Generator, normal_fraction: float = 0.35) -> list[dict[str, Any]]:
    """
    Samples the structured ground truth of one study.

    About `normal_fraction` of the studies have no pathology (a few of them still carry a support
    device); the others have one or more findings with co-occurrence that mimics real data (edema
    comes with cardiomegaly and bilateral effusions, devices with sicker patients).

    Args:
        rng (`np.random.Generator`):
            Random generator; the result is a pure function of its state.
        normal_fraction (`float`, *optional*, defaults to 0.35):
            Probability that a study has no pathology.

    Returns:
        `list[dict]`: one JSON-serialisable dict per finding, each with a `"name"` from
        `FINDING_NAMES` and its attributes (`side`, `zone`, `severity`, ...).
    """
    if not 0.0 <= normal_fraction <= 1.0:
        raise ValueError(f"normal_fraction must be in [0, 1], got {normal_fraction}.")
    findings: list[dict[str, Any]] = []
    if rng.random() < normal_fraction:
        if rng.random() < 0.06:
            findings.append(_sample_device(rng))
        return findings

    while not findings:
        if rng.random() < 0.18:
            findings.append({"name": "edema", "severity": str(rng.choice(["mild", "moderate", "severe"]))})
        has_edema = bool(findings)
        if rng.random() < (0.65 if has_edema else 0.28):
            findings.append(
                {"name": "cardiomegaly", "severity": str(rng.choice(["mild", "moderate", "severe"], p=[0.45, 0.35, 0.2]))}
            )
        if rng.random() < (0.55 if has_edema else 0.28):
            side = "bilateral" if (has_edema and rng.random() < 0.7) else str(rng.choice(["left", "right", "bilateral"], p=[0.35, 0.4, 0.25]))
            findings.append(
                {"name": "pleural_effusion", "side": side, "severity": str(rng.choice(["small", "moderate", "large"], p=[0.45, 0.35, 0.2]))}
            )
        if rng.random() < 0.14:
            findings.append(
                {"name": "pneumothorax", "side": str(rng.choice(_SIDES)), "severity": str(rng.choice(["small", "moderate", "large"], p=[0.4, 0.35, 0.25]))}
            )
        if rng.random() < 0.3:
            kind = str(rng.choice(["consolidation", "opacity"]))
            pneumonia = rng.choice(["positive", "uncertain", "none"], p=[0.35, 0.35, 0.3])
            side = str(rng.choice(_SIDES))
            findings.append(
                {
                    "name": "consolidation",
                    "kind": kind,
                    "side": side,
                    "zone": _visible_zone(str(rng.choice(_ZONES, p=[0.25, 0.25, 0.5])), side, findings),
                    "pneumonia": None if pneumonia == "none" else str(pneumonia),
                }
            )
        if rng.random() < 0.2:
            findings.append(
                {
                    "name": "atelectasis",
                    "side": str(rng.choice(["left", "right", "bilateral"], p=[0.4, 0.3, 0.3])),
                    "certainty": str(rng.choice(["positive", "uncertain"], p=[0.7, 0.3])),
                }
            )
        if rng.random() < 0.1:
            kind = str(rng.choice(["nodule", "mass"], p=[0.7, 0.3]))
            size = float(np.round(rng.uniform(0.8, 2.5) if kind == "nodule" else rng.uniform(3.5, 6.0), 1))
            side = str(rng.choice(_SIDES))
            findings.append(
                {"name": "nodule", "kind": kind, "side": side, "zone": _visible_zone(str(rng.choice(_ZONES)), side, findings),
                 "size_cm": size}
            )
        if rng.random() < 0.1:
            findings.append(
                {
                    "name": "fracture",
                    "side": str(rng.choice(_SIDES)),
                    "rib": int(rng.integers(4, 8)),
                    "age": str(rng.choice(["acute", "healed"], p=[0.6, 0.4])),
                }
            )
    if rng.random() < 0.3:
        findings.append(_sample_device(rng))
    return findings


def _visible_zone(zone: str, side: str, findings: list[dict[str, Any]]) -> str:
    """A lower-zone lesion on a side with a pleural effusion is placed in the middle zone: under the fluid it would
    not show on the film (nor at the demo's 64 px), and the benchmark's labels must be readable from its images."""
    under_fluid = any(f["name"] == "pleural_effusion" and f["side"] in (side, "bilateral") for f in findings)
    return "middle" if zone == "lower" and under_fluid else zone


def _sample_device(rng: np.random.Generator) -> dict[str, Any]:
    devices = [str(d) for d in ("endotracheal_tube", "central_line", "pacemaker") if rng.random() < 0.45]
    if not devices:
        devices = [str(rng.choice(["endotracheal_tube", "central_line", "pacemaker"]))]
    return {
        "name": "support_device",
        "devices": devices,
        "line_side": str(rng.choice(_SIDES, p=[0.3, 0.7])),
        "pacemaker_side": str(rng.choice(_SIDES, p=[0.85, 0.15])),
    }
