# Copyright 2026 The rrg authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Processor of rrg: the single source of prompt formatting (image tokens, instruction, labels)."""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transformers import AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging


logger = logging.get_logger(__name__)

__all__ = ["RRGProcessor", "DEFAULT_INSTRUCTION", "DEFAULT_PROMPT_TEMPLATE", "DEFAULT_CHAT_TEMPLATE", "to_pil_image"]

# The paper-style instruction (Lu et al., 2023); overridable per call or per processor.
DEFAULT_INSTRUCTION = "Generate a comprehensive and detailed diagnosis report for this chest X-ray image."
# `{images}` is one image placeholder per view, `{instruction}` the (indication +) instruction. The text after the
# last newline is the response marker the report follows; `batch_decode` strips everything up to it.
DEFAULT_PROMPT_TEMPLATE = "{images}\n{instruction}\nReport:"
# Renders the same prompt from chat messages, so `apply_chat_template` and the image-text-to-text pipeline agree
# with `processor(images=..., text=None)`.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- set ns = namespace(images='', texts=[]) -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set ns.images = ns.images + '<image>' -%}"
    "{%- elif item['type'] == 'text' -%}{%- set ns.texts = ns.texts + [item['text']] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ ns.images }}\n{{ ns.texts | join('\n') }}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if message['content'] is string -%}{{ '\nReport: ' + message['content'] }}"
    "{%- else -%}{{ '\nReport: ' + (message['content'] | map(attribute='text') | join(' ')) }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\nReport:' }}{%- endif -%}"
)


def to_pil_image(image) -> Image.Image:
    """
    Convert a chest X-ray given as a PIL image, numpy array, torch tensor or file path to an 8-bit RGB PIL image.

    Grayscale 8-bit images keep their values; 16-bit and float images (e.g. 16-bit PNG exports of DICOMs) are scaled
    to 0..255 by their own min..max range, since their stored bit depth rarely matches the container's.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                image = img.copy()
        except Exception as err:  # PIL raises several types for corrupt files
            raise ValueError(f"Could not read image {path}: {err}") from err
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, Image.Image):
        if image.mode in ("RGB", "L"):
            return image.convert("RGB")
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            image = np.asarray(image)
        elif image.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
            return image.convert("RGB")
        else:
            raise ValueError(f"Unsupported image mode {image.mode!r}; use grayscale (L, I;16) or RGB images.")
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"Unsupported image type {type(image).__name__}; pass PIL images, numpy arrays, tensors or file paths."
        )
    array = image
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # channels-first -> channels-last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"Image array has shape {array.shape}; expected (H, W) grayscale or (H, W, 3) / (3, H, W) RGB."
        )
    if array.dtype == np.uint8:
        scaled = array
    elif array.dtype == bool:
        scaled = array.astype(np.uint8) * 255
    else:
        values = array.astype(np.float64)
        if np.issubdtype(array.dtype, np.floating) and values.min() >= 0.0 and values.max() <= 1.0:
            scaled = np.round(values * 255.0).astype(np.uint8)
        else:
            low, high = float(values.min()), float(values.max())
            if high <= low:
                scaled = np.zeros(values.shape, dtype=np.uint8)
            else:
                scaled = np.round((values - low) / (high - low) * 255.0).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")


class RRGProcessor(ProcessorMixin):
    r"""
    Turns chest X-ray studies (one or more views) and an optional instruction into rrg model inputs.

    Each view becomes one block of `image_seq_length` image tokens, which the model replaces with its soft visual
    prompts; the instruction follows, then the response marker after which the report is written. With `report=`
    (alias `suffix=`, as in trl) the report is appended and `labels` are returned with image, prompt and padding
    positions masked to -100.

    Args:
        image_processor ([`BaseImageProcessor`]): The vision encoder's image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): The LLM's tokenizer, with `image_token` added as a special token.
        chat_template (`str`, *optional*): Jinja chat template (defaults to one rendering the same prompt).
        image_seq_length (`int`, *optional*, defaults to 1): Soft visual prompt tokens per view
            (`RRGConfig.image_seq_length`).
        image_token (`str`, *optional*, defaults to `"<image>"`): The image placeholder token.
        instruction (`str`, *optional*): Default instruction (the paper-style prompt).
        prompt_template (`str`, *optional*): Template with `{images}` and `{instruction}` fields.
        max_views (`int`, *optional*, defaults to 2): Views allowed per study (`RRGConfig.max_views`).
        padding_side (`str`, *optional*): `"right"` or `"left"`, the side a call pads on when it names none. Defaults
            to the tokenizer's `padding_side` when the processor is built, and is kept by the processor from then on:
            the tokenizer is shared, and pipelines switch its attribute (the `image-text-to-text` pipeline sets it to
            `"left"` for batched generation), so a processor used for generation and then for training still pads
            training batches as configured. `padding_side=` on a call always wins.

    Example:

    ```python
    >>> processor = RRGProcessor.from_pretrained("path/to/rrg-model")
    >>> batch = processor(images=[["s1_frontal.png", "s1_lateral.png"], ["s2_frontal.png"]], return_tensors="pt")
    >>> batch["pixel_values"].shape  # (studies, max views, 3, H, W)
    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_seq_length: int = 1,
        image_token: str = "<image>",
        instruction: str = DEFAULT_INSTRUCTION,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        max_views: int = 2,
        padding_side: str | None = None,
        **kwargs,
    ):
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE
        self.image_seq_length = int(image_seq_length)
        self.image_token = image_token
        self.instruction = instruction
        self.prompt_template = prompt_template
        self.max_views = int(max_views)
        if "{images}" not in prompt_template or "{instruction}" not in prompt_template:
            raise ValueError(
                f"prompt_template must contain '{{images}}' and '{{instruction}}' fields, got {prompt_template!r}."
            )
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {image_token!r} token; add it first: "
                f"tokenizer.add_special_tokens({{'additional_special_tokens': [{image_token!r}]}}) and resize the "
                "model's embeddings (RRGProcessor.from_pretrained_backbones does both)."
            )
        self.image_token_id = image_token_id
        self.padding_side = tokenizer.padding_side if padding_side is None else padding_side
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}.")

    # --------------------------------------------------------------- helpers
    @property
    def response_marker(self) -> str:
        """The text after which the report starts (the template's last line)."""
        return self.prompt_template.rsplit("\n", 1)[-1]

    def build_prompt(self, num_views: int, instruction: str | None = None, indication: str | None = None) -> str:
        """The prompt text for a study with `num_views` images (one placeholder per view, not yet expanded)."""
        instruction = self.instruction if instruction is None else instruction
        if indication:
            instruction = f"Indication: {indication.strip()}\n{instruction}"
        return self.prompt_template.format(images=self.image_token * num_views, instruction=instruction)

    def _normalize_images(self, images, text):
        """Return a list (one per study) of lists of views."""
        if images is None:
            return None
        is_batch_text = isinstance(text, (list, tuple))
        if not isinstance(images, (list, tuple)):
            studies = [[images]]
        elif len(images) == 0:
            raise ValueError("Got an empty image list; pass at least one image per study.")
        elif all(isinstance(item, (list, tuple)) for item in images):
            studies = [list(item) for item in images]
        elif any(isinstance(item, (list, tuple)) for item in images):
            raise ValueError("Mix of single images and lists of views; pass a list of lists (one list per study).")
        elif is_batch_text and len(text) == len(images):
            studies = [[item] for item in images]  # one view per study, aligned with the texts
        else:
            studies = [list(images)]  # a flat list is the views of one study
        for index, views in enumerate(studies):
            if len(views) == 0:
                raise ValueError(f"Study {index} has an empty image list; pass at least one image per study.")
            if len(views) > self.max_views:
                raise ValueError(
                    f"Study {index} has {len(views)} views but the model takes at most max_views={self.max_views}."
                )
        return studies

    def encode_images(self, studies, **image_kwargs):
        """
        Pixel values of shape `(studies, max_views, C, H, W)` (zero padding past each study's view count) and the
        view counts, for a list of studies (each a list of views in any form `to_pil_image` accepts).
        """
        flat = [to_pil_image(view) for views in studies for view in views]
        pixels = self.image_processor(images=flat, return_tensors="pt", **image_kwargs)["pixel_values"]
        max_views = max(len(views) for views in studies)
        out = pixels.new_zeros((len(studies), max_views) + tuple(pixels.shape[1:]))
        index = 0
        for i, views in enumerate(studies):
            out[i, : len(views)] = pixels[index : index + len(views)]
            index += len(views)
        num_views = torch.tensor([len(views) for views in studies], dtype=torch.long)
        return out, num_views

    def _expand_image_tokens(self, text: str, num_views: int, index: int) -> str:
        count = text.count(self.image_token)
        if count != num_views:
            raise ValueError(
                f"Text {index} has {count} {self.image_token!r} placeholder(s) but its study has {num_views} image(s); "
                "put one placeholder per view in the text, or pass text=None to use the default prompt."
            )
        return text.replace(self.image_token, self.image_token * self.image_seq_length)

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        images=None,
        text=None,
        report=None,
        suffix=None,
        instruction: str | None = None,
        indication=None,
        num_views=None,
        padding: bool | str = True,
        padding_side: str | None = None,
        truncation: bool = False,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = "pt",
        videos=None,
        audio=None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Args:
            images: A study's image(s) (PIL image, numpy array, tensor or path; several = several views of one
                study), or a list of lists (one list of views per study) for a batch. When `text` is a list of the
                same length, a flat list holds one image per study.
            text (`str` or `list[str]`, *optional*): Full prompt(s) with one `image_token` per view. When omitted,
                the prompt is built from `prompt_template`, `instruction` and `indication`.
            report / suffix (`str` or `list[str]`, *optional*): Target report(s); adds `labels`.
            instruction (`str`, *optional*): Overrides the default instruction.
            indication (`str` or `list[str]`, *optional*): Clinical indication text prepended to the instruction.
            num_views (`list[int]`, *optional*): Views per study when `images` is omitted because the model gets
                precomputed `image_features` instead (a frozen-encoder feature cache); the prompt is built for them.
            padding (`bool` or `str`, *optional*, defaults to `True`): As for the tokenizer (its own `pad` pads):
                `True` / `"longest"`, `"max_length"` (to `max_length`), `False` / `"do_not_pad"` (rows of different
                lengths then need `return_tensors=None`).
            padding_side (`str`, *optional*): `"left"` or `"right"` for this call; defaults to the processor's
                `padding_side` (not the shared tokenizer's current attribute, see the class docstring).
            truncation, max_length: Truncation only ever cuts the report; a `max_length` that would cut the prompt
                (and its image tokens) is an error.
            pad_to_multiple_of (`int`, *optional*): As for the tokenizer.
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` (torch tensors), `"np"` (numpy arrays)
                or `None` (lists).
            videos, audio: Not supported; accepted (as `None`) because `apply_chat_template` always passes them.

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, `pixel_values` `(studies, views, C, H, W)`,
            `num_views` `(studies,)` and, with a report, `labels`.
        """
        if videos is not None or audio is not None:
            raise ValueError("rrg reads chest X-ray images only; pass no `videos` or `audio`.")
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        if report is not None and suffix is not None:
            raise ValueError("Pass the target as `report=` or `suffix=`, not both.")
        report = report if report is not None else suffix
        studies = self._normalize_images(images, text)

        if studies is not None and num_views is not None:
            raise ValueError("Pass `images` or `num_views` (for precomputed image features), not both.")
        view_counts = [len(v) for v in studies] if studies is not None else None
        if num_views is not None:
            view_counts = [int(n) for n in (num_views.tolist() if hasattr(num_views, "tolist") else num_views)]
            if any(n < 1 or n > self.max_views for n in view_counts):
                raise ValueError(f"num_views must be between 1 and max_views={self.max_views}, got {view_counts}.")
        if text is None:
            if view_counts is None:
                raise ValueError("Pass `images` (and optionally `text`); got neither.")
            indications = indication if isinstance(indication, (list, tuple)) else [indication] * len(view_counts)
            if len(indications) != len(view_counts):
                raise ValueError(f"Got {len(indications)} indications for {len(view_counts)} studies.")
            texts = [self.build_prompt(n, instruction, ind) for n, ind in zip(view_counts, indications)]
        else:
            texts = [text] if isinstance(text, str) else list(text)
        if view_counts is None:
            studies_views = [0] * len(texts)
        else:
            if len(view_counts) != len(texts):
                raise ValueError(f"Got {len(texts)} texts for {len(view_counts)} studies; pass one text per study.")
            studies_views = view_counts
        texts = [self._expand_image_tokens(t, n, i) for i, (t, n) in enumerate(zip(texts, studies_views))]

        reports = None
        if report is not None:
            reports = [report] if isinstance(report, str) else list(report)
            if len(reports) != len(texts):
                raise ValueError(f"Got {len(reports)} reports for {len(texts)} studies.")
            for i, r in enumerate(reports):
                if not isinstance(r, str) or not r.strip():
                    raise ValueError(f"Report {i} is empty; every training study needs a report.")

        prompt_ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        sequences, label_rows = [], []
        for i, ids in enumerate(prompt_ids):
            ids = list(ids)
            labels = [-100] * len(ids)
            if reports is not None:
                target = self.tokenizer(" " + reports[i].strip(), add_special_tokens=False)["input_ids"]
                if self.tokenizer.eos_token_id is not None:
                    target = list(target) + [self.tokenizer.eos_token_id]
                ids = ids + list(target)
                labels = labels + list(target)
            if max_length is not None and len(ids) > max_length:
                prompt_len = len(prompt_ids[i])
                if max_length < prompt_len:
                    raise ValueError(
                        f"Study {i}: the prompt is {prompt_len} tokens ({studies_views[i]} view(s) x "
                        f"{self.image_seq_length} image tokens + instruction), over max_length={max_length}; "
                        "truncating it would cut image tokens. Raise max_length or use fewer visual tokens per view."
                    )
                if not truncation:
                    raise ValueError(
                        f"Study {i} is {len(ids)} tokens, over max_length={max_length}; pass truncation=True to cut "
                        "the end of the report, or raise max_length."
                    )
                ids, labels = ids[:max_length], labels[:max_length]
            sequences.append(ids)
            label_rows.append(labels)

        data = self._pad(sequences, label_rows if reports is not None else None, padding, padding_side, max_length,
                         pad_to_multiple_of, tensors=return_tensors is not None)
        if studies is not None:
            data["pixel_values"], data["num_views"] = self.encode_images(studies, **kwargs)
        elif num_views is not None:
            data["num_views"] = torch.tensor(view_counts, dtype=torch.long)
        if return_tensors is None:
            data = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        elif return_tensors == "np":
            data = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _pad(self, sequences, label_rows, padding, padding_side, max_length, pad_to_multiple_of, tensors: bool):
        """Pad `input_ids` with the tokenizer's own `pad` (every padding mode), and `labels` with -100 on the same
        positions; returns lists."""
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        # `max_length` is a padding target only for padding="max_length" (it bounds truncation otherwise, done above).
        to_max_length = getattr(padding, "value", padding) == "max_length"
        padded = self.tokenizer.pad(
            {"input_ids": sequences}, padding=padding, max_length=max_length if to_max_length else None,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=side, return_attention_mask=True, return_tensors=None,
        )
        data = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
        if tensors and len({len(row) for row in data["input_ids"]}) > 1:
            raise ValueError(
                f"The studies are {sorted({len(s) for s in sequences})} tokens long and padding={padding!r} leaves "
                "them so; pass padding=True (or 'max_length' with max_length) to batch them as tensors, or "
                "return_tensors=None for lists."
            )
        if label_rows is not None:
            # The real tokens sit where the attention mask is 1, on whichever side the tokenizer padded.
            data["labels"] = []
            for mask, labels in zip(data["attention_mask"], label_rows):
                row, targets = [], iter(labels)
                for bit in mask:
                    row.append(next(targets) if bit else -100)
                data["labels"].append(row)
        return data

    # ---------------------------------------------------------------- decode
    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """
        Decode generated ids to clean report text: special tokens (image tokens included) are dropped, and when the
        prompt is part of the sequence, everything up to the response marker is removed.
        """
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist()
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [self._clean(t) for t in texts]

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        """Decode one sequence (see [`~RRGProcessor.batch_decode`])."""
        if isinstance(sequence, torch.Tensor):
            sequence = sequence.tolist()
        return self._clean(self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kwargs))

    def _clean(self, text: str) -> str:
        marker = self.response_marker
        if marker and marker in text:
            text = text.rsplit(marker, 1)[-1]
        return " ".join(text.split())

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Used by the image-text-to-text pipeline: decode generated ids to report text."""
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "num_views"]

    # --------------------------------------------------------------- builders
    @classmethod
    def from_pretrained_backbones(
        cls,
        vision_name_or_path: str,
        text_name_or_path: str,
        image_seq_length: int,
        image_token: str = "<image>",
        max_views: int = 2,
        **kwargs,
    ) -> "RRGProcessor":
        r"""
        The processor matching [`RRGForConditionalGeneration.from_pretrained_backbones`]: the encoder's image
        processor and the LLM's tokenizer with `image_token` added (and a pad token if it has none).

        Args:
            vision_name_or_path (`str`): The vision checkpoint (its image processor is used).
            text_name_or_path (`str`): The LLM checkpoint (its tokenizer is used).
            image_seq_length (`int`): Soft visual prompt tokens per view (`model.config.image_seq_length`).
            image_token (`str`, *optional*): The placeholder token to add.
            max_views (`int`, *optional*): Views allowed per study.
            kwargs: Other processor fields (`instruction`, `prompt_template`, `chat_template`).
        """
        image_processor = AutoImageProcessor.from_pretrained(vision_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(text_name_or_path)
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        if tokenizer.pad_token is None:
            # Reusing EOS keeps the vocabulary unchanged; padding is masked out of attention and loss anyway.
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_length=image_seq_length,
            image_token=image_token,
            max_views=max_views,
            **kwargs,
        )


RRGProcessor.register_for_auto_class("AutoProcessor")
