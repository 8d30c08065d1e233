"""Tests of the NLG metrics, clinical efficacy, markdown tables and the local `evaluate` modules."""

import logging
import math

import pytest

from training.data.chexpert import CHEXPERT_5, CHEXPERT_OBSERVATIONS
from training.evaluation.labeler import RuleBasedLabeler
from training.evaluation.metrics import CLINICAL_EFFICACY_METRIC_PATH, NLG_METRIC_PATH, bertscore, load_metric
from training.evaluation.metrics import ngram as scoring
from training.evaluation.metrics.clinical import compute_clinical_efficacy
from training.evaluation.metrics.ngram import compute_nlg_metrics
from training.evaluation.scorecard import metrics_to_markdown

# R2Gen-style cleaned strings plus the awkward cases: an empty prediction, punctuation and case variants,
# a prediction longer than its reference and one sharing no word with it.
REFERENCES = [
    "the heart is normal in size . the mediastinum is unremarkable . the lungs are clear .",
    "there is a small left pleural effusion . no pneumothorax .",
    "mild cardiomegaly . no focal consolidation .",
    "the lungs are clear . no pleural effusion or pneumothorax .",
    "moderate pulmonary edema . bibasilar atelectasis .",
    "endotracheal tube terminates 4 cm above the carina .",
    "No acute cardiopulmonary process.",
    "Heart size is normal. Lungs are clear.",
]
PREDICTIONS = [
    "the heart is normal in size . the mediastinum is unremarkable . the lungs are clear .",
    "",
    "MILD CARDIOMEGALY . NO FOCAL CONSOLIDATION .",
    "the lungs are clear, no pleural effusion or pneumothorax!",
    "moderate pulmonary edema . bibasilar atelectasis . small bilateral pleural effusions . mild cardiomegaly .",
    "pacemaker in place",
    "no acute cardiopulmonary process .",
    "Heart size is normal.  Lungs are clear.\nNo effusion.",
]


def _reference_scores(gts, res, meteor_scorer):
    """pycocoevalcap called directly, exactly as R2Gen's compute_scores does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU-{n}": b for n, b in enumerate(bleu, start=1)})
    if meteor_scorer is not None:
        out["METEOR"] = meteor_scorer.compute_score(gts, res)[0]
    out["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


@pytest.fixture(scope="module")
def reference_meteor():
    # pycocoevalcap's own Meteor scorer. Java start-up and loading the paraphrase table take most of
    # the test time, so the reference calls share the JVM that training.evaluation.scoring keeps: the scorer
    # object is pycocoevalcap's class and the jar is deterministic, only the start-up is saved.
    if not scoring.java_available():
        pytest.skip("java is not installed; METEOR cannot be checked")
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = scoring._get_meteor()
    assert type(meteor) is Meteor
    return meteor


@pytest.fixture(scope="module")
def our_nlg():
    return compute_nlg_metrics(PREDICTIONS, REFERENCES)


def test_nlg_equals_pycocoevalcap(reference_meteor, our_nlg):
    # Our default ("r2gen") only collapses whitespace; the rest is pycocoevalcap's.
    gts = {i: [" ".join(r.split())] for i, r in enumerate(REFERENCES)}
    res = {i: [" ".join(p.split())] for i, p in enumerate(PREDICTIONS)}
    expected = _reference_scores(gts, res, reference_meteor)
    for name in scoring.NLG_METRIC_NAMES:
        assert our_nlg[name] == pytest.approx(expected[name], abs=1e-12), name
    assert our_nlg["tokenization"].startswith("r2gen")
    assert our_nlg["implementation"].startswith("pycocoevalcap")
    assert our_nlg["num_samples"] == len(PREDICTIONS)
    assert our_nlg["warnings"] == []
    # Sanity: the numbers are informative (neither perfect nor zero) and in range.
    assert 0.1 < our_nlg["BLEU-4"] < 1.0 and 0.0 < our_nlg["METEOR"] < 1.0
    assert our_nlg["BLEU-1"] >= our_nlg["BLEU-4"]


def test_nlg_exact_match_and_case_sensitivity(reference_meteor):
    same = compute_nlg_metrics(REFERENCES[:4], REFERENCES[:4], meteor=False)
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L"):
        assert same[name] == pytest.approx(1.0, abs=1e-6)
    # The r2gen path does not lower-case: case variants score lower than exact copies...
    upper = compute_nlg_metrics([r.upper() for r in REFERENCES[:4]], REFERENCES[:4], meteor=False)
    assert upper["BLEU-1"] < 0.5
    # ...while the PTB path lower-cases and strips punctuation, as pycocoevalcap's COCO evaluation does.
    ptb = compute_nlg_metrics([r.upper() for r in REFERENCES[:4]], REFERENCES[:4], tokenization="ptb", meteor=False)
    assert ptb["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert ptb["tokenization"].startswith("ptb")


def test_nlg_ptb_path_equals_pycocoevalcap():
    if not scoring.java_available():
        pytest.skip("java is not installed; the PTB tokenizer cannot run")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r}] for i, r in enumerate(REFERENCES)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDICTIONS)})
    expected = _reference_scores(gts, res, None)
    ours = compute_nlg_metrics(PREDICTIONS, REFERENCES, tokenization="ptb", meteor=False)
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert ours[name] == pytest.approx(expected[name], abs=1e-12), name
    # An empty last prediction (PTBTokenizer drops trailing empty lines) must not crash.
    last_empty = compute_nlg_metrics(["no effusion .", ""], ["no effusion .", "no pneumothorax ."], "ptb", meteor=False)
    assert 0.0 < last_empty["BLEU-1"] < 1.0


def test_nlg_without_java(monkeypatch, caplog):
    monkeypatch.setattr(scoring, "java_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="training.evaluation.metrics.registry"):
        result = compute_nlg_metrics(PREDICTIONS[:3], REFERENCES[:3])
    assert "METEOR" not in result
    assert any("java" in w for w in result["warnings"])
    assert any("METEOR" in record.getMessage() for record in caplog.records)
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert name in result
    with pytest.raises(ValueError, match="java"):
        compute_nlg_metrics(PREDICTIONS[:3], REFERENCES[:3], tokenization="ptb")


def test_nlg_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_nlg_metrics(["a", "b"], ["a"], meteor=False)
    with pytest.raises(TypeError, match="list of strings"):
        compute_nlg_metrics("a", "a", meteor=False)
    with pytest.raises(TypeError, match="must be a string"):
        compute_nlg_metrics([None], ["a"], meteor=False)
    with pytest.raises(ValueError, match="empty"):
        compute_nlg_metrics([], [], meteor=False)
    with pytest.raises(ValueError, match="tokenization"):
        compute_nlg_metrics(["a"], ["a"], tokenization="spacy", meteor=False)


# --------------------------------------------------------------------------------------------------
# Clinical efficacy
# --------------------------------------------------------------------------------------------------
# One report per observation (plus a normal one), so that every observation has a positive.
CE_REPORTS = [
    "Widened mediastinum.",
    "Moderate cardiomegaly.",
    "Patchy opacity in the left upper lobe.",
    "A 2 cm nodule in the right upper lobe.",
    "Mild pulmonary edema.",
    "Right lower lobe consolidation.",
    "Right lower lobe pneumonia.",
    "Bibasilar atelectasis.",
    "Small right pneumothorax.",
    "Small left pleural effusion.",
    "Left pleural thickening.",
    "Acute fracture of the left sixth rib.",
    "Endotracheal tube in standard position.",
    "No acute cardiopulmonary process.",
    "Small left pleural effusion and bibasilar atelectasis. Mild cardiomegaly.",
]


@pytest.fixture(scope="module")
def rule_labeler():
    return RuleBasedLabeler()


def test_ce_identical_reports_is_one(rule_labeler):
    ce = compute_clinical_efficacy(CE_REPORTS, CE_REPORTS, labeler=rule_labeler)
    for subset in ("14", "5"):
        for avg in ("micro", "macro"):
            for name in ("precision", "recall", "f1"):
                assert ce[f"{name}_{avg}_{subset}"] == 1.0, (name, avg, subset)
    assert ce["labeler"] == "rrg-rule-based-v1"
    assert "only when its label is 1" in ce["positive_definition"]
    assert set(ce["per_observation"]) == set(CHEXPERT_OBSERVATIONS)
    assert ce["per_observation"]["Pleural Effusion"]["support"] == 2
    assert ce["per_observation"]["Cardiomegaly"]["support"] == 2
    assert ce["num_samples"] == len(CE_REPORTS)


def test_ce_one_flipped_finding_drops_as_expected(rule_labeler):
    predictions = list(CE_REPORTS)
    # Flip the effusion of report 9 to absent: one false negative for Pleural Effusion (support 2),
    # and that report becomes normal, so one false positive for No Finding (support 2: the normal
    # report and the one with only a device).
    predictions[9] = "No pleural effusion."
    ce = compute_clinical_efficacy(predictions, CE_REPORTS, labeler=rule_labeler)
    effusion = ce["per_observation"]["Pleural Effusion"]
    assert (effusion["support"], effusion["predicted"]) == (2, 1)
    assert effusion["precision"] == 1.0 and effusion["recall"] == 0.5 and effusion["f1"] == pytest.approx(2 / 3)
    no_finding = ce["per_observation"]["No Finding"]
    assert (no_finding["support"], no_finding["predicted"]) == (2, 3)
    assert no_finding["precision"] == pytest.approx(2 / 3) and no_finding["recall"] == 1.0
    # Reference positives over the 14 observations: 18; tp = 17, fp = 1, fn = 1.
    assert ce["precision_micro_14"] == pytest.approx(17 / 18)
    assert ce["recall_micro_14"] == pytest.approx(17 / 18)
    assert ce["f1_micro_14"] == pytest.approx(17 / 18)
    assert ce["f1_macro_14"] == pytest.approx((12 + 2 / 3 + 0.8) / 14)
    # Over the 5-subset (Atelectasis 2, Cardiomegaly 2, Consolidation 1, Edema 1, Effusion 2): tp 7, fn 1.
    assert ce["precision_micro_5"] == 1.0
    assert ce["recall_micro_5"] == pytest.approx(7 / 8)
    assert ce["f1_macro_5"] == pytest.approx((4 + 2 / 3) / 5)


def test_ce_uncertain_is_not_positive(rule_labeler):
    ce = compute_clinical_efficacy(["Possible right lower lobe pneumonia."], ["Right lower lobe pneumonia."], rule_labeler)
    pneumonia = ce["per_observation"]["Pneumonia"]
    assert (pneumonia["support"], pneumonia["predicted"], pneumonia["recall"]) == (1, 0, 0.0)


class _FixedLabeler:
    """Returns pre-set labels, to test the arithmetic independently of the rule-based labeler."""

    name = "fixed-test-labeler"

    def __init__(self, labels_by_text):
        self.labels_by_text = labels_by_text

    def label_batch(self, reports):
        return [self.labels_by_text[r] for r in reports]


def test_ce_arithmetic_and_zero_division():
    blank = {o: None for o in CHEXPERT_OBSERVATIONS}
    table = {
        "r1": {**blank, "Edema": 1, "Cardiomegaly": 1},
        "r2": {**blank, "Edema": 1},
        "p1": {**blank, "Edema": 1, "Atelectasis": 1},
        "p2": {**blank, "Edema": -1, "Cardiomegaly": 0},
    }
    labeler = _FixedLabeler(table)
    ce = compute_clinical_efficacy(["p1", "p2"], ["r1", "r2"], labeler=labeler)
    # Edema tp1 fn1; Cardiomegaly fn1; Atelectasis fp1 -> tp 1, fp 1, fn 2.
    assert ce["precision_micro_14"] == 0.5
    assert ce["recall_micro_14"] == pytest.approx(1 / 3)
    assert ce["f1_micro_14"] == pytest.approx(2 / 5)
    # Macro with zero_division=0 (scikit-learn's default, R2GenCMN): 11 undefined observations count as 0.
    assert ce["f1_macro_14"] == pytest.approx((2 / 3) / 14)
    assert ce["labeler"] == "fixed-test-labeler"
    # zero_division=nan leaves undefined observations out of the macro average.
    ce_nan = compute_clinical_efficacy(["p1", "p2"], ["r1", "r2"], labeler=labeler, zero_division=float("nan"))
    assert ce_nan["f1_macro_14"] == pytest.approx((2 / 3) / 3)
    assert math.isnan(ce_nan["per_observation"]["Fracture"]["f1"])
    assert set(CHEXPERT_5) <= set(ce["per_observation"])
    with pytest.raises(TypeError, match="label_batch"):
        compute_clinical_efficacy(["p1"], ["r1"], labeler=object())


def test_ce_default_labeler_is_rule_based():
    ce = compute_clinical_efficacy(["No pneumothorax."], ["Small pneumothorax."])
    assert ce["labeler"] == RuleBasedLabeler.name
    assert ce["recall_micro_14"] == 0.0


def test_metrics_to_markdown(our_nlg, rule_labeler):
    ce = compute_clinical_efficacy(CE_REPORTS, CE_REPORTS, labeler=rule_labeler)
    text = metrics_to_markdown({"nlg": our_nlg, "clinical_efficacy": ce})
    assert "| BLEU-4 | " in text and "| METEOR | " in text and "| CIDEr | " in text
    assert "| CE F1 (micro, 14 obs.) | 1.0000 |" in text
    assert "| CE F1 (macro, 5 obs.) | 1.0000 |" in text
    assert "`rrg-rule-based-v1`" in text
    assert "### Clinical efficacy per observation" in text
    assert "| Pleural Effusion | 2 | 2 | 1.0000 | 1.0000 | 1.0000 |" in text
    # A flat merged dict renders the same tables.
    assert metrics_to_markdown({**our_nlg, **ce}) == text
    with pytest.raises(TypeError):
        metrics_to_markdown([1, 2])


# --------------------------------------------------------------------------------------------------
# Local evaluate modules (offline)
# --------------------------------------------------------------------------------------------------
def test_evaluate_modules_load_offline_and_wrap_scoring(monkeypatch, our_nlg, rule_labeler):
    import evaluate
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nlg = evaluate.load(str(NLG_METRIC_PATH))
    result = nlg.compute(predictions=PREDICTIONS, references=REFERENCES)
    for name in scoring.NLG_METRIC_NAMES:
        assert result[name] == pytest.approx(our_nlg[name], abs=1e-12), name

    ce_module = load_metric("rrg_clinical_efficacy")
    assert ce_module.name == "rrg_clinical_efficacy"
    predictions = list(CE_REPORTS)
    predictions[9] = "No pleural effusion."
    result = ce_module.compute(predictions=predictions, references=CE_REPORTS)
    expected = compute_clinical_efficacy(predictions, CE_REPORTS, labeler=rule_labeler)
    assert result == expected
    assert result["labeler"] == "rrg-rule-based-v1"
    assert evaluate.load(str(CLINICAL_EFFICACY_METRIC_PATH)).name == "rrg_clinical_efficacy"
    with pytest.raises(ValueError, match="Unknown rrg metric"):
        load_metric("bleu")


# --------------------------------------------------------------------------------------------------
# Optional BERTScore with a local checkpoint (tiny random BERT here; no download)
# --------------------------------------------------------------------------------------------------
def test_bertscore_with_local_checkpoint(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "small", "left", "pleural", "effusion", "heart", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    model_dir = tmp_path / "tiny-bert"
    BertTokenizer(str(tmp_path / "vocab.txt"), model_max_length=64).save_pretrained(str(model_dir))
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(str(model_dir))

    refs = ["small left pleural effusion .", "no effusion ."]
    same = bertscore.compute_bertscore(refs, refs, model_dir)
    assert same["BERTScore-F1"] == pytest.approx(1.0, abs=1e-5)
    assert same["bertscore_layer"] == 2
    other = bertscore.compute_bertscore(["heart .", "small heart ."], refs, model_dir, num_layers=1)
    assert other["BERTScore-F1"] < 0.999
    assert "no idf" in other["bertscore_settings"]
    # the reference implementation: the package's public entry point on the same model and layer
    import bert_score

    for layer in (1, 2):
        cands, refs2 = ["heart .", "small heart .", "no no no"], ["small left pleural effusion .", "no effusion .", "heart ."]
        ours = bertscore.compute_bertscore(cands, refs2, model_dir, num_layers=layer)
        p, r, f = bert_score.score(cands, refs2, model_type=str(model_dir), num_layers=layer, idf=False)
        for name, expected in (("P", p), ("R", r), ("F1", f)):
            assert ours[f"BERTScore-{name}_per_report"] == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        bertscore.compute_bertscore(refs, refs, tmp_path / "absent")
    with pytest.raises(ValueError, match="num_layers"):
        bertscore.compute_bertscore(refs, refs, model_dir, num_layers=5)
