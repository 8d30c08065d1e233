"""Report generation: the one loop that turns studies into reports, used by `rrg evaluate` and `rrg analyze`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DEFAULT_GENERATION", "eos_token_ids", "generate_batch"]

# Greedy decoding unless the caller asks otherwise (the published tables use greedy or beam search).
DEFAULT_GENERATION = {"max_new_tokens": 128, "do_sample": False, "num_beams": 1}


def eos_token_ids(model, tokenizer) -> set[int]:
    """The token ids that end a report: the generation config's EOS (one or several), else the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


@torch.no_grad()
def generate_batch(
    model,
    processor,
    studies: Sequence[Sequence],
    generation_kwargs: dict | None = None,
    instruction: str | None = None,
    indications: Sequence[str | None] | None = None,
) -> list[dict]:
    """
    Generate one report per study in a single left-padded `generate` call.

    The image token is always suppressed: a generated image token is not text, and a teacher-forced pass over the
    report (the attention analysis) would take it for a visual-prompt slot.

    Args:
        model ([`RRGForConditionalGeneration`] or a `PeftModel` over one): The model, in eval mode.
        processor ([`RRGProcessor`]): Its processor (the saved prompt, instruction included, is used).
        studies (`Sequence[Sequence[PIL.Image.Image]]`): The views of each study.
        generation_kwargs (`dict`, *optional*): Passed to `generate` over [`DEFAULT_GENERATION`] (`num_beams`,
            `max_new_tokens`, `repetition_penalty`, ...).
        instruction (`str`, *optional*): Instruction override (defaults to the processor's).
        indications (`Sequence[str | None]`, *optional*): One clinical indication per study (or `None`), prepended to
            the instruction by the processor.

    Returns:
        `list[dict]` per study: `prompt_ids` (unpadded), `report_ids` (up to and including the first EOS) and `report`
        (decoded text).
    """
    kwargs = {**DEFAULT_GENERATION, **(generation_kwargs or {})}
    tokenizer = processor.tokenizer
    eos = eos_token_ids(model, tokenizer)
    image_token_id = int(model.config.image_token_id)
    kwargs["suppress_tokens"] = sorted({*(kwargs.get("suppress_tokens") or ()), image_token_id})
    if kwargs.get("pad_token_id") is None and model.generation_config.pad_token_id is None:
        kwargs["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    device = next(model.parameters()).device
    extra = {"indication": list(indications)} if indications is not None else {}
    inputs = processor(images=[list(views) for views in studies], instruction=instruction, padding_side="left",
                       **extra)
    inputs = {key: value.to(device) for key, value in inputs.items()}
    output = model.generate(**inputs, **kwargs)
    width = inputs["input_ids"].shape[1]
    results = []
    for row in range(len(studies)):
        prompt = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
        generated = output[row, width:].tolist()
        for index, token in enumerate(generated):
            if token in eos:
                generated = generated[: index + 1]
                break
        results.append({"prompt_ids": prompt, "report_ids": generated, "report": processor.decode(generated)})
    return results
