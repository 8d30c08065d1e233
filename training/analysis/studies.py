"""Studies and models as the analyses take them: a split's studies, their views, the model behind a PeftModel."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..data.images import load_image

if TYPE_CHECKING:
    from ..arguments import DataArguments

__all__ = ['load_split_studies', 'as_views', 'normalise_studies', 'unwrap_model', 'check_model', 'model_device', 'decode_token', 'batches']


def load_split_studies(
    data_args: DataArguments | str | os.PathLike,
    split: str = "test",
    max_studies: int | None = None,
    seed: int = 0,
    include_ids: Sequence[str] = (),
) -> list[dict]:
    """
    Studies of one split of a dataset, optionally a random subset.

    Args:
        data_args ([`training.arguments.DataArguments`] or `str`):
            The data, as `rrg train` and `rrg evaluate` read it (source, format, image root, columns, bad-row
            policy; see [`training.data.loaders.load_splits`]); a path is `DataArguments(dataset_path=path)`.
        split (`str`, *optional*, defaults to `"test"`): `"train"`, `"val"`/`"validation"` or `"test"`.
        max_studies (`int`, *optional*): Sample this many studies (seeded, kept in file order); `None` keeps all.
        seed (`int`, *optional*, defaults to 0): Seed of the subset.
        include_ids (`Sequence[str]`, *optional*): Study ids that must be in the subset (e.g. the attribution study).

    Returns:
        `list[dict]` with `id`, `images` (list of absolute paths) and `report`.
    """
    # Imported here: the serve page imports this module for its model helpers and ships without the loaders.
    from ..arguments import DataArguments
    from ..data.loaders import load_splits, split_key

    if not isinstance(data_args, DataArguments):
        data_args = DataArguments(dataset_path=data_args)
    data_path = data_args.dataset_path
    rows = load_splits(data_args, splits=[split])[split_key(split)]
    ids = list(rows["id"])
    missing = [i for i in include_ids if i not in ids]
    if missing:
        raise ValueError(
            f"Study id(s) {missing} are not in split {split!r} of {data_path} (first ids: {ids[:5]}); "
            "pass an id of that split or choose another --split."
        )
    indices = list(range(len(ids)))
    if max_studies is not None and max_studies < len(indices):
        if max_studies < 1:
            raise ValueError(f"max_studies must be >= 1, got {max_studies}.")
        forced = {ids.index(i) for i in include_ids}
        rest = [i for i in indices if i not in forced]
        chosen = forced | set(random.Random(seed).sample(rest, max(0, max_studies - len(forced))))
        indices = sorted(chosen)
    return [{"id": ids[i], "images": list(rows[i]["image_path"]), "report": rows[i]["report"]} for i in indices]


def as_views(images) -> list:
    """A study's views, loading paths with `training.data.images.load_image` (DICOM, 16-bit PNG)."""
    views = list(images) if isinstance(images, (list, tuple)) else [images]
    if not views:
        raise ValueError("A study has no images; every study needs at least one view.")
    out = []
    for view in views:
        if isinstance(view, (str, os.PathLike)):
            view = load_image(view)
        out.append(view)
    return out


def normalise_studies(studies) -> list[tuple[str, list]]:
    """Accept `[(id, images), ...]` or `[{"id": ..., "images" | "image_path": ...}, ...]`."""
    out = []
    for index, study in enumerate(studies):
        if isinstance(study, dict):
            images = study.get("images", study.get("image_path"))
            if images is None:
                raise ValueError(f"Study {index} has no 'images' (or 'image_path') entry.")
            out.append((str(study.get("id", index)), images))
        elif isinstance(study, (list, tuple)) and len(study) == 2:
            out.append((str(study[0]), study[1]))
        else:
            raise TypeError(
                f"Study {index} is a {type(study).__name__}; pass (id, images) pairs or dicts with 'id' and 'images'."
            )
    if not out:
        raise ValueError("No studies given; pass at least one (id, images) pair.")
    return out


def unwrap_model(model):
    """The `RRGForConditionalGeneration` inside a (non-merged) PeftModel, or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def check_model(model) -> None:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "image_token_id", None) is None or not hasattr(model, "get_image_features"):
        raise TypeError(
            f"Expected an RRGForConditionalGeneration (e.g. from training.model_io.load_trained), got {type(model).__name__}."
        )


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def decode_token(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([int(token_id)])
    if "\ufffd" in text or not text.isprintable():
        # A byte-level piece of a multi-byte character, or a control character: show the vocabulary entry instead.
        raw = tokenizer.convert_ids_to_tokens(int(token_id))
        return raw if isinstance(raw, str) and raw.isprintable() else repr(text)
    stripped = text.strip()
    return stripped if stripped else repr(text)


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
