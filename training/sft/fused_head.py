"""trl's fused LM head, scoring only the positions that have a label on every device.

`SFTTrainer` patches the model with trl's `add_fused_lm_head` and calls it with `fused_lm_head=True`: the backbone's
hidden states go through the LM head in tiles, without materialising the `(batch, seq_len, vocab)` logits. On Triton
devices (CUDA, XPU) trl projects only the positions whose next-token label is not -100; everywhere else, the CPU
included, it projects **every** position and zeroes the ignored ones afterwards (it keeps tile shapes fixed for
compiled backends such as Neuron). For report generation that is most of the work of the head thrown away: the
prompt and the soft visual prompts are several times longer than the report, and with a 32k vocabulary the head is a
quarter of a small LLM's training FLOPs.

[`score_label_positions_only`] makes trl take its own compact branch for one model, on every device: the same
`_ChunkedLogProbFunction` on `hidden_states[mask]`, so per-token log-probabilities, loss and gradients are unchanged
(tested). It is scoped to that model's fused calls; other models in the process (e.g. a LLaVA trained beside it for a
benchmark) keep trl's behaviour. It relies on one private name of trl (`trl.trainer.utils._use_triton`, trl 1.16); when
a trl release no longer has it, training logs a warning and runs trl's default path.
"""

from __future__ import annotations

import contextlib
import functools
import logging

logger = logging.getLogger(__name__)

__all__ = ["score_label_positions_only"]


def _trl_utils():
    try:
        from trl.trainer import utils
    except ImportError:  # pragma: no cover - trl is a dependency
        return None
    return utils if callable(getattr(utils, "_use_triton", None)) else None


@contextlib.contextmanager
def _compact(utils):
    original = utils._use_triton
    utils._use_triton = lambda device: True  # trl's `compact = _use_triton(hidden_states.device)`
    try:
        yield
    finally:
        utils._use_triton = original


def score_label_positions_only(model) -> bool:
    """
    Make the fused LM head that `SFTTrainer` added to `model` project only labelled positions, on every device.

    Args:
        model: The model `SFTTrainer` trains (`trainer.model`; a peft model is unwrapped to the patched base model).

    Returns:
        `bool`: whether the compact path is now in effect (False when trl has not patched the model, or when the
        installed trl no longer decides compaction through `_use_triton`).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    utils = _trl_utils()
    if utils is None:
        logger.warning("This trl release has no trl.trainer.utils._use_triton; its fused LM head keeps scoring every "
                       "position off CUDA/XPU (slower, same loss).")
        return False
    patched = base.__dict__.get("forward")
    if patched is None or getattr(patched, "_rrg_compact", False):
        return patched is not None
    code = getattr(getattr(patched, "__func__", None), "__code__", None)
    if code is None or code.co_name != "_fused_forward":  # functools.wraps renames it; its code keeps the name
        return False  # not trl's fused head (e.g. a trainer that did not patch the model)

    @functools.wraps(patched)
    def forward(*args, fused_lm_head=False, **kwargs):
        if not fused_lm_head:
            return patched(*args, **kwargs)
        with _compact(utils):
            return patched(*args, fused_lm_head=True, **kwargs)

    forward._rrg_compact = True
    base.forward = forward
    return True
