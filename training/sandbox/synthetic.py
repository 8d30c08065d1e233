"""A synthetic chest X-ray report-generation benchmark whose reports are determined by the image.

No real chest radiographs can be downloaded on our machines (and MIMIC-CXR is credentialed), so the
demo, the tests and the benchmarks use a data set generated here. It keeps the task *real*: every
finding in a report has a visual signature in the image, so a model that ignores the image scores
poorly and one that reads it scores well.

Each study is:

* a procedurally rendered frontal (PA) radiograph (and optionally a lateral view): body outline, two
  lung fields with vascular markings, heart and mediastinum, trachea, spine, ribs, clavicles,
  diaphragm and gastric bubble, with random anatomy jitter (size, rotation, position, exposure,
  noise);
* structured ground truth (`findings`): cardiomegaly, pleural effusion, pneumothorax,
  consolidation / lung opacity (optionally pneumonia), pulmonary edema, atelectasis, nodule / mass,
  support devices (endotracheal tube, central line, pacemaker) and rib fracture, with laterality,
  zone and severity where they apply;
* a report written from that ground truth in radiology style (FINDINGS and IMPRESSION sections,
  varied phrasing, explicit negatives);
* the 14 CheXpert labels of the report (1 / 0 / -1 / None, see `training.data.chexpert`).

Image convention: as on a real PA film, the patient's right is on the image's **left**. So a
"right pleural effusion" brightens the lower-left corner of the lung fields in the image.

Everything is deterministic from a seed: every study gets its own `numpy.random.SeedSequence`
(seed, split, index), so the output does not depend on the number of worker processes.

Output layout (R2Gen `annotation.json`, as used for IU X-Ray and MIMIC-CXR)::

    out/
      annotation.json          {"train": [...], "val": [...], "test": [...]}
      images/train/train_000000/0.png  (frontal)  1.png (lateral, with --lateral)

Each entry has `id`, `study_id`, `subject_id`, `report`, `image_path` (relative to `out/images`),
`chexpert` ({observation: 1 / 0 / -1 / null}) and `findings` (the structured ground truth).

Usage::

    python -m training.sandbox.synthetic --out data/synthetic --num-train 3000 --num-val 300 \\
        --num-test 300 --image-size 128 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.chexpert import CHEXPERT_OBSERVATIONS, NEGATIVE, NOT_MENTIONED, POSITIVE, UNCERTAIN
from ..fileio import atomic_dir

__all__ = [
    "FINDING_NAMES",
    "SyntheticReport",
    "sample_findings",
    "render_study",
    "write_report",
    "chexpert_labels",
    "generate_study",
    "generate_synthetic_dataset",
    "main",
]

logger = logging.getLogger(__name__)

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

# Split names as R2Gen writes them in annotation.json.
_SPLITS = ("train", "val", "test")
_SIDES = ("left", "right")
_ZONES = ("upper", "middle", "lower")
_ORDINALS = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}
# Rendered posterior ribs are ribs 2..11, top to bottom.
_FIRST_RIB = 2
_NUM_RIBS = 10


# --------------------------------------------------------------------------------------------
# Ground truth sampling
# --------------------------------------------------------------------------------------------
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
            findings.append(
                {
                    "name": "consolidation",
                    "kind": kind,
                    "side": str(rng.choice(_SIDES)),
                    "zone": str(rng.choice(_ZONES, p=[0.25, 0.25, 0.5])),
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
            findings.append(
                {"name": "nodule", "kind": kind, "side": str(rng.choice(_SIDES)), "zone": str(rng.choice(_ZONES)), "size_cm": size}
            )
        if rng.random() < 0.07:
            findings.append(
                {
                    "name": "fracture",
                    "side": str(rng.choice(_SIDES)),
                    "rib": int(rng.integers(5, 10)),
                    "age": str(rng.choice(["acute", "healed"], p=[0.6, 0.4])),
                }
            )
    if rng.random() < 0.3:
        findings.append(_sample_device(rng))
    return findings


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


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _sig(z: np.ndarray) -> np.ndarray:
    # A linear ramp over z in [-1, 1]: the anti-aliased edge of a mask, several times cheaper than tanh.
    return np.clip(0.5 + 0.5 * z, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: random values on a coarse grid, bicubic upsampled."""
    coarse = rng.standard_normal((grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32) / 1.5


def _polyline_distance(x: np.ndarray, y: np.ndarray, points: Sequence[tuple[float, float]]) -> np.ndarray:
    dist = np.full(x.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(x - x0 - t * dx, y - y0 - t * dy))
    return dist


def _sample_anatomy(rng: np.random.Generator) -> dict[str, float]:
    # Sampled first and in a fixed order, so one seed gives the same patient whatever the findings.
    return {
        "shift_x": rng.uniform(-0.05, 0.05),
        "shift_y": rng.uniform(-0.05, 0.05),
        "rotation": np.deg2rad(rng.uniform(-4.0, 4.0)),
        "scale": rng.uniform(0.9, 1.04),
        "aspect": rng.uniform(0.95, 1.05),
        "lung_w": rng.uniform(0.31, 0.36),
        "lung_h": rng.uniform(0.64, 0.72),
        "lung_y": rng.uniform(-0.06, 0.0),
        "dia_right": rng.uniform(0.44, 0.52),
        "dia_left_drop": rng.uniform(0.02, 0.07),
        "ctr": rng.uniform(0.40, 0.47),
        "heart_x": rng.uniform(0.05, 0.1),
        "heart_h": rng.uniform(0.23, 0.28),
        "rib_spacing": rng.uniform(0.115, 0.13),
        "rib_top": rng.uniform(-0.72, -0.66),
        "exposure": rng.uniform(1.0, 1.4),
        "gamma": rng.uniform(0.85, 1.2),
        "noise": rng.uniform(0.012, 0.03),
        "body_w": rng.uniform(0.86, 0.96),
    }


class _Canvas:
    """Normalised coordinates of one view: x in [-1, 1] left to right, y in [-1, 1] top to bottom."""

    def __init__(self, size: int, anatomy: dict[str, float]):
        c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        px, py = np.meshgrid(c, c)
        px, py = px - anatomy["shift_x"], py - anatomy["shift_y"]
        cos, sin = np.cos(anatomy["rotation"]), np.sin(anatomy["rotation"])
        self.x = ((cos * px + sin * py) / (anatomy["scale"] * anatomy["aspect"])).astype(np.float32)
        self.y = ((-sin * px + cos * py) / anatomy["scale"]).astype(np.float32)
        self.size = size
        # Edge softness: about one pixel, never sharper than the finest structure.
        self.edge = max(2.0 / size, 0.008)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        x, y = self.x - cx, self.y - cy
        if angle:
            c, s = np.cos(angle), np.sin(angle)
            x, y = c * x + s * y, -s * x + c * y
        r = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
        return _sig((1.0 - r) * min(rx, ry) / self.edge)

    def line(self, points: Sequence[tuple[float, float]], width: float) -> np.ndarray:
        width = max(width, 1.6 / self.size)
        return _sig((width / 2 - _polyline_distance(self.x, self.y, points)) / (self.edge * 0.5))


def _lung_geometry(anatomy: dict[str, float], side: str) -> tuple[float, float, float, float, float]:
    """Centre x, centre y, half width, half height and diaphragm level of one lung (patient side)."""
    sign = -1.0 if side == "right" else 1.0  # patient right = image left
    lx = sign * (0.38 + anatomy["lung_w"] * 0.2)
    dia = anatomy["dia_right"] + (anatomy["dia_left_drop"] if side == "left" else 0.0)
    return lx, anatomy["lung_y"], anatomy["lung_w"], anatomy["lung_h"], dia


def _lung_mask(cv: _Canvas, lx: float, ly: float, lw: float, lh: float, dia: float) -> np.ndarray:
    v = (cv.y - ly) / lh
    # Narrow apex, broad base.
    taper = 1.0 - 0.35 * np.clip(-v, 0.0, 1.0) ** 2
    u = (cv.x - lx) / (lw * taper)
    r = np.sqrt(u * u + v * v)
    shape = _sig((1.0 - r) * lw / cv.edge)
    dome = dia - 0.12 * np.clip(1.0 - ((cv.x - lx) / lw) ** 2, 0.0, 1.0)
    return shape * _sig((dome - cv.y) / cv.edge)


def _zone_centre(anatomy: dict[str, float], side: str, zone: str) -> tuple[float, float]:
    lx, ly, lw, lh, dia = _lung_geometry(anatomy, side)
    lateral = -1.0 if side == "right" else 1.0
    top = ly - lh * 0.85
    bottom = dia - 0.1
    frac = {"upper": 0.2, "middle": 0.5, "lower": 0.8}[zone]
    return lx + lateral * lw * 0.15, top + frac * (bottom - top)


def _render_frontal(size: int, anatomy: dict[str, float], findings: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
    cv = _Canvas(size, anatomy)
    x, y = cv.x, cv.y
    # Texture fields are drawn before any finding-specific randomness.
    markings = _smooth_noise(rng, size, 14) + 0.5 * _smooth_noise(rng, size, 28)
    patchy = _smooth_noise(rng, size, 10)
    quantum = rng.standard_normal((size, size)).astype(np.float32)
    frng = np.random.default_rng(rng.integers(2**63))

    # Body: soft tissue thins towards the lateral edges.
    bw = anatomy["body_w"]
    torso = _sig((1.0 - ((x / bw) ** 4 + ((y - 0.3) / 1.2) ** 4)) / (cv.edge * 4))
    neck = _sig((0.24 - np.abs(x)) / cv.edge) * _sig((-0.55 - y) / cv.edge)
    body = np.maximum(torso, neck) * (0.75 + 0.25 * np.clip(1.0 - (x / bw) ** 2, 0.0, 1.0))
    att = body.copy()

    lungs = {}
    for side in _SIDES:
        lungs[side] = _lung_mask(cv, *_lung_geometry(anatomy, side))
    lung = np.maximum(lungs["left"], lungs["right"])

    ctr = anatomy["ctr"]
    for f in findings:
        if f["name"] == "cardiomegaly":
            ctr = {"mild": 0.57, "moderate": 0.62, "severe": 0.68}[f["severity"]]
    thorax_half = 0.38 + anatomy["lung_w"] * 1.2
    hw = ctr * thorax_half
    heart = cv.ellipse(anatomy["heart_x"] + (hw - 0.32) * 0.35, anatomy["dia_right"] - anatomy["heart_h"] + 0.08, hw, anatomy["heart_h"], angle=0.25)
    medi_w = 0.1 + 0.03 * np.clip(y + 0.2, 0.0, 1.0)
    mediastinum = _sig((medi_w - np.abs(x - 0.02)) / cv.edge) * _sig((y + 0.95) / cv.edge) * _sig((0.3 - y) / cv.edge)
    mediastinum = np.maximum(mediastinum, cv.ellipse(0.12, -0.2, 0.08, 0.07))
    solid = np.maximum(heart, mediastinum)
    air = lung * (1.0 - solid)

    # Vascular markings: stronger near the hila, fading to the periphery.
    hilum_dist = np.minimum(np.hypot(x + 0.2, y + 0.02), np.hypot(x - 0.22, y))
    vessel = np.clip(0.55 - hilum_dist, 0.0, None) * 1.1 + 0.1 * (markings > 0.3)
    marking_strength = np.clip(vessel * (0.7 + 0.6 * markings), 0.0, 0.6)
    ptx_extra = np.zeros_like(x)
    for f in findings:
        if f["name"] == "pneumothorax":
            lx, ly, lw, lh, dia = _lung_geometry(anatomy, f["side"])
            shrink = {"small": 0.82, "moderate": 0.68, "large": 0.52}[f["severity"]]
            medial = lx * (1 - shrink) * -0.9  # collapse towards the hilum
            collapsed = _lung_mask(cv, lx + medial, ly + lh * (1 - shrink) * 0.5, lw * shrink, lh * shrink, dia - 0.02)
            rim = np.clip(lungs[f["side"]] - collapsed, 0.0, 1.0)
            marking_strength = marking_strength * (1.0 - rim)
            ptx_extra -= 0.2 * rim
            edge_band = collapsed * (1.0 - _lung_mask(cv, lx + medial, ly + lh * (1 - shrink) * 0.5, lw * shrink - 0.02, lh * shrink - 0.02, dia - 0.04))
            ptx_extra += 0.3 * edge_band * lungs[f["side"]]
            ptx_extra += 0.12 * collapsed * lungs[f["side"]]
    att -= 0.78 * air * (1.0 - marking_strength)
    att += ptx_extra * (1.0 - solid)
    att += 0.1 * heart

    # Trachea, spine, gastric bubble.
    trachea = _sig((0.035 - np.abs(x - 0.01)) / cv.edge) * _sig((-0.2 - y) / cv.edge) * _sig((y + 1.0) / cv.edge)
    att -= 0.35 * trachea
    spine = _sig((0.08 - np.abs(x - 0.01)) / cv.edge) * (0.8 + 0.2 * np.cos(y * 28.0))
    att += 0.18 * spine * body
    dia_left = anatomy["dia_right"] + anatomy["dia_left_drop"]
    att -= 0.35 * cv.ellipse(0.38, dia_left + 0.12, 0.12, 0.06) * (1 - lungs["left"])

    # Ribs: arcs from the spine that rise slightly and fall towards the lateral chest wall.
    fracture = next((f for f in findings if f["name"] == "fracture"), None)
    ribs = np.zeros_like(x)
    for i in range(_NUM_RIBS):
        y0 = anatomy["rib_top"] + i * anatomy["rib_spacing"]
        for side, sign in (("right", -1.0), ("left", 1.0)):
            a = sign * x  # lateral distance on this side
            yc = y0 - 0.04 + 0.55 * (a - 0.2) ** 2
            extent = _sig((a - 0.07) / cv.edge) * _sig((0.86 - 0.1 * (i < 2) - a) / cv.edge)
            if fracture is not None and fracture["side"] == side and fracture["rib"] - _FIRST_RIB == i:
                # Displaced fragment with a visible gap; a healed fracture shows callus instead.
                af = 0.58
                if fracture["age"] == "acute":
                    yc = yc + 0.045 * _sig((a - af) / cv.edge)
                    extent = extent * (1.0 - _sig((0.035 - np.abs(a - af)) / cv.edge))
                else:
                    ribs += 0.25 * cv.ellipse(sign * af, y0 - 0.04 + 0.55 * (af - 0.2) ** 2, 0.04, 0.035)
            band = _sig((0.02 - np.abs(y - yc)) / cv.edge)
            ribs += band * extent
    att += 0.09 * np.clip(ribs, 0.0, 1.5) * body
    for sign in (-1.0, 1.0):
        clav = cv.line([(sign * 0.07, -0.66), (sign * 0.35, -0.72), (sign * 0.62, -0.8)], 0.045)
        att += 0.3 * clav

    # Findings.
    for f in findings:
        name = f["name"]
        if name == "pleural_effusion":
            sides = _SIDES if f["side"] == "bilateral" else (f["side"],)
            for side in sides:
                lx, ly, lw, lh, dia = _lung_geometry(anatomy, side)
                depth = {"small": 0.2, "moderate": 0.4, "large": 0.65}[f["severity"]] * (dia - (ly - lh))
                lateral = np.clip((x - lx) * (1 if side == "left" else -1) / lw, -1.0, 1.0)
                meniscus = dia - depth - 0.12 * (lateral + 1.0) * (0.5 + depth)
                fluid = lungs[side] * _sig((y - meniscus) / (cv.edge * 3))
                att += 0.62 * fluid * (1.0 - 0.5 * heart)
        elif name == "consolidation":
            cx, cy = _zone_centre(anatomy, f["side"], f["zone"])
            blob = np.zeros_like(x)
            for _ in range(4):
                bx, by = cx + frng.normal(0, 0.06), cy + frng.normal(0, 0.05)
                s = frng.uniform(0.07, 0.11)
                blob += np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * s * s))
            blob = np.clip(blob, 0.0, 1.0) * (0.75 + 0.25 * patchy)
            amp = 0.6 if f["kind"] == "consolidation" else 0.42
            att += amp * blob * lungs[f["side"]]
        elif name == "edema":
            amp = {"mild": 0.16, "moderate": 0.28, "severe": 0.42}[f["severity"]]
            haze = np.exp(-(hilum_dist**2) / (2 * 0.22**2)) * (0.8 + 0.3 * markings)
            att += amp * haze * lung + 0.06 * amp / 0.16 * lung
        elif name == "atelectasis":
            sides = _SIDES if f["side"] == "bilateral" else (f["side"],)
            for side in sides:
                lx, ly, lw, lh, dia = _lung_geometry(anatomy, side)
                by = dia - 0.17 + frng.uniform(-0.02, 0.02)
                band = cv.ellipse(lx + frng.uniform(-0.05, 0.05), by, lw * 0.55, 0.028, angle=frng.uniform(-0.2, 0.2))
                att += 0.55 * band * lungs[side]
        elif name == "nodule":
            cx, cy = _zone_centre(anatomy, f["side"], f["zone"])
            r = 0.012 * f["size_cm"] + 0.015
            att += 0.5 * cv.ellipse(cx + frng.uniform(-0.05, 0.05), cy + frng.uniform(-0.03, 0.03), r, r * 0.9) * lungs[f["side"]]
        elif name == "support_device":
            att += _render_devices(cv, f, anatomy)
    att = np.clip(att, 0.0, None)

    k = anatomy["exposure"]
    img = (1.0 - np.exp(-k * att)) / (1.0 - np.exp(-k * 2.0))
    img = np.clip(img, 0.0, 1.0) ** anatomy["gamma"]
    img = img + anatomy["noise"] * quantum
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _render_devices(cv: _Canvas, f: dict, anatomy: dict[str, float]) -> np.ndarray:
    out = np.zeros_like(cv.x)
    devices = f["devices"]
    if "endotracheal_tube" in devices:
        out += 0.9 * cv.line([(0.01, -1.05), (0.01, -0.34)], 0.03)
    if "central_line" in devices:
        s = -1.0 if f["line_side"] == "right" else 1.0
        out += 0.9 * cv.line([(s * 0.58, -0.8), (s * 0.3, -0.62), (s * 0.08, -0.45), (-0.06, -0.3), (-0.06, -0.08)], 0.022)
    if "pacemaker" in devices:
        s = -1.0 if f["pacemaker_side"] == "right" else 1.0
        gx, gy = s * 0.5, -0.62
        out += 1.6 * cv.ellipse(gx, gy, 0.1, 0.07, angle=0.2 * s)
        tip_y = anatomy["dia_right"] - 0.06
        out += 0.9 * cv.line([(gx, gy), (s * 0.3, -0.55), (-0.04, -0.38), (-0.06, -0.05), (0.1, tip_y - 0.06), (0.2, tip_y)], 0.02)
    return out


def _render_lateral(size: int, anatomy: dict[str, float], findings: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
    # Anterior is the image's left. A simpler projection: one lung field, heart anterior, spine posterior.
    cv = _Canvas(size, anatomy)
    x, y = cv.x, cv.y
    quantum = rng.standard_normal((size, size)).astype(np.float32)
    markings = _smooth_noise(rng, size, 12)
    frng = np.random.default_rng(rng.integers(2**63))

    body = cv.ellipse(0.0, 0.25, 0.8, 1.25) * 0.9
    att = body.copy()
    dia = anatomy["dia_right"] + 0.03
    lung = cv.ellipse(0.05, -0.05, 0.55, 0.62) * _sig((dia - 0.1 * np.clip(1 - (x / 0.55) ** 2, 0, 1) - y) / cv.edge)
    ctr = anatomy["ctr"]
    for f in findings:
        if f["name"] == "cardiomegaly":
            ctr = {"mild": 0.57, "moderate": 0.62, "severe": 0.68}[f["severity"]]
    heart = cv.ellipse(-0.28 + (ctr - 0.44) * 0.3, dia - 0.22, 0.28 * ctr / 0.44, 0.26, angle=-0.4)
    air = lung * (1.0 - heart)
    att -= 0.6 * air * (1.0 - 0.25 * np.clip(markings, 0, 1))
    spine_x = 0.6
    for i in range(12):
        att += 0.3 * cv.ellipse(spine_x, -0.85 + i * 0.15, 0.09, 0.055)
    att -= 0.3 * cv.line([(-0.05, -1.1), (0.02, -0.3)], 0.06)  # trachea

    for f in findings:
        name = f["name"]
        if name == "pleural_effusion":
            depth = {"small": 0.12, "moderate": 0.3, "large": 0.5}[f["severity"]] * (1.5 if f["side"] == "bilateral" else 1.0)
            meniscus = dia - depth - 0.25 * np.clip(x, 0.0, 1.0)
            att += 0.5 * lung * _sig((y - meniscus) / (cv.edge * 3)) * _sig((x + 0.1) / 0.05)
        elif name == "consolidation":
            cy = {"upper": -0.4, "middle": -0.05, "lower": 0.25}[f["zone"]]
            blob = np.exp(-((x - frng.uniform(-0.1, 0.3)) ** 2 + (y - cy) ** 2) / (2 * 0.12**2))
            att += (0.5 if f["kind"] == "consolidation" else 0.35) * blob * lung
        elif name == "edema":
            amp = {"mild": 0.12, "moderate": 0.22, "severe": 0.34}[f["severity"]]
            att += amp * np.exp(-((x - 0.05) ** 2 + y**2) / (2 * 0.25**2)) * lung
        elif name == "atelectasis":
            att += 0.45 * cv.ellipse(0.15, dia - 0.2, 0.3, 0.025, angle=0.15) * lung
        elif name == "nodule":
            cy = {"upper": -0.4, "middle": -0.05, "lower": 0.25}[f["zone"]]
            r = 0.012 * f["size_cm"] + 0.015
            att += 0.5 * cv.ellipse(frng.uniform(-0.1, 0.3), cy, r, r) * lung
        elif name == "support_device":
            if "endotracheal_tube" in f["devices"]:
                att += 0.9 * cv.line([(-0.06, -1.05), (-0.01, -0.4)], 0.03)
            if "pacemaker" in f["devices"]:
                att += 1.6 * cv.ellipse(-0.6, -0.6, 0.06, 0.1)
                att += 0.9 * cv.line([(-0.6, -0.6), (-0.2, -0.45), (-0.1, 0.0), (-0.3, dia - 0.1)], 0.02)
            if "central_line" in f["devices"]:
                att += 0.9 * cv.line([(-0.3, -0.85), (-0.12, -0.5), (-0.1, -0.1)], 0.022)
    att = np.clip(att, 0.0, None)
    k = anatomy["exposure"]
    img = (1.0 - np.exp(-k * att)) / (1.0 - np.exp(-k * 1.8))
    img = np.clip(img, 0.0, 1.0) ** anatomy["gamma"] + anatomy["noise"] * quantum
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_study(
    rng: np.random.Generator | int,
    findings: Sequence[dict[str, Any]],
    image_size: int = 128,
    lateral: bool = False,
) -> list[np.ndarray]:
    """
    Renders the radiograph(s) of one study.

    The patient (anatomy jitter, texture and noise) is drawn from `rng` before anything that
    depends on the findings, so rendering the same seed with different findings gives the same
    patient with and without disease — which is what the renderer tests measure.

    Args:
        rng (`np.random.Generator` or `int`):
            Random generator or seed.
        findings (`Sequence[dict]`):
            Structured ground truth, as returned by [`sample_findings`].
        image_size (`int`, *optional*, defaults to 128):
            Height and width in pixels (at least 32).
        lateral (`bool`, *optional*, defaults to `False`):
            Whether to also render a lateral view.

    Returns:
        `list[np.ndarray]`: `[frontal]` or `[frontal, lateral]`, each a `(image_size, image_size)`
        `uint8` array (bright = dense, patient's right on the image's left).

    Example:

    ```python
    >>> from training.synthetic import render_study
    >>> [frontal] = render_study(0, [{"name": "cardiomegaly", "severity": "moderate"}], image_size=64)
    >>> frontal.shape, frontal.dtype
    ((64, 64), dtype('uint8'))
    ```
    """
    if not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}.")
    for f in findings:
        if not isinstance(f, dict) or f.get("name") not in FINDING_NAMES:
            raise ValueError(f"Unknown finding {f!r}; expected a dict whose 'name' is one of {FINDING_NAMES}.")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    anatomy = _sample_anatomy(rng)
    frontal_rng, lateral_rng = (np.random.default_rng(s) for s in rng.integers(2**63, size=2))
    images = [_render_frontal(int(image_size), anatomy, findings, frontal_rng)]
    if lateral:
        images.append(_render_lateral(int(image_size), anatomy, findings, lateral_rng))
    return images


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
class SyntheticReport(NamedTuple):
    """A written report: the full text, its two sections and its CheXpert labels."""

    text: str
    findings: str
    impression: str
    chexpert: dict[str, int | None]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _lobe(side: str, zone: str) -> str:
    if zone == "middle":
        return "right middle lobe" if side == "right" else "lingula"
    return f"{side} {zone} lobe"


def _side_phrase(side: str) -> str:
    return "bilateral" if side == "bilateral" else side


class _Labels:
    def __init__(self):
        self.values: dict[str, int | None] = {obs: NOT_MENTIONED for obs in CHEXPERT_OBSERVATIONS}

    def set(self, obs: str, value: int) -> None:
        # Positive beats uncertain beats negative, as in the CheXpert labeler's aggregation.
        rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1, NOT_MENTIONED: 0}
        if rank[value] > rank[self.values[obs]]:
            self.values[obs] = value


def write_report(findings: Sequence[dict[str, Any]], rng: np.random.Generator | int) -> SyntheticReport:
    """
    Writes a radiology report (FINDINGS and IMPRESSION) from the structured ground truth.

    Every finding is described with its laterality, zone and severity; absent findings are either
    stated as explicit negatives ("No pleural effusion or pneumothorax.") or not mentioned. The
    CheXpert labels are derived from what the text says, with the labeler's conventions:
    positive (1) for a stated finding, uncertain (-1) for hedged phrasing ("may represent",
    "likely", "concerning for"), negative (0) for an explicit negative, `None` when not mentioned;
    "No Finding" is 1 when no pathology is positive or uncertain (support devices allowed).

    Args:
        findings (`Sequence[dict]`):
            Structured ground truth, as returned by [`sample_findings`].
        rng (`np.random.Generator` or `int`):
            Random generator or seed for the phrasing.

    Returns:
        [`SyntheticReport`]: `text` is `"FINDINGS: ...\\n\\nIMPRESSION: ..."`.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    by_name: dict[str, list[dict]] = {}
    for f in findings:
        if not isinstance(f, dict) or f.get("name") not in FINDING_NAMES:
            raise ValueError(f"Unknown finding {f!r}; expected a dict whose 'name' is one of {FINDING_NAMES}.")
        by_name.setdefault(f["name"], []).append(f)
    labels = _Labels()
    body: list[str] = []
    impression: list[str] = []

    # Devices first, as radiologists do.
    for f in by_name.get("support_device", []):
        for device in f["devices"]:
            if device == "endotracheal_tube":
                s = _pick(rng, ["An endotracheal tube terminates approximately 4 cm above the carina.", "Endotracheal tube is in standard position above the carina.", "The endotracheal tube tip is in appropriate position."])
                impression.append(_pick(rng, ["Endotracheal tube in standard position.", "Support devices in appropriate position."]) if device == f["devices"][0] else "")
            elif device == "central_line":
                s = _pick(rng, [f"A {f['line_side']} internal jugular central venous catheter terminates in the superior vena cava.", f"{_cap(f['line_side'])} sided central line tip projects over the mid superior vena cava."])
                impression.append("Central venous catheter in the superior vena cava." if device == f["devices"][0] else "")
            else:
                s = _pick(rng, [f"A {f['pacemaker_side']} chest wall pacemaker is present with lead terminating in the right ventricle.", f"{_cap(f['pacemaker_side'])} sided pacemaker device with lead in the right ventricle."])
                impression.append("Pacemaker in place." if device == f["devices"][0] else "")
            body.append(s)
        labels.set("Support Devices", POSITIVE)
    impression = [s for s in impression if s]

    lung_sentences: list[str] = []
    for f in by_name.get("consolidation", []):
        where = _lobe(f["side"], f["zone"])
        if f["kind"] == "consolidation":
            core = _pick(rng, [f"There is focal consolidation in the {where}", f"Focal consolidation is seen in the {where}", f"{_cap(where)} consolidation is present"])
            labels.set("Consolidation", POSITIVE)
            short = f"{_cap(where)} consolidation"
        else:
            core = _pick(rng, [f"There is an airspace opacity in the {where}", f"Patchy opacity is seen in the {where}"])
            labels.set("Lung Opacity", POSITIVE)
            short = f"{_cap(where)} opacity"
        if f["pneumonia"] == "positive":
            lung_sentences.append(core + ", compatible with pneumonia.")
            impression.append(short + " compatible with pneumonia.")
            labels.set("Pneumonia", POSITIVE)
        elif f["pneumonia"] == "uncertain":
            lung_sentences.append(core + _pick(rng, [", which may represent pneumonia.", ", concerning for pneumonia."]))
            impression.append(short + ", concerning for pneumonia.")
            labels.set("Pneumonia", UNCERTAIN)
        else:
            lung_sentences.append(core + ".")
            impression.append(short + ".")
    for f in by_name.get("nodule", []):
        where = _lobe(f["side"], f["zone"])
        lung_sentences.append(f"There is a {f['size_cm']} cm {f['kind']} in the {where}.")
        impression.append(f"{_cap(where)} {f['kind']}. Recommend chest CT for further evaluation.")
        labels.set("Lung Lesion", POSITIVE)
    for f in by_name.get("atelectasis", []):
        where = "bibasilar" if f["side"] == "bilateral" else f"{f['side']} basilar"
        if f["certainty"] == "positive":
            lung_sentences.append(_pick(rng, [f"There is {where} atelectasis.", f"{_cap(where)} atelectasis is noted.", f"Plate-like {where} atelectasis."]))
            impression.append(f"{_cap(where)} atelectasis.")
            labels.set("Atelectasis", POSITIVE)
        else:
            lung_sentences.append(f"Linear {where} opacity, likely atelectasis.")
            impression.append(f"{_cap(where)} opacity, likely atelectasis.")
            labels.set("Atelectasis", UNCERTAIN)
            labels.set("Lung Opacity", POSITIVE)
    for f in by_name.get("edema", []):
        sev = f["severity"]
        lung_sentences.append(_pick(rng, [f"There is {sev} pulmonary edema.", f"{_cap(sev)} pulmonary edema is present with perihilar haziness.", f"Findings are compatible with {sev} pulmonary edema."]))
        impression.append(f"{_cap(sev)} pulmonary edema.")
        labels.set("Edema", POSITIVE)
    if not lung_sentences:
        lung_sentences.append(_pick(rng, ["The lungs are clear.", "Lungs are well expanded and clear.", "The lungs are clear without focal consolidation.", "There is no focal consolidation."]))
        if "consolidation" in lung_sentences[0]:
            labels.set("Consolidation", NEGATIVE)
    elif "consolidation" not in by_name and rng.random() < 0.5:
        lung_sentences.append("No focal consolidation.")
        labels.set("Consolidation", NEGATIVE)
    if "edema" not in by_name and rng.random() < 0.45:
        lung_sentences.append(_pick(rng, ["No pulmonary edema.", "There is no pulmonary edema."]))
        labels.set("Edema", NEGATIVE)
    body.extend(lung_sentences)

    # Pleura.
    effusions = by_name.get("pleural_effusion", [])
    ptx = by_name.get("pneumothorax", [])
    for f in effusions:
        if f["side"] == "bilateral":
            body.append(_pick(rng, [f"There are {f['severity']} bilateral pleural effusions.", f"{_cap(f['severity'])} bilateral pleural effusions are present."]))
            impression.append(f"{_cap(f['severity'])} bilateral pleural effusions.")
        else:
            body.append(_pick(rng, [f"There is a {f['severity']} {f['side']} pleural effusion.", f"{_cap(f['severity'])} {f['side']} pleural effusion is present.", f"A {f['severity']} {f['side']} pleural effusion is seen."]))
            impression.append(f"{_cap(f['severity'])} {f['side']} pleural effusion.")
        labels.set("Pleural Effusion", POSITIVE)
    for f in ptx:
        body.append(_pick(rng, [f"There is a {f['severity']} {f['side']} pneumothorax.", f"{_cap(f['severity'])} {f['side']} apical pneumothorax is present."]))
        impression.append(f"{_cap(f['severity'])} {f['side']} pneumothorax.")
        labels.set("Pneumothorax", POSITIVE)
    if not effusions and not ptx:
        if rng.random() < 0.85:
            body.append(_pick(rng, ["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.", "No pneumothorax or pleural effusion is seen."]))
            labels.set("Pleural Effusion", NEGATIVE)
            labels.set("Pneumothorax", NEGATIVE)
    elif not effusions:
        if rng.random() < 0.8:
            body.append("No pleural effusion.")
            labels.set("Pleural Effusion", NEGATIVE)
    elif not ptx:
        if rng.random() < 0.8:
            body.append(_pick(rng, ["No pneumothorax.", "There is no pneumothorax."]))
            labels.set("Pneumothorax", NEGATIVE)

    # Heart and mediastinum.
    cardio = by_name.get("cardiomegaly", [])
    if cardio:
        sev = cardio[0]["severity"]
        adverb = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[sev]
        body.append(_pick(rng, [f"The heart is {adverb} enlarged.", f"There is {sev} cardiomegaly.", f"The cardiac silhouette is {adverb} enlarged."]))
        if rng.random() < 0.6:
            body.append("The mediastinal contours are normal.")
            labels.set("Enlarged Cardiomediastinum", NEGATIVE)
        impression.append(f"{_cap(sev)} cardiomegaly.")
        labels.set("Cardiomegaly", POSITIVE)
    else:
        r = rng.random()
        if r < 0.5:
            body.append(_pick(rng, ["The cardiomediastinal silhouette is normal.", "The cardiomediastinal silhouette is within normal limits.", "Cardiomediastinal contours are normal."]))
            labels.set("Cardiomegaly", NEGATIVE)
            labels.set("Enlarged Cardiomediastinum", NEGATIVE)
        elif r < 0.9:
            body.append(_pick(rng, ["The heart size is normal.", "Heart size is normal.", "Normal heart size."]))
            labels.set("Cardiomegaly", NEGATIVE)
            if rng.random() < 0.5:
                body.append("The mediastinal contours are normal.")
                labels.set("Enlarged Cardiomediastinum", NEGATIVE)

    # Bones.
    for f in by_name.get("fracture", []):
        rib = _ORDINALS.get(f["rib"], f"{f['rib']}th")
        if f["age"] == "acute":
            body.append(f"There is an acute displaced fracture of the {f['side']} {rib} rib.")
            impression.append(f"Acute {f['side']} {rib} rib fracture.")
        else:
            body.append(f"There is a healed fracture of the {f['side']} {rib} rib.")
            impression.append(f"Healed {f['side']} {rib} rib fracture.")
        labels.set("Fracture", POSITIVE)
    if "fracture" not in by_name:
        r = rng.random()
        if r < 0.3:
            body.append("No acute osseous abnormality.")
        elif r < 0.5:
            body.append("No displaced rib fracture is seen.")
            labels.set("Fracture", NEGATIVE)

    pathology = [o for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices")]
    if not any(labels.values[o] in (POSITIVE, UNCERTAIN) for o in pathology):
        labels.values["No Finding"] = POSITIVE
        impression.append(_pick(rng, ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.", "No acute intrathoracic process."]))

    if len(impression) > 1 and rng.random() < 0.5:
        impression_text = " ".join(f"{i}. {s}" for i, s in enumerate(impression, 1))
    else:
        impression_text = " ".join(impression)
    findings_text = " ".join(body)
    text = f"FINDINGS: {findings_text}\n\nIMPRESSION: {impression_text}"
    return SyntheticReport(text=text, findings=findings_text, impression=impression_text, chexpert=dict(labels.values))


def chexpert_labels(findings: Sequence[dict[str, Any]], rng: np.random.Generator | int) -> dict[str, int | None]:
    """
    Returns the CheXpert labels of the report that [`write_report`] writes for these findings.

    Args:
        findings (`Sequence[dict]`): Structured ground truth.
        rng (`np.random.Generator` or `int`): The generator (state) or seed given to `write_report`.

    Returns:
        `dict[str, int | None]`: one entry per observation of `CHEXPERT_OBSERVATIONS`.
    """
    return write_report(findings, rng).chexpert


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
def _save_png(array: np.ndarray, path: Path) -> None:
    # Pillow writes no timestamps into PNGs, so the bytes are a pure function of the pixels.
    Image.fromarray(array, mode="L").save(path, format="PNG", compress_level=6)


def generate_study(
    seed: int,
    split: str,
    index: int,
    image_size: int = 128,
    lateral: bool = False,
    normal_fraction: float = 0.35,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """
    Generates one study: ground truth, report, labels and images.

    Args:
        seed (`int`): Data set seed.
        split (`str`): One of `"train"`, `"val"`, `"test"`.
        index (`int`): Index of the study inside its split.
        image_size (`int`, *optional*, defaults to 128): Image side in pixels.
        lateral (`bool`, *optional*, defaults to `False`): Whether to render a lateral view too.
        normal_fraction (`float`, *optional*, defaults to 0.35): Fraction of studies without pathology.

    Returns:
        `tuple[dict, list[np.ndarray]]`: the annotation entry (with `image_path` relative to the
        image root) and the rendered images.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(_SPLITS.index(split), int(index)))
    f_rng, r_rng, i_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    findings = sample_findings(f_rng, normal_fraction=normal_fraction)
    report = write_report(findings, r_rng)
    images = render_study(i_rng, findings, image_size=image_size, lateral=lateral)
    study_id = f"{split}_{index:06d}"
    entry = {
        "id": study_id,
        "study_id": 50_000_000 + _SPLITS.index(split) * 1_000_000 + int(index),
        "subject_id": 10_000_000 + _SPLITS.index(split) * 1_000_000 + int(index),
        "report": report.text,
        "image_path": [f"{split}/{study_id}/{v}.png" for v in range(len(images))],
        "chexpert": report.chexpert,
        "findings": findings,
    }
    return entry, images


def _generate_chunk(args: tuple) -> list[dict[str, Any]]:
    seed, split, indices, image_size, lateral, normal_fraction, image_root = args
    entries = []
    for index in indices:
        entry, images = generate_study(seed, split, index, image_size, lateral, normal_fraction)
        folder = Path(image_root) / split / entry["id"]
        folder.mkdir(parents=True, exist_ok=True)
        for rel, image in zip(entry["image_path"], images):
            _save_png(image, Path(image_root) / rel)
        entries.append(entry)
    return entries


def generate_synthetic_dataset(
    output_dir: str | os.PathLike,
    num_train: int = 2000,
    num_val: int = 200,
    num_test: int = 200,
    image_size: int = 128,
    seed: int = 0,
    lateral: bool = False,
    num_workers: int | None = None,
    normal_fraction: float = 0.35,
    overwrite: bool = False,
) -> Path:
    """
    Generates the synthetic benchmark and writes it in the R2Gen `annotation.json` layout.

    The folder is built in a temporary sibling folder and moved into place with `os.replace`, so
    a crash never leaves a half-written data set behind. The output is byte-identical for the same
    arguments whatever `num_workers` is.

    Args:
        output_dir (`str` or `os.PathLike`):
            Folder to create; gets `annotation.json` and `images/`.
        num_train (`int`, *optional*, defaults to 2000): Number of training studies.
        num_val (`int`, *optional*, defaults to 200): Number of validation studies (R2Gen `"val"`).
        num_test (`int`, *optional*, defaults to 200): Number of test studies.
        image_size (`int`, *optional*, defaults to 128): Image side in pixels (>= 32).
        seed (`int`, *optional*, defaults to 0): Seed; everything is a function of it.
        lateral (`bool`, *optional*, defaults to `False`): Also render a lateral view per study.
        num_workers (`int`, *optional*):
            Worker processes; defaults to the number of CPU cores (1 for small data sets).
        normal_fraction (`float`, *optional*, defaults to 0.35): Fraction of studies without pathology.
        overwrite (`bool`, *optional*, defaults to `False`): Replace an existing non-empty `output_dir`.

    Returns:
        `Path`: `output_dir`.

    Example:

    ```python
    >>> from training.synthetic import generate_synthetic_dataset
    >>> from training.data import load_synthetic
    >>> out = generate_synthetic_dataset("/tmp/synth", num_train=20, num_val=5, num_test=5, image_size=64)
    >>> load_synthetic(out)["train"].num_rows
    20
    ```
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for name, n in counts.items():
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"num_{name} must be a non-negative integer, got {n!r}.")
    if sum(counts.values()) == 0:
        raise ValueError("All of num_train, num_val and num_test are 0; ask for at least one study.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}.")
    if not 0.0 <= normal_fraction <= 1.0:
        raise ValueError(f"normal_fraction must be in [0, 1], got {normal_fraction}.")
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ValueError(f"{output_dir} already exists and is not empty; pass overwrite=True (--overwrite) or choose another folder.")
    total = sum(counts.values())
    if num_workers is None:
        num_workers = 1 if total < 200 else (os.cpu_count() or 1)
    num_workers = max(1, int(num_workers))

    with atomic_dir(output_dir) as tmp:
        image_root = tmp / "images"
        image_root.mkdir()
        chunk = 64
        jobs = [
            (int(seed), split, list(range(start, min(start + chunk, n))), int(image_size), bool(lateral), float(normal_fraction), str(image_root))
            for split, n in counts.items()
            for start in range(0, n, chunk)
        ]
        annotation: dict[str, list] = {split: [] for split in _SPLITS}
        start_time = time.perf_counter()
        with tqdm(total=total, desc="Generating synthetic studies", unit="study", disable=total < 500) as bar:
            if num_workers == 1:
                results = map(_generate_chunk, jobs)
                for job, entries in zip(jobs, results):
                    annotation[job[1]].extend(entries)
                    bar.update(len(entries))
            else:
                with ProcessPoolExecutor(max_workers=num_workers) as pool:
                    for job, entries in zip(jobs, pool.map(_generate_chunk, jobs)):
                        annotation[job[1]].extend(entries)
                        bar.update(len(entries))
        with open(tmp / "annotation.json", "w", encoding="utf-8") as fh:
            json.dump(annotation, fh, indent=1)
            fh.write("\n")
        # What the data set is, for model cards and metrics (a folder name such as `data` says nothing).
        info = {"pretty_name": f"rrg synthetic chest X-ray benchmark (seed {seed}, {image_size} px)",
                "splits": {name: len(rows) for name, rows in annotation.items()}}
        (tmp / "dataset_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        elapsed = time.perf_counter() - start_time
    normal = sum(e["chexpert"]["No Finding"] == POSITIVE for split in annotation.values() for e in split)
    logger.info(
        "Wrote %d synthetic studies (%s) to %s in %.1f s with %d worker(s); %.0f%% without pathology.",
        total,
        ", ".join(f"{k}={v}" for k, v in counts.items()),
        output_dir,
        elapsed,
        num_workers,
        100.0 * normal / total,
    )
    return output_dir


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point: `python -m training.sandbox.synthetic --out DIR ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.sandbox.synthetic",
        description="Generate the synthetic chest X-ray report-generation benchmark (R2Gen annotation.json layout).",
    )
    parser.add_argument("--out", required=True, help="Output folder (gets annotation.json and images/).")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lateral", action="store_true", help="Also render a lateral view per study.")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--normal-fraction", type=float, default=0.35)
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    args = parser.parse_args(argv)
    return generate_synthetic_dataset(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        image_size=args.image_size,
        seed=args.seed,
        lateral=args.lateral,
        num_workers=args.num_workers,
        normal_fraction=args.normal_fraction,
        overwrite=args.overwrite,
    )


if __name__ == "__main__":  # `python -m training.sandbox.synthetic` (torchrun / accelerate launch): same as `rrg data`
    from training.cli import main as rrg

    sys.exit(rrg(["data", *sys.argv[1:]]))
