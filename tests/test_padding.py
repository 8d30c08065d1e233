"""Length-grouped and padding-free (packed) batches: less padding, the same losses, gradients and trained weights."""

import json

import pytest
import torch

from helpers import loss_and_grads, stage1_trainable, study_rows, train_recipe, train_run, varied_reports, weights
from training.sft.train import RRGDataCollator, add_length_column, parse_args


def _rows(tmp_path, count=6, seed=0):
    # One- and two-view studies with reports of very different lengths: padded batches carry a lot of padding.
    rows = study_rows(tmp_path / "images", varied_reports(count, seed=seed), views=2, seed=seed)
    for row in rows[::3]:
        row["image_path"] = row["image_path"][:1]
    return rows


def _token_losses(model, batch):
    """The summed next-token loss of each study in `batch` (padded rows, or one packed row) and the study order."""
    logits = model(**batch).logits.float()
    labels = batch["labels"]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none"
    ).view(labels.shape[0], -1)
    if "position_ids" not in batch:
        return per_token.sum(dim=1)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [labels.shape[1]]
    # per_token[:, j] scores labels[:, j + 1]: study k's labels sit at starts[k]..starts[k+1]-1.
    return torch.stack([per_token[0, a - 1 : b - 1].sum() if a else per_token[0, : b - 1].sum()
                        for a, b in zip(starts, starts[1:])])


# --------------------------------------------------------------------------------------------- padding-free
def test_packed_collator_concatenates_whole_studies_without_padding(tiny, tmp_path):
    _, processor = tiny
    rows = _rows(tmp_path)
    padded = RRGDataCollator(processor)(rows)
    packed = RRGDataCollator(processor, padding_free=True)(rows)
    lengths = padded["attention_mask"].sum(dim=1)
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, int(lengths.sum()))
    assert torch.equal(packed["input_ids"][0], padded["input_ids"][padded["attention_mask"].bool()])
    starts = torch.cumsum(lengths, 0) - lengths
    assert (packed["position_ids"][0] == 0).nonzero().flatten().tolist() == starts.tolist()
    # No label crosses a study boundary: the first label of every study is masked (its prompt's first token).
    assert (packed["labels"][0, starts] == -100).all()
    assert torch.equal(packed["labels"][packed["labels"] != -100], padded["labels"][padded["labels"] != -100])
    assert torch.equal(packed["pixel_values"], padded["pixel_values"])
    assert torch.equal(packed["num_views"], padded["num_views"])


def test_packed_forward_gives_each_study_its_own_logits(tiny, tmp_path):
    model, processor = tiny
    rows = _rows(tmp_path)
    packed = RRGDataCollator(processor, padding_free=True)(rows)
    with torch.no_grad():
        logits = model(**packed).logits[0]
        start = 0
        for row in rows:
            alone = RRGDataCollator(processor)([row])
            expected = model(**alone).logits[0]
            torch.testing.assert_close(logits[start : start + expected.shape[0]], expected, rtol=1e-5, atol=1e-5)
            start += expected.shape[0]
    assert start == logits.shape[0]


def _lora(model):
    from peft import LoraConfig, get_peft_model

    from training.sft.model_setup import lora_target_regex

    model.requires_grad_(False)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=lora_target_regex("llama"),
                        modules_to_save=["multi_modal_projector"], init_lora_weights=False, task_type=None)
    peft_model = get_peft_model(model, config)
    peft_model.train()
    return peft_model


@pytest.mark.parametrize("source", ["pixels", "features"])
@pytest.mark.parametrize("stage", [1, 2])
def test_packed_loss_and_gradients_equal_the_padded_batch(tiny, tmp_path, source, stage):
    from training.sft.feature_cache import FeatureCache

    model, processor = tiny
    rows = _rows(tmp_path)
    cache = None
    if source == "features":
        cache = FeatureCache(tmp_path / "cache", model, processor)
        cache.precompute([p for row in rows for p in row["image_path"]])
    model = stage1_trainable(model) if stage == 1 else _lora(model)
    padded = RRGDataCollator(processor, feature_cache=cache)(rows)
    packed = RRGDataCollator(processor, feature_cache=cache, padding_free=True)(rows)
    assert ("image_features" in packed) == (source == "features")
    reference_loss, reference_grads = loss_and_grads(model, padded)
    loss, grads = loss_and_grads(model, packed)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-5)
    assert reference_grads and (stage == 1 or any("lora_A" in n for n in reference_grads))
    for name, grad in reference_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_packed_rows_need_position_ids_and_no_attention_mask(tiny, tmp_path):
    model, processor = tiny
    packed = RRGDataCollator(processor, padding_free=True)(_rows(tmp_path))
    with pytest.raises(ValueError, match="take no attention_mask"):
        model(**packed, attention_mask=torch.ones_like(packed["input_ids"]))
    without_positions = {k: v for k, v in packed.items() if k != "position_ids"}
    with pytest.raises(ValueError, match="Got images for 6 samples but the text has 1 rows.*position_ids"):
        model(**without_positions)
    with pytest.raises(ValueError, match="no key/value cache"):
        model(**packed, use_cache=True)
    one_study_short = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    with pytest.raises(ValueError, match="images for 6 studies but the position_ids of the packed rows mark 1"):
        model(**one_study_short)


def test_packed_image_token_check_is_per_study(tiny, tmp_path):
    model, processor = tiny
    packed = RRGDataCollator(processor, padding_free=True)(_rows(tmp_path))
    ids = packed["input_ids"].clone()
    second = (packed["position_ids"][0] == 0).nonzero()[1, 0]
    first_image_token = second + (ids[0, second:] == model.config.image_token_id).nonzero()[0, 0]
    ids[0, first_image_token] = processor.tokenizer.eos_token_id
    with pytest.raises(ValueError, match="do not match: study 1 has"):
        model(**{**packed, "input_ids": ids})


def test_packed_rows_refuse_an_attention_that_would_mix_studies(tiny, tmp_path, workspace):
    from modeling_rrg.modeling_rrg import check_packed_attention

    model, processor = tiny
    packed = RRGDataCollator(processor, padding_free=True)(_rows(tmp_path))
    # Paged attention is real and loads on CPU, but transformers gives it no block-diagonal mask from position_ids.
    model.language_model.set_attn_implementation("paged|eager")
    with pytest.raises(ValueError, match="uses 'paged\\|eager'.*block-diagonal"):
        model(**packed)
    model.config.text_config._attn_implementation = "flash_attention_2"
    check_packed_attention(model.config, rows=1)  # one packed row: flash attention splits it by position_ids
    with pytest.raises(ValueError, match="only in a single row; got 2"):
        check_packed_attention(model.config, rows=2)
    # The recipe field is refused before any training step.
    args, data_args, training_args, model_args = parse_args(["--config", str(train_recipe(
        workspace, tmp_path / "run", padding_free=True, attn_implementation="paged|eager"))])
    from training.sft.train import train

    with pytest.raises(ValueError, match="uses 'paged\\|eager'"):
        train(args, data_args, training_args, model_args)


def test_trl_packing_is_a_clear_error(workspace, tmp_path):
    from training.sft.train import train

    args, data_args, training_args, model_args = parse_args(["--config", str(train_recipe(workspace, tmp_path / "run",
                                                                                packing=True))])
    with pytest.raises(ValueError, match="use padding_free: true"):
        train(args, data_args, training_args, model_args)


@pytest.mark.slow  # three short training runs (the stage1 fixture is the fourth)
def test_padding_free_training_ends_on_the_same_weights(workspace, stage1, tmp_path):
    """Stage 1 and stage 2 (LoRA), padding-free vs padded, same seed and data order: the same weights and losses.
    Also runs stage 2 with length-grouped batches through the recipe field (same order in both runs)."""
    stage1_packed = train_run(train_recipe(workspace, tmp_path / "s1", max_steps=6, padding_free=True))
    assert json.loads((stage1_packed / "rrg_training.json").read_text())["recipe"]["training"]["padding_free"]
    padded, packed = weights(stage1 / "model"), weights(stage1_packed)
    assert padded.keys() == packed.keys()
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], rtol=1e-5, atol=1e-5, msg=name)

    stage2 = dict(stage=2, model_name_or_path=str(stage1 / "model"), use_peft=True, lora_r=4, lora_dropout=0.0,
                  max_steps=4, train_sampling_strategy="group_by_length")
    runs = {pf: train_run(train_recipe(workspace, tmp_path / f"s2_{pf}", padding_free=pf, **stage2))
            for pf in (False, True)}
    from safetensors.torch import load_file

    adapters = {pf: load_file(str(folder / "adapter_model.safetensors")) for pf, folder in runs.items()}
    assert adapters[True].keys() == adapters[False].keys()
    for name in adapters[False]:
        torch.testing.assert_close(adapters[True][name], adapters[False][name], rtol=1e-5, atol=1e-5, msg=name)
    summaries = {pf: json.loads((folder / "rrg_training.json").read_text()) for pf, folder in runs.items()}
    assert summaries[True]["recipe"]["training"]["train_sampling_strategy"] == "group_by_length"
    assert summaries[True]["train_loss"] == pytest.approx(summaries[False]["train_loss"], rel=1e-5)
    assert summaries[True]["eval"]["eval_loss"] == pytest.approx(summaries[False]["eval"]["eval_loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------ length grouping
def test_length_column_is_each_studys_token_count(tiny, tmp_path):
    from datasets import Dataset

    _, processor = tiny
    rows = _rows(tmp_path)
    collator = RRGDataCollator(processor, max_length=60)
    dataset = add_length_column(Dataset.from_list(rows), collator, batch_size=4)
    assert dataset["length"] == collator(rows)["attention_mask"].sum(dim=1).tolist()
    assert max(dataset["length"]) == 60  # truncated as the collator truncates
    again = add_length_column(dataset, collator)  # an existing column is replaced, not duplicated
    assert again["length"] == dataset["length"]


def _epoch(model, processor, rows, strategy, tmp_path):
    """One epoch of the Trainer's training dataloader: the studies of each batch and its padding tokens."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    collator = RRGDataCollator(processor)
    dataset = add_length_column(Dataset.from_list(rows), collator)
    seen = []

    def recording(batch_rows):
        seen.append([row["id"] for row in batch_rows])
        return collator(batch_rows)

    args = SFTConfig(output_dir=str(tmp_path / strategy), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     remove_unused_columns=False, max_length=None, dataset_kwargs={"skip_prepare_dataset": True},
                     train_sampling_strategy=strategy, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         data_collator=recording)
    batches = list(trainer.get_train_dataloader())
    return seen, batches


def test_group_by_length_pads_less_and_leaves_every_study_loss_unchanged(tiny, tmp_path):
    model, processor = tiny
    # transformers sorts by length within mega-batches of min(50, len // (4 * batch)) batches: 64 studies in
    # batches of 4 give mega-batches of 16 studies (with fewer than 32 studies there is no grouping at all).
    rows = _rows(tmp_path, count=64)
    by_id = {row["id"]: row for row in rows}
    model.eval()
    with torch.no_grad():
        alone = {i: _token_losses(model, RRGDataCollator(processor)([row]))[0] for i, row in by_id.items()}
    padding, epoch_loss = {}, {}
    for strategy in ("random", "group_by_length"):
        ids, batches = _epoch(model, processor, rows, strategy, tmp_path)
        assert sorted(i for batch in ids for i in batch) == sorted(by_id)  # every study once per epoch
        padding[strategy] = sum(int((batch["attention_mask"] == 0).sum()) for batch in batches)
        model.eval()
        epoch_loss[strategy] = 0.0
        with torch.no_grad():
            for batch_ids, batch in zip(ids, batches):
                losses = _token_losses(model, batch)
                epoch_loss[strategy] += float(losses.sum())
                for study, loss in zip(batch_ids, losses):
                    torch.testing.assert_close(loss, alone[study], rtol=1e-5, atol=1e-5)
    assert padding["group_by_length"] < padding["random"], padding
    assert epoch_loss["group_by_length"] == pytest.approx(epoch_loss["random"], rel=1e-6)
    assert epoch_loss["random"] == pytest.approx(float(sum(alone.values())), rel=1e-6)


def test_packed_per_study_losses_equal_each_study_alone(tiny, tmp_path):
    """The loss each study contributes to a packed row is its loss alone (no cross-study prediction)."""
    model, processor = tiny
    rows = _rows(tmp_path)
    with torch.no_grad():
        packed = _token_losses(model, RRGDataCollator(processor, padding_free=True)(rows))
        alone = torch.stack([_token_losses(model, RRGDataCollator(processor)([row]))[0] for row in rows])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
