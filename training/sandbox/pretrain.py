"""Offline stand-ins for the paper's pretrained components, trained on the synthetic benchmark.

The method assumes a pretrained vision encoder and a pretrained LLM; nothing can be downloaded here, so the demo
first makes small ones: a LLaMA-architecture LM trained on the training reports (causal LM) and a ViT trained to
recognise the findings in the training images (multi-label classification over finding x side, from mean-pooled
patch tokens, so the patch tokens the projector later reads carry the findings and where they are). Both are saved
like Hub checkpoints and enter rrg through `from_pretrained_backbones`, exactly as OpenLLaMA-7B and a real ViT would.
"""

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["finding_targets", "finding_patch_targets", "pretrain_language_model", "pretrain_vision_encoder"]


def finding_targets(findings: list[dict]) -> set[str]:
    """
    Target names for one study's structured findings: the finding, and the finding with each of its attributes
    (side, severity, zone, kind, certainty, pneumonia, age) and devices — everything the report states and so
    everything the report model must later read from the patch tokens.
    """
    names = set()
    for f in findings:
        name = f["name"]
        names.add(name)
        if f.get("side"):
            names.add(f"{name}:{f['side']}")
        if f.get("severity"):
            names.add(f"{name}:{f['severity']}")
        for key in ("zone", "kind", "certainty", "pneumonia", "age"):
            if f.get(key):
                names.add(f"{name}:{key}={f[key]}")
        for device in f.get("devices", []) or []:
            names.add(f"device:{device}")
    return names


def _patch_targets_chunk(args) -> list[dict[str, np.ndarray]]:
    from .synthetic import finding_maps

    seed, grid, rows = args
    out = []
    for study_id, findings in rows:
        targets: dict[str, np.ndarray] = {}
        for finding, cells in zip(findings, finding_maps(seed, study_id, findings, grid)):
            for name in finding_targets([finding]):
                targets[name] = targets.get(name, False) | cells
        out.append(targets)
    return out


def finding_patch_targets(rows: list[dict], seed: int, grid: int, num_workers: int | None = None) -> list[dict[str, np.ndarray]]:
    """
    Dense targets of generated studies: per row of `annotation.json`, target name (see [`finding_targets`]) ->
    `(grid, grid)` boolean map of the patches its finding is drawn on (`synthetic.finding_maps`).

    Args:
        rows (`list[dict]`): `annotation.json` rows (`id` and `findings` are read).
        seed (`int`): The data set's seed.
        grid (`int`): Patches per side of the encoder (image size / patch size).
        num_workers (`int`, *optional*): Worker processes; defaults to the number of CPU cores.
    """
    from concurrent.futures import ProcessPoolExecutor

    items = [(r["id"], r["findings"]) for r in rows]
    jobs = [(int(seed), int(grid), items[i : i + 100]) for i in range(0, len(items), 100)]
    workers = max(1, num_workers or os.cpu_count() or 1)
    out: list[dict[str, np.ndarray]] = []
    with tqdm(total=len(items), desc="Locating the findings (dense targets)", unit="study") as bar:
        if workers == 1 or len(jobs) == 1:
            results = map(_patch_targets_chunk, jobs)
            for chunk in results:
                out.extend(chunk)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for chunk in pool.map(_patch_targets_chunk, jobs):
                    out.extend(chunk)
                    bar.update(len(chunk))
    return out


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
    """Study-level heads on the mean patch token and on CLS, and a per-patch head (the dense targets), all on the
    encoder's last layer as rrg reads it (`hidden_states[-1]`, `vision_feature_layer: -1`: before the final layer
    norm), so the targets are linear in exactly the tokens the projector later receives."""

    def __init__(self, vit, num_labels, prior=None):
        super().__init__()
        self.vit = vit
        hidden = vit.config.hidden_size
        self.head, self.cls_head, self.patch_head = (nn.Linear(hidden, num_labels) for _ in range(3))
        if prior is not None:  # start from the label frequencies instead of spending the first steps learning them
            for head in (self.head, self.cls_head, self.patch_head):
                head.bias.data.copy_(torch.logit(prior.clamp(1e-3, 1 - 1e-3)))

    def forward(self, pixel_values):
        hidden = self.vit(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1]
        patches = hidden[:, 1:]
        return self.head(patches.mean(dim=1)), self.cls_head(hidden[:, 0]), self.patch_head(patches)


def pretrain_vision_encoder(image_paths: list[str], targets: list[set[str]], config, image_processor, output_dir,
                            epochs: int = 4, batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0,
                            image_loader=None, patch_targets: list[dict[str, np.ndarray]] | None = None,
                            positive_weight: float = 1.0) -> Path:
    """
    Train a ViT from `config` to recognise findings (multi-label) and save the encoder + image processor.

    Args:
        image_paths (`list[str]`): One image per training example.
        targets (`list[set[str]]`): The target names of each example (see [`finding_targets`]).
        config: The ViT config to train from scratch.
        image_processor: Turns the images into `pixel_values` (saved beside the encoder).
        output_dir: Where the encoder and the image processor are saved.
        epochs (`int`, *optional*, defaults to 4): Passes over the examples.
        batch_size (`int`, *optional*, defaults to 64): Examples per step.
        learning_rate (`float`, *optional*, defaults to 1e-3): Peak AdamW learning rate (warm-up, then cosine).
        seed (`int`, *optional*, defaults to 0): Seed of the initialisation and of the batch order.
        image_loader (*optional*): `path -> image`; defaults to `training.data.images.load_image`.
        patch_targets (`list[dict[str, np.ndarray]]`, *optional*):
            Dense targets: per example, target name -> `(grid, grid)` boolean map of the patches it is drawn on
            (grid = image size / patch size; see `synthetic.finding_maps`). A per-patch head is then trained on
            them as well, which teaches the patch tokens — what the projector reads — the small local findings
            (a nodule, a rib fracture, a line) far faster than study-level labels alone.
        positive_weight (`float`, *optional*, defaults to 1.0):
            Weight of the positive targets in the binary cross-entropy (most targets are rare, most patches empty).
    """
    from transformers import AutoModel

    from modeling_rrg.processing_rrg import to_pil_image

    if image_loader is None:
        from ..data.images import load_image

        image_loader = load_image
    if patch_targets is not None and len(patch_targets) != len(targets):
        raise ValueError(f"patch_targets has {len(patch_targets)} entries for {len(targets)} examples; give one per example.")
    torch.manual_seed(seed)
    vocabulary = sorted({t for ts in targets for t in ts})
    index = {name: i for i, name in enumerate(vocabulary)}
    y = torch.zeros(len(targets), len(vocabulary))
    for row, ts in enumerate(targets):
        for t in ts:
            y[row, index[t]] = 1.0
    grid = config.image_size // config.patch_size
    dense = None
    if patch_targets is not None:
        dense = torch.zeros(len(targets), grid * grid, len(vocabulary), dtype=torch.bool)
        for row, maps in enumerate(patch_targets):
            for name, cells in maps.items():
                if name not in index:
                    raise ValueError(f"patch_targets[{row}] names {name!r}, which is not among that example's targets.")
                if tuple(cells.shape) != (grid, grid):
                    raise ValueError(f"patch_targets[{row}][{name!r}] has shape {tuple(cells.shape)}; expected ({grid}, {grid}).")
                dense[row, :, index[name]] = torch.as_tensor(cells).flatten()
    pixels = torch.cat([
        image_processor(images=[to_pil_image(image_loader(p)) for p in image_paths[i : i + 256]],
                        return_tensors="pt")["pixel_values"]
        for i in range(0, len(image_paths), 256)
    ])
    vit = AutoModel.from_config(config)
    model = _ViTClassifier(vit, len(vocabulary), prior=y.mean(dim=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    steps = epochs * math.ceil(len(pixels) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.full((len(vocabulary),), float(positive_weight)))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    progress = tqdm(total=steps, desc="Pretraining the vision encoder", unit="step")
    for _ in range(epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            mean_logits, cls_logits, patch_logits = model(pixels[batch])
            loss = loss_fn(mean_logits, y[batch]) + loss_fn(cls_logits, y[batch])
            if dense is not None:
                loss = loss + loss_fn(patch_logits, dense[batch].float())
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
