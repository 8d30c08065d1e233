"""One set of typed arguments for every command (`training.arguments`): the same data flags for `rrg train`,
`rrg evaluate` and `rrg analyze`, YAML configs, and errors that name the real flag."""

import json
from pathlib import Path

import pytest

from training.arguments import DataArguments, ScoringArguments
from training.cli import main
from training.data.loaders import load_splits
from training.evaluation.evaluator import parse_args as evaluate_args


def _r2gen_style_hf_dataset(workspace, out: Path, absolute: bool = False) -> Path:
    """The workspace's synthetic benchmark as a `save_to_disk` dataset with R2Gen-style columns: `image_path` (a
    list of paths relative to the image root, or absolute) and the report in `findings` (no `image` / `report`)."""
    import datasets

    data = workspace / "data"
    annotation = json.loads((data / "annotation.json").read_text())
    splits = {}
    for split, rows in annotation.items():
        splits[{"val": "validation"}.get(split, split)] = datasets.Dataset.from_list([
            {"uid": row["id"], "image_path": [str(data / "images" / p) if absolute else p for p in row["image_path"]],
             "findings": row["report"]} for row in rows])
    datasets.DatasetDict(splits).save_to_disk(out)
    return out


@pytest.mark.slow
def test_train_evaluate_and_analyze_read_the_same_hf_dataset_with_the_same_flags(workspace, tmp_path):
    hf = _r2gen_style_hf_dataset(workspace, tmp_path / "hf")
    # The reference: the same studies read from the benchmark's annotation.json (section selection applied alike).
    test = load_splits(DataArguments(dataset_path=str(workspace / "data")), splits=["test"])["test"]
    references = dict(zip(test["id"], test["report"]))
    columns = ["--image_column", "image_path", "--report_column", "findings", "--id_column", "uid",
               "--image_root", str(workspace / "data" / "images")]

    from helpers import train_recipe

    recipe = train_recipe(workspace, tmp_path / "stage1", max_steps=1, dataset_path=str(hf), save_steps=1)
    assert main(["train", "--config", str(recipe), *columns]) == 0
    model = tmp_path / "stage1" / "model"
    summary = json.loads((model / "rrg_training.json").read_text())
    assert summary["train_rows"] == 48 and summary["datasets"] == [str(hf)]

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--data", str(hf), *columns, "--output-dir", str(out),
                 "--max-samples", "3", "--max-new-tokens", "4", "--no-meteor", "--bootstrap", "0"]) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {row["id"]: row["reference"] for row in predictions} == {k: references[k] for k in list(references)[:3]}

    # The dashed spelling works too, and a YAML config carries the same fields.
    config = tmp_path / "analyze.yaml"
    config.write_text(f"dataset_path: {hf}\nimage_column: image_path\nimage_root: {workspace / 'data' / 'images'}\n")
    analysis = tmp_path / "analysis"
    assert main(["analyze", "--config", str(config), "--model", str(model), "--report-column", "findings",
                 "--image-column", "image_path", "--id-column", "uid", "--output-dir", str(analysis),
                 "--max-studies", "2", "--max-new-tokens", "3", "--num-threads", "1"]) == 0
    studied = json.loads((analysis / "analysis.json").read_text())
    assert studied["meta"]["num_studies"] == 2 and studied["attribution"]["id"] in references


def test_a_missing_column_names_the_flag_and_the_row_once(workspace, tmp_path, capsys):
    hf = _r2gen_style_hf_dataset(workspace, tmp_path / "hf", absolute=True)
    assert main(["analyze", "--model", str(tmp_path), "--data", str(hf), "--output-dir", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err
    assert "column 'image'" in error and "--image_column" in error and "image_column=" not in error
    # absolute image paths outside the image root (the dataset folder): refused, the row named once
    assert main(["analyze", "--model", str(tmp_path), "--data", str(hf), "--image_column", "image_path",
                 "--report_column", "findings", "--output-dir", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err
    assert "outside the image root" in error and error.count("row 0") == 1, error
    assert "--allow_outside_image_root" in error and "--on_bad_rows skip" in error


def test_evaluate_reads_a_config_and_the_old_flags(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("model_name_or_path: runs/stage2\ndataset_path: data/hf\nimage_column: image_path\n"
                      "num_beams: 3\nreplicates: 10\nclean: none\n")
    args, data, generation, scoring = evaluate_args(["--config", str(config), "--output-dir", "out", "--num-beams", "4",
                                                  "--no-meteor", "--bootstrap", "20", "--shuffle-images", "7"])
    assert (args.model_name_or_path, args.output_dir, args.shuffle_images_seed) == ("runs/stage2", "out", 7)
    assert (data.dataset_path, data.image_column) == ("data/hf", "image_path")
    assert generation.to_generation_kwargs() == {"num_beams": 4, "max_new_tokens": 128, "repetition_penalty": 1.0,
                                                 "do_sample": False}
    assert (scoring.replicates, scoring.meteor, scoring.clean) == (20, False, None)
    # Every scorer setting reaches score_reports under its own name (the labeler object is built from `labeler` and
    # the CheXbert paths, which also reach the scorer for ReXrank's SembScore; saved graphs are read by evaluate()).
    assert scoring.score_kwargs() == {k: v for k, v in vars(scoring).items() if k not in (
        "labeler", "radgraph_annotations")}
    with pytest.raises(ValueError, match="not_a_flag.*rrg evaluate --help"):
        evaluate_args(["--model", "m", "--output-dir", "o", "--not_a_flag", "1"])
    with pytest.raises(ValueError, match=r"on_bad_rows \(--on_bad_rows\) must be one of raise, skip"):
        evaluate_args(["--model", "m", "--output-dir", "o", "--on-bad-rows", "ignore"])
    with pytest.raises(ValueError, match="clean"):
        ScoringArguments(clean="r2gen")


def test_a_changed_data_field_is_a_different_training_run(workspace, tmp_path):
    from helpers import train_recipe
    from training.manifest import diff_manifests
    from training.sft.train import parse_args, run_manifest

    recipe = train_recipe(workspace, tmp_path / "run")
    parsed = parse_args(["--config", str(recipe)])
    assert parsed[1].dataset_path == str(workspace / "data")  # the recipe's data fields land in DataArguments
    changed = parse_args(["--config", str(recipe), "--report_section", "findings"])
    assert diff_manifests(run_manifest(*parsed), run_manifest(*changed)) == [
        "recipe.data.report_section: 'both' -> 'findings'"]
