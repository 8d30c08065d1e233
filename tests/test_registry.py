"""The metric registry: per-report scores, protocols, ReXrank's BLEU-2 against nltk, one implementation per metric."""

import importlib.util
import random
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from training.evaluation.metrics import registry
from training.evaluation.metrics.clinical import compute_ce_variants
from training.evaluation.metrics.ngram import rexrank_tokens, sentence_bleu2
from training.evaluation.metrics.protocols import PROTOCOLS, Protocol, ProtocolEntry
from training.evaluation.metrics.registry import Metric, mean_stats, per_report_scores
from training.evaluation.scorecard import check_protocol, metric_stats, metrics_to_markdown, score_reports

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the heart is normal size no pleural effusion or pneumothorax mild edema left base opacity stable . , "
         "Heart Lungs CLEAR").split()


def _texts(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.choice([0, 1, 2, 3, rng.randint(4, 40)])))
        # what real reports hold: sentence ends glued to words, double spaces, line breaks
        out.append(text.replace(" .", ".", rng.randint(0, 2)).replace(" ", "  ", rng.randint(0, 1))
                   .replace(" ", "\n", rng.randint(0, 1)))
    return out


def _nltk_bleu2(hyp: str, ref: str, smoothing: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    function = SmoothingFunction().method1 if smoothing == "method1" else SmoothingFunction().method0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about zero counts without smoothing
        return sentence_bleu([rexrank_tokens(ref)], rexrank_tokens(hyp), weights=(0.5, 0.5),
                             smoothing_function=function)


def test_rexrank_tokens_follow_cxr_report_metric():
    # lower case, a space put before every "." (not after: ".no" stays one token), split on single spaces only (a
    # line break stays inside its token), no empty tokens
    assert rexrank_tokens("Heart is normal. No effusion.") == ["heart", "is", "normal", ".", "no", "effusion", "."]
    assert rexrank_tokens("normal.No") == ["normal", ".no"]
    assert rexrank_tokens("a  b\nc ") == ["a", "b\nc"]
    assert rexrank_tokens("") == []


@pytest.mark.parametrize("smoothing", ["method1", "none"])
def test_rexrank_bleu2_equals_nltk_sentence_bleu(smoothing):
    pytest.importorskip("nltk")
    refs = _texts(400, 1)
    rng = random.Random(0)
    # unrelated texts, and edited copies of the reference (words dropped or replaced, case changed) that share n-grams
    hyps = _texts(200, 0) + [" ".join(w if rng.random() < 0.7 else rng.choice(WORDS) for w in r.split(" ")
                                      if rng.random() < 0.85) for r in refs[200:]]
    # the edge cases: empty and one-token hypotheses, no shared word, identical, empty reference
    hyps += ["", "heart", "heart", "zebra giraffe", "no pleural effusion.", "lungs clear", ""]
    refs += ["the heart is normal.", "heart", "the heart is normal", "the heart is normal.", "no pleural effusion.",
             "", ""]
    ours = [sentence_bleu2(rexrank_tokens(h), rexrank_tokens(r), smoothing) for h, r in zip(hyps, refs)]
    expected = [_nltk_bleu2(h, r, smoothing) for h, r in zip(hyps, refs)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    assert 0.05 < np.mean(expected) < 0.9  # informative pairs, not all zero or one
    if smoothing == "method1":  # the registry entry (ReXrank's default) averages the same per-report scores
        scores = per_report_scores("rexrank/BLEU-2", hyps, refs)
        np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-15)
        m = score_reports(hyps, refs, meteor=False, replicates=0, protocol="rexrank")
        assert m["rexrank/BLEU-2"] == pytest.approx(np.mean(expected), rel=1e-12)


def _iu_xray_reports() -> list[str]:
    """Findings + impression of the IU X-Ray reports that torchxrayvision's wheel ships (read, never copied)."""
    spec = importlib.util.find_spec("torchxrayvision")  # finds the installed package without importing torch
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision is not installed (pip install torchxrayvision --no-deps): its wheel ships the "
                    "IU X-Ray report XMLs this test reads")
    archive = Path(spec.submodule_search_locations[0]) / "data" / "NLMCXR_reports.tgz"
    if not archive.is_file():
        pytest.skip(f"{archive} is missing from this torchxrayvision release")
    import xml.etree.ElementTree as ET

    reports = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not member.name.endswith(".xml"):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            sections = {a.get("Label"): (a.text or "") for a in root.iter("AbstractText")}
            text = f"Findings: {sections.get('FINDINGS', '')} Impression: {sections.get('IMPRESSION', '')}"
            reports.append(text)
    return reports


def test_rexrank_bleu2_equals_nltk_on_iu_xray_reports():
    pytest.importorskip("nltk")
    reports = _iu_xray_reports()
    assert len(reports) == 3955
    rng = random.Random(0)
    # pairs of different studies (mostly normal reports, so many shared n-grams) and of a report with its own
    # shortened copy (brevity penalty)
    refs = reports[:1500] + reports[1500:2000]
    hyps = reports[1:1501] + [" ".join(r.split()[: rng.randint(0, 12)]) for r in reports[1500:2000]]
    expected = [_nltk_bleu2(h, r, "method1") for h, r in zip(hyps, refs)]
    ours = per_report_scores("rexrank/BLEU-2", hyps, refs)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    assert 0.1 < np.mean(expected) < 0.9


def test_per_report_scores_are_the_metric_on_each_pair():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = _texts(60, 2), _texts(60, 3)
    # clean=None: the strings as given (whitespace collapsed), so pycocoevalcap sees the same tokens
    coll = lambda texts: [" ".join(t.split()) for t in texts]  # noqa: E731
    h, r = coll(hyps), coll(refs)
    bleu4 = per_report_scores("BLEU-4", hyps, refs, clean=None)
    for i in range(0, 60, 7):
        single, _ = Bleu(4).compute_score({0: [r[i]]}, {0: [h[i]]}, verbose=0)
        assert bleu4[i] == pytest.approx(single[3], rel=1e-9, abs=1e-12), i
    _, rouge = Rouge().compute_score({i: [x] for i, x in enumerate(r)}, {i: [x] for i, x in enumerate(h)})
    np.testing.assert_allclose(per_report_scores("ROUGE-L", hyps, refs, clean=None), rouge, rtol=1e-12)
    _, cider = Cider().compute_score({i: [x] for i, x in enumerate(r)}, {i: [x] for i, x in enumerate(h)})
    np.testing.assert_allclose(per_report_scores("CIDEr", hyps, refs, clean=None), cider, rtol=1e-9, atol=1e-12)


class _TableLabeler:
    name = "table"

    def __init__(self, table):
        self.table, self.calls = table, 0

    def label_batch(self, reports):
        self.calls += 1
        return [self.table[r] for r in reports]


def test_per_report_ce_follows_the_uncertainty_policy_in_its_name():
    table = {"p1": {"Edema": 1, "Pleural Effusion": -1}, "r1": {"Edema": 1, "Pleural Effusion": 1},
             "p2": {"Cardiomegaly": 1}, "r2": {"Cardiomegaly": 0}, "p3": {}, "r3": {"Pneumothorax": -1}}
    labeler = _TableLabeler(table)
    preds, refs = ["p1", "p2", "p3"], ["r1", "r2", "r3"]
    for policy in ("negative", "positive"):
        scores = per_report_scores(f"ce_table_f1_example_14_uncertain_{policy}", preds, refs, labeler=labeler)
        single = [compute_ce_variants([table[p]], [table[r]], "table")[f"ce_table_f1_example_14_uncertain_{policy}"]
                  for p, r in zip(preds, refs)]
        assert scores.tolist() == pytest.approx(single)
    # uncertain as negative: report 1 has tp edema, fn effusion -> 2/3; as positive: both match -> 1
    assert per_report_scores("ce_table_f1_example_14_uncertain_negative", preds, refs, labeler=labeler)[0] == \
        pytest.approx(2 / 3)
    assert per_report_scores("ce_table_f1_micro_14_uncertain_positive", preds, refs, labeler=labeler)[0] == 1.0
    with pytest.raises(ValueError, match="several outputs"):
        per_report_scores("bleu", preds, refs)
    with pytest.raises(ValueError, match="No registered metric produces"):
        per_report_scores("BLEU-9", preds, refs)


def test_metric_stats_labels_each_report_once_and_shares_the_counts():
    table = {t: {"Edema": 1} if "edema" in t else {} for t in ("mild edema", "no edema", "clear", "edema")}
    labeler = _TableLabeler(table)
    stats, record = metric_stats(["mild edema", "clear"], ["edema", "no edema"], labeler=labeler, meteor=False)
    assert labeler.calls == 1  # one label_batch call for predictions and references: CE is computed once
    values = {m.name: m.value() for m in stats}
    assert values["ce_table_f1_micro_14_uncertain_negative"] == record["clinical_efficacy"]["f1_micro_14"]
    assert record["protocol"] == "r2gen" and record["metric_definitions"]["BLEU-4"]["level"] == "corpus"


def test_r2gen_protocol_keeps_the_metrics_json_names():
    m = score_reports(["No pleural effusion.", "Mild edema."], ["No pleural effusion.", "Edema."], meteor=False,
                      replicates=0)
    numeric = [k for k, v in m.items() if isinstance(v, float) and k != "zero_division"]
    ce = [k for k in numeric if k.startswith("ce_rule_")]
    assert [k for k in numeric if k not in ce] == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    assert len(ce) == 36 and "rexrank/BLEU-2" not in m


def test_two_protocols_together_and_markdown_names_the_level():
    preds, refs = _texts(30, 4), _texts(30, 5)
    m = score_reports(preds, refs, meteor=False, replicates=50, protocol="r2gen,rexrank")
    assert "BLEU-4" in m and "rexrank/BLEU-2" in m and m["protocol"] == "r2gen,rexrank"
    ci = m["confidence_intervals"]["rexrank/BLEU-2"]
    assert ci["low"] <= m["rexrank/BLEU-2"] <= ci["high"]
    assert m["metric_definitions"]["rexrank/BLEU-2"]["level"] == "mean"
    text = metrics_to_markdown(m)
    assert "| rexrank/BLEU-2 (mean of per-report scores) | " in text and "- Protocol: `r2gen,rexrank`" in text
    with pytest.raises(ValueError, match="Unknown scoring protocol 'nope'"):
        score_reports(preds, refs, meteor=False, replicates=0, protocol="nope")


def test_protocol_names_the_flag_of_a_missing_model_folder(monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "strict", Protocol("strict", (ProtocolEntry("bleu"), ProtocolEntry("radgraph"))))
    with pytest.raises(ValueError, match="'radgraph'.*--radgraph-model or --radgraph-annotations"):
        score_reports(["a b"], ["a b"], meteor=False, replicates=0, protocol="strict")
    with pytest.raises(ValueError, match="--radgraph-model"):
        check_protocol("strict")
    check_protocol("r2gen")  # optional there: skipped without its folder
    with pytest.raises(ValueError, match="--bertscore-model"):
        per_report_scores("BERTScore-F1", ["a"], ["a"])


def test_registering_a_metric_is_one_function_and_one_call(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.list_metrics()))

    def length_ratio(inputs):
        hyps, refs = inputs.raw
        return [mean_stats("test/length-ratio", [len(h.split()) / max(1, len(r.split())) for h, r in zip(hyps, refs)])]

    registry.register(Metric("test/length-ratio", "test", length_ratio, ("test/length-ratio",), needs=("raw text",),
                             level="mean"))
    monkeypatch.setitem(PROTOCOLS, "mine", Protocol("mine", (ProtocolEntry("test/length-ratio"),)))
    m = score_reports(["a b c d", "a"], ["a b", "a b"], meteor=False, replicates=20, protocol="mine")
    assert m["test/length-ratio"] == pytest.approx(1.25)
    assert per_report_scores("test/length-ratio", ["a b c d", "a"], ["a b", "a b"]).tolist() == [2.0, 0.5]
    assert registry.metric_info("test/length-ratio")["protocols"] == ["mine"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Metric("test/length-ratio", "test", lambda inputs: [], ("x",)))


def test_card_rows_come_from_the_registry():
    m = score_reports(_texts(20, 6), _texts(20, 7), meteor=False, replicates=0, protocol="r2gen,rexrank")
    text, clinical = registry.card_rows(m)
    names = [n for n, _ in text]
    assert names == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "rexrank/BLEU-2"]
    assert dict(text)["rexrank/BLEU-2"] == m["rexrank/BLEU-2"]
    assert [n for n, _ in clinical][:3] == ["ce_rule_precision_micro_14_uncertain_negative",
                                            "ce_rule_recall_micro_14_uncertain_negative",
                                            "ce_rule_f1_micro_14_uncertain_negative"]


def _definitions(pattern: str) -> list[str]:
    hits = []
    for path in (ROOT / "training").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.search(pattern, line):
                hits.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    return hits


def test_each_metric_is_implemented_once():
    # n-gram counting, PTB tokenization, pycocoevalcap's scorers, CE counting and P/R/F1 each live in one place
    for pattern in (r"def _ngrams\(", r"PTBTokenizer\(\)", r"def ce_counts\(", r"def _prf\(", r"Rouge\(\)",
                    r"Bleu\(\d\)\.compute_score", r"Cider\(\)\.compute_score", r"def compute_bertscore\(",
                    r"== POSITIVE"):
        hits = _definitions(pattern)
        assert len(hits) <= 1, (pattern, hits)
    assert len(_definitions(r"def _ngrams\(")) == 1 and len(_definitions(r"PTBTokenizer\(\)")) == 1


def test_rrg_compare_reads_the_same_registry_stats(tmp_path):
    import json

    from training.evaluation.compare import compare_predictions

    refs = _texts(80, 8)
    rng = random.Random(1)
    good = [r if rng.random() < 0.8 else "no acute process" for r in refs]
    for name, preds in (("a", _texts(80, 9)), ("b", good)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": str(i), "reference": r, "prediction": p}) + "\n" for i, (r, p) in enumerate(zip(refs, preds))))
    result = compare_predictions(tmp_path / "a.jsonl", tmp_path / "b.jsonl", replicates=100, meteor=False,
                                 protocol="rexrank")
    row = result["metrics"]["rexrank/BLEU-2"]
    expected_b = per_report_scores("rexrank/BLEU-2", good, refs).mean()
    assert row["b"] == pytest.approx(expected_b) and row["difference"] > 0 and row["p_value"] < 0.05
    assert "BLEU-4" not in result["metrics"]  # only the protocol's entries
