"""Real report text offline: the 3,955 IU X-Ray (OpenI) report XMLs torchxrayvision's wheel ships (CC BY-NC-ND; read
from the installed package at test time, never copied here). Section extraction against the XML's own sections, and
the rule labeler against the coders' MeSH terms."""

import re

import pytest

from helpers import iu_xray_reports
from training.data.reports import report_indication, split_sections
from training.evaluation.labeler import RuleBasedLabeler

_HEADER = re.compile(r"(?i)\b(findings|impression|conclusion|comparison|technique|history|exam)\s*:")


@pytest.fixture(scope="module")
def reports():
    return iu_xray_reports()


@pytest.mark.parametrize("separator", ["\n", " "])
def test_sections_and_indication_match_the_xml(reports, separator):
    assert len(reports) == 3955
    checked = skipped = 0
    for r in reports:
        sections = [(name.upper(), r.get(name)) for name in ("comparison", "indication", "findings", "impression")]
        # a few XML sections hold other headers ("IMPRESSION: Exam: ... FINDINGS: ...", "... COMPARISON : ..."): no
        # split can tell them from the report's own
        if any(_HEADER.search(text) for _, text in sections if text):
            skipped += 1
            continue
        report = separator.join(f"{header}: {text}" for header, text in sections if text)
        parts = split_sections(report)
        assert parts["findings"] == (r.get("findings") or "").strip(), r["uid"]
        assert parts["impression"] == (r.get("impression") or "").strip(), r["uid"]
        # some XML indications repeat their header ("INDICATION: INDICATION: DYSPNEA; ...")
        indication = re.sub(r"^(?:INDICATION:\s*)+", "", (r.get("indication") or "").strip())
        assert report_indication(report) == indication, r["uid"]
        checked += 1
    assert checked >= 3950 and skipped <= 5


# MeSH major terms (the coders' reading of the report) for observations they code reliably
MESH = {"Cardiomegaly": r"^cardiomegaly", "Atelectasis": r"^pulmonary atelectasis", "Consolidation": r"^consolidation",
        "Fracture": r"fractures?, bone"}


def test_rule_labeler_agrees_with_mesh_terms(reports):
    labeler = RuleBasedLabeler()
    counts = {obs: [0, 0, 0] for obs in MESH}
    for r in reports:
        text = " ".join(t for t in (r.get("findings"), r.get("impression")) if t)
        if not text:
            continue
        labels = labeler.label(text)
        mesh = [m.lower() for m in r["mesh_major"]]
        for obs, pattern in MESH.items():
            truth, predicted = any(re.search(pattern, m) for m in mesh), labels[obs] == 1
            counts[obs][0] += truth and predicted
            counts[obs][1] += predicted and not truth
            counts[obs][2] += truth and not predicted
    for obs, (tp, fp, fn) in counts.items():
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        # measured: cardiomegaly P 0.947 R 0.853, atelectasis 0.953 / 0.919, consolidation 0.875 / 0.933,
        # fracture 0.802 / 0.917 (3,927 reports with findings or impression)
        assert tp >= 25 and precision >= 0.78 and recall >= 0.83, (obs, tp, fp, fn)


@pytest.mark.xfail(strict=True, reason="rule labeler bug found on IU X-Ray text: the pre-termination cue ', large' ends "
                   "the negation of a list ('No focal consolidation, large pleural effusion, or pneumothorax'), so "
                   "effusion and pneumothorax come out positive (about 40 of 61 pneumothorax positives on IU X-Ray)")
def test_negated_list_with_size_words():
    labels = RuleBasedLabeler().label("No focal consolidation, large pleural effusion, or pneumothorax is identified.")
    assert labels["Pleural Effusion"] == 0 and labels["Pneumothorax"] == 0
