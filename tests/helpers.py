"""Small helpers shared by tests (images, subprocess runners, training recipes, multi-process launches)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def xray(seed: int = 0, size: int = 40, dtype=np.uint8) -> np.ndarray:
    """A random grayscale 'radiograph' array."""
    rng = np.random.default_rng(seed)
    if dtype == np.uint16:
        return rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    return rng.integers(0, 256, size=(size, size), dtype=np.uint8)


# Run in a subprocess where neither `modeling_rrg` nor `training` can be imported: the saved folder must carry all
# the code it needs (that is what the Hub serves).
BLOCK_PROJECT = textwrap.dedent(
    """
    import sys
    for name in ("modeling_rrg", "training"):
        sys.modules[name] = None  # makes `import name` raise ImportError
    try:
        import modeling_rrg  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("project still importable")
    """
)


def run_isolated(code: str, cwd, env_extra=None, timeout=600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_PROJECT + textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc.stdout


def study_rows(folder, reports: list[str], views: int = 2, seed: int = 0, size: int = 40) -> list[dict]:
    """Dataset rows (`id`, `image_path` list of PNG views, `report`), one per report, images written to `folder`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, report in enumerate(reports):
        paths = []
        for v in range(views):
            path = folder / f"s{i}_{v}.png"
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
            paths.append(str(path))
        rows.append({"id": str(i), "image_path": paths, "report": report})
    return rows


def varied_reports(count: int, seed: int = 0) -> list[str]:
    """Reports of lognormally spread lengths (a few words to a few dozen), like real findings sections."""
    rng = np.random.default_rng(seed)
    words = "the heart size is normal lungs are clear no pleural effusion or pneumothorax mild cardiomegaly".split()
    lengths = np.clip(rng.lognormal(mean=2.5, sigma=0.7, size=count).astype(int), 2, 80)
    return [" ".join(words[j] for j in rng.integers(0, len(words), n)) + "." for n in lengths]


def stage1_trainable(model):
    """Stage 1's set-up on a model: everything frozen but the projector, training mode."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    model.train()
    return model


def loss_and_grads(model, batch):
    """The model's loss on `batch` and the gradients of its trainable parameters (by name)."""
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------- training recipes
def train_recipe(workspace, out, **overrides):
    """Write a tiny CPU training recipe (see the `workspace` fixture) next to `out`; fields override the defaults."""
    from pathlib import Path

    import yaml

    base = {
        "stage": 1, "dataset_path": str(workspace / "data"), "vision_model": str(workspace / "vision"),
        "text_model": str(workspace / "text"), "num_visual_tokens": 4, "output_dir": str(out), "max_steps": 4,
        "per_device_train_batch_size": 4, "learning_rate": 0.01, "logging_steps": 2, "save_steps": 2,
        "bf16": False, "activation_checkpointing": False, "report_to": "none", "max_length": 256, "use_cpu": True,
        "eval_strategy": "no", "seed": 0, "data_seed": 0, "disable_tqdm": True, "save_only_model": False,
    }
    base.update(overrides)
    path = Path(out).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base))
    return path


def train_run(path, *extra):
    """Run `rrg train --config path [extra ...]` in process; returns the final model folder."""
    from training.sft.train import parse_args, train

    return train(*parse_args(["--config", str(path), *extra]))


# ------------------------------------------------------------------------------------ multi-process launches
ACCELERATE_CONFIGS = REPO_ROOT / "training" / "sft" / "recipes" / "accelerate"
# How the README launches each backend: torchrun, or `accelerate launch` with one of the shipped configs.
LAUNCHERS = {
    "ddp": ["torchrun"],
    "fsdp2": ["accelerate", "fsdp.yaml"],
    "deepspeed_zero2": ["accelerate", "deepspeed_zero2.yaml"],
    "deepspeed_zero3": ["accelerate", "deepspeed_zero3.yaml"],
}


def free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launch(backend: str, config, *extra: str, tests_importable: bool = False, timeout: int = 900) -> None:
    """The README's command for `backend` (a key of `LAUNCHERS`) with two CPU processes: `rrg train`'s module on the
    recipe `config` (any stage). `tests_importable` puts tests/ on the processes' path (rewards such as
    `test_rl:favour_effusion`)."""
    launcher = LAUNCHERS[backend]
    if launcher[0] == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    else:
        # The shipped GPU configs, with the two overrides a CPU needs: the process count and no bf16 autocast.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / launcher[1]),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", free_port()]
    cmd += ["-m", "training.sft.train", "--config", str(config), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if tests_importable:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "tests"), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{backend} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def weights(folder):
    from pathlib import Path

    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


# ------------------------------------------------------------------------------------------ export fixtures
REPO_ID = "rrg-org/rrg-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ------------------------------------------------------------------------------------------- run fixtures
def _summary(stage: int, mode: str, model, base_models: dict, datasets: list[str]) -> dict:
    """A realistic `rrg_training.json`. Training (`training/sft/train.py`) writes the real one, last, into each model
    folder; these tests write it themselves so they do not have to train."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lr = 1e-3 if stage == 1 else 2e-4
    return {
        "stage": stage,
        "mode": mode,
        "recipe": {
            "rrg": {"stage": stage, "dataset_path": datasets[0], "projector_type": "linear", "max_views": 2,
                    "num_visual_tokens": None, "lora_mlp": False, "train_vision_tower": False,
                    "report_section": "both"},
            "model": {"use_peft": stage == 2, "lora_r": 8 if stage == 2 else None, "lora_alpha": 16,
                      "lora_dropout": 0.05},
            "training": {"learning_rate": lr, "num_train_epochs": 3 if stage == 1 else 5,
                         "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8,
                         "lr_scheduler_type": "cosine", "warmup_ratio": 0.03, "weight_decay": 0.0,
                         "optim": "adamw_torch", "bf16": False, "seed": 42, "max_length": 512},
        },
        "trainable_parameters": trainable,
        "frozen_parameters": total - trainable,
        "base_models": base_models,
        "datasets": datasets,
        "train_rows": 1234,
        "global_step": 116,
    }


def make_full_run(folder: Path, tokenizer, seed: int = 0) -> Path:
    """A completed stage-1 folder (full model, projector trained) with its run summary."""
    from training.sandbox.tiny import build_tiny_model

    model, processor = build_tiny_model(tokenizer=tokenizer, seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    base_models = {"vision": "google/vit-base-patch16-224-in21k", "text": "openlm-research/open_llama_7b"}
    (folder / "rrg_training.json").write_text(
        json.dumps(_summary(1, "projector", model, base_models, ["rrg-org/mimic-cxr-demo"]))
    )
    return folder


def make_adapter_run(root: Path, tokenizer) -> tuple[Path, Path]:
    """A stage-1 folder and a stage-2 LoRA adapter (with the projector in `modules_to_save`) on top of it."""
    from peft import LoraConfig, get_peft_model

    from modeling_rrg import RRGForConditionalGeneration

    stage1 = make_full_run(root / "stage1" / "model", tokenizer)
    base = RRGForConditionalGeneration.from_pretrained(stage1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                        modules_to_save=["multi_modal_projector"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():  # stage 2 also changed the projector: make the saved copy differ from stage 1's
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.05 * torch.randn_like(param))
    peft_model.peft_config["default"].base_model_name_or_path = str(stage1.resolve())
    stage2 = root / "stage2" / "model"
    peft_model.save_pretrained(stage2)
    from modeling_rrg import RRGProcessor

    RRGProcessor.from_pretrained(stage1).save_pretrained(stage2)
    (stage2 / "rrg_training.json").write_text(
        json.dumps(_summary(2, "lora", peft_model, {"init": str(stage1.resolve())}, ["rrg-org/mimic-cxr-demo"]))
    )
    return stage1, stage2


def write_metrics(folder: Path) -> Path:
    """A `metrics.json` as `rrg evaluate` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "BLEU-1": 0.4123, "BLEU-2": 0.2567, "BLEU-3": 0.1711, "BLEU-4": 0.1204, "METEOR": 0.1502,
        "ROUGE-L": 0.2899, "CIDEr": 0.2333, "nlg_text_cleaning": "mimic",
        "clinical_efficacy": {
            "precision_micro_14": 0.45, "recall_micro_14": 0.31, "f1_micro_14": 0.367,
            "precision_macro_14": 0.3, "recall_macro_14": 0.2, "f1_macro_14": float("nan"),
            "per_observation": {}, "labeler": "rule-based-chexpert-v1", "num_samples": 12,
        },
        "model": "outputs/demo/stage2", "data": "rrg-org/mimic-cxr-demo", "split": "test", "num_samples": 12,
        "generation": {"max_new_tokens": 128, "do_sample": False, "num_beams": 3},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def source_copy(dest: Path) -> Path:
    """A copy of the checkout's source files (tracked and untracked-but-not-ignored, as git lists them) at `dest`.

    Builds (`pip wheel`, `pip install <dir>`) write `build/` and `*.egg-info` into the folder they build: tests build
    from this copy so they never write into the source tree.
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of it
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return dest


def reference_batch(processor):
    return processor(images=[[xray(0), xray(1)], [xray(2)]], report=["Normal heart.", "Left effusion."])


def hub_cache(tmp_path: Path, folder: Path, repo_id: str = REPO_ID) -> Path:
    """Copy an exported folder into a Hugging Face cache layout; returns the cache root (HF_HUB_CACHE)."""
    org, name = repo_id.split("/")
    repo = tmp_path / "hub" / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path / "hub"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def write_dicom(path, pixels, photometric="MONOCHROME2", window=None, slope=1.0, intercept=0.0):
    """A 12-bit DX DICOM file with the given pixels, photometric interpretation, window and rescale."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def build_training_workspace(root, num_train: int = 48, num_eval: int = 8):
    """Synthetic data + tiny 'pretrained' backbones saved like Hub checkpoints under `root` (data/, vision/, text/).

    Used by the `workspace` fixture and by `compat_train_run.py` (a script run in other venvs, without pytest)."""
    import json
    from pathlib import Path

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

    root = Path(root)
    data = generate_synthetic_dataset(root / "data", num_train=num_train, num_val=num_eval, num_test=num_eval,
                                      image_size=64, seed=0)
    reports = [r["report"] for r in json.loads((data / "annotation.json").read_text())["train"]]
    tokenizer = train_bpe_tokenizer(reports, image_token="<unused0>")
    torch.manual_seed(0)
    vision = AutoModel.from_config(tiny_vision_config("vit", image_size=32))
    text = AutoModelForCausalLM.from_config(tiny_text_config("llama", vocab_size=len(tokenizer)))
    save_backbone(vision, root / "vision", image_processor=tiny_image_processor(32))
    save_backbone(text, root / "text", tokenizer=tokenizer)
    return root


def iu_xray_reports(limit: int | None = None) -> list[dict]:
    """The IU X-Ray (OpenI) report XMLs torchxrayvision's wheel ships (`data/NLMCXR_reports.tgz`; CC BY-NC-ND, read
    from the installed package, never copied into the repository): one dict per report with `uid` and the
    `AbstractText` sections by label (`comparison`, `indication`, `findings`, `impression`; `None` when empty) and
    `mesh_major` (the coders' MeSH terms, e.g. `"Cardiomegaly/mild"`, `"normal"`).
    Skips the calling test when torchxrayvision is not installed (`pip install --no-deps torchxrayvision`)."""
    import importlib.util
    import tarfile
    import xml.etree.ElementTree as ElementTree

    import pytest

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision is not installed (its wheel ships the IU X-Ray report XMLs)")
    archive = Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz"
    reports = []
    with tarfile.open(archive, "r:gz") as tar:
        names = sorted((m for m in tar.getnames() if m.endswith(".xml")), key=lambda n: int(re.sub(r"\D", "", n)))
        for name in names[:limit]:
            root = ElementTree.parse(tar.extractfile(name)).getroot()
            sections = {node.get("Label").lower(): node.text for node in root.iter("AbstractText")}
            mesh = [node.text for node in root.iter("major") if node.text]
            reports.append({"uid": root.find("uId").get("id"), **sections, "mesh_major": mesh})
    return reports


def radeval_module(name: str):
    """A RadEval 2.2.1 module (e.g. `radeval.metrics.RadCliQv1.radcliq`) imported without `radeval/__init__` (which
    imports every metric and calls `nltk.download`): `radeval` registered as a bare package, the same trick as the
    adapter's `RadEval` alias (`training.evaluation.metrics.radgraph.vendored_radgraph`). Reference runs only."""
    import importlib
    import importlib.util
    import types

    from training.evaluation.metrics.radgraph import vendored_radgraph

    vendored_radgraph()
    if "radeval" not in sys.modules:
        alias = types.ModuleType("radeval")
        alias.__path__ = list(importlib.util.find_spec("radeval").submodule_search_locations)
        sys.modules["radeval"] = alias
    return importlib.import_module(name)


def iu_findings_or(fallback: list[str], count: int, limit: int = 300) -> list[str]:
    """`count` IU X-Ray findings sections (torchxrayvision's wheel), or `fallback` repeated when it is not installed."""
    import pytest

    try:
        reports = iu_xray_reports(limit=limit)
    except pytest.skip.Exception:
        return (fallback * (count // len(fallback) + 1))[:count]
    return [r["findings"] for r in reports if r.get("findings")][:count]


def _one_torch_thread():
    # tiny scorer models have small matrices: on a loaded 2-core machine torch's second thread only waits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_torch_thread_fixture():
    """A module-scoped autouse fixture running the module's tests on one torch thread (assign it in the module)."""
    import pytest

    return pytest.fixture(autouse=True, scope="module")(_one_torch_thread)
