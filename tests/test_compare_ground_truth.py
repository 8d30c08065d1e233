"""`rrg compare --labels_from dataset`: clinical efficacy of both systems against the dataset's own labels."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from training.sandbox.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("gt")
    generate_synthetic_dataset(out, num_train=2, num_val=1, num_test=24, image_size=32, seed=3, num_workers=1)
    return out


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sklearn_micro_f1(predictions, truth):
    """Reference: scikit-learn's micro F1 over the 14 observations, label 1 positive, from the labeler's labels."""
    from sklearn.metrics import f1_score

    from training.data.chexpert import CHEXPERT_OBSERVATIONS
    from training.evaluation.labeler import RuleBasedLabeler

    predicted = RuleBasedLabeler().label_batch(predictions)
    p = np.array([[row.get(o) == 1 for o in CHEXPERT_OBSERVATIONS] for row in predicted])
    t = np.array([[row.get(o) == 1 for o in CHEXPERT_OBSERVATIONS] for row in truth])
    return f1_score(t, p, average="micro", zero_division=0)


def test_compare_scores_clinical_efficacy_against_the_dataset_labels(data, tmp_path):
    from training.evaluation.compare import compare_predictions, ground_truth_labels, main

    rows = json.loads((data / "annotation.json").read_text())["test"]
    truth = ground_truth_labels(data, "test")
    assert truth == {r["id"]: r["chexpert"] for r in rows}
    # References that contradict the ground truth (every one reads normal), so scoring against the reference text and
    # against the labels must disagree; A writes the true reports, B always "normal".
    normal = "No acute cardiopulmonary process."
    _write(tmp_path / "a.jsonl", [{"id": r["id"], "reference": normal, "prediction": r["report"]} for r in rows])
    _write(tmp_path / "b.jsonl", [{"id": r["id"], "reference": normal, "prediction": normal} for r in rows])
    name = "ce_rule_f1_micro_14_uncertain_negative"
    by_text = compare_predictions(tmp_path / "a.jsonl", tmp_path / "b.jsonl", replicates=50, meteor=False)
    by_truth = compare_predictions(tmp_path / "a.jsonl", tmp_path / "b.jsonl", replicates=50, meteor=False,
                                   reference_labels=truth)
    assert by_truth["ce_reference"] == "given labels" and by_text["ce_reference"] == "reference reports"
    expected_a = _sklearn_micro_f1([r["report"] for r in rows], [r["chexpert"] for r in rows])
    expected_b = _sklearn_micro_f1([normal] * len(rows), [r["chexpert"] for r in rows])
    assert expected_a > 0.8 and expected_b < 0.5  # the data must make the point
    assert by_truth["metrics"][name]["a"] == pytest.approx(expected_a, abs=1e-12)
    assert by_truth["metrics"][name]["b"] == pytest.approx(expected_b, abs=1e-12)
    assert by_text["metrics"][name]["b"] == pytest.approx(1.0)  # "normal" matches the normal references
    # the text metrics do not depend on where the labels come from
    assert by_truth["metrics"]["BLEU-4"] == by_text["metrics"]["BLEU-4"]

    # the command line, and its errors
    out = tmp_path / "cmp.json"
    assert main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--no-meteor", "--bootstrap", "50",
                 "--labels_from", "dataset", "--dataset_path", str(data), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"][name]["a"] == pytest.approx(expected_a, abs=1e-12)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--labels_from", "dataset"])
    with pytest.raises(ValueError, match="No ground-truth labels for 24 of the 24"):
        main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--no-meteor", "--labels-from", "dataset",
              "--dataset-path", str(data), "--split", "val"])


def test_reference_labels_must_match_the_references():
    from training.evaluation.scorecard import metric_stats

    with pytest.raises(ValueError, match="reference_labels has 1 label rows for 2 references"):
        metric_stats(["a", "b"], ["a", "b"], meteor=False, reference_labels=[{}])
