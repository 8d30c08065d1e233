"""`rrg serve`: the browser demo (a Gradio page) and the Hugging Face Space folder that runs it as it is."""

from .app import (
    BANNER,
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_UPLOAD_MB,
    GenerationSettings,
    ReportServer,
    UploadError,
    build_app,
    build_parser,
    launch,
    main,
)
from .examples import load_examples, write_examples
from .space import write_space

__all__ = [
    "BANNER",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_UPLOAD_MB",
    "GenerationSettings",
    "ReportServer",
    "UploadError",
    "build_app",
    "build_parser",
    "launch",
    "load_examples",
    "main",
    "write_examples",
    "write_space",
]
