"""Shared test fixtures: offline Hub, tiny models, a tokenizer trained once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

pytest_plugins = ["deprecation_guard"]


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    # Hub lookups hang on retries without network; every test runs offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from training.sandbox.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer()


@pytest.fixture()
def tiny(tokenizer):
    """A fresh tiny (model, processor) pair with a 32 px ViT and a 2-layer LLaMA."""
    from training.sandbox.tiny import build_tiny_model

    model, processor = build_tiny_model(tokenizer=tokenizer)
    model.eval()
    return model, processor


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """Synthetic data + tiny 'pretrained' backbones saved like Hub checkpoints (shared by the training tests)."""
    import json

    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from training.sandbox.synthetic import generate_synthetic_dataset
    from training.sandbox.tiny import (
        save_backbone,
        tiny_image_processor,
        tiny_text_config,
        tiny_vision_config,
        train_bpe_tokenizer,
    )

    root = tmp_path_factory.mktemp("train")
    data = generate_synthetic_dataset(root / "data", num_train=48, num_val=8, num_test=8, image_size=64, seed=0)
    reports = [r["report"] for r in json.loads((data / "annotation.json").read_text())["train"]]
    tokenizer = train_bpe_tokenizer(reports, image_token="<unused0>")
    torch.manual_seed(0)
    vision = AutoModel.from_config(tiny_vision_config("vit", image_size=32))
    text = AutoModelForCausalLM.from_config(tiny_text_config("llama", vocab_size=len(tokenizer)))
    save_backbone(vision, root / "vision", image_processor=tiny_image_processor(32))
    save_backbone(text, root / "text", tokenizer=tokenizer)
    return root


@pytest.fixture(scope="session")
def stage1(workspace, tmp_path_factory):
    """A finished stage 1 run (6 steps) on the workspace; its output folder."""
    from helpers import train_recipe, train_run

    out = tmp_path_factory.mktemp("s1") / "stage1"
    return train_run(train_recipe(workspace, out, max_steps=6)).parent
