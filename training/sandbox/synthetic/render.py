"""Procedural rendering of a synthetic study's radiographs (frontal PA and optional lateral) from its ground truth.

Image convention: as on a real PA film, the patient's right is on the image's **left**.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .findings import _SIDES, FINDING_NAMES

__all__ = ["render_study"]

# Rendered posterior ribs are ribs 2..11, top to bottom.
_FIRST_RIB = 2
_NUM_RIBS = 10


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
    # Fainter and less blotchy than they could be: at 64 px a bright knot of markings would read as a nodule.
    vessel = np.clip(0.55 - hilum_dist, 0.0, None) * 1.1 + 0.05 * (markings > 0.3)
    marking_strength = np.clip(vessel * (0.6 + 0.3 * markings), 0.0, 0.4)
    ptx_extra = np.zeros_like(x)
    for f in findings:
        if f["name"] == "pneumothorax":
            lx, ly, lw, lh, dia = _lung_geometry(anatomy, f["side"])
            shrink = {"small": 0.76, "moderate": 0.64, "large": 0.5}[f["severity"]]
            medial = lx * (1 - shrink) * -0.9  # collapse towards the hilum
            collapsed = _lung_mask(cv, lx + medial, ly + lh * (1 - shrink) * 0.5, lw * shrink, lh * shrink, dia - 0.02)
            rim = np.clip(lungs[f["side"]] - collapsed, 0.0, 1.0)
            marking_strength = marking_strength * (1.0 - rim)
            ptx_extra -= 0.3 * rim
            edge_band = collapsed * (1.0 - _lung_mask(cv, lx + medial, ly + lh * (1 - shrink) * 0.5, lw * shrink - 0.02, lh * shrink - 0.02, dia - 0.04))
            ptx_extra += 0.45 * edge_band * lungs[f["side"]]
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
    fracture_att = 0.0
    for i in range(_NUM_RIBS):
        y0 = anatomy["rib_top"] + i * anatomy["rib_spacing"]
        for side, sign in (("right", -1.0), ("left", 1.0)):
            a = sign * x  # lateral distance on this side
            yc = y0 - 0.04 + 0.55 * (a - 0.2) ** 2
            extent = _sig((a - 0.07) / cv.edge) * _sig((0.86 - 0.1 * (i < 2) - a) / cv.edge)
            if fracture is not None and fracture["side"] == side and fracture["rib"] - _FIRST_RIB == i:
                # Displaced fragments with a visible gap, or a healed fracture's callus, at the lateral chest wall,
                # where the rib leaves the lung field (a nodule sits inside it): drawn denser than a rib (ribs are
                # faint) and along the rib (a nodule is round), so it shows at 64 px.
                af = 0.78
                y_site = y0 - 0.04 + 0.55 * (af - 0.2) ** 2
                slope = sign * np.arctan(1.1 * (af - 0.2))  # the rib's direction on the image at the site
                if fracture["age"] == "acute":
                    # A gap, the lateral fragment stepped down, its two ends sclerotic.
                    yc = yc + 0.1 * _sig((a - af) / cv.edge)
                    extent = extent * (1.0 - _sig((0.04 - np.abs(a - af)) / cv.edge))
                    fracture_att = 1.0 * (cv.ellipse(sign * (af - 0.09), y_site - 0.05, 0.09, 0.04, angle=slope)
                                          + cv.ellipse(sign * (af + 0.08), y_site + 0.15, 0.09, 0.04, angle=slope))
                else:
                    # A fusiform callus along the rib.
                    fracture_att = 1.0 * cv.ellipse(sign * af, y_site, 0.14, 0.065, angle=slope)
            band = _sig((0.02 - np.abs(y - yc)) / cv.edge)
            ribs += band * extent
    att += 0.09 * np.clip(ribs, 0.0, 1.5) * body + fracture_att
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
            # Consolidation is dense and homogeneous, an opacity hazy and patchy; pneumonia is lobar (wider).
            lobar, dense = f.get("pneumonia") == "positive", f["kind"] == "consolidation"
            blob = np.zeros_like(x)
            # Airspace disease spreads along the lung towards the chest wall: wider than tall (a mass is round).
            wall = 0.08 * (-1.0 if f["side"] == "right" else 1.0)
            for _ in range(6 if lobar else 4):
                bx, by = cx + wall + frng.normal(0, 0.1 if lobar else 0.06), cy + frng.normal(0, 0.1 if lobar else 0.04)
                s = frng.uniform(0.11, 0.14) if lobar else frng.uniform(0.05, 0.07) * (1.0 if dense else 1.3)
                blob += np.exp(-(((x - bx) / 1.8) ** 2 + (y - by) ** 2) / (2 * s * s))
            if dense:
                blob, amp = np.clip(1.2 * blob, 0.0, 1.0) * (0.9 + 0.1 * patchy), 1.0
            else:
                blob, amp = np.clip(blob, 0.0, 1.0) * np.clip(0.6 + 0.6 * patchy, 0.0, 1.0), 0.5
            att += amp * blob * lungs[f["side"]]
        elif name == "edema":
            amp = {"mild": 0.22, "moderate": 0.32, "severe": 0.44}[f["severity"]]
            haze = np.exp(-(hilum_dist**2) / (2 * 0.22**2)) * (0.8 + 0.3 * markings)
            att += amp * haze * lung + 0.3 * amp * lung
        elif name == "atelectasis":
            sides = _SIDES if f["side"] == "bilateral" else (f["side"],)
            for side in sides:
                lx, ly, lw, lh, dia = _lung_geometry(anatomy, side)
                # Atelectasis proper is a thick plate-like band at the base; the hedged "linear opacity" a thin line
                # in the mid lung (not where an effusion's meniscus or a thick band would hide it at 64 px).
                thick = f.get("certainty", "positive") == "positive"
                by = (dia - 0.17 if thick else ly + 0.12) + frng.uniform(-0.02, 0.02)
                band = cv.ellipse(lx + frng.uniform(-0.05, 0.05), by, lw * (0.6 if thick else 0.75),
                                  0.08 if thick else 0.05, angle=frng.uniform(-0.2, 0.2))
                att += 0.8 * band * lungs[side]
        elif name == "nodule":
            cx, cy = _zone_centre(anatomy, f["side"], f["zone"])
            r = 0.03 * f["size_cm"] + 0.065 if f["kind"] == "nodule" else 0.02 * f["size_cm"] + 0.09
            att += 1.0 * cv.ellipse(cx + frng.uniform(-0.05, 0.05), cy + frng.uniform(-0.03, 0.03), r, r * 0.9) * lungs[f["side"]]
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
        out += 1.1 * cv.line([(0.01, -1.05), (0.01, -0.34)], 0.045)
    if "central_line" in devices:
        s = -1.0 if f["line_side"] == "right" else 1.0
        out += 1.0 * cv.line([(s * 0.58, -0.8), (s * 0.3, -0.62), (s * 0.08, -0.45), (-0.06, -0.3), (-0.06, -0.08)], 0.035)
    if "pacemaker" in devices:
        s = -1.0 if f["pacemaker_side"] == "right" else 1.0
        gx, gy = s * 0.5, -0.62
        out += 1.6 * cv.ellipse(gx, gy, 0.1, 0.07, angle=0.2 * s)
        tip_y = anatomy["dia_right"] - 0.06
        out += 0.9 * cv.line([(gx, gy), (s * 0.3, -0.55), (-0.04, -0.38), (-0.06, -0.05), (0.1, tip_y - 0.06), (0.2, tip_y)], 0.03)
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
            r = 0.022 * f["size_cm"] + 0.03
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
    >>> from training.sandbox.synthetic import render_study
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
