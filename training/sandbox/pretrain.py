"""Offline stand-ins for the paper's pretrained components, trained on the synthetic benchmark.

The method assumes a pretrained vision encoder and a pretrained LLM; nothing can be downloaded here, so the demo
first makes small ones: a LLaMA-architecture LM trained on the training reports (causal LM) and a ViT trained to
recognise the findings in the training images (multi-label classification over finding x side, from mean-pooled
patch tokens, so the patch tokens the projector later reads carry the findings and where they are). Both are saved
like Hub checkpoints and enter rrg through `from_pretrained_backbones`, exactly as OpenLLaMA-7B and a real ViT would.
"""

import logging
import math
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["finding_targets", "pretrain_language_model", "pretrain_vision_encoder"]


def finding_targets(findings: list[dict]) -> set[str]:
    """Target names for one study's structured findings: the finding, and the finding with its side."""
    names = set()
    for f in findings:
        name = f["name"]
        names.add(name)
        if f.get("side"):
            names.add(f"{name}:{f['side']}")
        if f.get("severity"):
            names.add(f"{name}:{f['severity']}")
        for device in f.get("devices", []) or []:
            names.add(f"device:{device}")
    return names


def pretrain_language_model(texts: list[str], tokenizer, config, output_dir, steps: int = 300, batch_size: int = 32,
                            learning_rate: float = 3e-3, seed: int = 0) -> Path:
    """Train a causal LM from `config` on `texts` (each wrapped in BOS ... EOS) and save it with the tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.train()
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    generator = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id
    progress = tqdm(range(steps), desc="Pretraining the language model", unit="step")
    for _ in progress:
        idx = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    logger.info("Language model pretrained: final loss %.3f", loss.item())
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


class _ViTClassifier(nn.Module):
    def __init__(self, vit, num_labels):
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(vit.config.hidden_size, num_labels)

    def forward(self, pixel_values):
        tokens = self.vit(pixel_values=pixel_values).last_hidden_state[:, 1:]  # patch tokens
        return self.head(tokens.mean(dim=1))


def pretrain_vision_encoder(image_paths: list[str], targets: list[set[str]], config, image_processor, output_dir,
                            epochs: int = 4, batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0,
                            image_loader=None) -> Path:
    """Train a ViT from `config` to recognise findings (multi-label) and save the encoder + image processor."""
    from transformers import AutoModel

    from modeling_rrg.processing_rrg import to_pil_image

    if image_loader is None:
        from ..data.images import load_image

        image_loader = load_image
    torch.manual_seed(seed)
    vocabulary = sorted({t for ts in targets for t in ts})
    index = {name: i for i, name in enumerate(vocabulary)}
    y = torch.zeros(len(targets), len(vocabulary))
    for row, ts in enumerate(targets):
        for t in ts:
            y[row, index[t]] = 1.0
    pixels = torch.cat([
        image_processor(images=[to_pil_image(image_loader(p)) for p in image_paths[i : i + 256]],
                        return_tensors="pt")["pixel_values"]
        for i in range(0, len(image_paths), 256)
    ])
    vit = AutoModel.from_config(config)
    model = _ViTClassifier(vit, len(vocabulary))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    steps = epochs * math.ceil(len(pixels) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    progress = tqdm(total=steps, desc="Pretraining the vision encoder", unit="step")
    for _ in range(epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = loss_fn(model(pixels[batch]), y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    logger.info("Vision encoder pretrained on %d findings: final loss %.3f", len(vocabulary), loss.item())
    output_dir = Path(output_dir)
    vit.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    return output_dir
