"""Bootstrap intervals, named CE variants, rrg compare, RadGraph-F1 pair scores."""

import json
import random

import numpy as np
import pytest

from training.evaluation.bootstrap import bootstrap_weights, confidence_intervals, paired_test
from training.evaluation.metrics.clinical import compute_ce_variants
from training.evaluation.metrics.ngram import CiderStats, bleu_stats
from training.evaluation.scorecard import score_reports, truncate_reference

WORDS = "the heart is normal size no pleural effusion or pneumothorax mild edema left base opacity stable".split()


def _reports(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 20))) for _ in range(n)]


def test_bleu_and_cider_equal_pycocoevalcap_on_full_set_and_on_a_resample():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    hyps, refs = _reports(300, 0), _reports(300, 1)
    bleu, _ = Bleu(4).compute_score({i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)},
                                    verbose=0)
    cider, _ = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
    ours = bleu_stats(hyps, refs)
    np.testing.assert_allclose([m.value() for m in ours], bleu, rtol=1e-12)
    cider_stats = CiderStats(hyps, refs).metric()
    assert cider_stats.value() == pytest.approx(cider, rel=1e-12)
    # a bootstrap replicate equals pycocoevalcap run on the resampled (duplicated) reports: idf recomputed
    weights = bootstrap_weights(300, 2, seed=3)
    idx = [i for i in range(300) for _ in range(int(weights[1, i]))]
    resampled, _ = Cider().compute_score({k: [refs[i]] for k, i in enumerate(idx)},
                                         {k: [hyps[i]] for k, i in enumerate(idx)})
    assert cider_stats.replicates(weights)[1] == pytest.approx(resampled, rel=1e-12)
    bleu_resampled, _ = Bleu(4).compute_score({k: [refs[i]] for k, i in enumerate(idx)},
                                              {k: [hyps[i]] for k, i in enumerate(idx)}, verbose=0)
    assert ours[3].replicates(weights)[1] == pytest.approx(bleu_resampled[3], rel=1e-9)


def test_intervals_cover_value_and_shrink_with_more_reports():
    small = confidence_intervals(bleu_stats(_reports(50, 0), _reports(50, 1)), replicates=300)
    large = confidence_intervals(bleu_stats(_reports(800, 0), _reports(800, 1)), replicates=300)
    for ci in (small["BLEU-1"], large["BLEU-1"]):
        assert ci["low"] <= ci["value"] <= ci["high"]
    assert large["BLEU-1"]["high"] - large["BLEU-1"]["low"] < small["BLEU-1"]["high"] - small["BLEU-1"]["low"]


def test_ce_variants_by_hand():
    pred = [{"Edema": 1, "Pleural Effusion": -1}, {"Cardiomegaly": 1}, {}]
    ref = [{"Edema": 1, "Pleural Effusion": 1}, {"Cardiomegaly": 0}, {"Pneumothorax": -1}]
    v = compute_ce_variants(pred, ref, "chexbert")
    # uncertain negative: tp=1 (edema), fp=1 (cardiomegaly), fn=1 (effusion)
    assert v["ce_chexbert_f1_micro_14_uncertain_negative"] == pytest.approx(0.5)
    # uncertain positive: tp=2, fp=1, fn=1 (pneumothorax)
    assert v["ce_chexbert_precision_micro_14_uncertain_positive"] == pytest.approx(2 / 3)
    assert v["ce_chexbert_f1_micro_14_uncertain_positive"] == pytest.approx(2 / 3)
    # 5 obs., uncertain positive: edema + effusion tp, cardiomegaly fp -> micro F1 = 4/5
    assert v["ce_chexbert_f1_micro_5_uncertain_positive"] == pytest.approx(0.8)
    # macro over 5 (zero_division 0): edema 1, effusion 1, cardiomegaly 0, atelectasis 0, consolidation 0
    assert v["ce_chexbert_f1_macro_5_uncertain_positive"] == pytest.approx(0.4)
    # example-based over 14, uncertain negative: report F1s 2/3, 0, 0
    assert v["ce_chexbert_f1_example_14_uncertain_negative"] == pytest.approx(2 / 9)


def test_score_reports_records_protocol_and_truncation():
    preds = ["No pleural effusion. Right-sided PICC.", "Mild edema."]
    refs = ["No pleural effusion. Right-sided PICC in the SVC, stable.", "Mild pulmonary edema."]
    full = score_reports(preds, refs, meteor=False, replicates=50)
    cut = score_reports(preds, refs, meteor=False, replicates=50, reference_max_tokens=5)
    assert full["reference_truncation"].startswith("none")
    assert "max_seq_length=5" in cut["reference_truncation"]
    assert cut["BLEU-1"] != full["BLEU-1"]
    assert truncate_reference("a b c d e f", 4) == "a b c"
    for name in ("BLEU-4", "CIDEr", "ROUGE-L", "ce_rule_f1_micro_14_uncertain_negative"):
        ci = full["confidence_intervals"][name]
        assert ci["low"] <= full[name] + 1e-12 and full[name] <= ci["high"] + 1e-12
    assert full["ce_rule_f1_micro_14_uncertain_negative"] == full["clinical_efficacy"]["f1_micro_14"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rrg_compare_detects_the_better_system_and_checks_ids(tmp_path):
    from training.evaluation.compare import compare_predictions, main

    refs = _reports(120, 5)
    rng = random.Random(0)
    good = [r if rng.random() < 0.8 else "no acute process" for r in refs]
    bad = _reports(120, 9)
    _write(tmp_path / "a.jsonl", [{"id": str(i), "reference": r, "prediction": p} for i, (r, p) in enumerate(zip(refs, bad))])
    _write(tmp_path / "b.jsonl", [{"id": str(i), "reference": r, "prediction": p}
                                  for i, (r, p) in reversed(list(enumerate(zip(refs, good))))])
    result = compare_predictions(tmp_path / "a.jsonl", tmp_path / "b.jsonl", replicates=200, meteor=False)
    assert result["metrics"]["BLEU-4"]["difference"] > 0 and result["metrics"]["BLEU-4"]["p_value"] < 0.01
    assert result["metrics"]["BLEU-4"]["low"] > 0
    # the same file against itself: no difference, p = 1
    same = compare_predictions(tmp_path / "a.jsonl", tmp_path / "a.jsonl", replicates=50, meteor=False)
    assert same["metrics"]["CIDEr"]["difference"] == 0 and same["metrics"]["CIDEr"]["p_value"] == 1.0
    _write(tmp_path / "c.jsonl", [{"id": "x", "reference": "a", "prediction": "b"}])
    with pytest.raises(ValueError, match="same study ids"):
        compare_predictions(tmp_path / "a.jsonl", tmp_path / "c.jsonl", replicates=10, meteor=False)
    (tmp_path / "d.jsonl").write_text('{"id": "1", "reference": "a"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl, line 1"):
        main([str(tmp_path / "a.jsonl"), str(tmp_path / "d.jsonl"), "--no-meteor"])


def test_paired_test_zero_difference():
    stats = bleu_stats(_reports(40, 0), _reports(40, 1))
    out = paired_test(stats, stats, replicates=20)
    assert out["BLEU-2"]["difference"] == 0.0 and out["BLEU-2"]["p_value"] == 1.0


def test_radgraph_pair_f1_hand_made_graphs():
    pytest.importorskip("radeval")
    from training.evaluation.metrics.radgraph import radgraph_f1_from_annotations, radgraph_pair_f1

    def ent(tokens, label, relations=()):
        return {"tokens": tokens, "label": label, "start_ix": 0, "end_ix": 0, "relations": [list(r) for r in relations]}

    hyp = {"entities": {"1": ent("effusion", "OBS-DP"), "2": ent("pleural", "ANAT-DP", [("located_at", "1")])}}
    ref = {"entities": {"1": ent("effusion", "OBS-DP"), "2": ent("pleural", "ANAT-DP"), "3": ent("edema", "OBS-DP")}}
    # entities: hyp 2 of which 2 in ref (3) -> P 1, R 2/3, F1 0.8; with relation flags only "effusion" matches
    # -> P 1/2, R 1/3, F1 0.4; complete: same single match -> 0.4
    assert radgraph_pair_f1(hyp, ref) == pytest.approx({"simple": 0.8, "partial": 0.4, "complete": 0.4})
    assert radgraph_pair_f1(ref, ref) == pytest.approx({"simple": 1.0, "partial": 1.0, "complete": 1.0})
    # per-report scores, empty reports 0, mean as the package's F1RadGraph
    per_report = radgraph_f1_from_annotations([hyp, ref, None], [ref, ref, ref], "radgraph")
    assert per_report["RadGraph-F1-partial/radgraph"] == pytest.approx([0.4, 1.0, 0.0])
    with pytest.raises(ValueError, match="Report 0"):
        radgraph_f1_from_annotations([{"nodes": {}}], [ref], "radgraph")


def test_model_card_rows_use_the_metrics_json_names():
    from training.evaluation.metrics.clinical import card_rows

    metrics = compute_ce_variants([{"Edema": 1}], [{"Edema": 1}], "chexbert")
    rows = dict(card_rows(metrics))
    assert rows["ce_chexbert_f1_micro_14_uncertain_negative"] == 1.0
    assert rows["ce_chexbert_f1_micro_5_uncertain_positive"] == 1.0 and len(rows) == 8
    assert card_rows({"BLEU-1": 0.3}) == []


def test_score_reports_takes_saved_radgraph_annotations():
    pytest.importorskip("radeval")
    graph = {"entities": {"1": {"tokens": "edema", "label": "OBS-DP", "start_ix": 0, "end_ix": 0, "relations": []}}}
    other = {"entities": {"1": {"tokens": "effusion", "label": "OBS-DP", "start_ix": 0, "end_ix": 0, "relations": []}}}
    m = score_reports(["Mild edema.", "Effusion."], ["Mild edema.", "No effusion."], meteor=False, replicates=20,
                      radgraph_annotations=([graph, other], [graph, graph]), radgraph_model_type="radgraph")
    assert m["RadGraph-F1-partial/radgraph"] == pytest.approx(0.5)
    assert "RadGraph-F1-partial/radgraph" in m["confidence_intervals"]
