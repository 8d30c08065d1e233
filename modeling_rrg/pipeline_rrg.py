# Copyright 2026 The rrg authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""The `radiology-report-generation` pipeline: chest X-ray studies in, `{"report": ...}` out.

Saved with the model (`config.custom_pipelines`), so `pipeline(model="org/rrg-model", trust_remote_code=True)` builds
it from the Hub without this project installed.
"""

import os

from transformers import AutoModelForImageTextToText, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging


logger = logging.get_logger(__name__)

__all__ = ["RadiologyReportGenerationPipeline", "TASK", "custom_pipelines_entry"]

TASK = "radiology-report-generation"

# Arguments the pipeline reads itself; any other keyword goes to `model.generate()` (e.g. `num_beams`).
_PREPROCESS_ARGS = ("instruction", "timeout")


def _is_image(item) -> bool:
    """A single view: a PIL image, an array / tensor, a path or a URL."""
    if isinstance(item, (str, os.PathLike)):
        return True
    module = type(item).__module__.split(".")[0]
    return module in ("PIL", "numpy", "torch")


class RadiologyReportGenerationPipeline(Pipeline):
    r"""
    Writes a radiology report for each chest X-ray study.

    A study is one image or several views of the same examination (e.g. frontal + lateral, up to the model's
    `max_views`), each given as a PIL image, a numpy array, a torch tensor, a local path or an http(s) URL.

    Inputs accepted by `__call__`:
    - one image or path: one single-view study;
    - a list of images: the views of **one** study;
    - a list of lists of images: a batch of studies;
    - a dict `{"images": ..., "indication": ...}`, or a list of such dicts: studies with their own indication.

    Args (call time):
        indication (`str` or `list[str]`, *optional*):
            Clinical indication prepended to the instruction; a list gives one per study of a batch.
        instruction (`str`, *optional*): Replaces the processor's default instruction.
        max_new_tokens (`int`, *optional*): Report length limit; other generation arguments (`num_beams`,
            `do_sample`, `generate_kwargs={...}`) are passed to `model.generate()`.

    Returns:
        `{"report": str}` for one study, or a list of them (one per study) for a batch.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> reporter = pipeline("radiology-report-generation", model="path/to/rrg-model", trust_remote_code=True)
    >>> reporter(["frontal.png", "lateral.png"], indication="Cough and fever.")["report"]
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    # Generation arguments are handled here rather than by the base class, whose handling differs across
    # transformers 5.x releases.
    _pipeline_calls_generate = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                "The radiology-report-generation pipeline needs the model's processor; pass `processor=` or a model "
                "folder that holds processor_config.json."
            )

    # ------------------------------------------------------------ parameters
    def _sanitize_parameters(self, generate_kwargs=None, max_new_tokens=None, **kwargs):
        preprocess_params = {key: kwargs.pop(key) for key in _PREPROCESS_ARGS if key in kwargs}
        if "indication" in kwargs:
            raise TypeError("Pass `indication` when calling the pipeline, not when building it.")
        # Flat generation arguments, so that call-time ones update (not replace) those given at construction.
        forward_params = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            if "max_new_tokens" in forward_params:
                raise ValueError("`max_new_tokens` was given twice: directly and in `generate_kwargs`; keep one.")
            forward_params["max_new_tokens"] = max_new_tokens
        forward_params.update(kwargs)
        return preprocess_params, forward_params, {}

    # ----------------------------------------------------------------- input
    def _to_studies(self, inputs, indication) -> tuple[list[dict], bool]:
        """Normalise any accepted input to a list of `{"images": [views], "indication": str | None}`."""
        if isinstance(inputs, dict):
            studies, is_batch = [inputs], False
        elif _is_image(inputs):
            studies, is_batch = [{"images": [inputs]}], False
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) == 0:
                raise ValueError("Got an empty list; pass at least one image.")
            if all(_is_image(item) for item in inputs):
                studies, is_batch = [{"images": list(inputs)}], False
            elif all(isinstance(item, (dict, list, tuple)) for item in inputs):
                studies = [item if isinstance(item, dict) else {"images": item} for item in inputs]
                is_batch = True
            else:
                raise TypeError(
                    "A list must hold either the views of one study (images or paths) or one entry per study (lists "
                    "of views, or dicts with 'images'); got a mix of "
                    f"{sorted({type(item).__name__ for item in inputs})}."
                )
        else:
            raise TypeError(
                f"Unsupported input of type {type(inputs).__name__}. Pass a PIL image, numpy array, torch tensor, "
                "file path or URL; a list of them (views of one study); a list of lists (a batch of studies); or "
                "dicts {'images': ..., 'indication': ...}."
            )

        if isinstance(indication, (list, tuple)):
            if not is_batch or len(indication) != len(studies):
                raise ValueError(
                    f"Got {len(indication)} indications for {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}; "
                    "pass one string, or a list with one per study of a batch."
                )
            indications = list(indication)
        else:
            indications = [indication] * len(studies)

        max_views = getattr(self.processor, "max_views", None)
        normalised = []
        for index, (study, default_indication) in enumerate(zip(studies, indications)):
            if "images" not in study:
                raise ValueError(f"Study {index} is a dict without an 'images' key; use {{'images': [...]}}.")
            unknown = set(study) - {"images", "indication"}
            if unknown:
                raise ValueError(f"Study {index} has unknown keys {sorted(unknown)}; use 'images' and 'indication'.")
            views = study["images"]
            views = [views] if _is_image(views) else list(views) if isinstance(views, (list, tuple)) else views
            if not isinstance(views, list) or not views or not all(_is_image(view) for view in views):
                raise TypeError(
                    f"Study {index}: 'images' must be one image or a non-empty list of images (PIL, numpy, torch, "
                    "path or URL)."
                )
            if max_views is not None and len(views) > max_views:
                raise ValueError(
                    f"Study {index} has {len(views)} views but the model takes at most {max_views}; drop views."
                )
            study_indication = study.get("indication", default_indication)
            if study_indication is not None and not isinstance(study_indication, str):
                raise TypeError(f"Study {index}: indication must be a string, got {type(study_indication).__name__}.")
            normalised.append({"images": views, "indication": study_indication})
        return normalised, is_batch

    def __call__(self, inputs, indication=None, **kwargs):
        r"""
        Write the report of one study or of a batch of studies (see the class docstring for accepted inputs).
        """
        studies, is_batch = self._to_studies(inputs, indication)
        outputs = super().__call__(studies, **kwargs)
        return outputs if is_batch else outputs[0]

    def preprocess(self, study, instruction=None, timeout=None):
        from transformers.image_utils import load_image

        views = [
            load_image(view, timeout=timeout)
            if isinstance(view, str) and view.startswith(("http://", "https://"))
            else view
            for view in study["images"]
        ]
        return self.processor(
            images=[views], indication=study["indication"], instruction=instruction, return_tensors="pt"
        )

    # ---------------------------------------------------------------- model
    def _forward(self, model_inputs, **generate_kwargs):
        prompt_length = model_inputs["input_ids"].shape[1]
        sequences = self.model.generate(**model_inputs, **generate_kwargs)
        return {"sequences": sequences, "prompt_length": prompt_length}

    def postprocess(self, model_outputs):
        # Decoder-only generation returns prompt + report: keep only the new tokens.
        new_tokens = model_outputs["sequences"][:, model_outputs["prompt_length"] :]
        return {"report": self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]}


def custom_pipelines_entry() -> dict:
    """
    The `config.custom_pipelines` entry that makes `pipeline(model=<saved folder>, trust_remote_code=True)` build
    this pipeline from the code saved next to the model (the same entry `Pipeline.save_pretrained` writes).
    """
    return {
        TASK: {
            "impl": f"{__name__.split('.')[-1]}.{RadiologyReportGenerationPipeline.__name__}",
            "pt": [AutoModelForImageTextToText.__name__],
            "type": "multimodal",
        }
    }


if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=RadiologyReportGenerationPipeline,
        pt_model=AutoModelForImageTextToText,
        type="multimodal",
    )
