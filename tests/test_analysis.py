"""Tests of training.analysis: soft-visual-prompt vs word-embedding analysis, attention shares, attribution, outputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import xray
from training.analysis.attention import (
    ATTENTION_CATEGORIES,
    _sentence_spans,
    attention_category_shares,
    attention_share_analysis,
    eager_attention,
    generate_records,
    split_sentences,
    teacher_forced_attention,
)
from training.analysis.attribution import token_attribution, visual_token_grid
from training.analysis.embeddings import embedding_analysis, nearest_words, special_token_ids
from training.analysis.plots import plot_attribution
from training.analysis.report import main as analyze_main
from training.analysis.report import run_analysis
from training.sandbox.tiny import build_tiny_model

VISUAL = ATTENTION_CATEGORIES.index("visual")
PADDING = ATTENTION_CATEGORIES.index("padding")


def _studies(n=3, size=48):
    # Mixed view counts so batches carry padded views and padded sequences.
    return [(f"s{i}", [xray(i, size)] + ([xray(50 + i, size)] if i % 2 else [])) for i in range(n)]


def _word_id(tokenizer, token="Ġchest"):
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert token_id != tokenizer.unk_token_id
    return token_id


# ------------------------------------------------------------------------------------------------ eager attention
def test_eager_attention_keeps_logits_and_restores(tiny):
    model, processor = tiny
    batch = processor(images=[[xray(0), xray(1)], [xray(2)]])
    before = model.config.text_config._attn_implementation
    assert before != "eager"  # the test must compare two different implementations
    with torch.no_grad():
        reference = model(**batch).logits
        with eager_attention(model):
            assert model.config.text_config._attn_implementation == "eager"
            out = model(**batch, output_attentions=True)
    assert model.config.text_config._attn_implementation == before
    assert all(a is not None for a in out.attentions)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(out.logits[mask], reference[mask], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ attention shares
def test_attention_category_shares_matches_manual():
    torch.manual_seed(0)
    attn = [torch.softmax(torch.randn(2, 3, 5, 5), dim=-1) for _ in range(2)]
    categories = torch.tensor([[0, 0, 1, 2, 3], [1, 0, 2, 2, 2]])
    query_mask = torch.tensor([[False, True, True, False, False], [False, False, True, True, True]])
    shares = attention_category_shares(attn, categories, query_mask)
    assert shares.shape == (2, 2, 3, len(ATTENTION_CATEGORIES))
    torch.testing.assert_close(shares.sum(-1), torch.ones(2, 2, 3))
    manual = attn[1][0, 2][[1, 2]][:, [0, 1]].sum(-1).mean()
    torch.testing.assert_close(shares[0, 1, 2, VISUAL], manual)


def test_attention_shares_sum_to_one_per_layer(tiny):
    model, processor = tiny
    records = generate_records(model, processor, _studies(3), max_new_tokens=6, batch_size=3)
    pixel_values, num_views = processor.encode_images([r["views"] for r in records])
    with eager_attention(model):
        results = teacher_forced_attention(model, records, pixel_values, num_views)
    layers = model.config.text_config.num_hidden_layers
    heads = model.config.text_config.num_attention_heads
    for record, item in zip(records, results):
        assert item["shares"].shape == (layers, heads, len(ATTENTION_CATEGORIES))
        np.testing.assert_allclose(item["shares"].sum(-1), 1.0, atol=1e-5)
        assert np.all(item["shares"] >= 0)
        assert np.all(item["shares"][..., PADDING] < 1e-6)  # padding is masked out
        assert np.all(item["shares"][..., VISUAL] > 0)
        assert item["num_queries"] == max(1, len(record["report_ids"]))


def test_visual_share_is_zero_without_image_tokens(tiny):
    model, processor = tiny
    tokenizer = processor.tokenizer
    prompts = ["Generate a report for this chest X-ray.\nReport:", "Report:"]
    records = [
        {"prompt_ids": tokenizer(p)["input_ids"], "report_ids": tokenizer(" The heart size is normal.", add_special_tokens=False)["input_ids"]}
        for p in prompts
    ]
    with eager_attention(model):
        results = teacher_forced_attention(model, records)
    for item in results:
        np.testing.assert_allclose(item["shares"].sum(-1), 1.0, atol=1e-5)
        assert np.all(item["shares"][..., VISUAL] == 0)
        assert np.all(item["shares"][..., ATTENTION_CATEGORIES.index("report")] > 0)


def test_attention_share_analysis_spread(tiny):
    model, processor = tiny
    result = attention_share_analysis(model, processor, _studies(3), max_new_tokens=4, batch_size=2)
    layers = model.config.text_config.num_hidden_layers
    assert result["per_study"].shape[0] == 3
    assert result["layer_mean"].shape == result["layer_std"].shape == (layers, len(ATTENTION_CATEGORIES))
    np.testing.assert_allclose(result["layer_mean"].sum(-1), 1.0, atol=1e-5)
    assert np.all(result["layer_std"] >= 0)
    assert model.config.text_config._attn_implementation != "eager"  # switched back


# ------------------------------------------------------------------------------------------------ nearest words
def test_nearest_words_recovers_the_word(tiny):
    model, processor = tiny
    embeddings = model.get_input_embeddings().weight.detach()
    word = _word_id(processor.tokenizer)
    visual = torch.stack([embeddings[word] * 3.0, torch.randn(embeddings.shape[1])])  # cosine ignores the scale
    exclude = special_token_ids(processor.tokenizer, embeddings.shape[0])
    sims, ids = nearest_words(visual, embeddings, exclude, top_k=3, chunk_size=1)
    assert ids[0, 0].item() == word
    assert sims[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert not set(ids.flatten().tolist()) & set(exclude)
    assert torch.all(sims[:, :-1] >= sims[:, 1:])


def test_nearest_words_excludes_special_tokens(tiny):
    model, processor = tiny
    embeddings = model.get_input_embeddings().weight.detach()
    image_id = model.config.image_token_id
    exclude = special_token_ids(processor.tokenizer, embeddings.shape[0])
    assert image_id in exclude
    _, ids = nearest_words(embeddings[image_id][None], embeddings, exclude, top_k=1)
    assert ids[0, 0].item() != image_id
    with pytest.raises(ValueError, match="dimension"):
        nearest_words(torch.randn(2, 7), embeddings)


def test_embedding_analysis_recovers_word_from_projector(tiny):
    model, processor = tiny
    word = _word_id(processor.tokenizer)
    projector = model.model.multi_modal_projector
    with torch.no_grad():  # every soft visual prompt becomes exactly the word's embedding
        projector.linear_1.weight.zero_()
        projector.linear_1.bias.copy_(model.get_input_embeddings().weight[word])
    result = embedding_analysis(model, processor, _studies(2), top_k=2)
    top = result["word_counts"][0]
    assert top["token_id"] == word and top["word"] == "chest"
    assert top["top1_fraction"] == 1.0
    assert result["top1_similarity_stats"]["min"] == pytest.approx(1.0, abs=1e-5)
    assert all(p["word"] == "chest" for p in result["by_position"])
    assert result["num_visual_tokens"] == 3 * model.config.image_seq_length  # 1 + 2 views
    norm = model.get_input_embeddings().weight[word].norm().item()
    np.testing.assert_allclose(result["visual_norms"], norm, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ attribution
def test_visual_token_grid_layouts(tokenizer):
    plain, _ = build_tiny_model(tokenizer=tokenizer)  # 32 px, 8 px patches: 4 x 4
    grid, prefix = visual_token_grid(np.arange(16.0), plain.config)
    assert grid.shape == (4, 4) and grid[1, 0] == 4 and prefix == 0
    pooled, _ = build_tiny_model(tokenizer=tokenizer, num_visual_tokens=4)
    assert visual_token_grid(np.arange(4.0), pooled.config)[0].shape == (2, 2)
    pooled_1d, _ = build_tiny_model(tokenizer=tokenizer, num_visual_tokens=3)
    grid, _ = visual_token_grid(np.array([1.0, 2.0, 3.0]), pooled_1d.config)
    assert grid.shape == (4, 4) and grid.flat[0] == 1.0 and grid.flat[-1] == 3.0
    full, _ = build_tiny_model(tokenizer=tokenizer, vision_feature_select_strategy="full")
    values = np.r_[0.5, np.full(16, 0.5 / 16)]  # CLS first
    grid, prefix = visual_token_grid(values, full.config)
    assert grid.shape == (4, 4) and prefix == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one per visual token"):
        visual_token_grid(np.arange(5.0), plain.config)


def test_split_sentences(tokenizer):
    text = "The heart size is normal.  Lungs are clear; no effusion. Nodule of 1.5 cm!"
    assert split_sentences(text) == ["The heart size is normal.", "Lungs are clear;", "no effusion.", "Nodule of 1.5 cm!"]
    # Token spans of a generated report (EOS dropped) follow the same sentence boundaries.
    ids = tokenizer(" The heart size is normal. The lungs are clear.", add_special_tokens=False)["input_ids"]
    spans = _sentence_spans(tokenizer, ids + [tokenizer.eos_token_id], {tokenizer.eos_token_id})
    assert [text for _, _, text in spans] == ["The heart size is normal.", "The lungs are clear."]
    assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] == len(ids)


def test_sentence_spans_keep_list_numbers_and_decimals(tokenizer):
    text = " 1. No effusion. 2. Nodule of 1.5 cm. Findings: 3. Clear lungs."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    spans = _sentence_spans(tokenizer, ids + [tokenizer.eos_token_id], {tokenizer.eos_token_id})
    expected = ["1. No effusion.", "2. Nodule of 1.5 cm.", "Findings: 3. Clear lungs."]
    assert [text for _, _, text in spans] == expected
    assert split_sentences(text) == expected


def test_token_attribution_of_a_given_report_and_one_view_plot(tokenizer, tmp_path):
    model, processor = build_tiny_model(tokenizer=tokenizer)
    model.eval()
    generated = token_attribution(model, processor, ("s", [xray(3), xray(4)]), max_new_tokens=8)
    # The same tokens given as a record (what `rrg serve` does with the report it showed) give the same maps.
    record = generate_records(model, processor, [("s", [xray(3), xray(4)])], max_new_tokens=8)[0]
    given = token_attribution(model, processor, None, record=record)
    assert [s["text"] for s in given["sentences"]] == [s["text"] for s in generated["sentences"]]
    for a, b in zip(given["sentences"], generated["sentences"]):
        assert all(np.allclose(x, y) for x, y in zip(a["maps"], b["maps"]))
    one = plot_attribution(given, tmp_path / "view1.png", views=[1])
    both = plot_attribution(given, tmp_path / "both.png")
    with Image.open(one) as a, Image.open(both) as b:
        assert a.size[0] < b.size[0]  # one column instead of two
    with pytest.raises(ValueError, match="out of range"):
        plot_attribution(given, tmp_path / "bad.png", views=[2])


def test_token_attribution_pooled(tokenizer):
    model, processor = build_tiny_model(tokenizer=tokenizer, num_visual_tokens=4)
    model.eval()
    result = token_attribution(model, processor, ("two_views", [xray(3), xray(4)]), max_new_tokens=8, layers=[-1])
    assert result["layers"] == [1]
    assert result["sentences"]
    for sentence in result["sentences"]:
        assert len(sentence["maps"]) == 2 and sentence["maps"][0].shape == (2, 2)
        assert sum(m.sum() for m in sentence["maps"]) == pytest.approx(1.0, abs=1e-5)
        assert 0 < sentence["visual_share"] <= 1
    with pytest.raises(ValueError, match="out of range"):
        token_attribution(model, processor, ("x", [xray(3)]), layers=[5])


# ------------------------------------------------------------------------------------------------ outputs
def _check_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
        assert np.asarray(image.convert("L")).std() > 0  # not a blank canvas


def test_run_analysis_writes_plots_and_numbers(tiny, tokenizer, tmp_path):
    model, processor = tiny
    stage1, stage1_processor = build_tiny_model(tokenizer=tokenizer, seed=1)
    stage1.eval()
    report = run_analysis(
        model, processor, _studies(3), tmp_path, compare=(stage1, stage1_processor), labels=("stage2", "stage1"),
        attribution_study=("s1", [xray(1, 48), xray(51, 48)]), max_new_tokens=6, batch_size=2,
    )
    for name in ("embeddings_stage2", "embeddings_stage1", "attention_stage2", "attention_stage1", "comparison",
                 "attribution_s1"):
        _check_png(tmp_path / f"{name}.png")
    for name in report["files"]:
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "analysis.json").read_text())
    assert set(data["models"]) == {"stage2", "stage1"}
    layer_mean = np.array(data["models"]["stage2"]["attention"]["layer_mean"])
    np.testing.assert_allclose(layer_mean.sum(-1), 1.0, atol=1e-5)
    assert data["comparison"]["columns"] == ["metric", "stage2", "stage1"]
    summary = (tmp_path / "summary.md").read_text()
    assert "## Comparison" in summary and "attribution_s1.png" in summary
    header = (tmp_path / "attention_layers_stage2.csv").read_text().splitlines()[0]
    assert header.startswith("layer,visual_mean,visual_std")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_cli_on_saved_model_and_annotation(tiny, tokenizer, tmp_path):
    model, processor = tiny
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    stage1, stage1_processor = build_tiny_model(tokenizer=tokenizer, seed=1)
    stage1.save_pretrained(tmp_path / "stage1")
    stage1_processor.save_pretrained(tmp_path / "stage1")
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    entries = []
    for i in range(3):
        Image.fromarray(xray(i, 40)).save(images / f"{i}.png")
        entries.append({"id": f"t{i}", "report": "The heart size is normal.", "image_path": [f"{i}.png"]})
    annotation = tmp_path / "data" / "annotation.json"
    annotation.write_text(json.dumps({"train": entries[:1], "val": entries[:1], "test": entries}))
    out = tmp_path / "out"
    code = analyze_main([
        "--model", str(model_dir), "--data", str(annotation), "--split", "test", "--max-studies", "2",
        "--study-id", "t2", "--batch-size", "2", "--max-new-tokens", "4", "--output-dir", str(out),
        "--attribution-layers", "-1", "--device", "cpu", "--compare-model", str(tmp_path / "stage1"),
        "--labels", "stage2,stage1",
    ])
    assert code == 0
    data = json.loads((out / "analysis.json").read_text())
    assert data["attribution"]["id"] == "t2"
    assert data["meta"]["num_studies"] == 2
    assert set(data["models"]) == {"stage2", "stage1"}
    _check_png(out / "comparison.png")
    _check_png(out / "attribution_t2.png")
    with pytest.raises(ValueError, match="not in split"):
        analyze_main(["--model", str(model_dir), "--data", str(annotation), "--study-id", "nope",
                       "--output-dir", str(out)])
