"""Two CPU processes (gloo) train exactly like one: DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, both stages, feature cache on.

Each backend is launched with the command the README shows, on the same global batch as the one-process reference
(2 processes x 2 rows = 1 process x 4 rows). The recipes do not set `use_cpu`: the run must notice the missing GPU
itself. Checked per backend: the backend really ran (not a silent fallback to DDP or to two lone processes), the saved
weights equal the reference's, the feature cache was keyed by the real encoder weights, `model/` is one clean
`save_pretrained` folder that reloads through `AutoModelForImageTextToText` with `trust_remote_code` in a process
that cannot import this project, and a run resumed from a mid-run checkpoint ends where the straight run did.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import LAUNCHERS as BACKENDS
from helpers import free_port, launch, run_isolated
from helpers import train_recipe as recipe
from helpers import train_run as run

ROOT = Path(__file__).resolve().parents[1]
# The small learning rate keeps Adam's sign-like first steps from amplifying float reduction-order noise (~1e-7)
# into the tolerance; a wrong run (ranks training alone, gradients not averaged) is still ~1e-3 away.
COMMON = dict(max_steps=4, save_steps=2, learning_rate=1e-3, lora_dropout=0.0, eval_split=None, use_cpu=False)
ATOL = 1e-5


def trained_weights(folder: Path) -> dict:
    name = "adapter_model.safetensors" if (folder / "adapter_config.json").exists() else "model.safetensors"
    return load_file(str(folder / name))


def assert_same_weights(expected: Path, actual: Path, atol=ATOL):
    a, b = trained_weights(expected), trained_weights(actual)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=lambda m, key=key: f"{key}: {m}")


def assert_clean_model_folder(folder: Path, adapter: bool):
    names = {p.name for p in folder.iterdir()}
    code = {"configuration_rrg.py", "modeling_rrg.py", "processing_rrg.py"}
    assert not any(n.endswith((".tmp", ".bin", ".pt", ".pth")) or n.startswith(("_fsdp", "pytorch_model_fsdp"))
                   for n in names), names
    assert {"rrg_training.json", "processor_config.json", "tokenizer.json"} <= names
    assert not folder.with_name("model.tmp").exists()
    if adapter:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names
        return
    assert {"config.json", "model.safetensors"} | code <= names
    extra_code = {n for n in names if n.endswith(".py")} - code
    assert not extra_code, f"foreign code files copied: {extra_code}"
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_rrg.RRGForConditionalGeneration", auto_map
    assert auto_map["AutoConfig"] == "configuration_rrg.RRGConfig", auto_map


RELOAD_AND_COMPARE = """
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

image = Image.fromarray((torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
for reference, candidate in {pairs!r}:
    processor = AutoProcessor.from_pretrained(reference, trust_remote_code=True)
    batch = processor(images=[[image]], report=["no acute cardiopulmonary process"])
    logits = []
    for folder in (reference, candidate):
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits.append(model(**batch).logits)
    print("MAXDIFF", candidate, (logits[0] - logits[1]).abs().max().item())
"""


def assert_reload_like(pairs: list, tmp_path: Path):
    """Each candidate folder loads as remote code (this project not importable) and gives its reference's logits."""
    out = run_isolated(RELOAD_AND_COMPARE.format(pairs=[(str(a), str(b)) for a, b in pairs]), cwd=tmp_path)
    diffs = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("MAXDIFF")]
    assert len(diffs) == len(pairs) and max(diffs) < 1e-4, out


@pytest.fixture(scope="module")
def reference(workspace, tmp_path_factory):  # noqa: F811
    """One process, global batch 4: stage 1 from the backbones, then stage 2 (LoRA) from that stage 1."""
    root = tmp_path_factory.mktemp("one-process")
    cache = root / "cache"
    stage1 = run(recipe(workspace, root / "stage1", per_device_train_batch_size=4, feature_cache_dir=str(cache),
                        **COMMON))
    stage2 = run(recipe(workspace, root / "stage2", stage=2, use_peft=True, model_name_or_path=str(stage1),
                        per_device_train_batch_size=4, feature_cache_dir=str(cache), **COMMON))
    (fingerprint,) = [p.name for p in cache.iterdir()]
    return {"stage1": stage1, "stage2": stage2, "fingerprint": fingerprint}


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_two_processes_train_like_one(workspace, reference, tmp_path, backend):  # noqa: F811
    cache = tmp_path / "cache"  # fresh: the features are computed under the backend
    stage1_config = recipe(workspace, tmp_path / "stage1", per_device_train_batch_size=2,
                           feature_cache_dir=str(cache), **COMMON)
    launch(backend, stage1_config)
    stage1 = tmp_path / "stage1" / "model"
    summary = json.loads((stage1 / "rrg_training.json").read_text())
    assert (summary["distributed"], summary["world_size"]) == (backend, 2)
    assert_same_weights(reference["stage1"], stage1)
    assert_clean_model_folder(stage1, adapter=False)
    # The cache was keyed by the real encoder weights (not ZeRO-3's empty placeholders): one entry, the reference's.
    assert [p.name for p in cache.iterdir()] == [reference["fingerprint"]]

    # Stage 2 from the reference stage 1, so it is compared on its own.
    stage2_config = recipe(workspace, tmp_path / "stage2", stage=2, use_peft=True,
                           model_name_or_path=str(reference["stage1"]), per_device_train_batch_size=2,
                           feature_cache_dir=str(cache), **COMMON)
    launch(backend, stage2_config)
    stage2 = tmp_path / "stage2" / "model"
    assert json.loads((stage2 / "rrg_training.json").read_text())["distributed"] == backend
    assert_same_weights(reference["stage2"], stage2)
    assert_clean_model_folder(stage2, adapter=True)
    assert_reload_like([(reference["stage1"], stage1), (reference["stage2"], stage2)], tmp_path)

    # Resume from the mid-run checkpoint (step 2 of 4; the backend's own format: sharded for FSDP2 and ZeRO). Another
    # seed would initialise the adapters differently, so only a really restored checkpoint ends on the same weights;
    # the data order stays (data_seed). A new output folder: the run guard (rrg_run.json) refuses to resume another
    # recipe's run in place, so the checkpoint is named explicitly.
    resumed_dir = tmp_path / "resumed"
    resume_config = recipe(workspace, resumed_dir, stage=2, use_peft=True,
                           model_name_or_path=str(reference["stage1"]), per_device_train_batch_size=2,
                           feature_cache_dir=str(cache), **{**COMMON, "seed": 1})
    launch(backend, resume_config, "--resume_from_checkpoint", str(tmp_path / "stage2" / "checkpoint-2"))
    resumed = resumed_dir / "model"
    assert json.loads((resumed / "rrg_training.json").read_text())["global_step"] == 4
    assert_same_weights(stage2, resumed, atol=1e-6)


@pytest.mark.slow
def test_accelerate_cpu_flag_with_several_processes_is_refused(workspace, tmp_path):  # noqa: F811
    """`accelerate launch --cpu --num_processes 2` starts one process: training must stop, not quietly train once."""
    config = recipe(workspace, tmp_path / "cpu", per_device_train_batch_size=2, **COMMON)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--main_process_port", free_port(), "-m", "training.sft.train", "--config", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0
    assert "starts a single process" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "cpu" / "model").exists()
