"""rrg model package: config, model and processor, registered with the transformers Auto classes."""

from .configuration_rrg import RRGConfig
from .modeling_rrg import (
    RRGForConditionalGeneration,
    RRGModel,
    RRGMultiModalProjector,
    RRGPreTrainedModel,
)
from .pipeline_rrg import RadiologyReportGenerationPipeline  # registers the "radiology-report-generation" task
from .processing_rrg import RRGProcessor

__all__ = [
    "RRGConfig",
    "RRGModel",
    "RRGForConditionalGeneration",
    "RRGMultiModalProjector",
    "RRGPreTrainedModel",
    "RRGProcessor",
    "RadiologyReportGenerationPipeline",
]


def _register_local_auto_classes():
    """Make the Auto classes resolve model_type "rrg" when this package is importable (no remote code needed)."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    try:
        AutoConfig.register("rrg", RRGConfig)
    except ValueError:  # already registered (module re-imported)
        return
    AutoModel.register(RRGConfig, RRGModel)
    AutoModelForImageTextToText.register(RRGConfig, RRGForConditionalGeneration)
    AutoModelForCausalLM.register(RRGConfig, RRGForConditionalGeneration)
    AutoProcessor.register(RRGConfig, RRGProcessor)
    try:  # transformers 5.25+: the Auto class of multimodal generation models (text + images in, text out)
        from transformers import AutoModelForMultimodalLM
    except ImportError:
        return
    AutoModelForMultimodalLM.register(RRGConfig, RRGForConditionalGeneration)


_register_local_auto_classes()
