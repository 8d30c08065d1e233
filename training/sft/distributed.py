"""Multi-process training: DDP, FSDP2 and DeepSpeed ZeRO-2/3, on GPUs and on CPU (gloo), each equal to one process.

The stage code (`training.sft.train`) calls four hooks from here; everything that differs between launchers lives here.

- [`setup`] runs first. Under `torchrun` / `accelerate launch` without CUDA, accelerate makes a run distributed only
  when told to use the CPU; otherwise every rank trains alone on the whole batch and both write `model/`. So a
  CUDA-less multi-process run gets `use_cpu`, and `accelerate launch --cpu` with several processes (which starts one
  process: accelerate's multi-CPU launch goes through `mpirun`) is refused instead of silently training once.
- [`model_init_context`] builds the model outside DeepSpeed's `zero.Init`: the model is assembled from two backbones
  into a meta-device shell, which `zero.Init` cannot fill ("Cannot copy out of meta tensor"). Every rank builds the
  full model and the engine partitions it when training starts (the same on GPUs). The cost: each rank briefly holds
  a full copy in host memory. The frozen encoder is therefore whole when the feature cache fingerprints it and
  computes features (both happen before the engine exists).
- [`trainer_class`] returns the trainer to use. FSDP on CPU: accelerate 1.15 turns FSDP on only for accelerator
  backends (CUDA, XPU, ...) and silently falls back to DDP on CPU. torch's FSDP2 (`fully_shard`) itself trains on
  gloo, so on CPU the trainer switches accelerate's state to FSDP right after creating its accelerator, with the
  plugin accelerate built from the same config (launcher environment or `--fsdp`). From there on everything is
  accelerate's own FSDP2 path (sharding, sharded checkpoints, resume, full state dict), exactly as on GPUs; we chose
  this over calling `fully_shard` ourselves so checkpoints and resume need no code of ours. FSDP1 is refused on CPU.
- [`full_state_dict`] gathers the full weights on every rank (a collective: all ranks call it) before rank 0 writes
  `model/`, and [`original_class`] saves an FSDP2-wrapped model through its own class, so `auto_map` names
  `modeling_rrg` and its code files are copied, not torch's.
"""

import contextlib
import dataclasses
import logging
import os

import torch

logger = logging.getLogger(__name__)

__all__ = ["setup", "backend_name", "model_init_context", "trainer_class", "full_state_dict", "original_class",
           "num_parameters"]


def _world_size() -> int:
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def fsdp_requested(training_args) -> bool:
    return _flag("ACCELERATE_USE_FSDP") or bool(getattr(training_args, "fsdp", None))


def setup(training_args):
    """
    Make a multi-process launch really distributed, or refuse it; returns the training arguments to use.

    Without CUDA, several processes need `use_cpu`: the arguments are rebuilt with it (their `__post_init__` set up
    the devices and the DeepSpeed batch sizes for one process already).

    Raises:
        ValueError: `accelerate launch --cpu` with several processes (one process would train), FSDP1 on CPU, or
            ZeRO-3 without gathering the weights at save time.
    """
    world = _world_size()
    if _flag("ACCELERATE_USE_CPU") and world == 1 and os.environ.get("MASTER_ADDR") and "LOCAL_RANK" not in os.environ:
        # accelerate's simple launcher sets MASTER_ADDR only when asked for several processes, then starts one.
        raise ValueError(
            "`accelerate launch --cpu` (or `use_cpu: true` in the accelerate config) with num_processes > 1 starts a "
            "single process here (accelerate's multi-CPU launch needs mpirun). Drop --cpu / use_cpu: the run detects "
            "the missing GPU itself; or use `torchrun --nproc_per_node N -m training.sft.train ...`."
        )
    if world > 1 and not torch.cuda.is_available():
        if training_args.ddp_backend not in (None, "gloo", "mpi"):
            raise ValueError(f"ddp_backend={training_args.ddp_backend!r} needs GPUs; on CPU use gloo (the default).")
        if fsdp_requested(training_args):
            config = getattr(training_args, "fsdp_config", None) or {}
            version = config.get("version") or config.get("fsdp_version") or os.environ.get("FSDP_VERSION", "1")
            if str(version) != "2":
                raise ValueError(
                    "FSDP on CPU runs only as FSDP2 (torch's fully_shard); set fsdp_version: 2 in the accelerate "
                    "config (or fsdp_config: {version: 2})."
                )
        if not training_args.use_cpu:
            logger.info("%d processes and no CUDA device: training data-parallel on CPU (gloo).", world)
            training_args = dataclasses.replace(training_args, use_cpu=True)
    plugin = getattr(training_args, "deepspeed_plugin", None)
    if plugin is not None:
        zero = plugin.deepspeed_config.get("zero_optimization", {})
        if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
            raise ValueError(
                "DeepSpeed ZeRO-3 must gather the weights to write model/: set zero3_save_16bit_model: true in the "
                "accelerate config (stage3_gather_16bit_weights_on_model_save: true in a DeepSpeed JSON)."
            )
    return training_args


def backend_name(trainer) -> str:
    """What the run really used: single, ddp, fsdp2, deepspeed_zero2, deepspeed_zero3 (recorded in the summary)."""
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    if state.distributed_type == DistributedType.DEEPSPEED:
        return f"deepspeed_zero{trainer.accelerator.deepspeed_plugin.zero_stage}"
    if state.distributed_type == DistributedType.FSDP:
        return f"fsdp{getattr(state.fsdp_plugin, 'fsdp_version', 1)}"
    return "ddp" if state.num_processes > 1 else "single"


@contextlib.contextmanager
def model_init_context(training_args):
    """Build the model outside DeepSpeed ZeRO-3's `zero.Init` (see the module docstring); a no-op otherwise."""
    from transformers.integrations import is_deepspeed_zero3_enabled, set_hf_deepspeed_config, unset_hf_deepspeed_config

    if not is_deepspeed_zero3_enabled():
        yield
        return
    plugin = getattr(training_args, "deepspeed_plugin", None)
    holder = getattr(training_args, "hf_deepspeed_config", None) or getattr(plugin, "dschf", None)
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if holder is not None:
            set_hf_deepspeed_config(holder)


def trainer_class(base, training_args):
    """`base`, or on CPU with FSDP requested, a subclass that runs accelerate's FSDP2 path on gloo."""
    if not (training_args.use_cpu and _world_size() > 1 and fsdp_requested(training_args)):
        return base

    class CPUFSDPTrainer(base):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            _enable_fsdp_on_cpu(self)

    CPUFSDPTrainer.__name__ = CPUFSDPTrainer.__qualname__ = f"CPUFSDP{base.__name__}"
    return CPUFSDPTrainer


def _enable_fsdp_on_cpu(trainer) -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        return
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise ValueError(f"FSDP on CPU expected a multi-CPU accelerate state, got {state.distributed_type}.")
    plugin_args = trainer.args.fsdp_plugin_args
    plugin = FullyShardedDataParallelPlugin(**plugin_args) if plugin_args else FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU runs only as FSDP2; set fsdp_version: 2.")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    # As accelerate does for GPUs: the process state follows, or the next `AcceleratorState()` reverts to multi-CPU.
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    logger.info("FSDP2 on CPU (gloo): torch's fully_shard through accelerate's FSDP2 plugin.")


def full_state_dict(trainer):
    """
    The full (unsharded) state dict of the trained model, gathered collectively: every rank must call this.

    Returns `None` when the model is not sharded (one process, DDP, ZeRO-2), where `save_pretrained` reads the
    weights itself.
    """
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    sharded = state.distributed_type == DistributedType.FSDP or (
        state.distributed_type == DistributedType.DEEPSPEED and trainer.accelerator.deepspeed_plugin.zero_stage == 3
    )
    if not sharded:
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.model_wrapped is not None
                                              else trainer.model)


@contextlib.contextmanager
def original_class(model):
    """
    Temporarily give an FSDP2-wrapped model (and a PEFT model's base) back its own class, so `save_pretrained`
    writes `auto_map` for and copies the code of `modeling_rrg`, not torch's `FSDP<Name>` wrapper class.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        yield model
        return
    swapped = []
    candidates = [model]
    if hasattr(model, "get_base_model"):
        candidates += [model.base_model, model.get_base_model()]
    for module in candidates:
        cls = type(module)
        if isinstance(module, FSDPModule):
            own = next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
            module.__class__ = own
            swapped.append((module, cls))
    try:
        yield model
    finally:
        for module, cls in swapped:
            module.__class__ = cls


def num_parameters(param) -> int:
    """A parameter's size, also when DeepSpeed ZeRO-3 has replaced it by an empty placeholder."""
    return getattr(param, "ds_numel", None) or param.numel()
