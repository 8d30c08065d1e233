"""Nothing stale, nothing silently wrong (issue 16): faults injected one at a time into copies of small synthetic data
and runs — corrupt and escaping images, duplicate ids, non-UTF-8 annotations, evaluation into another model's
predictions, training into a finished or different run's folder — each gives an early, clear error or a counted skip."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import train_recipe as recipe
from helpers import train_run as run
from helpers import weights


@pytest.fixture(autouse=True)
def _own_check_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RRG_CACHE", str(tmp_path / "rrg-cache"))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from training.sandbox.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("safety")
    return generate_synthetic_dataset(root / "data", num_train=6, num_val=2, num_test=6, image_size=32, seed=2)


def _copy(source, tmp_path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "data"))


def _annotation(data: Path) -> dict:
    return json.loads((data / "annotation.json").read_text())


def _save_annotation(data: Path, ann: dict) -> None:
    (data / "annotation.json").write_text(json.dumps(ann))


def _image(data: Path, split: str, row: int) -> Path:
    return data / "images" / _annotation(data)[split][row]["image_path"][0]


# ------------------------------------------------------------------------------------------------ loaders
def test_non_utf8_annotation_names_file_and_byte_position(source, tmp_path):
    from training.data.loaders import load_synthetic

    data = _copy(source, tmp_path)
    raw = (data / "annotation.json").read_bytes()
    at = raw.index(b'"report": "') + len(b'"report": "') + 3
    (data / "annotation.json").write_bytes(raw[:at] + b"\xff" + raw[at + 1:])
    line = raw.count(b"\n", 0, at) + 1
    with pytest.raises(ValueError, match=rf"annotation\.json is not UTF-8 text: byte 0xff at byte offset {at} "
                                         rf"\(line {line}, "):
        load_synthetic(data)


def test_duplicate_ids_name_both_rows_or_keep_the_first(source, tmp_path):
    from training.data.loaders import load_synthetic

    data = _copy(source, tmp_path)
    ann = _annotation(data)
    ann["test"][4]["id"] = ann["test"][1]["id"]
    _save_annotation(data, ann)
    with pytest.raises(ValueError, match=rf"split 'test' row 4 \(id '{ann['test'][1]['id']}'\): duplicate id .*row 1 "
                                         "has it too"):
        load_synthetic(data)
    kept = load_synthetic(data, on_error="skip")["test"]
    assert list(kept["id"]) == [e["id"] for i, e in enumerate(ann["test"]) if i != 4]
    assert kept[1]["report"] == load_synthetic(source)["test"][1]["report"]  # the first of the two is kept


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "sub/../../annotation.json"])
def test_image_paths_escaping_the_root_are_refused_unless_allowed(source, tmp_path, bad):
    from training.data.loaders import load_synthetic

    data = _copy(source, tmp_path)
    ann = _annotation(data)
    ann["train"][2]["image_path"] = [bad]
    _save_annotation(data, ann)
    with pytest.raises(ValueError, match=r"split 'train' row 2 .*outside the image root"):
        load_synthetic(data)
    assert len(load_synthetic(data, on_error="skip")["train"]) == len(ann["train"]) - 1
    # Allowed, the path is read as given: /etc/passwd exists, so loading passes (the image check then refuses it).
    if Path(bad).is_absolute():
        rows = load_synthetic(data, allow_outside_root=True)["train"]
        assert rows[2]["image_path"] == [bad]


def test_images_inside_the_root_through_dot_dot_are_fine(source, tmp_path):
    from training.data.loaders import load_synthetic

    data = _copy(source, tmp_path)
    ann = _annotation(data)
    first = ann["train"][0]["image_path"][0]
    ann["train"][0]["image_path"] = [f"{first.split('/')[0]}/../{first}"]
    _save_annotation(data, ann)
    assert Path(load_synthetic(data)["train"][0]["image_path"][0]).is_file()


def test_hf_tables_refuse_duplicate_ids_and_escaping_paths(source, tmp_path):
    import csv

    from training.data.loaders import load_hf_dataset

    data = _copy(source, tmp_path)
    rows = [{"image": f"images/{e['image_path'][0]}", "report": e["report"], "id": e["id"], "split": "train"}
            for e in _annotation(data)["train"]]
    table = data / "table.csv"

    def write(rows):
        with open(table, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    kwargs = {"id_column": "id", "split_column": "split", "image_cache_dir": tmp_path / "cache"}
    write(rows)
    loaded = load_hf_dataset(table, **kwargs)["train"]
    assert len(loaded) == len(rows)
    write([*rows, {**rows[0], "report": "another report"}])
    with pytest.raises(ValueError, match=rf"row {len(rows)} \(id '{rows[0]['id']}'\): duplicate id .*split 'train' "
                                         "row 0 has it too"):
        load_hf_dataset(table, **kwargs)
    assert load_hf_dataset(table, on_error="skip", **kwargs)["train"]["report"] == loaded["report"]  # first kept
    write([{**rows[0], "image": "../../etc/passwd"}, *rows[1:]])
    with pytest.raises(ValueError, match="outside the image root"):
        load_hf_dataset(table, **kwargs)
    assert len(load_hf_dataset(table, on_error="skip", **kwargs)["train"]) == len(rows) - 1


# ---------------------------------------------------------------------------------------------- image check
def _break(path: Path, how: str) -> None:
    if how == "zero-byte":
        path.write_bytes(b"")
    else:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize("how", ["zero-byte", "truncated"])
def test_check_rows_names_file_and_row_or_counts_skips(source, tmp_path, how):
    from training.data.image_check import check_rows
    from training.data.loaders import load_synthetic

    data = _copy(source, tmp_path)
    bad = _image(data, "train", 3)
    _break(bad, how)
    rows = load_synthetic(data)["train"]  # loading alone passes: it only checks that the file exists
    with pytest.raises(ValueError, match=rf"split 'train' row 3 \(id '{rows[3]['id']}'\): "
                                         rf"(corrupt image|empty \(zero-byte\) image file) .*{bad.name}"):
        check_rows(rows, "train", str(data))
    assert check_rows(rows, "train", str(data), "skip") == [0, 1, 2, 4, 5]


def test_image_checks_are_cached_by_size_and_mtime(source, tmp_path, monkeypatch):
    import os

    from training.data import loaders as data_module
    from training.data.image_check import check_images

    data = _copy(source, tmp_path)
    paths = sorted(str(p) for p in (data / "images").rglob("*.png"))
    _break(Path(paths[0]), "truncated")
    first = check_images(paths)
    assert list(first) == [paths[0]]

    calls = []
    original = data_module._verify_image
    monkeypatch.setattr(data_module, "_verify_image", lambda p: calls.append(str(p)) or original(p))
    assert check_images(paths) == first and calls == []  # second run: nothing opened again
    shutil.copy(paths[2], paths[0])  # repaired: another size and mtime
    os.utime(paths[1], ns=(1, 1))  # touched: same bytes, another mtime
    assert check_images(paths) == {}
    assert sorted(calls) == sorted(paths[:2])


# ------------------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny models saved as trained folders (same architecture, different weights)."""
    from training.model_io import COMPLETE_MARKER
    from training.sandbox.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    folders = []
    for seed in (3, 4):
        model, processor = build_tiny_model(seed=seed)
        folder = root / f"model-{seed}"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        (folder / COMPLETE_MARKER).write_text(json.dumps({"stage": 1}))
        folders.append(folder)
    return folders


def _evaluate(model, data, out, *extra):
    from training.cli import main

    return main(["evaluate", "--model", str(model), "--data", str(data), "--output-dir", str(out),
                 "--max-new-tokens", "6", "--no-meteor", "--batch-size", "4", *extra])


def _predictions(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_evaluate_refuses_another_models_or_settings_predictions(source, models, tmp_path, capsys):
    a, b = models
    out = tmp_path / "eval"
    assert _evaluate(a, source, out) == 0
    reference = _predictions(out)
    metrics_a = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()

    assert _evaluate(b, source, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rrg evaluate: error: ")
    assert "model.folder" in err and "model.weights_sha256" in err
    assert _evaluate(a, source, out, "--num-beams", "3") == 2
    assert "generation.num_beams: 1 -> 3" in capsys.readouterr().err
    assert _evaluate(a, source, out, "--max-samples", "4") == 2
    assert "max_samples: null -> 4" in capsys.readouterr().err
    # Nothing was touched by the refused runs.
    assert _predictions(out) == reference and json.loads((out / "metrics.json").read_text()) == metrics_a

    # A partial mix: a model's half-finished run resumed by another model is refused too.
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:2]))
    assert _evaluate(b, source, out) == 2
    capsys.readouterr()

    # --overwrite starts fresh: the result is model b's own, equal to b evaluated into an empty folder.
    assert _evaluate(b, source, out, "--overwrite") == 0
    assert _evaluate(b, source, tmp_path / "clean-b") == 0
    assert _predictions(out) == _predictions(tmp_path / "clean-b") != reference

    # Same model and settings: a resume, accepted (and the same numbers).
    assert _evaluate(b, source, out) == 0
    assert json.loads((out / "metrics.json").read_text())["CIDEr"] == \
        json.loads((tmp_path / "clean-b" / "metrics.json").read_text())["CIDEr"]


def test_evaluate_refuses_predictions_without_a_manifest(source, models, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "predictions.jsonl").write_text(json.dumps({"id": "x", "reference": "r", "prediction": "p",
                                                       "image_path": []}) + "\n")
    assert _evaluate(models[0], source, out) == 2
    assert "without a manifest" in capsys.readouterr().err


def test_evaluate_checks_images_first_and_skips_bad_rows(source, models, tmp_path, capsys):
    data = _copy(source, tmp_path)
    bad = _image(data, "test", 2)
    _break(bad, "truncated")
    test_id = _annotation(data)["test"][2]["id"]
    capsys.readouterr()
    assert _evaluate(models[0], data, tmp_path / "e1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"split 'test' row 2 (id '{test_id}'): corrupt image" in err and bad.name in err
    assert "--on_bad_rows skip" in err
    assert not (tmp_path / "e1" / "predictions.jsonl").exists()  # refused before the first batch

    assert _evaluate(models[0], data, tmp_path / "e2", "--on-bad-rows", "skip") == 0
    metrics = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert metrics["rows_skipped_for_images"] == 1 and metrics["num_samples"] == 5
    assert test_id not in {row["id"] for row in _predictions(tmp_path / "e2")}


def test_evaluate_with_duplicate_ids_is_refused_or_scores_each_study_once(source, models, tmp_path, capsys):
    data = _copy(source, tmp_path)
    ann = _annotation(data)
    clean = _copy(source, tmp_path / "clean")
    ann["test"][3]["id"] = ann["test"][0]["id"]
    _save_annotation(data, ann)
    assert _evaluate(models[0], data, tmp_path / "e1") == 2
    assert "duplicate id" in capsys.readouterr().err
    assert _evaluate(models[0], data, tmp_path / "e2", "--on-bad-rows", "skip") == 0
    got = _predictions(tmp_path / "e2")
    assert len(got) == 5 and len({row["id"] for row in got}) == 5
    # Equal to evaluating the clean data without that row.
    clean_ann = _annotation(clean)
    del clean_ann["test"][3]
    _save_annotation(clean, clean_ann)
    assert _evaluate(models[0], clean, tmp_path / "e3") == 0
    assert [r["prediction"] for r in got] == [r["prediction"] for r in _predictions(tmp_path / "e3")]


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(source, tmp_path, capsys):
    from training.cli import main

    data = _copy(source, tmp_path)
    (data / "annotation.json").write_bytes(b'{"train": [{"id": "\xe9"}]}')
    argv = ["train", "--dataset_path", str(data), "--output_dir", str(tmp_path / "o"), "--vision_model", "v",
            "--text_model", "t", "--use_cpu", "true", "--report_to", "none", "--activation_checkpointing", "false"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "annotation.json is not UTF-8 text: byte 0xe9 at byte offset 19 (line 1, byte 20 of the line)" in err[0]
    with pytest.raises(ValueError, match="not UTF-8"):
        main([*argv, "--debug"])


# ------------------------------------------------------------------------------------------------ training
def test_training_checks_images_before_the_first_step(workspace, tmp_path, monkeypatch):  # noqa: F811
    import trl

    data = _copy(workspace / "data", tmp_path)
    bad = _image(data, "train", 5)
    _break(bad, "zero-byte")
    steps = []
    original = trl.SFTTrainer.training_step
    monkeypatch.setattr(trl.SFTTrainer, "training_step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    with pytest.raises(ValueError, match=r"split 'train' row 5 \(id .*\): empty \(zero-byte\) image file "
                                         rf".*{bad.name}"):
        run(recipe(workspace, tmp_path / "out", dataset_path=str(data), max_steps=2))
    assert steps == [] and not any((tmp_path / "out").glob("checkpoint-*"))
    final = run(recipe(workspace, tmp_path / "skip", dataset_path=str(data), max_steps=2, on_bad_rows="skip"))
    summary = json.loads((final / "rrg_training.json").read_text())
    assert summary["rows_skipped_for_images"] == {"train": 1, "validation": 0}
    assert summary["train_rows"] == len(_annotation(data)["train"]) - 1


def _kill_after(monkeypatch, steps: int):
    """Make training die (as a killed process) after `steps` optimizer steps; returns a function that undoes it."""
    import trl

    original = trl.SFTTrainer.training_step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        if calls["n"] == steps:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", step)
    return lambda: monkeypatch.setattr(trl.SFTTrainer, "training_step", original)


@pytest.mark.slow
def test_training_output_dir_is_guarded(workspace, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "stage1"
    first = recipe(workspace, out, max_steps=4, save_steps=2)
    run(first)
    finished = weights(out / "model")
    # A rerun into a finished run's folder is refused (with or without resume), and nothing is touched.
    for extra in ([], ["--resume_from_checkpoint", "last"]):
        with pytest.raises(ValueError, match="finished run"):
            run(first, *extra)
    # A different recipe is refused, naming the field, resumed or not.
    changed = ("--learning_rate", "0.05")  # the same recipe file, one field overridden
    with pytest.raises(ValueError, match=r"recipe\.training\.learning_rate: 0\.01 -> 0\.05"):
        run(first, *changed, "--resume_from_checkpoint", "last")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    torch.testing.assert_close(weights(out / "model"), finished)

    # --overwrite, killed after its first checkpoint: the old run's model/ is gone, not served as finished.
    restore = _kill_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(first, *changed, "--overwrite")
    assert not (out / "model").exists() and [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    from training.model_io import resolve_model_dir

    with pytest.raises(ValueError, match="did not finish"):
        resolve_model_dir(out)
    restore()
    # Its own recipe without resume is refused (rotation would delete its checkpoints); the old recipe too.
    with pytest.raises(ValueError, match="unfinished run of this recipe"):
        run(first, *changed)
    with pytest.raises(ValueError, match=r"learning_rate: 0\.05 -> 0\.01"):
        run(first, "--resume_from_checkpoint", "last")
    resumed = run(first, *changed, "--resume_from_checkpoint", "last")
    straight = run(recipe(workspace, tmp_path / "straight", max_steps=4, save_steps=2, learning_rate=0.05))
    a, b = weights(resumed), weights(straight)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    sa = json.loads((resumed / "rrg_training.json").read_text())
    sb = json.loads((straight / "rrg_training.json").read_text())
    assert sa["recipe"]["training"]["learning_rate"] == 0.05 and sa["global_step"] == 4
    # train_loss covers the whole run across the resume, as the uninterrupted run's.
    assert sa["train_loss"] == pytest.approx(sb["train_loss"], rel=1e-5)
    assert json.loads((out / "rrg_run.json").read_text())["status"] == "finished"


def test_train_loss_covers_the_whole_run_across_a_resume(workspace, tmp_path, monkeypatch):  # noqa: F811
    straight = run(recipe(workspace, tmp_path / "straight", max_steps=5, save_steps=3, logging_steps=2))
    restore = _kill_after(monkeypatch, 4)
    interrupted = recipe(workspace, tmp_path / "resumed", max_steps=5, save_steps=3, logging_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted)
    restore()
    resumed = run(interrupted, "--resume_from_checkpoint", "last")
    la = json.loads((straight / "rrg_training.json").read_text())["train_loss"]
    lb = json.loads((resumed / "rrg_training.json").read_text())["train_loss"]
    assert lb == pytest.approx(la, rel=1e-5)
