"""Where rrg does less work than a plain LLaVA + SFTTrainer setup, the results must stay the same."""

import pytest
import torch

from helpers import loss_and_grads, stage1_trainable, study_rows


def _batch(processor, tmp_path, n=2, views=2, seed=0):
    from training.sft.train import RRGDataCollator

    reports = ["The heart size is normal. No pleural effusion." * (i + 1) for i in range(n)]
    rows = study_rows(tmp_path, reports, views=views, seed=seed)
    return rows, RRGDataCollator(processor)(rows)


def test_frozen_encoder_keeps_no_autograd_graph_and_the_same_loss(tiny, tmp_path):
    model, processor = tiny
    _, batch = _batch(processor, tmp_path)
    stage1_trainable(model)
    reference_loss, reference_grads = loss_and_grads(model, batch)

    # What peft / trl do with gradient checkpointing: every sub-model's input embeddings output requires grad,
    # including the ViT's patch embeddings.
    model.enable_input_require_grads()
    seen = {}
    hook = model.model.vision_tower.register_forward_hook(
        lambda module, args, output: seen.update(grad=output.last_hidden_state.requires_grad) or None)
    loss, grads = loss_and_grads(model, batch)
    hook.remove()
    assert seen["grad"] is False  # no activations kept, no encoder backward
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=0)
    for name in reference_grads:
        torch.testing.assert_close(grads[name], reference_grads[name], rtol=0, atol=0)


def test_trainable_encoder_still_gets_gradients(tiny, tmp_path):
    model, processor = tiny
    _, batch = _batch(processor, tmp_path)
    stage1_trainable(model)
    model.model.vision_tower.requires_grad_(True)
    model(**batch).loss.backward()
    # The patch embeddings are the first thing the gradient has to reach (the pooler and final norm are unused).
    grads = [p.grad for n, p in model.model.vision_tower.named_parameters() if "embeddings" in n]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("peft", [False, True])
def test_sft_trainer_takes_the_fused_lm_head_path_with_rrg(tiny, tmp_path, peft):
    """trl scores only label positions through its fused head; rrg's own LM-head forward must not run in training."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from training.sft.train import RRGDataCollator

    model, processor = tiny
    rows, batch = _batch(processor, tmp_path)
    stage1_trainable(model)
    with torch.no_grad():
        reference = model(**batch).loss  # the model's own loss over full logits
    peft_config = None
    if peft:
        from peft import LoraConfig

        from training.sft.model_setup import lora_target_regex

        peft_config = LoraConfig(r=4, target_modules=lora_target_regex("llama"),
                                 modules_to_save=["multi_modal_projector"], task_type=None)
    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, report_to=[],
                     use_cpu=True, save_strategy="no", remove_unused_columns=False, max_length=None,
                     dataset_kwargs={"skip_prepare_dataset": True})
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor,
                         data_collator=RRGDataCollator(processor), peft_config=peft_config)
    calls = []
    hook = model.lm_head.register_forward_hook(lambda *a: calls.append(1) or None)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    hook.remove()
    assert calls == []  # the full-vocabulary LM head never ran: trl's fused path did the scoring
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("peft", [False, True])
def test_fused_lm_head_scores_only_label_positions_with_the_same_loss_and_gradients(tiny, tmp_path, peft, monkeypatch):
    """On CPU trl's fused head projects every position; rrg's training makes it project only the labelled ones."""
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from training.sft.fused_head import score_label_positions_only
    from training.sft.train import RRGDataCollator

    model, processor = tiny
    rows, batch = _batch(processor, tmp_path)
    stage1_trainable(model)
    peft_config = None
    if peft:
        from peft import LoraConfig

        from training.sft.model_setup import lora_target_regex

        peft_config = LoraConfig(r=4, target_modules=lora_target_regex("llama"),
                                 modules_to_save=["multi_modal_projector"], task_type=None)
    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, report_to=[],
                     use_cpu=True, save_strategy="no", remove_unused_columns=False, max_length=None, bf16=False,
                     dataset_kwargs={"skip_prepare_dataset": True})
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor,
                         data_collator=RRGDataCollator(processor), peft_config=peft_config)
    scored = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *a: scored.append(hidden.shape[0]) or apply(hidden, *a))

    def loss_and_gradients():
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        # (LoRA's A matrices get zero gradients at the first step: B starts at zero)
        assert grads and sum(float(g.abs().sum()) for g in grads.values()) > 0
        return loss.detach(), grads

    every_position, every_grads = loss_and_gradients()
    assert score_label_positions_only(trainer.model)
    labelled, labelled_grads = loss_and_gradients()
    positions = batch["labels"].shape[0] * (batch["labels"].shape[1] - 1)
    label_positions = int((batch["labels"][:, 1:] != -100).sum())
    assert scored == [positions, label_positions] and label_positions < positions / 2
    torch.testing.assert_close(labelled, every_position, rtol=1e-6, atol=1e-6)
    for name, grad in every_grads.items():
        torch.testing.assert_close(labelled_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert score_label_positions_only(trainer.model)  # idempotent: wrapping twice changes nothing
    trainer.compute_loss(trainer.model, dict(batch))
    assert scored[-1] == label_positions


def test_generation_does_not_rebuild_the_forward_signature_at_every_token(tiny, monkeypatch):
    """GenerationMixin inspects a remote-code model's `forward` signature per decoding step; rrg precomputes it."""
    import inspect

    import numpy as np
    from PIL import Image

    model, processor = tiny
    assert model.is_remote_code()  # the per-step check only runs for remote code
    rebuilt = []
    original = inspect._signature_from_function

    def counting(sigcls, func, *args, **kwargs):
        if getattr(func, "__qualname__", "").startswith("RRG"):
            rebuilt.append(func.__qualname__)
        return original(sigcls, func, *args, **kwargs)

    monkeypatch.setattr(inspect, "_signature_from_function", counting)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    inputs = processor(images=[[image]])
    per_call = []
    for tokens in (2, 10):
        rebuilt.clear()
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens)
        assert out.shape[1] == inputs["input_ids"].shape[1] + tokens
        per_call.append(list(rebuilt))
    assert not any(name.endswith(".forward") for name in per_call[1])
    assert per_call[0] == per_call[1]  # what is still inspected is inspected once per generate(), not per token
