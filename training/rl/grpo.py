"""Stage 3: reinforcement learning with clinical rewards on trl's `GRPOTrainer`.

Starts from a stage-2 folder (LoRA adapter or merged; the adapter is merged into the weights it starts from) and
trains a new LoRA on the LLM with the projector (as in stage 2) to maximise the recipe's weighted rewards
(`training.rl.rewards`: clinical agreement, BLEU / ROUGE-L, length, RadGraph, any callable with trl's signature).
The prompt is the processor's training prompt, token for token (instruction, one image-token block per view), built
by the same collator as stages 1-2 from the dataset's studies, with the images or the frozen encoder's cached
features. Checkpoints, resume, `rrg_run.json`, `rrg_training.json` and `model/` are those of the other stages, so
`rrg evaluate`, `rrg export` and the card read a stage-3 folder as they read a stage-2 one.

Usage:

```bash
rrg train --config training/rl/recipes/demo_stage3.yaml --model_name_or_path outputs/demo/stage2 \\
    --dataset_path outputs/demo/data --output_dir outputs/demo/stage3
torchrun --nproc_per_node 2 -m training.sft.train --config training/rl/recipes/demo_stage3.yaml ...
accelerate launch --config_file training/sft/recipes/accelerate/deepspeed_zero3.yaml -m training.sft.train --config ...
```

DDP, FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 train like one process with the same global batch (tests/test_rl.py).

What rrg changes in trl's `GRPOTrainer` (`RRGGRPOTrainer`; every overridden method is checked to exist with the
expected parameters when the trainer is built, so a trl release that renames one fails with a message naming it):

- `_generate_and_score_completions`: builds the generation batch's prompts and visual inputs once, through
  `RRGDataCollator.prompt_batch` (the processor's prompt; `pixel_values` or cached `image_features`, `num_views`),
  and returns them with trl's batch, so trl shuffles and splits them with the completions.
- `_tokenize_prompts`: returns those prompt ids and visual inputs instead of rendering a chat template (trl's chat
  path builds a prompt the model was not trained on and passes no `num_views`).
- `_generate_single_turn`: with `seeded_generation` (default), one batched `generate` in which every completion row
  draws its tokens from its own `torch.Generator`, seeded from (seed, step, study id, generation index)
  ([`SeededSampler`]; each row's uniforms drawn in one `torch.rand` call per `generate`), so the samples do not
  depend on which other studies share the batch: a resumed run, and a run on several processes, sample what one
  straight process samples.
- `_get_per_token_logps_and_entropies`: forwards rrg's visual inputs, chunk by chunk (trl's version knows the
  layouts of other architectures only).
- `_compute_loss`: makes the micro-batch's visual inputs visible to the method above.
- `__init__`: with `beta != 0` and no LoRA, trl's reference model is a copy of the starting weights
  ([`_starting_weights_as_reference`]), not the folder the model's config names.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["RRGRewardArguments", "RRGGRPOTrainer", "SeededSampler", "seeded_generate", "reward_settings",
           "build_prompt_dataset", "train", "parse_args", "main"]

# The model's visual inputs (see `RRGForConditionalGeneration.forward`); whatever of them the collator returns
# travels with the batch.
VISUAL_KEYS = ("pixel_values", "image_features", "num_views")


@dataclass
class RRGRewardArguments:
    """Stage-3 recipe fields: which rewards, and their settings (`reward_weights` is trl's `GRPOConfig` field)."""

    reward_funcs: list[str] = field(
        default_factory=lambda: ["clinical_f1", "bleu", "length"],
        metadata={"help": "Rewards by name (clinical_f1, bleu, rouge_l, length, radgraph; null: a no-signal control) "
                          "or 'package.module:function' with trl's signature fn(prompts, completions, **kwargs) -> "
                          "list[float]."},
    )
    reward_labeler: str = field(default="rule", metadata={"help": "clinical_f1's labeler: rule | chexbert"})
    reward_chexbert_checkpoint: str | None = field(default=None, metadata={"help": "chexbert.pth (labeler chexbert)."})
    reward_chexbert_tokenizer: str | None = field(default=None, metadata={"help": "bert-base-uncased tokenizer folder."})
    reward_mentions: list[str] = field(
        default_factory=lambda: ["positive"],
        metadata={"help": "clinical_f1: mention kinds that must agree (positive, negative, uncertain)."},
    )
    reward_uncertain: str = field(
        default="negative", metadata={"help": "clinical_f1: an uncertain mention counts as negative | positive."}
    )
    reward_zero_division: float = field(
        default=1.0, metadata={"help": "clinical_f1 when neither report has a counted mention (a correct normal study)."}
    )
    reward_bleu_order: int = field(default=4, metadata={"help": "bleu: BLEU-1..4."})
    reward_clean: str = field(default="mimic", metadata={"help": "bleu / rouge_l text cleaning: mimic | iu | none."})
    reward_radgraph_model: str | None = field(default=None, metadata={"help": "radgraph: local RadGraph model folder."})
    reward_radgraph_encoder: str | None = field(
        default=None, metadata={"help": "radgraph: local folder of the encoder config + tokenizer the model's config names."}
    )
    seeded_generation: bool = field(
        default=True,
        metadata={"help": "Sample each completion row from its own generator, seeded from (seed, step, study id, "
                          "generation index), in one batched generate: resume and several processes sample what one "
                          "straight run does. Off: trl's sampling on the global RNG."},
    )
    num_samples_to_save: int = field(
        default=8, metadata={"help": "Completions (with their rewards) saved per logged step to samples.jsonl."}
    )


def reward_settings(reward_args: RRGRewardArguments, eos_token_ids) -> dict[str, dict]:
    """Constructor arguments of the named rewards the recipe uses (`training.rl.rewards.build_rewards`)."""
    clean = None if reward_args.reward_clean in (None, "none") else reward_args.reward_clean
    labeler_kwargs = {}
    if reward_args.reward_labeler == "chexbert":
        labeler_kwargs = {"checkpoint_path": reward_args.reward_chexbert_checkpoint,
                          "tokenizer_name_or_path": reward_args.reward_chexbert_tokenizer}
    every = {
        "clinical_f1": dict(labeler=reward_args.reward_labeler, mentions=tuple(reward_args.reward_mentions),
                            uncertain=reward_args.reward_uncertain, zero_division=reward_args.reward_zero_division,
                            labeler_kwargs=labeler_kwargs),
        "bleu": dict(order=reward_args.reward_bleu_order, clean=clean),
        "rouge_l": dict(clean=clean),
        "length": dict(eos_token_ids=list(eos_token_ids)),
        "radgraph": dict(radgraph_model=reward_args.reward_radgraph_model,
                         radgraph_encoder=reward_args.reward_radgraph_encoder),
    }
    return {name: every[name] for name in reward_args.reward_funcs if name in every}


def build_prompt_dataset(dataset, processor):
    """`dataset` with the `prompt` column trl requires: the processor's prompt text of each study (its image
    placeholders not yet expanded). It is what trl logs; generation itself is fed the collator's token ids."""
    for column in ("prompt", "image", "images"):
        if column in dataset.column_names:
            # trl would read these itself (chat prompts, PIL images); rrg feeds the model from image_path.
            dataset = dataset.remove_columns(column)
    prompts = [processor.build_prompt(min(len(paths), processor.max_views)) for paths in dataset["image_path"]]
    return dataset.add_column("prompt", prompts)


def _study_seed(seed: int, step: int, study_id, generation: int = 0) -> int:
    digest = hashlib.sha256(f"{seed}|{step}|{study_id}|{generation}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def _row_generators(seeds: list[int], device) -> list[torch.Generator]:
    """One `torch.Generator` per completion row, on `device`, seeded with that row's seed."""
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]


def _generation_seeds(seed: int, step: int, study_ids: list, num_generations: int, offset: int = 0) -> list[int]:
    """The seed of each completion row: (seed, step, study id, generation index), where the generation index is the
    row's place in its study's group of `num_generations` rows. trl's sampler lays a generation batch out as groups of
    `num_generations` consecutive rows of one study, and the processes' rows are consecutive slices of it (`offset`:
    the global index of this process's first row), so the index is the row's global index modulo `num_generations`.

    Raises:
        ValueError: If a group of `num_generations` rows holds several studies (a sampler other than trl's).
    """
    seeds = []
    for i, study in enumerate(study_ids):
        row = offset + i
        first = i - row % num_generations  # this process's index of the group's first row (may be on another)
        if first >= 0 and study_ids[first] != study:
            raise ValueError(
                f"Row {row} of the generation batch is study {study!r} but its group of {num_generations} starts with "
                f"study {study_ids[first]!r}: seeded generation needs trl's layout (each study's num_generations rows "
                "side by side). Use trl's GRPO sampler, or set seeded_generation: false."
            )
        seeds.append(_study_seed(seed, step, study, row % num_generations))
    return seeds


def seeded_sampler_class():
    """[`SeededSampler`], defined on first use (transformers is imported lazily, as everywhere in training/)."""
    global SeededSampler
    if isinstance(SeededSampler, type):
        return SeededSampler
    from transformers import (
        LogitsProcessor,
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    class _SeededSampler(LogitsProcessor):
        r"""Sampling in which every row of the batch draws from its own `torch.Generator`, for `generate` with
        `do_sample=False`: it applies the sampling warpers itself (temperature, top-k, top-p, min-p, in the order and
        with the settings `generate` would), draws each row's token from the row's generator and returns scores that
        are `0` at that token and `-inf` elsewhere, so greedy decoding emits it.

        A row's tokens therefore depend only on its own logits and its generator, not on the other rows of the batch
        (which studies, how many, their prompt lengths). Decoding step `t` (0 for the first new token) of a row uses
        the row's `t`-th uniform `u ~ U[0, 1)` (float64), finished rows included (their token is replaced by padding).
        Each row draws its uniforms from its generator in blocks of `block` values, one `torch.rand(block)` per row,
        the first when generation starts and another only if the steps outrun it; `block` is `max_new_tokens` (so one
        call per row per `generate`) or [`BLOCK`] without it. The blocks depend on the generation settings only, so a
        row's sequence of uniforms is the same whatever the batch. `u` picks the first token whose cumulative
        probability exceeds `u * total` (inverse-CDF sampling, the same distribution as `torch.multinomial`; `u *
        total` is kept below `total`, so a token of zero probability is never picked). The
        forward of a row in a batch can differ from its forward alone by ~1e-6 in the logits (other kernels /
        padding); a token then changes only if `u` falls within that distance of a boundary of the cumulative
        distribution, so batched and one-study sampling give the same tokens but for such rare near-ties (the test
        compares token ids).

        It runs after `generate`'s own processors (custom processors are appended to them), so repetition penalty,
        `min_new_tokens`, `suppress_tokens` etc. act on the scores it samples from, as in `do_sample=True`. One
        instance serves one `generate` call (it counts the steps from the input length of its first call).

        Args:
            generators (`list[torch.Generator]`): One per batch row, on the scores' device.
            temperature (`float`, *optional*), top_k (`int`, *optional*), top_p (`float`, *optional*),
            min_p (`float`, *optional*): As in `GenerationConfig`.
            block (`int`, *optional*): Uniforms drawn per row at a time (defaults to [`BLOCK`]).
        """

        BLOCK = 256  # uniforms per row and draw when max_new_tokens is not set

        def __init__(self, generators, temperature=None, top_k=None, top_p=None, min_p=None, block=None):
            self.generators = list(generators)
            self.block = int(block or self.BLOCK)
            self.uniforms = None  # (rows, drawn so far), float64, on the scores' device
            self.prompt_length = None  # input length at the first step
            self.warpers = LogitsProcessorList()
            if temperature is not None and temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_k is not None and top_k != 0:
                self.warpers.append(TopKLogitsWarper(top_k=top_k))
            if top_p is not None and top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p=top_p))
            if min_p is not None:
                self.warpers.append(MinPLogitsWarper(min_p=min_p))

        @classmethod
        def from_generation_config(cls, generators, config):
            """The sampler for `config`'s sampling settings; raises if it sets a warper the sampler does not apply."""
            unsupported = {k: getattr(config, k, None) for k in ("top_h", "typical_p", "epsilon_cutoff", "eta_cutoff")}
            unsupported = {k: v for k, v in unsupported.items()
                           if v is not None and not (k == "typical_p" and v >= 1.0)
                           and not (k in ("epsilon_cutoff", "eta_cutoff") and v == 0.0)}
            if unsupported or (config.num_beams or 1) > 1:
                raise ValueError(f"Seeded generation applies temperature, top_k, top_p and min_p only (got "
                                 f"{unsupported or {'num_beams': config.num_beams}}); remove them from "
                                 "generation_kwargs or set seeded_generation: false.")
            return cls(generators, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                       min_p=config.min_p, block=config.max_new_tokens)

        def _uniforms(self, step, device):
            """Every row's uniform of decoding step `step`, drawing the rows' next blocks when needed."""
            while self.uniforms is None or step >= self.uniforms.size(1):
                block = torch.stack([torch.rand(self.block, generator=g, device=g.device, dtype=torch.float64)
                                     for g in self.generators]).to(device)
                self.uniforms = block if self.uniforms is None else torch.cat([self.uniforms, block], dim=1)
            return self.uniforms[:, step]

        def __call__(self, input_ids, scores):
            if scores.size(0) != len(self.generators):
                raise ValueError(f"SeededSampler has {len(self.generators)} generators for {scores.size(0)} rows.")
            scores = self.warpers(input_ids, scores)
            probs = torch.softmax(scores.double(), dim=-1)
            cdf = probs.cumsum(dim=-1)
            if self.prompt_length is None:
                self.prompt_length = input_ids.size(1)
            u = self._uniforms(input_ids.size(1) - self.prompt_length, cdf.device)
            total = cdf[:, -1]
            # below total even when u * total rounds up to it: the first cdf entry above is then a token of nonzero
            # probability (the cdf steps up there), never one of the zero-probability tail
            target = torch.minimum(u * total, total.nextafter(torch.zeros_like(total)))
            tokens = torch.searchsorted(cdf, target.unsqueeze(-1), right=True)
            forced = torch.full_like(scores, float("-inf"))
            return forced.scatter_(-1, tokens, 0.0)

    _SeededSampler.__name__ = _SeededSampler.__qualname__ = "SeededSampler"
    SeededSampler = _SeededSampler
    return SeededSampler


SeededSampler = None  # built by `seeded_sampler_class()` (needs transformers)


def seeded_generate(model, input_ids, attention_mask, generation_config, seeds, **model_inputs):
    """`model.generate` of a left-padded batch in which row i samples from a generator seeded with `seeds[i]`
    ([`SeededSampler`]): each row's tokens are those the row would get generated alone with its seed.

    Args:
        generation_config (`GenerationConfig`): The sampling configuration (`do_sample=True` and its warpers); it is
            run greedily with the sampler applying its warpers.
        seeds (`list[int]`): One per row.

    Returns:
        `torch.LongTensor`: `generate`'s output (prompt and completion ids).
    """
    import copy

    from transformers import LogitsProcessorList

    sampler = seeded_sampler_class().from_generation_config(_row_generators(seeds, input_ids.device),
                                                            generation_config)
    greedy = copy.deepcopy(generation_config)
    greedy.do_sample = False
    greedy.temperature = greedy.top_p = greedy.top_k = greedy.min_p = None
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=greedy,
                          logits_processor=LogitsProcessorList([sampler]), **model_inputs)


@contextlib.contextmanager
def _starting_weights_as_reference(model, args, peft_config):
    """During trl's `GRPOTrainer.__init__`: make the KL reference of a full fine-tuning run the weights it starts from.

    With `beta != 0` and no PEFT, trl builds its reference model with `create_model_from_path(model.config.
    _name_or_path)`. For rrg that folder is not the starting point: a stage-2 adapter is merged into the weights stage
    3 starts from, and the merged model's config still names stage 1's folder (the adapter's base), so trl would score
    the KL against stage 1. This context makes that one call return a copy of `model` (in eval mode, as
    `from_pretrained` returns it); trl then prepares it as its own (dropout off, fused LM head, DeepSpeed / FSDP /
    DDP). The copy takes the memory trl's own reference would. Yields the list of model ids trl asked for (one when the reference was built, empty otherwise), or `None`
    when no reference is needed (`beta == 0`, or PEFT: the reference is the adapter-disabled model).
    """
    from accelerate.utils import is_peft_model
    from trl.trainer import grpo_trainer

    if args is None or args.beta == 0.0 or peft_config is not None or is_peft_model(model):
        yield None
        return
    if not hasattr(grpo_trainer, "create_model_from_path"):
        raise RuntimeError("trl's GRPOTrainer no longer builds its reference model with create_model_from_path; rrg "
                           "needs it to make the reference the starting weights (beta != 0, use_peft: false). Install "
                           "the trl of requirements/lock.txt, use a LoRA (use_peft: true) or set beta: 0.")
    import copy

    reference = copy.deepcopy(model).eval()
    asked = []

    def starting_weights(model_id, *args, **kwargs):
        asked.append(model_id)
        return reference

    original = grpo_trainer.create_model_from_path
    grpo_trainer.create_model_from_path = starting_weights
    try:
        yield asked
    finally:
        grpo_trainer.create_model_from_path = original


def _grpo_trainer_class():
    """`RRGGRPOTrainer`, defined on first use (trl is imported lazily, as everywhere in training/)."""
    global RRGGRPOTrainer
    if isinstance(RRGGRPOTrainer, type):
        return RRGGRPOTrainer
    import trl
    from trl import GRPOTrainer

    # The trl methods overridden below and the parameters they are called with (trl 1.16).
    expected = {
        "_generate_and_score_completions": ["inputs"],
        "_tokenize_prompts": ["prompts"],
        "_generate_single_turn": ["prompt_ids", "images", "multimodal_fields", "num_generations"],
        "_get_per_token_logps_and_entropies": ["model", "input_ids", "attention_mask", "logits_to_keep", "batch_size",
                                               "compute_entropy", "compute_aux_loss"],
        "_compute_loss": ["model", "inputs"],
    }
    for name, params in expected.items():
        method = getattr(GRPOTrainer, name, None)
        have = list(inspect.signature(method).parameters)[1:] if method is not None else None
        if have is None or have[: len(params)] != params:
            raise RuntimeError(
                f"trl {trl.__version__}'s GRPOTrainer.{name} is {'missing' if have is None else f'({have})'}; rrg's "
                f"stage 3 overrides it expecting ({', '.join(params)}) as in trl 1.16. Install the trl of "
                "requirements/lock.txt, or adapt training/rl/grpo.py to this release."
            )

    class _RRGGRPOTrainer(GRPOTrainer):
        """trl's `GRPOTrainer` fed rrg's prompt and visual inputs (see the module docstring for each override).

        Args:
            collator ([`RRGDataCollator`]): Builds prompts and visual inputs from dataset rows.
            seeded_generation (`bool`): See [`RRGRewardArguments.seeded_generation`].
            All other arguments are `GRPOTrainer`'s.
        """

        def __init__(self, *args, collator, seeded_generation: bool = True, **kwargs):
            self.rrg_collator = collator
            self.rrg_seeded_generation = seeded_generation
            self._rrg_generation = None  # prompt ids, visual inputs and study ids of the batch being generated
            self._rrg_visual = None  # visual inputs of the rows being scored
            given = inspect.signature(GRPOTrainer.__init__).bind_partial(self, *args, **kwargs).arguments
            with _starting_weights_as_reference(given.get("model"), given.get("args"),
                                                given.get("peft_config")) as asked:
                super().__init__(*args, **kwargs)
            if asked is not None and (len(asked) != 1 or self.ref_model is None):
                raise RuntimeError(f"trl built its reference model {len(asked)} times through create_model_from_path "
                                   "(expected once): the KL reference may not be the starting weights. Install the "
                                   "trl of requirements/lock.txt, use a LoRA (use_peft: true) or set beta: 0.")

        def _generate_and_score_completions(self, inputs):
            batch = self.rrg_collator.prompt_batch(inputs)
            mask = batch.pop("attention_mask").bool()
            ids = batch.pop("input_ids")
            device = self.accelerator.device
            visual = {k: v.to(device) for k, v in batch.items() if k in VISUAL_KEYS}
            self._rrg_generation = {"prompt_ids": [row[m].tolist() for row, m in zip(ids, mask, strict=True)],
                                    "visual": visual, "study_ids": [row.get("id", i) for i, row in enumerate(inputs)]}
            self._rrg_visual = visual
            try:
                output = super()._generate_and_score_completions(inputs)
            finally:
                self._rrg_generation = self._rrg_visual = None
            output.update(visual)
            return output

        def _tokenize_prompts(self, prompts):
            generation = self._rrg_generation
            if generation is None or len(generation["prompt_ids"]) != len(prompts):
                raise RuntimeError("RRGGRPOTrainer._tokenize_prompts runs only inside _generate_and_score_completions, "
                                   "for the rows it prepared.")
            return generation["prompt_ids"], None, dict(generation["visual"])

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
            generation = self._rrg_generation
            if (not self.rrg_seeded_generation or self.use_vllm or self.use_transformers_continuous_batching
                    or generation is None):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     *args, **kwargs)
            from transformers import Trainer
            from trl.models import unwrap_model_for_generation
            from trl.trainer.utils import pad

            seeds = _generation_seeds(self.args.seed, self.state.global_step, generation["study_ids"], num_generations,
                                      offset=self.accelerator.process_index * len(prompt_ids))
            prompts = [torch.tensor(ids) for ids in prompt_ids]
            padding = dict(padding_side="left", pad_to_multiple_of=self.pad_to_multiple_of)
            inputs = {"input_ids": pad(prompts, padding_value=self._tokenizer.pad_token_id, **padding),
                      "attention_mask": pad([torch.ones_like(t) for t in prompts], padding_value=0, **padding),
                      **{k: v for k, v in multimodal_fields.items() if isinstance(v, torch.Tensor)}}
            inputs = Trainer._prepare_inputs(self, inputs)  # to the device (trl's path calls the same)
            with (
                unwrap_model_for_generation(
                    self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                    generation_kwargs=self.generation_kwargs,
                    gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                ) as unwrapped_model,
                torch.no_grad(),
                self._dist.summon_full_params(self.model_wrapped, recurse=False),
            ):
                output = seeded_generate(unwrapped_model, generation_config=self.generation_config, seeds=seeds,
                                         **inputs)
            completions = output[:, inputs["input_ids"].size(1):].cpu()
            eos = torch.tensor(self.eos_token_ids)
            ids = []
            for row in completions:  # up to and with the first EOS, as trl's path
                hits = torch.isin(row, eos).nonzero()
                ids.append(row[: int(hits[0]) + 1 if len(hits) else len(row)].tolist())
            return ids, None

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                               compute_entropy=False, compute_aux_loss=False, **multimodal):
            visual = self._rrg_visual
            if visual is None:
                raise RuntimeError("RRGGRPOTrainer scores completions only with the visual inputs of their rows.")
            unexpected = sorted(k for k, v in multimodal.items() if v is not None and k not in visual)
            if unexpected:
                raise ValueError(f"trl passed multimodal inputs {unexpected} that rrg's model does not take.")
            rows = input_ids.size(0)
            if any(v.size(0) != rows for v in visual.values()):
                raise RuntimeError(f"Visual inputs for {[v.size(0) for v in visual.values()]} rows, ids for {rows}.")
            batch_size = batch_size or rows
            all_logps, all_entropies, all_aux = [], [], []
            for start in range(0, rows, batch_size):
                end = min(start + batch_size, rows)
                ids, mask = input_ids[start:end], attention_mask[start:end]
                model_inputs = {"input_ids": ids, "attention_mask": mask,
                                **{k: v[start:end] for k, v in visual.items()}}
                if compute_aux_loss:
                    model_inputs["output_router_logits"] = True
                labels = ids.masked_fill(mask == 0, -100)  # only the completion tokens are scored
                labels[:, :-logits_to_keep] = -100
                with self.accelerator.autocast():
                    outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
                all_logps.append(outputs.log_probs[:, -logits_to_keep:])
                if compute_entropy:
                    all_entropies.append(outputs.entropy[:, -logits_to_keep:])
                if compute_aux_loss:
                    all_aux.append(outputs.aux_loss)
            return (torch.cat(all_logps), torch.cat(all_entropies) if compute_entropy else None,
                    torch.stack(all_aux).mean() if compute_aux_loss else None)

        def _compute_loss(self, model, inputs):
            self._rrg_visual = {k: inputs[k] for k in VISUAL_KEYS if k in inputs}
            try:
                return super()._compute_loss(model, inputs)
            finally:
                self._rrg_visual = None

    _RRGGRPOTrainer.__name__ = _RRGGRPOTrainer.__qualname__ = "RRGGRPOTrainer"
    RRGGRPOTrainer = _RRGGRPOTrainer
    return RRGGRPOTrainer


RRGGRPOTrainer = None  # built by `_grpo_trainer_class()` (needs trl)


def samples_callback(trainer, count: int):
    """A callback writing, at each logging step, the last `count` completions with their rewards to
    `samples.jsonl` in output_dir (the whole file, rewritten atomically): what the rewards were paid for."""
    import json

    from transformers import TrainerCallback

    from ..fileio import write_text_atomic

    class SamplesCallback(TrainerCallback):
        rows: list = []

        def on_log(self, args, state, control, **kwargs):
            logs = trainer._logs
            if not state.is_world_process_zero or count <= 0 or not logs["completion"]:
                return
            completions = list(logs["completion"])[-count:]
            rewards = {name: list(values)[-count:] for name, values in logs["rewards"].items()}
            self.rows += [{"step": state.global_step, "completion": c,
                           "rewards": {n: round(float(v[i]), 4) for n, v in rewards.items() if i < len(v)}}
                          for i, c in enumerate(completions)]
            write_text_atomic(Path(args.output_dir) / "samples.jsonl",
                              "".join(json.dumps(row) + "\n" for row in self.rows))

    return SamplesCallback()


def train(args, data_args, reward_args: RRGRewardArguments, training_args, model_args) -> Path:
    """Run stage 3; returns the final model folder (the groups of [`parse_args`])."""
    from accelerate import PartialState
    from transformers import set_seed

    from ..model_io import parse_dtype
    from ..run_guard import LogOnSaveCallback
    from ..sft import distributed
    from ..sft.model_setup import build_model_and_processor, configure_trainable, count_parameters, lora_config
    from ..sft.train import (
        RRGDataCollator,
        _jsonable,
        feature_cache,
        finish_run,
        resume_checkpoint,
        run_manifest,
        run_summary,
        start_run,
    )
    from .rewards import build_rewards

    if args.stage != 3:
        raise ValueError(f"training.rl trains stage 3, got stage={args.stage}; stages 1-2 are training.sft's.")
    if training_args.use_vllm:
        raise ValueError(
            "use_vllm is not supported for rrg: trl's vLLM path hands vLLM prompt token ids and PIL images, and vLLM "
            "runs its own implementation of the architecture, which it has none of for rrg's remote code (soft visual "
            "prompts from image_features / num_views, several views per study). Generate with transformers (the "
            "default); see the README's stage-3 section."
        )
    if not model_args.model_name_or_path:
        raise ValueError("Stage 3 starts from a trained folder: set model_name_or_path to stage 2's output folder.")
    start = time.time()
    # `setup` may rebuild the config (use_cpu on CPU processes), re-running GRPOConfig's __post_init__, which refuses
    # both generation_batch_size and steps_per_generation set (as its first run left them): it recomputes the former.
    generation_batch_size, training_args.generation_batch_size = training_args.generation_batch_size, None
    training_args = distributed.setup(training_args)
    if training_args.generation_batch_size is None:
        training_args.generation_batch_size = generation_batch_size
    state = PartialState()
    set_seed(training_args.seed)
    dtype = parse_dtype(model_args.dtype)
    manifest = run_manifest(args, data_args, training_args, model_args)
    manifest["recipe"]["rewards"] = _jsonable(asdict(reward_args))
    train_dataset, eval_dataset, skipped_images = start_run(args, data_args, training_args, manifest, state)

    with distributed.model_init_context(training_args):
        model, processor, base_models = build_model_and_processor(args, model_args, dtype=dtype)
    use_peft = bool(model_args.use_peft)
    configure_trainable(model, args, use_peft)
    peft_config = lora_config(model, args, model_args) if use_peft else None
    cache = feature_cache(args, model, processor, (train_dataset, eval_dataset), state)
    collator = RRGDataCollator(processor, feature_cache=cache)
    train_dataset = build_prompt_dataset(train_dataset, processor)
    eval_dataset = build_prompt_dataset(eval_dataset, processor) if eval_dataset is not None else None

    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [processor.tokenizer.eos_token_id])
    reward_funcs = build_rewards(reward_args.reward_funcs, reward_settings(reward_args, eos))
    if training_args.reward_weights is not None and len(training_args.reward_weights) != len(reward_funcs):
        raise ValueError(f"reward_weights has {len(training_args.reward_weights)} entries for "
                         f"{len(reward_funcs)} reward_funcs {reward_args.reward_funcs}; give one weight per reward.")
    training_args.remove_unused_columns = False  # the rewards read `report`, the collator `image_path`
    trainer_cls = distributed.trainer_class(_grpo_trainer_class(), training_args)
    trainer = trainer_cls(model=model, reward_funcs=reward_funcs, args=training_args, train_dataset=train_dataset,
                          eval_dataset=eval_dataset, processing_class=processor, peft_config=peft_config,
                          callbacks=[LogOnSaveCallback()], collator=collator,
                          seeded_generation=reward_args.seeded_generation)
    trainer.add_callback(samples_callback(trainer, reward_args.num_samples_to_save))
    counts = count_parameters(trainer.model)
    logger.info("Stage 3: %s trainable parameters, %s frozen; rewards %s with weights %s.",
                f"{counts['trainable_parameters']:,}", f"{counts['frozen_parameters']:,}",
                trainer.reward_func_names, trainer.reward_weights.tolist())

    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    eval_metrics = trainer.evaluate() if eval_dataset is not None else {}
    rewards_history = [{k: v for k, v in row.items() if k == "step" or k.startswith(("reward", "completions/"))}
                       for row in trainer.state.log_history if any(k.startswith("reward") for k in row)]
    summary = run_summary(args, data_args, training_args, model_args, trainer, result, state,
                          mode="lora" if peft_config is not None else "full", counts=counts, base_models=base_models,
                          train_rows=len(train_dataset), skipped_images=skipped_images, manifest=manifest,
                          eval_metrics=eval_metrics, start=start)
    summary["recipe"]["rewards"] = _jsonable(asdict(reward_args))
    summary["rewards"] = {"names": trainer.reward_func_names, "weights": trainer.reward_weights.tolist(),
                          "history": rewards_history}
    return finish_run(trainer, processor, args, training_args, model_args, summary, state)


def parse_args(argv=None):
    """`--config recipe.yaml` + overrides -> `(RRGScriptArguments, DataArguments, RRGRewardArguments, GRPOConfig,
    ModelConfig)`."""
    from trl import GRPOConfig, ModelConfig

    from ..arguments import DataArguments, parse_command
    from ..sft.train import RRGScriptArguments, _checkpointing_field_names

    argv = _checkpointing_field_names(list(sys.argv[1:] if argv is None else argv), GRPOConfig)
    return parse_command("train", (RRGScriptArguments, DataArguments, RRGRewardArguments, GRPOConfig, ModelConfig), argv)


def main(argv=None) -> int:
    train(*parse_args(argv))
    return 0
