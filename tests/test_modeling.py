"""The model: shapes, loss, where visual prompts land, generation, image-feature path, bad input."""

import pytest
import torch
import torch.nn.functional as F

from helpers import xray
from modeling_rrg import RRGConfig
from training.sandbox.tiny import build_tiny_model, tiny_text_config, tiny_vision_config


def _batch(processor, reports=None, padding_side="right"):
    images = [[xray(0), xray(1)], [xray(2)]]
    return processor(images=images, report=reports, padding_side=padding_side)


def test_forward_shapes_and_loss(tiny):
    model, processor = tiny
    batch = _batch(processor, reports=["The heart size is normal.", "Small left pleural effusion."])
    out = model(**batch)
    vocab = model.config.text_config.vocab_size
    assert out.logits.shape == (*batch["input_ids"].shape, vocab)
    # 3 valid views in the batch, each one block of image_seq_length visual prompts
    assert out.image_hidden_states.shape == (3, model.config.image_seq_length, model.config.text_config.hidden_size)
    # Loss is the mean next-token CE over labelled positions only.
    logits = out.logits[:, :-1].reshape(-1, vocab)
    targets = batch["labels"][:, 1:].reshape(-1)
    expected = F.cross_entropy(logits, targets, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert out.loss.item() > 0


def test_loss_ignores_masked_positions(tiny):
    model, processor = tiny
    batch = _batch(processor, reports=["The heart size is normal.", "Small left pleural effusion."])
    base = model(**batch).loss
    # Changing the *inputs* at masked (-100) text positions changes the logits there but the loss only through
    # attention; changing only *labels* to -100 where they were already -100 must change nothing, while un-masking
    # one prompt position must change the loss.
    labels = batch["labels"].clone()
    masked_positions = labels == -100
    assert masked_positions.any() and (~masked_positions).any()
    relabel = labels.clone()
    relabel[0, 5] = batch["input_ids"][0, 5]  # expose one prompt position
    changed = model(**{**batch, "labels": relabel}).loss
    assert not torch.isclose(base, changed)
    # Left padding sits before the real tokens, masked from attention and loss: whatever tokens it holds, the
    # loss must not move (it would if the padding were attended to or scored).
    left = _batch(processor, reports=["The heart size is normal.", "Small left pleural effusion."],
                  padding_side="left")
    padding = left["attention_mask"] == 0
    assert padding.any()
    other_ids = left["input_ids"].masked_fill(padding, processor.tokenizer.eos_token_id + 7)
    torch.testing.assert_close(model(**{**left, "input_ids": other_ids}).loss, model(**left).loss)


def test_without_image_tokens_logits_equal_bare_language_model(tiny):
    model, processor = tiny
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(model.config.text_config)
    lm.model.load_state_dict(model.model.language_model.state_dict())
    lm.lm_head.load_state_dict(model.lm_head.state_dict())
    lm.eval()
    ids = processor.tokenizer(["No pleural effusion or pneumothorax."], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(model(input_ids=ids).logits, lm(input_ids=ids).logits)


def test_image_features_land_exactly_at_image_token_positions(tiny):
    model, processor = tiny
    batch = _batch(processor)
    out = model(**batch, output_hidden_states=True)
    embeds = out.hidden_states[0]  # the LLM's input embeddings after the visual prompts were scattered in
    mask = batch["input_ids"] == model.config.image_token_id
    # By construction: the visual prompts, in sample-then-view order, fill the image-token positions ...
    visual = model.get_image_features(batch["pixel_values"], batch["num_views"]).pooler_output
    torch.testing.assert_close(embeds[mask], visual.reshape(-1, visual.shape[-1]))
    # ... view by view: sample 0's first block is its first view, the second block its second view.
    n = model.config.image_seq_length
    positions = mask[0].nonzero().squeeze(-1)
    first_view = model.get_image_features(batch["pixel_values"][:1, :1]).pooler_output
    torch.testing.assert_close(embeds[0, positions[:n]], first_view[0])
    # ... and every other position keeps its word embedding.
    words = model.get_input_embeddings()(batch["input_ids"])
    torch.testing.assert_close(embeds[~mask], words[~mask])


def test_token_feature_count_mismatch_is_a_clear_error(tiny):
    model, processor = tiny
    batch = _batch(processor)
    ids = batch["input_ids"].clone()
    first = (ids[0] == model.config.image_token_id).nonzero()[0, 0]
    ids[0, first] = processor.tokenizer.eos_token_id  # one image token short
    with pytest.raises(ValueError, match="Image features and image tokens do not match: sample 0"):
        model(**{**batch, "input_ids": ids})


def test_image_tokens_without_images_are_embedded_as_text(tiny):
    # As transformers' LLaVA: without images, the image token is an ordinary vocabulary entry.
    model, processor = tiny
    batch = _batch(processor)
    text_only = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    embeds = model.get_input_embeddings()(batch["input_ids"])
    as_embeds = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
    torch.testing.assert_close(text_only.logits, as_embeds.logits)
    assert text_only.image_hidden_states is None and text_only.image_outputs is None


def test_inputs_embeds_with_images_equal_input_ids(tiny):
    # The image positions are found from the image token's embedding when there are no ids (as LLaVA does).
    model, processor = tiny
    batch = _batch(processor)
    with_ids = model(**batch)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with_embeds = model(**{k: v for k, v in batch.items() if k != "input_ids"}, inputs_embeds=embeds)
    torch.testing.assert_close(with_ids.logits, with_embeds.logits)
    torch.testing.assert_close(with_ids.loss, with_embeds.loss)


def test_get_image_features_follows_transformers_return_type(tiny):
    model, processor = tiny
    batch = _batch(processor)
    out = model.get_image_features(batch["pixel_values"], batch["num_views"], output_hidden_states=True)
    valid_views = int(batch["num_views"].sum())
    assert out.pooler_output.shape == (valid_views, model.config.image_seq_length, model.config.text_config.hidden_size)
    assert out.last_hidden_state.shape[0] == valid_views
    assert len(out.hidden_states) == model.config.vision_config.num_hidden_layers + 1
    assert model.get_image_features(batch["pixel_values"], batch["num_views"]).hidden_states is None
    as_tuple = model.get_image_features(batch["pixel_values"], batch["num_views"], return_dict=False)
    torch.testing.assert_close(as_tuple[1], out.pooler_output)


def test_more_views_than_configured_is_an_error(tiny):
    model, processor = tiny
    batch = _batch(processor)
    pixels = torch.cat([batch["pixel_values"]] * 2, dim=1)  # 4 views > max_views=2
    with pytest.raises(ValueError, match="max_views"):
        model(input_ids=batch["input_ids"], pixel_values=pixels)


def test_wrong_image_size_is_an_error(tiny):
    model, processor = tiny
    batch = _batch(processor)
    with pytest.raises(ValueError, match="pixels but the vision encoder expects"):
        model(**{**batch, "pixel_values": torch.zeros(2, 2, 3, 48, 48)})
    with pytest.raises(ValueError, match="channels"):
        model(**{**batch, "pixel_values": torch.zeros(2, 2, 1, 32, 32)})


def test_image_features_path_gives_identical_logits(tiny):
    model, processor = tiny
    batch = _batch(processor, reports=["Normal heart.", "Left effusion."])
    flat = batch["pixel_values"].flatten(0, 1)
    feats = model.get_vision_features(flat).unflatten(0, batch["pixel_values"].shape[:2])
    with_pixels = model(**batch)
    inputs = {k: v for k, v in batch.items() if k != "pixel_values"}
    with_features = model(**inputs, image_features=feats)
    torch.testing.assert_close(with_pixels.logits, with_features.logits)
    torch.testing.assert_close(with_pixels.loss, with_features.loss)


def _greedy_by_hand(model, batch, steps):
    ids = batch["input_ids"]
    for _ in range(steps):
        logits = model(input_ids=ids, pixel_values=batch["pixel_values"], num_views=batch["num_views"],
                       attention_mask=torch.ones_like(ids)).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_generate_equals_hand_written_greedy_loop_and_cache_agrees(tiny):
    model, processor = tiny
    batch = processor(images=[xray(3), xray(4)])
    steps = 8
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    cached = model.generate(**batch, use_cache=True, **kwargs)
    uncached = model.generate(**batch, use_cache=False, **kwargs)
    by_hand = _greedy_by_hand(model, batch, steps)
    assert torch.equal(cached, by_hand)
    assert torch.equal(uncached, by_hand)


def test_vision_encoder_runs_once_per_generate_call(tiny):
    model, processor = tiny
    batch = processor(images=[xray(3)])
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("text_kind", ["llama", "gpt2"])
def test_batched_left_padded_generation_equals_one_by_one(tokenizer, text_kind):
    model, processor = build_tiny_model(tokenizer=tokenizer, text_kind=text_kind, seed=1)
    model.eval()
    studies = [[xray(5), xray(6)], [xray(7)], [xray(8)]]
    instructions = ["Describe the heart.", "Generate a comprehensive and detailed report for this chest X-ray."]
    texts = [processor.build_prompt(len(s), instr) for s, instr in zip(studies, instructions + instructions[:1])]
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    batch = processor(images=studies, text=texts, padding_side="left")
    assert (batch["attention_mask"][:, 0] == 0).any(), "test needs different prompt lengths"
    together = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1]:]
    for i, (study, text) in enumerate(zip(studies, texts)):
        single = processor(images=[study], text=[text])
        alone = model.generate(**single, **kwargs)[:, single["input_ids"].shape[1]:]
        assert torch.equal(together[i], alone[0]), f"study {i} differs when batched"


def test_beam_search_runs_with_multiview_images(tiny):
    model, processor = tiny
    batch = _batch(processor, padding_side="left")
    out = model.generate(**batch, max_new_tokens=4, num_beams=2, do_sample=False)
    assert out.shape[0] == 2


@pytest.mark.parametrize("vision_kind", ["vit", "siglip", "clip", "dinov2"])
@pytest.mark.parametrize("text_kind", ["llama", "mistral", "qwen2", "gpt2"])
def test_backbone_families_forward_and_backward(tokenizer, vision_kind, text_kind):
    model, processor = build_tiny_model(tokenizer=tokenizer, vision_kind=vision_kind, text_kind=text_kind)
    batch = _batch(processor, reports=["Normal.", "Effusion."])
    out = model(**batch)
    out.loss.backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None


@pytest.mark.parametrize("projector_type", ["linear", "mlp2x_gelu"])
def test_projector_types_and_pooled_visual_token_count(tokenizer, projector_type):
    model, processor = build_tiny_model(tokenizer=tokenizer, projector_type=projector_type, num_visual_tokens=4)
    assert model.config.image_seq_length == 4 and processor.image_seq_length == 4
    batch = _batch(processor)
    out = model(**batch)
    assert out.image_hidden_states.shape[:2] == (3, 4)
    names = {n for n, _ in model.model.multi_modal_projector.named_parameters()}
    assert ("linear_2.weight" in names) == (projector_type == "mlp2x_gelu")


def test_pooling_averages_the_patch_grid():
    from modeling_rrg.modeling_rrg import RRGModel

    grid = torch.arange(16, dtype=torch.float).view(1, 16, 1)  # a 4x4 grid, row-major
    pooled = RRGModel._pool(grid, 4)
    torch.testing.assert_close(pooled.view(-1), torch.tensor([2.5, 4.5, 10.5, 12.5]))


def test_config_validation_errors():
    vision, text = tiny_vision_config(), tiny_text_config(vocab_size=100)
    with pytest.raises(ValueError, match="projector_type"):
        RRGConfig(vision_config=vision, text_config=text, image_token_id=5, projector_type="conv")
    with pytest.raises(ValueError, match="outside the text model's vocabulary"):
        RRGConfig(vision_config=vision, text_config=text, image_token_id=100)
    with pytest.raises(ValueError, match="exceeds the encoder's 16 patches"):
        RRGConfig(vision_config=vision, text_config=text, image_token_id=5, num_visual_tokens=32)
    with pytest.raises(ValueError, match="vision_feature_layer"):
        RRGConfig(vision_config=vision, text_config=text, image_token_id=5, vision_feature_layer=7)
    with pytest.raises(ValueError, match="model_type"):
        RRGConfig(vision_config={"model_type": "not-a-model"}, text_config=text, image_token_id=5)
    with pytest.raises(ValueError, match="ViT-style encoder"):
        RRGConfig(vision_config=tiny_text_config(), text_config=text, image_token_id=5)


def test_config_round_trip_and_auto_map(tmp_path):
    config = RRGConfig(vision_config=tiny_vision_config("siglip"), text_config=tiny_text_config("qwen2"),
                       image_token_id=5, num_visual_tokens=4, projector_type="mlp2x_gelu")
    config.save_pretrained(tmp_path)
    loaded = RRGConfig.from_pretrained(tmp_path)
    assert loaded.vision_config.model_type == "siglip_vision_model"
    assert loaded.text_config.model_type == "qwen2"
    assert (loaded.num_visual_tokens, loaded.projector_type, loaded.image_token_id) == (4, "mlp2x_gelu", 5)
    assert loaded.auto_map["AutoModelForImageTextToText"] == "modeling_rrg.RRGForConditionalGeneration"
    assert loaded.auto_map["AutoModel"] == "modeling_rrg.RRGModel"


def test_full_strategy_keeps_prefix_tokens(tokenizer):
    model, processor = build_tiny_model(tokenizer=tokenizer, vision_feature_select_strategy="full")
    assert model.config.image_seq_length == 17  # 16 patches + CLS
    out = model(**_batch(processor))
    assert out.image_hidden_states.shape[1] == 17


def test_tied_embeddings_follow_text_model_naming(tokenizer):
    model, _ = build_tiny_model(tokenizer=tokenizer, text_kind="gpt2")
    # GPT-2 ties by default; its embedding is called `wte`, not `embed_tokens`.
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.language_model.wte.weight.data_ptr()
