"""ReXrank's test JSON (all views, context -> indication, findings / findings+impression tracks) and the resumable
ReXrank-form submission (`rrg rexrank-submit`)."""

import json
from pathlib import Path

import pytest

from helpers import study_rows
from training.data.rexrank import load_rexrank_json, parse_context, rexrank_reference


def _test_file(tmp_path, count=3):
    rows = study_rows(tmp_path / "images", [f"report {i}" for i in range(count)], views=2)
    data = {}
    for i, row in enumerate(rows):
        rel = [str(Path(p).relative_to(tmp_path / "images")) for p in row["image_path"]]
        data[f"s{i}"] = {"image_path": rel, "frontal_lateral": ["Lateral", "Frontal"], "key_image_path": rel[1],
                         "context": f"Age:{40 + 10 * i}-{50 + 10 * i}. Gender:{'FM'[i % 2]}. Indication: cough {i}.",
                         "report": f"FINDINGS: Small effusion {i}. IMPRESSION: Effusion {i}."}
    data["s1"]["findings"], data["s1"]["impression"] = None, "Only an impression."
    path = tmp_path / "test.json"
    path.write_text(json.dumps(data))
    return path


def test_context_and_tracks():
    assert parse_context("Age:50-60. Gender:F. Indication: ___ with cough, fever.") == {
        "age": "50-60", "sex": "F", "indication": "___ with cough, fever."}
    assert parse_context("Gender:M. Indication: ___") == {"age": None, "sex": "M", "indication": None}
    assert parse_context(None) == {"age": None, "sex": None, "indication": None}
    entry = {"report": "INDICATION: pain. FINDINGS: Lungs clear. IMPRESSION: Normal."}
    assert rexrank_reference(entry, "findings") == "Lungs clear."
    assert rexrank_reference(entry, "findings+impression") == "Lungs clear. Normal."
    # explicit fields win over the report's sections
    assert rexrank_reference({**entry, "findings": "F.", "impression": "I."}, "findings+impression") == "F. I."
    with pytest.raises(ValueError, match="track"):
        rexrank_reference(entry, "impression")


def test_load_rows_all_views_key_first(tmp_path):
    path = _test_file(tmp_path)
    rows = load_rexrank_json(path, "findings", img_root_dir=tmp_path / "images")
    assert [r["id"] for r in rows] == ["s0", "s2"]  # s1 has no findings: not on the findings track
    assert len(rows[0]["image_path"]) == 2 and rows[0]["image_path"][0].endswith("s0_1.png")
    assert all(Path(p).is_file() for r in rows for p in r["image_path"])
    assert rows[1]["indication"] == "cough 2." and rows[1]["age"] == "60-70" and rows[1]["sex"] == "F"
    assert rows[0]["report"] == "Small effusion 0."
    both = load_rexrank_json(path, "findings+impression")
    assert [r["report"] for r in both] == ["Small effusion 0. Effusion 0.", "Only an impression.",
                                           "Small effusion 2. Effusion 2."]
    (tmp_path / "bad.json").write_text(json.dumps({"s0": {"context": ""}}))
    with pytest.raises(ValueError, match="s0.*no image_path"):
        load_rexrank_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_rexrank_json(tmp_path / "absent.json")


def test_submission_resumes_and_matches_direct_generation(tmp_path, tiny):
    from training.data.images import load_image
    from training.evaluation.generation import generate_batch
    from training.evaluation.rexrank_submit import rexrank_submission

    model, processor = tiny
    path = _test_file(tmp_path, count=4)
    out = tmp_path / "out" / "submission.json"
    generation = {"max_new_tokens": 8}
    calls = []

    def failing_loader(p):  # dies in the third batch: the first two are kept
        calls.append(p)
        if len(calls) > 4:
            raise RuntimeError("killed")
        return load_image(p)

    with pytest.raises(RuntimeError, match="killed"):
        rexrank_submission(path, out, tmp_path / "images", model=model, processor=processor, batch_size=1,
                           generation_kwargs=generation, image_loader=failing_loader)
    partial = out.with_name(out.name + ".partial.jsonl")
    assert not out.exists() and len(partial.read_text().splitlines()) == 3  # fingerprint + two studies
    calls.clear()
    result = rexrank_submission(path, out, tmp_path / "images", model=model, processor=processor, batch_size=1,
                                generation_kwargs=generation, image_loader=lambda p: calls.append(p) or load_image(p))
    assert len(calls) == 4 and not partial.exists()  # only the two missing studies (2 views each) were generated
    saved = json.loads(out.read_text())
    assert saved == result and list(saved) == ["s0", "s1", "s2", "s3"]
    original = json.loads(path.read_text())
    for sid, entry in saved.items():
        assert {k: v for k, v in entry.items() if k != "model_prediction"} == original[sid]

    # every prediction equals direct generation on the study's views (key image first) with its indication
    rows = load_rexrank_json(path, "findings+impression", img_root_dir=tmp_path / "images", skip_empty=False)
    for row in rows:
        views = [load_image(p) for p in row["image_path"]]
        (expected,) = generate_batch(model, processor, [views], generation, indications=[row["indication"]])
        assert saved[row["id"]]["model_prediction"] == expected["report"]
    plain = generate_batch(model, processor, [[load_image(p) for p in rows[0]["image_path"]]], generation)
    with_indication = generate_batch(model, processor, [[load_image(p) for p in rows[0]["image_path"]]], generation,
                                     indications=[rows[0]["indication"]])
    assert plain[0]["prompt_ids"] != with_indication[0]["prompt_ids"]

    # a partial file of other settings is refused, not mixed in
    partial.write_text(json.dumps({"fingerprint": "other"}) + "\n")
    with pytest.raises(ValueError, match="another model"):
        rexrank_submission(path, out, tmp_path / "images", model=model, processor=processor,
                           generation_kwargs=generation)
