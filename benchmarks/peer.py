"""rrg and transformers' `LlavaForConditionalGeneration` on the same backbones with the same weights.

The peer a user would pick instead of rrg is LLaVA + trl's `SFTTrainer`. Both models here share one ViT and one LLaMA
config; LLaVA is built first and its state dict is loaded into rrg (the module names are the same by design:
`model.vision_tower`, `model.multi_modal_projector.linear_1/2`, `model.language_model`, `lm_head`), then
`check_equal_logits` verifies that the two compute the same thing before anything is timed.
"""

import math
from dataclasses import asdict, dataclass, replace

import torch

__all__ = ["Shape", "SHAPES", "build_pair", "build_rrg", "backbone_configs", "check_equal_logits", "llava_batch", "make_rows", "flops_per_sample"]


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: a ViT, a LLaMA, and the batch both models see."""

    name: str
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    vocab_size: int
    batch_size: int
    views: int
    report_words: int
    num_visual_tokens: int | None = None

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def smallest(self) -> "Shape":
        """The same shape family at its smallest size (the smoke test runs this)."""
        return replace(self, name=self.name + "-smoke", image_size=32, patch_size=16, vision_hidden=32, vision_layers=1,
                       vision_heads=2, vision_intermediate=64, text_hidden=32, text_layers=1, text_heads=2,
                       text_intermediate=64, vocab_size=min(self.vocab_size, 1024), batch_size=2, report_words=8)


SHAPES = {
    # The demo's architecture (training/demo.py): the encoder is a negligible share of the work.
    "demo": Shape("demo", image_size=64, patch_size=16, vision_hidden=96, vision_layers=3, vision_heads=4,
                  vision_intermediate=192, text_hidden=96, text_layers=3, text_heads=4, text_intermediate=192,
                  vocab_size=600, batch_size=4, views=2, report_words=40),
    # ViT-B/16 width at 224 px (196 patches per view, two views) in front of a LLaMA of 1024 width with a 32k
    # vocabulary. Depths are cut (ViT 3 of 12 layers, LLaMA 3 layers) so a step fits a loaded 2-core machine; cutting
    # both keeps the encoder's share of the forward FLOPs (~21%, reported with the timings) where a full ViT-B in
    # front of a ~300M-parameter LLaMA has it (~20%).
    "encoder_heavy": Shape("encoder_heavy", image_size=224, patch_size=16, vision_hidden=768, vision_layers=3,
                           vision_heads=12, vision_intermediate=3072, text_hidden=1024, text_layers=3, text_heads=16,
                           text_intermediate=2816, vocab_size=32000, batch_size=2, views=2, report_words=40),
}


def backbone_configs(shape: Shape) -> tuple[dict, dict]:
    """The shape's ViT and LLaMA configs as dicts (what `rrg plan`'s FLOP count reads)."""
    vision, text = _configs(shape)
    return vision.to_dict(), text.to_dict()


def _configs(shape: Shape):
    from transformers import LlamaConfig, ViTConfig

    vision = ViTConfig(image_size=shape.image_size, patch_size=shape.patch_size, hidden_size=shape.vision_hidden,
                       num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                       intermediate_size=shape.vision_intermediate)
    text = LlamaConfig(vocab_size=shape.vocab_size, hidden_size=shape.text_hidden, num_hidden_layers=shape.text_layers,
                       num_attention_heads=shape.text_heads, num_key_value_heads=shape.text_heads,
                       intermediate_size=shape.text_intermediate, max_position_embeddings=2048, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return vision, text


def _rrg_parts(shape: Shape, tokenizer=None):
    """`(vision_config, text_config, rrg_config, processor, tokenizer)` of a shape: what rrg is built from."""
    from modeling_rrg import RRGConfig, RRGProcessor
    from training.sandbox.tiny import IMAGE_TOKEN, tiny_image_processor, train_bpe_tokenizer

    tokenizer = tokenizer if tokenizer is not None else train_bpe_tokenizer(vocab_size=min(shape.vocab_size, 600))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if len(tokenizer) > shape.vocab_size:
        raise ValueError(f"Shape {shape.name} has a {shape.vocab_size}-token vocabulary, smaller than the tokenizer's "
                         f"{len(tokenizer)}.")
    vision, text = _configs(shape)
    rrg_config = RRGConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=image_token_id,
                           projector_type="mlp2x_gelu", projector_bias=True, vision_feature_layer=-1,
                           vision_feature_select_strategy="patch", max_views=shape.views,
                           num_visual_tokens=shape.num_visual_tokens)
    processor = RRGProcessor(image_processor=tiny_image_processor(shape.image_size), tokenizer=tokenizer,
                             image_seq_length=shape.num_visual_tokens or shape.patches, max_views=shape.views)
    return vision, text, rrg_config, processor, tokenizer


def _set_generation_tokens(model, tokenizer):
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def build_rrg(shape: Shape, tokenizer=None, seed: int = 0):
    """`(rrg_model, processor)` alone, randomly initialised (benchmarks of rrg by itself need no LLaVA)."""
    from modeling_rrg import RRGForConditionalGeneration

    _, _, rrg_config, processor, tokenizer = _rrg_parts(shape, tokenizer)
    torch.manual_seed(seed)
    rrg = RRGForConditionalGeneration(rrg_config)
    _set_generation_tokens(rrg, tokenizer)
    return rrg, processor


def build_pair(shape: Shape, tokenizer=None, seed: int = 0):
    """
    `(rrg_model, llava_model, processor)` with identical weights. The processor is rrg's (the single source of prompt
    formatting); LLaVA gets the same token ids through [`llava_batch`].
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from modeling_rrg import RRGForConditionalGeneration

    vision, text, rrg_config, processor, tokenizer = _rrg_parts(shape, tokenizer)
    llava_config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=rrg_config.image_token_id,
                               projector_hidden_act="gelu", vision_feature_select_strategy="default",
                               vision_feature_layer=-1, image_seq_length=processor.image_seq_length,
                               multimodal_projector_bias=True)
    torch.manual_seed(seed)
    llava = LlavaForConditionalGeneration(llava_config)
    rrg = RRGForConditionalGeneration(rrg_config)  # not on meta: non-persistent buffers (RoPE) are not in the state dict
    missing, unexpected = rrg.load_state_dict(llava.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"LLaVA's weights do not map onto rrg: missing {missing}, unexpected {unexpected}.")
    for model in (rrg, llava):
        _set_generation_tokens(model, tokenizer)
    return rrg, llava, processor


def llava_batch(batch: dict) -> dict:
    """rrg's collated batch as LLaVA takes it: views flattened to `(num_images, C, H, W)`, no `num_views`."""
    out = {k: v for k, v in batch.items() if k not in ("num_views", "pixel_values", "image_features")}
    if "pixel_values" in batch:
        pixels = batch["pixel_values"]
        if pixels.dim() == 5:
            num_views = batch.get("num_views")
            views = pixels.shape[1]
            valid = (torch.arange(views)[None, :] < num_views[:, None]) if num_views is not None else \
                torch.ones(pixels.shape[:2], dtype=torch.bool)
            pixels = pixels[valid]
        out["pixel_values"] = pixels
    return out


def make_rows(folder, shape: Shape, count: int, seed: int = 0) -> list[dict]:
    """`count` studies of `shape.views` PNG views (random noise at the model's resolution) and a report each."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = ("the heart size is normal lungs are clear no pleural effusion or pneumothorax mild cardiomegaly "
             "small left basilar opacity").split()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        paths = []
        for v in range(shape.views):
            path = folder / f"s{i}_v{v}.png"
            if not path.exists():
                Image.fromarray(rng.integers(0, 256, (shape.image_size, shape.image_size), dtype=np.uint8)).save(path)
            paths.append(str(path))
        report = " ".join(words[j % len(words)] for j in rng.integers(0, len(words), shape.report_words))
        rows.append({"id": f"s{i}", "image_path": paths, "report": report})
    return rows


def flops_per_sample(shape: Shape, text_tokens: int) -> dict:
    """Forward matmul FLOPs per study (2 x multiply-adds), split into encoder, projector and LLM (incl. LM head)."""
    p = shape.patches + 1  # ViT adds a CLS token
    vh, vi = shape.vision_hidden, shape.vision_intermediate
    encoder = shape.views * shape.vision_layers * (2 * p * (4 * vh * vh + 2 * vh * vi) + 4 * p * p * vh)
    tokens = shape.views * (shape.num_visual_tokens or shape.patches)
    projector = 2 * tokens * (shape.vision_hidden * shape.text_hidden + shape.text_hidden ** 2)
    seq = tokens + text_tokens
    th, ti = shape.text_hidden, shape.text_intermediate
    llm = shape.text_layers * (2 * seq * (4 * th * th + 3 * th * ti) + 4 * seq * seq * th) + 2 * seq * th * shape.vocab_size
    return {"encoder": encoder, "projector": projector, "llm": llm,
            "encoder_share": encoder / (encoder + projector + llm), "sequence_length": seq}


@torch.no_grad()
def check_equal_logits(rrg, llava, batch: dict, atol: float = 1e-4) -> float:
    """Max |logit difference| between rrg and LLaVA on `batch`; raises when they differ beyond `atol`."""
    rrg.eval()
    llava.eval()
    a = rrg(**{k: v for k, v in batch.items() if k != "labels"}).logits
    b = llava(**{k: v for k, v in llava_batch(batch).items() if k != "labels"}).logits
    diff = float((a - b).abs().max())
    if not math.isfinite(diff) or diff > atol:
        raise ValueError(f"rrg and LLaVA logits differ by {diff:.3g} (> {atol}) on the same weights; the comparison "
                         "would not be like for like.")
    return diff


def shape_dict(shape: Shape) -> dict:
    return asdict(shape)
