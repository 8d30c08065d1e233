"""Tests of the CheXpert-style labelers (rule-based and CheXbert loading path)."""

import json
import logging
import shutil
from collections import OrderedDict

import pytest

from training.data.chexpert import CHEXPERT_5, CHEXPERT_OBSERVATIONS, NEGATIVE, NOT_MENTIONED, POSITIVE, UNCERTAIN
from training.evaluation.labeler import (
    CHEXBERT_DOWNLOAD_HINT,
    LABELER_DATA_DIR,
    CheXbertLabeler,
    RuleBasedLabeler,
    get_labeler,
)

logger = logging.getLogger(__name__)

P, N, U, B = POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED


@pytest.fixture(scope="module")
def labeler():
    return RuleBasedLabeler()


# (report, {observation: expected label}); observations not listed are not checked here.
HAND_WRITTEN = [
    # plain mentions
    ("Mild cardiomegaly.", {"Cardiomegaly": P, "No Finding": B}),
    ("The heart is moderately enlarged.", {"Cardiomegaly": P}),
    ("Moderate pulmonary edema.", {"Edema": P}),
    ("Focal consolidation in the right lower lobe.", {"Consolidation": P, "Pneumonia": B}),
    ("Right lower lobe pneumonia.", {"Pneumonia": P}),
    ("Bibasilar atelectasis.", {"Atelectasis": P}),
    ("Large right pneumothorax.", {"Pneumothorax": P}),
    ("A 1.5 cm nodule in the right upper lobe.", {"Lung Lesion": P}),
    ("Patchy opacity in the lingula.", {"Lung Opacity": P}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": P}),
    ("Left pleural thickening with calcified pleural plaques.", {"Pleural Other": P, "Pleural Effusion": B}),
    ("Acute displaced fracture of the right fifth rib.", {"Fracture": P}),
    ("Hydropneumothorax on the right.", {"Pneumothorax": P, "Pleural Effusion": P}),
    # negations
    ("No pneumothorax.", {"Pneumothorax": N, "No Finding": P}),
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N, "No Finding": P}),
    ("The lungs are free of consolidation.", {"Consolidation": N}),
    ("Without evidence of pulmonary edema.", {"Edema": N}),
    ("The left pneumothorax has resolved.", {"Pneumothorax": N}),
    ("Pneumonia is unlikely.", {"Pneumonia": N}),
    ("The heart size is normal.", {"Cardiomegaly": N}),
    ("Heart is not enlarged.", {"Cardiomegaly": N}),
    ("The cardiomediastinal silhouette is within normal limits.", {"Enlarged Cardiomediastinum": N, "Cardiomegaly": N}),
    ("No displaced rib fracture is seen.", {"Fracture": N}),
    ("Pericardial effusion. No pleural effusion.", {"Pleural Effusion": N}),
    # pseudo-negations are not negations
    ("No change in the moderate right pleural effusion.", {"Pleural Effusion": P}),
    ("No interval change in bibasilar atelectasis.", {"Atelectasis": P}),
    # uncertainty
    ("Possible early pneumonia.", {"Pneumonia": U, "No Finding": B}),
    ("Right basilar opacity may represent atelectasis or pneumonia.",
     {"Lung Opacity": P, "Atelectasis": U, "Pneumonia": U}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": U}),
    ("Linear left basilar opacity, likely atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
    ("Opacity concerning for pneumonia.", {"Pneumonia": U}),
    ("Atelectasis versus pneumonia in the left lower lobe.", {"Atelectasis": U, "Pneumonia": U}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": U}),
    ("Findings suggestive of mild pulmonary edema.", {"Edema": U}),
    # mixed polarity in one sentence: the nearest cue decides
    ("There is no pneumothorax, but there is a small right pleural effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    ("No pneumothorax, small left pleural effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    ("Possible small effusion, no pneumothorax.", {"Pleural Effusion": U, "Pneumothorax": N}),
    ("Cardiomegaly without pulmonary edema.", {"Cardiomegaly": P, "Edema": N}),
    # laterality: a finding on one side and its absence on the other is positive
    ("Small left pleural effusion. No right pleural effusion.", {"Pleural Effusion": P}),
    ("No left pneumothorax. Small right apical pneumothorax.", {"Pneumothorax": P}),
    ("Right-sided pleural effusion.", {"Pleural Effusion": P}),
    ("Bilateral pleural effusions, left greater than right.", {"Pleural Effusion": P}),
    # "No Finding"
    ("No acute cardiopulmonary process.", {o: (P if o == "No Finding" else B) for o in CHEXPERT_OBSERVATIONS}),
    ("No acute cardiopulmonary process. Small left pleural effusion.", {"Pleural Effusion": P, "No Finding": B}),
    ("No acute intrathoracic abnormality.", {"No Finding": P}),
    # devices
    ("Endotracheal tube terminates 4 cm above the carina.", {"Support Devices": P, "No Finding": P}),
    ("Right PICC line tip in the SVC.", {"Support Devices": P}),
    ("Left chest wall pacemaker with leads in the right atrium and ventricle.", {"Support Devices": P}),
    ("Nasogastric tube courses below the diaphragm.", {"Support Devices": P}),
    ("The endotracheal tube has been removed.", {"Support Devices": N}),
    ("Interval removal of the right chest tube. No pneumothorax.", {"Support Devices": N, "Pneumothorax": N}),
    ("Right IJ central venous catheter in place. Mild cardiomegaly.",
     {"Support Devices": P, "Cardiomegaly": P, "No Finding": B}),
    # R2Gen-cleaned text
    ("the heart is normal in size . the mediastinum is unremarkable . the lungs are clear .",
     {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N, "No Finding": P}),
    # decimals and numbered impressions do not confuse sentence splitting
    ("IMPRESSION: 1. Moderate pulmonary edema. 2. No pneumothorax.", {"Edema": P, "Pneumothorax": N}),
]


@pytest.mark.parametrize(("report", "expected"), HAND_WRITTEN, ids=[r[:40] for r, _ in HAND_WRITTEN])
def test_hand_written_sentences(labeler, report, expected):
    labels = labeler.label(report)
    assert list(labels) == list(CHEXPERT_OBSERVATIONS)
    got = {obs: labels[obs] for obs in expected}
    assert got == expected


def test_full_label_dict(labeler):
    labels = labeler.label("Small left pleural effusion. No pneumothorax. Possible early pneumonia.")
    expected = {obs: B for obs in CHEXPERT_OBSERVATIONS}
    expected.update({"Pleural Effusion": P, "Pneumothorax": N, "Pneumonia": U})
    assert labels == expected


def test_no_finding_rule(labeler):
    # Support devices do not prevent "No Finding"; a positive or uncertain pathology does; never 0.
    assert labeler.label("Pacemaker in place. No pleural effusion.")["No Finding"] == P
    assert labeler.label("Possible pneumonia.")["No Finding"] is None
    assert labeler.label("Small pneumothorax.")["No Finding"] is None
    # An empty report has nothing positive: the CheXpert labeler's rule gives No Finding 1.
    assert labeler.label("") == {obs: (P if obs == "No Finding" else B) for obs in CHEXPERT_OBSERVATIONS}


def test_case_and_whitespace_insensitive(labeler):
    assert labeler.label("NO  PNEUMOTHORAX.\n\nSMALL LEFT\nPLEURAL EFFUSION.") == labeler.label(
        "no pneumothorax. small left pleural effusion."
    )


def test_label_batch_and_input_errors(labeler):
    reports = [r for r, _ in HAND_WRITTEN[:5]]
    assert labeler.label_batch(reports) == [labeler.label(r) for r in reports]
    with pytest.raises(TypeError, match="string"):
        labeler.label(None)
    with pytest.raises(TypeError, match="list of strings"):
        labeler.label_batch("No pneumothorax.")


def test_phrase_lists_are_data(tmp_path):
    assert (LABELER_DATA_DIR / "mentions.json").is_file()
    assert (LABELER_DATA_DIR / "cues.json").is_file()
    cues = json.loads((LABELER_DATA_DIR / "cues.json").read_text())
    for phrase in ("no", "without", "free of"):
        assert phrase in cues["pre_negation"]
    assert any("excluded" in p for p in cues["post_uncertainty"])
    assert any("change" in p for p in cues["pseudo_negation"])

    # Editing the data changes the labeler: add a made-up mention phrase.
    data = tmp_path / "data"
    shutil.copytree(LABELER_DATA_DIR, data)
    mentions = json.loads((data / "mentions.json").read_text())
    mentions["Lung Lesion"]["mentions"].append("zorblax")
    (data / "mentions.json").write_text(json.dumps(mentions))
    assert RuleBasedLabeler(data).label("A zorblax in the left lung.")["Lung Lesion"] == P
    assert RuleBasedLabeler().label("A zorblax in the left lung.")["Lung Lesion"] is None

    mentions["Not An Observation"] = {"mentions": ["x"]}
    (data / "mentions.json").write_text(json.dumps(mentions))
    with pytest.raises(ValueError, match="not CheXpert observations"):
        RuleBasedLabeler(data)
    with pytest.raises(FileNotFoundError, match="mentions.json"):
        RuleBasedLabeler(tmp_path / "missing")


def test_get_labeler():
    assert isinstance(get_labeler(), RuleBasedLabeler)
    assert get_labeler("rule").name == "rrg-rule-based-v1"
    with pytest.raises(ValueError, match="Unknown labeler"):
        get_labeler("magic")
    with pytest.raises(ValueError, match="checkpoint_path"):
        get_labeler("chexbert")


# --------------------------------------------------------------------------------------------------
# Agreement with the synthetic benchmark's ground-truth labels
# --------------------------------------------------------------------------------------------------
def _agreement(labeler, entries):
    agree = total = exact = 0
    for report, truth in entries:
        labels = labeler.label(report)
        same = [labels[o] == truth[o] for o in CHEXPERT_OBSERVATIONS]
        agree += sum(same)
        total += len(same)
        exact += all(same)
    return agree / total, exact / len(entries)


def test_agreement_with_synthetic_benchmark(labeler, tmp_path):
    from training.sandbox import synthetic
    out = synthetic.generate_synthetic_dataset(
        tmp_path / "synthetic", num_train=2, num_val=2, num_test=200, image_size=32, seed=0, num_workers=1
    )
    annotation = json.loads((out / "annotation.json").read_text())
    entries = [(e["report"], e["chexpert"]) for split in annotation.values() for e in split]
    per_label, exact = _agreement(labeler, entries)
    logger.info("synthetic benchmark (%d reports): per-label agreement %.4f, exact %.4f", len(entries), per_label, exact)
    assert per_label >= 0.98
    assert exact >= 0.9

    # Larger sample straight from the report writer (no images): the same measurement on 1000 reports.
    import numpy as np

    rng = np.random.default_rng(1234)
    entries = []
    for _ in range(1000):
        report = synthetic.write_report(synthetic.sample_findings(rng), rng)
        entries.append((report.text, report.chexpert))
    per_label, exact = _agreement(labeler, entries)
    logger.info("synthetic report writer (1000 reports): per-label agreement %.4f, exact %.4f", per_label, exact)
    assert per_label >= 0.98
    # The 5 CheXpert competition observations must agree on every report.
    for report, truth in entries[:300]:
        labels = labeler.label(report)
        assert {o: labels[o] for o in CHEXPERT_5} == {o: truth[o] for o in CHEXPERT_5}, report


# --------------------------------------------------------------------------------------------------
# CheXbert: a tiny random model saved in the released checkpoint format exercises the real loading path
# --------------------------------------------------------------------------------------------------
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "small", "left", "pleural", "effusion", "pneumo",
         "##thorax", "."]  # fmt: skip


def _save_tiny_chexbert(path, head_classes=None, seed=0):
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    bert = BertModel(_tiny_config())
    state = OrderedDict()
    for key, value in bert.state_dict().items():
        if key.endswith("position_ids"):
            continue  # the released checkpoint predates this buffer
        state[f"module.bert.{key}"] = value
    for i in range(len(CHEXPERT_OBSERVATIONS)):
        classes = 2 if i == len(CHEXPERT_OBSERVATIONS) - 1 else 4
        weight = torch.randn(classes, _tiny_config().hidden_size)
        bias = torch.zeros(classes)
        if head_classes is not None:
            weight.zero_()
            bias[head_classes[i]] = 5.0
        state[f"module.linear_heads.{i}.weight"] = weight
        state[f"module.linear_heads.{i}.bias"] = bias
    torch.save({"model_state_dict": state, "epoch": 0}, path)
    return state


def _tiny_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )  # fmt: skip


def _save_tokenizer(folder, with_config=True):
    from transformers import BertTokenizer

    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(folder))
    if with_config:  # like a saved bert-base-uncased folder: gives the number of attention heads
        _tiny_config().save_pretrained(str(folder))
    return folder


def test_chexbert_loads_released_format_and_maps_classes(tmp_path):
    import torch
    tokenizer = _save_tokenizer(tmp_path / "tokenizer")
    # Head i predicts class i % 4 (the "No Finding" head: class 1) whatever the input.
    head_classes = [i % 4 for i in range(13)] + [1]
    checkpoint = tmp_path / "chexbert.pth"
    state = _save_tiny_chexbert(checkpoint, head_classes)

    labeler = CheXbertLabeler(checkpoint, tokenizer)
    assert labeler.name == "chexbert"
    # Weights really come from the file (prefix "module." stripped).
    loaded = labeler.model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key[len("module.") :]], value)

    mapping = {0: None, 1: 1, 2: 0, 3: -1}  # CheXbert: blank, positive, negative, uncertain
    expected = {obs: mapping[c] for obs, c in zip(CHEXPERT_OBSERVATIONS, head_classes, strict=True)}
    expected["No Finding"] = 1
    reports = ["No pneumothorax.", "", "Small left pleural effusion. " * 40]  # empty and > max length
    assert labeler.label_batch(reports) == [expected] * 3
    assert labeler.label("no effusion") == expected
    assert get_labeler("chexbert", checkpoint_path=checkpoint, tokenizer_name_or_path=tokenizer).name == "chexbert"


def test_chexbert_random_model_matches_manual_forward(tmp_path):
    import torch
    tokenizer = _save_tokenizer(tmp_path / "tokenizer")
    checkpoint = tmp_path / "chexbert.pth"
    _save_tiny_chexbert(checkpoint, seed=3)
    labeler = CheXbertLabeler(checkpoint, tokenizer, batch_size=2)
    reports = ["No pneumothorax.", "Small left pleural effusion.", "no", "pleural effusion ."]
    batched = labeler.label_batch(reports)
    assert batched == [labeler.label(r) for r in reports]  # padding does not change the outputs

    # Same classes as a plain BertModel + heads built from the checkpoint by hand.
    from transformers import BertModel

    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    bert = BertModel(_tiny_config())
    bert.load_state_dict({k[len("module.bert.") :]: v for k, v in state.items() if k.startswith("module.bert.")})
    bert.eval()
    mapping = {0: None, 1: 1, 2: 0, 3: -1}
    for report, labels in zip(reports, batched):
        ids = labeler.tokenizer(report, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            cls = bert(ids)[0][:, 0, :]
        for i, obs in enumerate(CHEXPERT_OBSERVATIONS):
            logits = cls @ state[f"module.linear_heads.{i}.weight"].T + state[f"module.linear_heads.{i}.bias"]
            assert labels[obs] == mapping[int(logits.argmax())], obs
    for labels in batched:
        assert set(labels.values()) <= {1, 0, -1, None}
        assert labels["No Finding"] in (1, None)


def test_chexbert_missing_files_and_bad_checkpoint(tmp_path):
    import torch
    tokenizer = _save_tokenizer(tmp_path / "tokenizer")
    with pytest.raises(FileNotFoundError, match="chexbert.pth") as info:
        CheXbertLabeler(tmp_path / "absent.pth", tokenizer)
    assert "never downloaded" in str(info.value) and "stanfordmlgroup/CheXbert" in str(info.value)
    assert CHEXBERT_DOWNLOAD_HINT in str(info.value)

    checkpoint = tmp_path / "chexbert.pth"
    _save_tiny_chexbert(checkpoint)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        CheXbertLabeler(checkpoint, tmp_path / "no_tokenizer")

    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match="model_state_dict"):
        CheXbertLabeler(bad, tokenizer)
