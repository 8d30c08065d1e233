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
    from helpers import build_training_workspace

    return build_training_workspace(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="session")
def stage1(workspace, tmp_path_factory):
    """A finished stage 1 run (6 steps) on the workspace; its output folder."""
    from helpers import train_recipe, train_run

    out = tmp_path_factory.mktemp("s1") / "stage1"
    return train_run(train_recipe(workspace, out, max_steps=6)).parent
