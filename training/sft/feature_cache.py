"""On-disk cache of frozen vision-encoder features, so the encoder runs once per image across epochs and stages.

Features are what `RRGModel.get_vision_features` returns (after layer selection and pooling, before the projector,
which trains). The cache folder is keyed by a fingerprint of the encoder weights, the feature-selection settings and
the image preprocessing, and each entry by the image file (absolute path, size, modification time): change any of
them and the entry is recomputed instead of silently reused.
"""

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ..fileio import write_bytes_atomic

logger = logging.getLogger(__name__)

__all__ = ["FeatureCache", "encoder_fingerprint"]


_PREPROCESSING_KEYS = ("size", "crop_size", "do_resize", "do_center_crop", "resample", "do_rescale", "rescale_factor",
                       "do_normalize", "image_mean", "image_std", "do_convert_rgb", "do_pad")


def encoder_fingerprint(model, processor) -> str:
    """Hash of everything that determines the cached features: encoder weights, feature settings, preprocessing."""
    digest = hashlib.sha256()
    config = model.config
    # Only what changes the numbers: bookkeeping fields (names, versions, architectures) differ between a model
    # assembled from backbones and the same model reloaded from its folder, and must not invalidate the cache.
    preprocessing = processor.image_processor.to_dict()
    settings = {
        "vision_model_type": config.vision_config.model_type,
        "image_size": config.vision_config.image_size,
        "patch_size": config.vision_config.patch_size,
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "num_visual_tokens": config.num_visual_tokens,
        "image_processor": {k: preprocessing.get(k) for k in _PREPROCESSING_KEYS},
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.model.vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


class FeatureCache:
    """
    Frozen-encoder features on disk.

    Args:
        cache_dir (`str` or `Path`): Root folder; entries go to `cache_dir/<encoder fingerprint>/`.
        model ([`RRGForConditionalGeneration`]): The model whose (frozen) vision tower computes the features.
        processor ([`RRGProcessor`]): Its processor (image preprocessing).
        image_loader (`callable`, *optional*): Reads a path to a PIL image (defaults to `training.data.images.load_image`,
            which also reads DICOM).
    """

    def __init__(self, cache_dir, model, processor, image_loader=None):
        if image_loader is None:
            from ..data.images import load_image

            image_loader = load_image
        self.model = model
        self.processor = processor
        self.image_loader = image_loader
        self.fingerprint = encoder_fingerprint(model, processor)
        self.dir = Path(cache_dir) / self.fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self._entries: dict = {}

    @staticmethod
    def key(path: str | os.PathLike) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        return hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()

    def entry(self, path) -> Path:
        # Memoised: the key costs a resolve + stat + hash, and the training loop asks for every image each epoch.
        entry = self._entries.get(path)
        if entry is None:
            key = self.key(path)
            entry = self._entries[path] = self.dir / key[:2] / f"{key}.safetensors"
        return entry

    def missing(self, paths: Sequence) -> list:
        seen, out = set(), []
        for path in paths:
            if path not in seen and not self.entry(path).exists():
                seen.add(path)
                out.append(path)
        return out

    @torch.no_grad()
    def precompute(self, paths: Sequence, batch_size: int = 16) -> int:
        """Compute and store the features of every image not cached yet; returns how many were computed."""
        todo = self.missing(list(paths))
        if not todo:
            logger.info("Feature cache %s: all %d images cached.", self.dir, len(set(paths)))
            return 0
        tower = self.model.model
        was_training = tower.training
        tower.eval()
        device = next(tower.vision_tower.parameters()).device
        for start in tqdm(range(0, len(todo), batch_size), desc="Caching encoder features", unit="batch"):
            chunk = todo[start : start + batch_size]
            images = [[self.image_loader(p)] for p in chunk]
            pixels, _ = self.processor.encode_images(images)
            features = tower.get_vision_features(pixels[:, 0].to(device)).to("cpu", torch.float32)
            for path, feature in zip(chunk, features):
                write_bytes_atomic(self.entry(path), save({"features": feature.contiguous()}))
        tower.train(was_training)
        logger.info("Feature cache %s: computed %d new entries.", self.dir, len(todo))
        return len(todo)

    def load(self, path) -> torch.Tensor:
        entry = self.entry(path)
        if not entry.exists():
            raise FileNotFoundError(
                f"No cached features for {path} (expected {entry}); run FeatureCache.precompute over the dataset first."
            )
        return load_file(str(entry))["features"]

    def load_studies(self, studies: Sequence[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features `(studies, max_views, tokens, dim)` (zero-padded) and view counts for lists of image paths."""
        per_study = [torch.stack([self.load(p) for p in views]) for views in studies]
        max_views = max(t.shape[0] for t in per_study)
        out = per_study[0].new_zeros((len(per_study), max_views) + tuple(per_study[0].shape[1:]))
        for i, t in enumerate(per_study):
            out[i, : t.shape[0]] = t
        return out, torch.tensor([t.shape[0] for t in per_study], dtype=torch.long)
