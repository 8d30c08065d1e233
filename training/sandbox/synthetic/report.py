"""Writes a synthetic study's radiology report (FINDINGS and IMPRESSION) and its CheXpert labels from its ground truth.

The words live in `phrases.json` beside this file (as the labeler's patterns live in `labeler_data/`); this module
holds only the logic: which statement a finding gets, in which order, and which CheXpert label it implies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ...data.chexpert import CHEXPERT_OBSERVATIONS, NEGATIVE, NOT_MENTIONED, POSITIVE, UNCERTAIN
from .findings import FINDING_NAMES

__all__ = ["SyntheticReport", "write_report", "chexpert_labels", "load_phrases"]

PHRASES_FILE = Path(__file__).with_name("phrases.json")


class SyntheticReport(NamedTuple):
    """A written report: the full text, its two sections and its CheXpert labels."""

    text: str
    findings: str
    impression: str
    chexpert: dict[str, int | None]


@lru_cache(maxsize=1)
def load_phrases() -> dict[str, Any]:
    """The report phrasing (`phrases.json`): templates and lists of variants, keyed by what they say."""
    return json.loads(PHRASES_FILE.read_text(encoding="utf-8"))


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Writer:
    """Draws phrasings from `phrases.json`: a list is a set of variants (one drawn), a string is used as is."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.phrases = load_phrases()

    def say(self, choice: str | Sequence[str], **fields: Any) -> str:
        if not isinstance(choice, str):
            choice = choice[int(self.rng.integers(len(choice)))]
        # {name} is the value, {Name} the value capitalised (for templates that start with it).
        values = {**fields, **{_cap(k): _cap(str(v)) for k, v in fields.items()}}
        return choice.format(**values)

    def __getitem__(self, key: str) -> Any:
        return self.phrases[key]


def _lobe(p: Mapping[str, Any], side: str, zone: str) -> str:
    return p["lobe"].get(f"{side} {zone}", p["lobe"]["other"]).format(side=side, zone=zone)


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
    w = _Writer(rng)
    labels = _Labels()
    body: list[str] = []
    impression: list[str] = []

    # Devices first, as radiologists do; one impression line for the first device of a study.
    for f in by_name.get("support_device", []):
        for device in f["devices"]:
            phrase = w["devices"][device]
            body.append(w.say(phrase["finding"], line_side=f["line_side"], pacemaker_side=f["pacemaker_side"]))
            if device == f["devices"][0]:
                impression.append(w.say(phrase["impression"]))
        labels.set("Support Devices", POSITIVE)

    lung_sentences: list[str] = []
    for f in by_name.get("consolidation", []):
        where = _lobe(w.phrases, f["side"], f["zone"])
        phrase = w["consolidation"][f["kind"]]
        core = w.say(phrase["finding"], where=where)
        short = w.say(phrase["impression"], where=where)
        labels.set("Consolidation" if f["kind"] == "consolidation" else "Lung Opacity", POSITIVE)
        pneumonia = w["pneumonia"][f["pneumonia"] or "none"]
        lung_sentences.append(core + w.say(pneumonia["finding"]))
        impression.append(short + w.say(pneumonia["impression"]))
        if f["pneumonia"] == "positive":
            labels.set("Pneumonia", POSITIVE)
        elif f["pneumonia"] == "uncertain":
            labels.set("Pneumonia", UNCERTAIN)
    for f in by_name.get("nodule", []):
        where = _lobe(w.phrases, f["side"], f["zone"])
        lung_sentences.append(w.say(w["nodule"]["finding"], size_cm=f["size_cm"], kind=f["kind"], where=where))
        impression.append(w.say(w["nodule"]["impression"], kind=f["kind"], where=where))
        labels.set("Lung Lesion", POSITIVE)
    for f in by_name.get("atelectasis", []):
        phrase = w["atelectasis"]
        where = w.say(phrase["where"]["bilateral" if f["side"] == "bilateral" else "one_side"], side=f["side"])
        lung_sentences.append(w.say(phrase[f["certainty"]]["finding"], where=where))
        impression.append(w.say(phrase[f["certainty"]]["impression"], where=where))
        if f["certainty"] == "positive":
            labels.set("Atelectasis", POSITIVE)
        else:  # "Linear ... opacity, likely atelectasis."
            labels.set("Atelectasis", UNCERTAIN)
            labels.set("Lung Opacity", POSITIVE)
    for f in by_name.get("edema", []):
        lung_sentences.append(w.say(w["edema"]["finding"], severity=f["severity"]))
        impression.append(w.say(w["edema"]["impression"], severity=f["severity"]))
        labels.set("Edema", POSITIVE)
    if not lung_sentences:
        lung_sentences.append(w.say(w["clear_lungs"]))
        if "consolidation" in lung_sentences[0]:
            labels.set("Consolidation", NEGATIVE)
    elif "consolidation" not in by_name and rng.random() < 0.5:
        lung_sentences.append(w.say(w["no_consolidation"]))
        labels.set("Consolidation", NEGATIVE)
    if "edema" not in by_name and rng.random() < 0.45:
        lung_sentences.append(w.say(w["no_edema"]))
        labels.set("Edema", NEGATIVE)
    body.extend(lung_sentences)

    # Pleura.
    effusions = by_name.get("pleural_effusion", [])
    ptx = by_name.get("pneumothorax", [])
    for f in effusions:
        phrase = w["pleural_effusion"]["bilateral" if f["side"] == "bilateral" else "one_side"]
        body.append(w.say(phrase["finding"], severity=f["severity"], side=f["side"]))
        impression.append(w.say(phrase["impression"], severity=f["severity"], side=f["side"]))
        labels.set("Pleural Effusion", POSITIVE)
    for f in ptx:
        body.append(w.say(w["pneumothorax"]["finding"], severity=f["severity"], side=f["side"]))
        impression.append(w.say(w["pneumothorax"]["impression"], severity=f["severity"], side=f["side"]))
        labels.set("Pneumothorax", POSITIVE)
    if not effusions and not ptx:
        if rng.random() < 0.85:
            body.append(w.say(w["no_effusion_or_pneumothorax"]))
            labels.set("Pleural Effusion", NEGATIVE)
            labels.set("Pneumothorax", NEGATIVE)
    elif not effusions:
        if rng.random() < 0.8:
            body.append(w.say(w["no_effusion"]))
            labels.set("Pleural Effusion", NEGATIVE)
    elif not ptx:
        if rng.random() < 0.8:
            body.append(w.say(w["no_pneumothorax"]))
            labels.set("Pneumothorax", NEGATIVE)

    # Heart and mediastinum.
    cardio = by_name.get("cardiomegaly", [])
    if cardio:
        phrase, severity = w["cardiomegaly"], cardio[0]["severity"]
        body.append(w.say(phrase["finding"], severity=severity, adverb=phrase["adverb"][severity]))
        if rng.random() < 0.6:
            body.append(w.say(w["normal_mediastinum"]))
            labels.set("Enlarged Cardiomediastinum", NEGATIVE)
        impression.append(w.say(phrase["impression"], severity=severity))
        labels.set("Cardiomegaly", POSITIVE)
    else:
        r = rng.random()
        if r < 0.5:
            body.append(w.say(w["normal_cardiomediastinum"]))
            labels.set("Cardiomegaly", NEGATIVE)
            labels.set("Enlarged Cardiomediastinum", NEGATIVE)
        elif r < 0.9:
            body.append(w.say(w["normal_heart_size"]))
            labels.set("Cardiomegaly", NEGATIVE)
            if rng.random() < 0.5:
                body.append(w.say(w["normal_mediastinum"]))
                labels.set("Enlarged Cardiomediastinum", NEGATIVE)

    # Bones.
    for f in by_name.get("fracture", []):
        ordinals = w["fracture"]["rib_ordinal"]
        ordinal = ordinals.get(str(f["rib"]), ordinals["other"]).format(rib=f["rib"])
        phrase = w["fracture"][f["age"]]
        body.append(w.say(phrase["finding"], side=f["side"], ordinal=ordinal))
        impression.append(w.say(phrase["impression"], side=f["side"], ordinal=ordinal))
        labels.set("Fracture", POSITIVE)
    if "fracture" not in by_name:
        r = rng.random()
        if r < 0.3:
            body.append(w.say(w["no_acute_osseous_abnormality"]))
        elif r < 0.5:
            body.append(w.say(w["no_rib_fracture"]))
            labels.set("Fracture", NEGATIVE)

    pathology = [o for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices")]
    if not any(labels.values[o] in (POSITIVE, UNCERTAIN) for o in pathology):
        labels.values["No Finding"] = POSITIVE
        impression.append(w.say(w["no_acute_process"]))

    if len(impression) > 1 and rng.random() < 0.5:
        impression_text = " ".join(w.say(w["numbered_impression_item"], number=i, sentence=s)
                                   for i, s in enumerate(impression, 1))
    else:
        impression_text = " ".join(impression)
    findings_text = " ".join(body)
    text = w.say(w["report"], findings=findings_text, impression=impression_text)
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
