"""Tests of the data loaders on small fixture folders written here (no downloads)."""

import json
import logging

import datasets
import numpy as np
import pytest
from PIL import Image

from helpers import write_dicom
from training.data.chexpert import CHEXPERT_OBSERVATIONS
from training.data.images import load_image, read_dicom
from training.data.loaders import FEATURES, load_annotation_json, load_hf_dataset
from training.data.reports import clean_report, select_section, split_sections


def _png(path, value=100, size=24, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size), value, dtype=np.uint8)
    arr[: size // 2] = 255 - value
    Image.fromarray(arr, mode="L").convert(mode).save(path)
    return path


# ------------------------------------------------------------------------------------------ images
def test_load_image_modes(tmp_path):
    gray = load_image(_png(tmp_path / "g.png", 40))
    assert gray.mode == "L" and np.asarray(gray)[-1, 0] == 40
    rgb = load_image(_png(tmp_path / "c.png", 40, mode="RGB"))
    assert rgb.mode == "L" and np.asarray(rgb)[-1, 0] == 40
    # 16-bit PNG holding 12-bit data: scaled by its range, not divided by 257 into near black.
    arr = np.linspace(100, 4000, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "d16.png")
    assert Image.open(tmp_path / "d16.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "d16.png"))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotonic mapping


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(bad)


def test_dicom_window_modality_lut_and_monochrome1(tmp_path):
    pixels = np.tile(np.linspace(0, 4000, 40), (8, 1)).astype(np.uint16)
    m2 = np.asarray(load_image(write_dicom(tmp_path / "a.dcm", pixels, window=(2000, 2000))), dtype=int)
    # Window [1000, 3000]: below is black, above is white, the centre is mid-grey.
    assert m2[0, 0] == 0 and m2[0, -1] == 255
    centre = np.argmin(np.abs(pixels[0].astype(int) - 2000))
    assert abs(m2[0, centre] - 128) <= 8
    assert (m2[0, pixels[0] < 1000] == 0).all() and (m2[0, pixels[0] > 3000] == 255).all()
    # MONOCHROME1 stores inverted grey levels: after reading, bone must still be bright.
    m1 = np.asarray(load_image(write_dicom(tmp_path / "b.dcm", pixels, photometric="MONOCHROME1", window=(2000, 2000))), dtype=int)
    assert np.array_equal(m1, 255 - m2)
    # Rescale slope / intercept is applied before the window (here: window in rescaled units).
    scaled = np.asarray(load_image(write_dicom(tmp_path / "c.dcm", pixels // 2, window=(2000, 2000), slope=2.0)), dtype=int)
    assert np.abs(scaled - m2).max() <= 2
    # No window: full range; a DICOM without the .dcm suffix is recognised by its magic bytes.
    plain = write_dicom(tmp_path / "d.dcm", pixels)
    renamed = plain.rename(tmp_path / "IM0001")
    full = np.asarray(load_image(renamed))
    assert full.min() == 0 and full.max() == 255
    assert read_dicom(tmp_path / "a.dcm").mode == "L"


# ------------------------------------------------------------------------------------------ reports
def test_clean_report_mimic_and_iu():
    raw = "FINDINGS:\n 1. Heart size is normal..  2. No effusion, ___ noted (stable).\n3. Dr. ___ was paged."
    assert clean_report(raw) == "findings heart size is normal . no effusion noted stable . dr . was paged ."
    assert clean_report("The lungs are clear. No pneumothorax/effusion. ", style="iu") == "the lungs are clear . no pneumothoraxeffusion ."
    assert clean_report("   ") == ""
    with pytest.raises(ValueError, match="style"):
        clean_report("x", style="chexpert")


def test_sections():
    report = "INDICATION: cough.\nFINDINGS: Lungs are clear.\nIMPRESSION: No acute process."
    parts = split_sections(report)
    assert parts == {"preamble": "INDICATION: cough.", "findings": "Lungs are clear.", "impression": "No acute process."}
    assert select_section(report, "both") == "Lungs are clear. No acute process."
    assert select_section(report, "impression") == "No acute process."
    assert select_section("No headers here.", "findings") == "No headers here."
    assert select_section("No headers here.", "impression") == ""
    with pytest.raises(ValueError, match="section"):
        select_section(report, "summary")


# ------------------------------------------------------------------------------------------ annotation.json
def _iu_fixture(root, n=(3, 1, 2)):
    ann = {}
    for split, count in zip(("train", "val", "test"), n):
        rows = []
        for i in range(count):
            sid = f"CXR{split}{i}_IM-000{i}"
            _png(root / "images" / sid / "0.png", 30 + i)
            _png(root / "images" / sid / "1.png", 60 + i)
            rows.append({"id": sid, "report": f"The heart is normal {i}. No effusion.", "image_path": [f"{sid}/0.png", f"{sid}/1.png"], "split": split})
        ann[split] = rows
    (root / "annotation.json").write_text(json.dumps(ann))
    return root / "annotation.json"


def test_annotation_json_iu_layout(tmp_path):
    dsd = load_annotation_json(_iu_fixture(tmp_path))
    assert list(dsd) == ["train", "validation", "test"]
    assert [dsd[s].num_rows for s in dsd] == [3, 1, 2]
    assert dsd["train"].features == FEATURES
    row = dsd["train"][1]
    assert row["id"] == "CXRtrain1_IM-0001"
    assert row["image_path"] == [str((tmp_path / "images/CXRtrain1_IM-0001/0.png").resolve()), str((tmp_path / "images/CXRtrain1_IM-0001/1.png").resolve())]
    assert row["report"] == "The heart is normal 1. No effusion."
    assert row["chexpert"] is None and row["study_id"] is None
    cleaned = load_annotation_json(tmp_path / "annotation.json", clean="iu", splits=["val"])
    assert list(cleaned) == ["validation"] and cleaned["validation"][0]["report"] == "the heart is normal 0 . no effusion ."


def test_annotation_json_mimic_layout(tmp_path):
    root = tmp_path / "mimic_cxr"
    rel = "p10/p10000032/s50414267/02aa804e-bde0afdd.jpg"
    root.joinpath("images", rel).parent.mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(root / "images" / rel)
    labels = dict.fromkeys(CHEXPERT_OBSERVATIONS)
    labels["Cardiomegaly"] = 1
    entry = {"id": "02aa804e", "study_id": 50414267, "subject_id": 10000032, "report": "There is no focal consolidation.", "image_path": [rel], "chexpert": labels}
    (root / "annotation.json").write_text(json.dumps({"train": [entry], "val": [entry], "test": [entry]}))
    dsd = load_annotation_json(root / "annotation.json")
    row = dsd["test"][0]
    assert row["study_id"] == "50414267" and row["subject_id"] == "10000032"
    assert row["chexpert"]["Cardiomegaly"] == 1 and row["chexpert"]["Edema"] is None
    assert load_image(row["image_path"][0]).size == (16, 16)


def _rewrite(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_annotation_json_missing_image_raises_or_skips(tmp_path, caplog):
    ann = _iu_fixture(tmp_path)
    (tmp_path / "images/CXRtrain2_IM-0002/1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"row 2.*CXRtrain2_IM-0002/1\.png"):
        load_annotation_json(ann)
    with caplog.at_level(logging.WARNING, logger="training.data.loaders"):
        dsd = load_annotation_json(ann, on_error="skip")
    assert dsd["train"].num_rows == 2 and "CXRtrain2_IM-0002" not in dsd["train"]["id"]
    assert "Skipped 1 bad row" in caplog.text and "CXRtrain2_IM-0002/1.png" in caplog.text


def test_annotation_json_corrupt_image_with_verification(tmp_path):
    ann = _iu_fixture(tmp_path)
    (tmp_path / "images/CXRtest1_IM-0001/0.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"row 1.*corrupt image.*CXRtest1_IM-0001/0\.png"):
        load_annotation_json(ann, verify_images=True)
    assert load_annotation_json(ann)["test"].num_rows == 2  # without verification only at decode time
    with pytest.raises(ValueError, match="CXRtest1_IM-0001"):
        load_image(tmp_path / "images/CXRtest1_IM-0001/0.png")


def test_annotation_json_empty_report_empty_split_and_bad_keys(tmp_path, caplog):
    ann = _iu_fixture(tmp_path)
    _rewrite(ann, lambda d: d["train"][0].update(report="  "))
    with pytest.raises(ValueError, match=r"split 'train' row 0 .*report is empty"):
        load_annotation_json(ann)
    with caplog.at_level(logging.WARNING, logger="training.data.loaders"):
        assert load_annotation_json(ann, on_error="skip")["train"].num_rows == 2
    assert "report is empty" in caplog.text
    # Only one validation row, and it is bad: the split would be empty, which is always an error.
    _rewrite(ann, lambda d: d["val"][0].update(report=""))
    with pytest.raises(ValueError, match="split 'validation' has no rows"):
        load_annotation_json(ann, on_error="skip")
    _rewrite(ann, lambda d: d.update(val=[]))
    with pytest.raises(ValueError, match="split 'validation' has no rows"):
        load_annotation_json(ann, on_error="skip")
    _rewrite(ann, lambda d: (d.update(val=d["test"]), d["test"][0].pop("image_path")))
    with pytest.raises(ValueError, match=r"split 'test' row 0: missing key\(s\) \['image_path'\]"):
        load_annotation_json(ann, splits=["test"])
    _rewrite(ann, lambda d: d.update(holdout=[]))
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        load_annotation_json(ann)
    with pytest.raises(ValueError, match="impression"):
        load_annotation_json(_iu_fixture(tmp_path / "x"), section="impression")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_annotation_json(tmp_path / "nowhere.json")


# ------------------------------------------------------------------------------------------ Hugging Face formats
def test_imagefolder_with_metadata_jsonl_and_split_column(tmp_path):
    root = tmp_path / "imgs"
    rows = []
    for i in range(5):
        _png(root / f"study{i}" / "pa.png", 10 * i)
        _png(root / f"study{i}" / "lat.png", 10 * i + 5)
        rows.append({"file_name": [f"study{i}/pa.png", f"study{i}/lat.png"], "findings": f"Finding {i}.", "impression": f"Impression {i}.", "split": "val" if i == 4 else "train", "pid": i})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dsd = load_hf_dataset(root, image_column="file_name", report_column=None, findings_column="findings", impression_column="impression", split_column="split", subject_id_column="pid")
    assert list(dsd) == ["train", "validation"] and dsd["train"].num_rows == 4
    row = dsd["validation"][0]
    assert row["report"] == "Finding 4. Impression 4."
    assert row["subject_id"] == "4" and len(row["image_path"]) == 2
    assert np.asarray(load_image(row["image_path"][1]))[-1, 0] == 45
    only = load_hf_dataset(root, image_column="file_name", report_column=None, impression_column="impression", findings_column="findings", split_column="split", section="impression")
    assert only["train"][0]["report"] == "Impression 0."
    with pytest.raises(ValueError, match=r"column 'caption'.*available columns"):
        load_hf_dataset(root, image_column="file_name", report_column="caption")


def test_csv_with_dicom_paths_and_bad_rows(tmp_path, caplog):
    pixels = np.tile(np.linspace(0, 4000, 16), (16, 1)).astype(np.uint16)
    for i in range(3):
        write_dicom(tmp_path / "dicom" / f"{i}.dcm", pixels, photometric="MONOCHROME1")
    csv_path = tmp_path / "reports.csv"
    csv_path.write_text(
        "dicom,text,split,sid\n"
        "dicom/0.dcm,FINDINGS: Clear lungs.  IMPRESSION: Normal.,train,s0\n"
        "dicom/1.dcm,,train,s1\n"
        "dicom/2.dcm,No effusion.,test,s2\n"
        "dicom/9.dcm,No effusion.,test,s9\n"
    )
    with pytest.raises(ValueError, match=r"row 1 \(id 's1'\).*report is empty"):
        load_hf_dataset(csv_path, image_column="dicom", report_column="text", split_column="split", id_column="sid")
    with caplog.at_level(logging.WARNING, logger="training.data.loaders"):
        dsd = load_hf_dataset(csv_path, image_column="dicom", report_column="text", split_column="split", id_column="sid", on_error="skip", clean="mimic")
    assert "Skipped 2 bad row" in caplog.text and "9.dcm" in caplog.text
    assert dsd["train"]["id"] == ["s0"] and dsd["test"]["id"] == ["s2"]
    assert dsd["train"][0]["report"] == "clear lungs . normal ."
    img = np.asarray(load_image(dsd["test"][0]["image_path"][0]), dtype=int)
    assert img[0, 0] == 255 and img[0, -1] == 0  # MONOCHROME1 inverted
    with pytest.raises(ValueError, match=r"unknown split 'holdout'"):
        csv_path.write_text("dicom,text,split\ndicom/0.dcm,Clear.,holdout\n")
        load_hf_dataset(csv_path, image_column="dicom", report_column="text", split_column="split")


def test_save_to_disk_with_decoded_images_is_cached_as_files(tmp_path):
    images = [Image.fromarray(np.full((12, 12), 20 * i, np.uint8)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": images, "report": ["A.", "B.", "C."]}, features=datasets.Features({"image": datasets.Image(), "report": datasets.Value("string")}))
    datasets.DatasetDict({"train": ds.select([0, 1]), "validation": ds.select([2])}).save_to_disk(tmp_path / "saved")
    cache = tmp_path / "cache"
    dsd = load_hf_dataset(tmp_path / "saved", image_cache_dir=cache)
    assert list(dsd) == ["train", "validation"]
    path = dsd["validation"][0]["image_path"][0]
    assert path.startswith(str(cache)) and np.asarray(load_image(path))[0, 0] == 40
    assert not list(cache.glob(".tmp-*"))
    with pytest.raises(ValueError, match="no rows"):
        load_hf_dataset(tmp_path / "saved", image_cache_dir=cache, splits=["test"])
