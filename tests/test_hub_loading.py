"""Save -> load with trust_remote_code in a fresh process where the project is not importable, from a local folder
and from a Hugging Face cache layout; and assembling a model from pretrained backbones."""

import json

import pytest
import torch

from helpers import hub_cache, run_isolated, xray
from modeling_rrg import RRGForConditionalGeneration, RRGProcessor
from training.sandbox.tiny import (
    build_tiny_model,
    save_backbone,
    tiny_image_processor,
    tiny_text_config,
    tiny_vision_config,
)


def _save_model(tmp_path, tokenizer):
    model, processor = build_tiny_model(tokenizer=tokenizer, num_visual_tokens=4, projector_type="mlp2x_gelu")
    folder = tmp_path / "rrg-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    batch = processor(images=[[xray(0), xray(1)], [xray(2)]], report=["Normal heart.", "Left effusion."])
    torch.save(dict(batch), tmp_path / "batch.pt")
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    torch.save(logits, tmp_path / "logits.pt")
    return folder


LOAD_AND_COMPARE = """
import torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
name = {name!r}
model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(processor).__name__ == "RRGProcessor"
batch = torch.load({batch!r})
with torch.no_grad():
    logits = model(**batch).logits
assert torch.equal(logits, torch.load({logits!r})), (logits - torch.load({logits!r})).abs().max()
import numpy as np
rng = np.random.default_rng(0)
views = [rng.integers(0, 256, size=(40, 40), dtype=np.uint8) for _ in range(2)]
fresh = processor(images=[views[:2], views[:1]], report=["Normal heart.", "Left effusion."])
assert fresh["input_ids"].shape == batch["input_ids"].shape
base = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
with torch.no_grad():
    hidden = base(**{{k: v for k, v in batch.items() if k != "labels"}}).last_hidden_state
assert torch.allclose(model.lm_head(hidden), logits)
from transformers import AutoModelForCausalLM
causal = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True).eval()
with torch.no_grad():
    assert torch.equal(causal(**batch).logits, logits)
print("OK", type(model).__name__)
"""


def test_saved_folder_has_code_auto_map_and_safetensors(tmp_path, tokenizer):
    folder = _save_model(tmp_path, tokenizer)
    files = {p.name for p in folder.iterdir()}
    assert {"configuration_rrg.py", "modeling_rrg.py", "processing_rrg.py", "model.safetensors"} <= files
    assert not any(name.endswith(".bin") for name in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_rrg.RRGForConditionalGeneration"
    assert config["auto_map"]["AutoModel"] == "modeling_rrg.RRGModel"
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_rrg.RRGProcessor"
    assert (folder / "chat_template.jinja").exists()


@pytest.mark.slow  # a fresh Python process loads torch and transformers again
def test_round_trip_in_fresh_process_from_local_folder(tmp_path, tokenizer):
    folder = _save_model(tmp_path, tokenizer)
    out = run_isolated(
        LOAD_AND_COMPARE.format(name=str(folder), batch=str(tmp_path / "batch.pt"), logits=str(tmp_path / "logits.pt")),
        cwd=tmp_path,
    )
    assert "OK RRGForConditionalGeneration" in out


@pytest.mark.slow  # a fresh Python process loads torch and transformers again
def test_round_trip_in_fresh_process_from_hub_cache_layout(tmp_path, tokenizer):
    folder = _save_model(tmp_path, tokenizer)
    hub_cache(tmp_path, folder, repo_id="rrg-org/rrg-tiny")
    out = run_isolated(
        LOAD_AND_COMPARE.format(name="rrg-org/rrg-tiny", batch=str(tmp_path / "batch.pt"),
                                logits=str(tmp_path / "logits.pt")),
        cwd=tmp_path,
        env_extra={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf_home")},
    )
    assert "OK RRGForConditionalGeneration" in out


def _assert_same_tensors(expected: dict, actual: dict, what: str):
    assert expected.keys() == actual.keys(), f"{what}: parameter names differ"
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), f"{what}: {key} changed"


@pytest.mark.parametrize(
    "vision_kind,text_kind", [("vit", "llama"), ("siglip", "mistral"), ("clip", "qwen2"), ("dinov2", "gpt2")]
)
def test_from_pretrained_backbones_keeps_backbone_weights(tmp_path, tokenizer, vision_kind, text_kind):
    from transformers import AutoModel, AutoModelForCausalLM

    # Tokenizer without the image token, as a real LLM checkpoint would ship it.
    from training.sandbox.tiny import train_bpe_tokenizer

    plain = train_bpe_tokenizer(image_token="<unused>")
    torch.manual_seed(0)
    vision = AutoModel.from_config(tiny_vision_config(vision_kind))
    lm = AutoModelForCausalLM.from_config(tiny_text_config(text_kind, vocab_size=len(plain)))
    vision_dir = save_backbone(vision, tmp_path / "vision", image_processor=tiny_image_processor())
    text_dir = save_backbone(lm, tmp_path / "text", tokenizer=plain)

    processor = RRGProcessor.from_pretrained_backbones(vision_dir, text_dir, image_seq_length=16)
    assert len(processor.tokenizer) == len(plain) + 1
    model = RRGForConditionalGeneration.from_pretrained_backbones(
        vision_dir, text_dir, image_token_id=processor.image_token_id, vocab_size=len(processor.tokenizer)
    )
    _assert_same_tensors(vision.state_dict(), model.model.vision_tower.state_dict(), "vision tower")
    lm_state = lm.base_model.state_dict()
    got = model.model.language_model.state_dict()
    embed_key = next(k for k in lm_state if lm_state[k].shape[0] == len(plain) and lm_state[k].dim() == 2)
    for key, value in lm_state.items():
        if key == embed_key:  # resized for the image token: the old rows are unchanged
            assert got[key].shape[0] == len(plain) + 1
            assert torch.equal(got[key][: len(plain)], value)
        else:
            assert torch.equal(value, got[key]), key
    assert model.config.image_token_id == processor.image_token_id
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert not any(p.is_meta for p in model.parameters())
    batch = processor(images=[xray(0)], report="Normal.")
    assert torch.isfinite(model(**batch).loss)


def test_from_pretrained_backbones_takes_the_vision_half_of_a_dual_encoder(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, CLIPConfig, CLIPModel

    from training.sandbox.tiny import train_bpe_tokenizer

    vision_cfg = tiny_vision_config("clip").to_dict()
    clip = CLIPModel(CLIPConfig(vision_config=vision_cfg, text_config=dict(hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64, vocab_size=99), projection_dim=16))
    plain = train_bpe_tokenizer(image_token="<unused>")
    lm = AutoModelForCausalLM.from_config(tiny_text_config("llama", vocab_size=len(plain)))
    vision_dir = save_backbone(clip, tmp_path / "clip", image_processor=tiny_image_processor())
    text_dir = save_backbone(lm, tmp_path / "text", tokenizer=plain)
    model = RRGForConditionalGeneration.from_pretrained_backbones(vision_dir, text_dir)
    expected = clip.vision_model.state_dict()
    actual = model.model.vision_tower.state_dict()
    actual = {k.removeprefix("vision_model."): v for k, v in actual.items()}
    assert len(expected) > 10
    _assert_same_tensors(dict(expected), actual, "CLIP vision half")


def _llama_style_tokenizer(folder):
    """A SentencePiece-style (Metaspace '▁') LlamaTokenizer with no pad token, as OpenLLaMA ships, trained offline."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import LlamaTokenizer

    texts = ["The heart size is normal.", "Small left pleural effusion. No pneumothorax.", "Report: lungs clear.",
             "Generate a comprehensive and detailed diagnosis report for this chest X-ray image."] * 5
    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator(texts, vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"])
    model = json.loads(trainer._tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = LlamaTokenizer(vocab=model["vocab"], merges=merges)
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_openllama_style_sentencepiece_tokenizer_without_pad_token(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM

    plain = _llama_style_tokenizer(tmp_path / "text")
    AutoModelForCausalLM.from_config(tiny_text_config("llama", vocab_size=len(plain))).save_pretrained(tmp_path / "text")
    save_backbone(AutoModel.from_config(tiny_vision_config("vit")), tmp_path / "vision",
                  image_processor=tiny_image_processor())
    processor = RRGProcessor.from_pretrained_backbones(tmp_path / "vision", tmp_path / "text", image_seq_length=16)
    assert processor.tokenizer.pad_token is not None  # set (to EOS) so batches can be padded
    model = RRGForConditionalGeneration.from_pretrained_backbones(
        tmp_path / "vision", tmp_path / "text", image_token_id=processor.image_token_id,
        vocab_size=len(processor.tokenizer))
    reports = ["The heart size is normal.", "Small left pleural effusion. No pneumothorax."]
    batch = processor(images=[[xray(0)], [xray(1)]], report=reports)
    for i, report in enumerate(reports):
        target = batch["labels"][i][batch["labels"][i] != -100]
        assert processor.tokenizer.decode(target, skip_special_tokens=True).strip() == report
        assert processor.batch_decode(batch["input_ids"][i : i + 1])[0] == report
    assert torch.isfinite(model(**batch).loss)
    out = model.generate(**processor(images=[[xray(0)], [xray(1)]], padding_side="left"), max_new_tokens=4)
    assert out.shape[0] == 2


def test_from_pretrained_backbones_in_bfloat16(tmp_path):
    """The paper recipe loads both backbones in bfloat16; the projector follows and a forward pass works."""
    from transformers import AutoModel, AutoModelForCausalLM

    from training.sandbox.tiny import train_bpe_tokenizer

    plain = train_bpe_tokenizer(image_token="<unused>")
    save_backbone(AutoModel.from_config(tiny_vision_config("siglip")), tmp_path / "vision",
                  image_processor=tiny_image_processor())
    save_backbone(AutoModelForCausalLM.from_config(tiny_text_config("qwen2", vocab_size=len(plain))),
                  tmp_path / "text", tokenizer=plain)
    processor = RRGProcessor.from_pretrained_backbones(tmp_path / "vision", tmp_path / "text", image_seq_length=4)
    model = RRGForConditionalGeneration.from_pretrained_backbones(
        tmp_path / "vision", tmp_path / "text", image_token_id=processor.image_token_id,
        vocab_size=len(processor.tokenizer), dtype=torch.bfloat16, num_visual_tokens=4)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model(**processor(images=[[xray(0), xray(1)]], report="Normal."))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
