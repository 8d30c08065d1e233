"""`rrg export` / `rrg push`: a trained folder (stage-2 LoRA adapter + projector, or full) becomes a Hub-ready folder
with merged safetensors weights, the remote code, the processor, a generation config and a model card read from the
run; pushing checks access before any work, and `--dry-run` lists what would go up."""

import json
import re
from pathlib import Path

import pytest
import torch

from helpers import (
    REPO_ID,
    hub_cache,
    make_adapter_run,
    make_full_run,
    python_blocks,
    reference_batch,
    run_isolated,
    write_metrics,
    xray,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def adapter_export(tmp_path_factory):
    """Stage 1 + stage 2 adapter, exported merged with metrics; plus reference logits of the PeftModel."""
    from training.model_io import load_trained
    from training.release.export import export_model
    from training.sandbox.tiny import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("run")
    stage1, stage2 = make_adapter_run(root, train_bpe_tokenizer())
    peft_model, processor = load_trained(stage2, merge=False)
    batch = reference_batch(processor)
    with torch.no_grad():
        logits = peft_model(**batch).logits
    out = export_model(stage2, root / "export", metrics=write_metrics(root / "eval"), repo_id=REPO_ID,
                       max_shard_size="100KB")
    return {"root": root, "stage1": stage1, "stage2": stage2, "export": out, "batch": dict(batch), "logits": logits}


# ------------------------------------------------------------------------------------------------ export
def test_export_merges_lora_to_the_same_logits(adapter_export):
    from modeling_rrg import RRGForConditionalGeneration

    model = RRGForConditionalGeneration.from_pretrained(adapter_export["export"]).eval()
    with torch.no_grad():
        logits = model(**adapter_export["batch"]).logits
    torch.testing.assert_close(logits, adapter_export["logits"], atol=1e-5, rtol=1e-5)
    # The merge mattered: stage 1 alone gives other logits.
    stage1 = RRGForConditionalGeneration.from_pretrained(adapter_export["stage1"]).eval()
    with torch.no_grad():
        assert not torch.allclose(stage1(**adapter_export["batch"]).logits, logits, atol=1e-4)


def test_export_folder_is_hub_ready(adapter_export):
    out = adapter_export["export"]
    names = {p.name for p in out.iterdir()}
    assert {"configuration_rrg.py", "modeling_rrg.py", "processing_rrg.py", "pipeline_rrg.py", "README.md",
            "config.json", "generation_config.json", "processor_config.json", "chat_template.jinja",
            "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= names
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) > 1, "max_shard_size=100KB should shard the tiny model"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert not any(n.startswith("adapter_") for n in names)
    assert "rrg_training.json" not in names  # run records (local paths) stay out of the release
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["custom_pipelines"]["radiology-report-generation"]["impl"] == (
        "pipeline_rrg.RadiologyReportGenerationPipeline"
    )
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_rrg.RRGForConditionalGeneration"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == 256 and generation["eos_token_id"] is not None


def test_model_card_front_matter_recipe_and_results(adapter_export):
    from huggingface_hub import ModelCard

    card = ModelCard.load(adapter_export["export"] / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-text-to-text"
    assert data["base_model"] == ["google/vit-base-patch16-224-in21k", "openlm-research/open_llama_7b"]
    assert data["datasets"] == ["rrg-org/mimic-cxr-demo"]
    assert data["license"] == "apache-2.0"
    assert {"radiology", "chest-x-ray"} <= set(data["tags"])
    results = data["model-index"][0]["results"]
    metrics = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    assert metrics["BLEU-4"] == 0.1204 and metrics["CIDEr"] == 0.2333
    assert "CE F1 (micro, 14 obs.)" in metrics
    assert "CE F1 (macro, 14 obs.)" not in metrics  # NaN is left out, not written as a number
    text = card.text
    # Both stages, read from the run summaries of the adapter and of its stage-1 base.
    assert "### Stage 1" in text and "### Stage 2" in text
    assert "| Learning rate | 0.001 |" in text and "| Learning rate | 0.0002 |" in text
    assert "| LoRA rank | 8 |" in text
    assert "rule-based-chexpert-v1" in text
    assert "not a medical device" in text.lower()
    assert "research use" in text.lower()
    assert ">=5.0,<6" in text
    assert f'model="{REPO_ID}"' in text


def test_model_card_says_how_many_views_the_model_takes(tmp_path, tokenizer):
    from training.release.card import build_card_context, render_model_card

    context = build_card_context(make_full_run(tmp_path / "stage1", tokenizer))
    two = render_model_card({**context, "max_views": 2}).text
    one = render_model_card({**context, "max_views": 1, "example_views": ["frontal.png"]}).text
    assert "one study (up to 2 views, e.g. frontal and lateral)" in " ".join(two.split())
    assert "one study (one view)" in " ".join(one.split()) and "lateral.png" not in one and "and lateral" not in one
    assert "lateral.png" in two


def test_model_card_without_metrics_says_so(tmp_path, tokenizer):
    from huggingface_hub import ModelCard

    from training.release.export import export_model

    run = make_full_run(tmp_path / "stage1", tokenizer)
    out = export_model(run, tmp_path / "export")
    card = ModelCard.load(out / "README.md")
    assert "model-index" not in card.data.to_dict()
    assert "No evaluation results were recorded" in card.text
    assert 'model="your-org/stage1"' in card.text  # placeholder id when none is given


@pytest.mark.slow  # a fresh Python process loads torch and transformers again
def test_card_quick_start_runs_as_written_in_a_fresh_process(adapter_export, tmp_path):
    """Every python block of the card runs, unchanged, where the project is not importable, resolving the repo id
    from a Hub cache layout offline (images named as in the card are placed in the working directory)."""
    from PIL import Image

    text = (adapter_export["export"] / "README.md").read_text()
    blocks = python_blocks(text)
    assert len(blocks) == 3
    for index, name in enumerate(("frontal.png", "lateral.png")):
        Image.fromarray(xray(index)).save(tmp_path / name)
    cache = hub_cache(tmp_path, adapter_export["export"])
    env = {"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for block in blocks:
        out = run_isolated(block, cwd=tmp_path, env_extra=env)
        assert out.strip(), f"the block printed nothing:\n{block}"


def test_keep_adapter_export(adapter_export, tmp_path):
    from huggingface_hub import ModelCard
    from peft import PeftModel

    from modeling_rrg import RRGForConditionalGeneration
    from training.release.export import export_model

    with pytest.raises(ValueError, match="base-model-id"):
        export_model(adapter_export["stage2"], tmp_path / "a", merge_lora=False)
    out = export_model(adapter_export["stage2"], tmp_path / "adapter", merge_lora=False,
                       base_model_id="rrg-org/rrg-tiny-stage1", repo_id="rrg-org/rrg-tiny-lora")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json", "README.md"} <= names
    assert "model.safetensors" not in names
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "rrg-org/rrg-tiny-stage1"
    assert "multi_modal_projector" in adapter_config["modules_to_save"]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == ["rrg-org/rrg-tiny-stage1"]
    base = RRGForConditionalGeneration.from_pretrained(adapter_export["stage1"])
    model = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        logits = model(**adapter_export["batch"]).logits
    torch.testing.assert_close(logits, adapter_export["logits"], atol=1e-5, rtol=1e-5)


def test_export_refuses_unfinished_missing_and_existing(tmp_path, tokenizer, adapter_export):
    from training.release.export import export_model

    with pytest.raises(FileNotFoundError):
        export_model(tmp_path / "nope", tmp_path / "out")
    run = make_full_run(tmp_path / "run", tokenizer)
    (run / "rrg_training.json").unlink()
    with pytest.raises(ValueError, match="rrg_training.json"):
        export_model(run, tmp_path / "out")
    with pytest.raises(ValueError, match="already exists"):
        export_model(adapter_export["stage2"], adapter_export["export"])
    with pytest.raises(FileNotFoundError, match="metrics"):
        export_model(adapter_export["stage2"], tmp_path / "out2", metrics=tmp_path / "no-eval")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_export_overwrite_replaces_atomically(tmp_path, tokenizer):
    from training.release.export import export_model

    run = make_full_run(tmp_path / "run", tokenizer)
    out = export_model(run, tmp_path / "export")
    (out / "stale.txt").write_text("old")
    export_model(run, tmp_path / "export", overwrite=True, dtype="bfloat16")
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_export_main_cli(tmp_path, tokenizer, capsys):
    from training.release.export import export_main

    run = make_full_run(tmp_path / "stage1", tokenizer)
    code = export_main([str(run), "--output-dir", str(tmp_path / "export"), "--repo-id", REPO_ID,
                        "--license", "other", "--dataset", "rrg-org/other-data"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    assert "license: other" in card and "rrg-org/other-data" in card
    from training.cli import main as rrg

    assert rrg(["export", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "x")]) == 2


# -------------------------------------------------------------------------------------------------- push
class _RecordingApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls an upload makes."""

    calls: list = []

    def __init__(self, endpoint=None, token=None):
        self.token = token

    def whoami(self):
        _RecordingApi.calls.append(("whoami", self.token))
        return {"name": "tester"}

    def create_repo(self, repo_id, **kwargs):
        _RecordingApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        _RecordingApi.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        _RecordingApi.calls.append(("upload_folder", kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


class _ForbiddenApi:
    def __init__(self, *args, **kwargs):
        raise AssertionError("HfApi must not be used here")


@pytest.fixture()
def no_stored_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    # The stored-login path is read once at import: point the constant at an empty place.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_push_dry_run_lists_files_and_contacts_nothing(adapter_export, monkeypatch, capsys, no_stored_token):
    import huggingface_hub

    from training.release.push import list_upload_files, push_main, push_to_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _ForbiddenApi)
    plan = push_to_hub(adapter_export["export"], "rrg-org/rrg-tiny", revision="v1", private=True, dry_run=True)
    assert plan["repo_id"] == "rrg-org/rrg-tiny" and plan["revision"] == "v1" and plan["private"]
    files = dict(plan["files"])
    assert files == dict(list_upload_files(adapter_export["export"]))
    assert files["README.md"] == (adapter_export["export"] / "README.md").stat().st_size
    assert "pipeline_rrg.py" in files and "model.safetensors.index.json" in files
    assert push_main([str(adapter_export["export"]), "--repo-id", "rrg-org/rrg-tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "rrg-org/rrg-tiny@main" in out
    for name, size in files.items():
        assert re.search(rf"{size:,d}\s+{re.escape(name)}\n", out), name


def test_push_without_token_fails_before_any_work(adapter_export, monkeypatch, no_stored_token):
    import huggingface_hub

    from training.release.push import push_to_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", _ForbiddenApi)
    with pytest.raises(ValueError, match="No Hugging Face token"):
        push_to_hub(adapter_export["export"], "rrg-org/rrg-tiny")
    from training.cli import main as rrg

    assert rrg(["push", str(adapter_export["export"]), "--repo-id", "rrg-org/rrg-tiny"]) == 2


def test_push_offline_fails_before_any_work(adapter_export, monkeypatch):
    import huggingface_hub

    from training.release.push import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    monkeypatch.setattr(huggingface_hub, "HfApi", _ForbiddenApi)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        push_to_hub(adapter_export["export"], "rrg-org/rrg-tiny")


def test_push_unreachable_hub_fails_clearly(adapter_export, monkeypatch):
    import huggingface_hub

    from training.release.push import push_to_hub

    class Unreachable(_RecordingApi):
        def whoami(self):
            raise ConnectionError("Name or service not known")

        def create_repo(self, *args, **kwargs):
            raise AssertionError("no work after a failed access check")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    with pytest.raises(ValueError, match="Cannot reach the Hugging Face Hub"):
        push_to_hub(adapter_export["export"], "rrg-org/rrg-tiny")


def test_push_uploads_with_private_repo_branch_and_message(adapter_export, monkeypatch):
    import huggingface_hub

    from training.release.push import push_main, push_to_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingApi)
    _RecordingApi.calls = []
    info = push_to_hub(adapter_export["export"], "rrg-org/rrg-tiny", private=True, revision="v1",
                       commit_message="Release v1")
    assert info.commit_url.endswith("/commit/abc")
    kinds = [call[0] for call in _RecordingApi.calls]
    assert kinds == ["whoami", "create_repo", "create_branch", "upload_folder"]
    _, repo_id, create = _RecordingApi.calls[1]
    assert repo_id == "rrg-org/rrg-tiny" and create["private"] is True and create["exist_ok"] is True
    assert _RecordingApi.calls[2][2]["branch"] == "v1"
    upload = _RecordingApi.calls[3][1]
    assert upload["folder_path"] == str(adapter_export["export"]) and upload["revision"] == "v1"
    assert upload["commit_message"] == "Release v1" and upload["repo_id"] == "rrg-org/rrg-tiny"

    _RecordingApi.calls = []
    assert push_main([str(adapter_export["export"]), "--repo-id", "rrg-org/rrg-tiny"]) == 0
    assert [call[0] for call in _RecordingApi.calls] == ["whoami", "create_repo", "upload_folder"]
    assert _RecordingApi.calls[1][2]["private"] is False


def test_push_rejects_bad_input(adapter_export, tmp_path):
    from training.release.push import push_to_hub

    with pytest.raises(FileNotFoundError):
        push_to_hub(tmp_path / "missing", "rrg-org/x", dry_run=True)
    with pytest.raises(ValueError, match="org/name"):
        push_to_hub(adapter_export["export"], "no-namespace", dry_run=True)
    with pytest.raises(ValueError, match="Invalid repo id"):
        push_to_hub(adapter_export["export"], "bad//id", dry_run=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="rrg export"):
        push_to_hub(tmp_path / "empty", "rrg-org/x", dry_run=True)
