"""Pytest plugin: a deprecation that *our* code triggers fails the test that triggered it.

A deprecated call of ours (a renamed keyword, a deprecated recipe field, an old API) works today and breaks on the
release that removes it, which is how radiology models on the Hub stop loading. So every `DeprecationWarning` /
`FutureWarning` (and every "deprecated" message transformers logs instead of warning) raised while a frame of
`training/`, `modeling_rrg/` (or the copy of it that `trust_remote_code` imports) is on the stack becomes an error,
unless it is listed in `THIRD_PARTY` below with the reason it is not ours to fix.
"""

import logging
import re
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = (str(REPO / "training") + "/", str(REPO / "modeling_rrg") + "/", "/transformers_modules/")
CATEGORIES = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)

# Deprecations raised inside third-party code whatever arguments we pass: (message regex, why it is not ours).
THIRD_PARTY = [
    (r"torch\.utils\._pytree\._register_pytree_node", "raised by transformers/accelerate internals at import"),
    (r"`torch\.jit\.", "torch's own deprecation of TorchScript, raised inside libraries' decorators"),
    (r"datetime\.datetime\.utcnow", "raised inside tensorboard / huggingface_hub"),
    (r"pkg_resources", "raised inside third-party imports"),
    (r"Support for non-tuple sequences", "raised inside pycocoevalcap/numpy"),
    (r"`torch_dtype` is deprecated", "RadEval 2.2.1's GREEN class passes torch_dtype= to from_pretrained (we call it "
                                     "as it is; rrg's own code passes dtype=)"),
    (r"`is_gradient_checkpointing` is deprecated", "trl 1.16 and peft 0.21 read the old property name themselves"),
]


def _ours(frame) -> str | None:
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(OURS[:2]) or OURS[2] in name:
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _allowed(message: str) -> bool:
    return any(re.search(pattern, message) for pattern, _ in THIRD_PARTY)


class DeprecatedByUs(AssertionError):
    pass


_found: list[str] = []
_real_warn = warnings.warn


def _warn(message, category=None, stacklevel=1, source=None, *args, **kwargs):
    if category is None:
        category = type(message) if isinstance(message, Warning) else UserWarning
    if isinstance(category, type) and issubclass(category, CATEGORIES) and not _allowed(str(message)):
        # Search from the frame the warning is attributed to (its `stacklevel`), as Python does to name the culprit:
        # a deprecation notice that our own API gives its caller (`past_key_values` on rrg's forward) counts only
        # when that caller is ours too.
        try:
            start = sys._getframe(max(int(stacklevel), 1))
        except ValueError:
            start = sys._getframe(1)
        where = _ours(start)
        if where is not None:
            _found.append(f"{category.__name__}: {message} (our frame: {where})")
    return _real_warn(message, category, stacklevel + 1, source, *args, **kwargs)


class _LoggedDeprecations(logging.Handler):
    """Sees the records of a library's loggers (children propagate to it) and notes the deprecations."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "deprecat" in text.lower() and not _allowed(text):
            where = _ours(sys._getframe(1))
            if where is not None:
                _found.append(f"logged by {record.name}: {text} (our frame: {where})")


def pytest_configure(config):
    warnings.warn = _warn
    import transformers.utils.logging  # noqa: F401  (configures its root logger first, so our level sticks)

    for name in ("transformers", "trl", "peft", "accelerate", "datasets"):
        logger = logging.getLogger(name)
        logger.addHandler(_LoggedDeprecations(level=logging.WARNING))
        if logger.getEffectiveLevel() > logging.WARNING:  # TRANSFORMERS_VERBOSITY=error would drop them unseen
            logger.setLevel(logging.WARNING)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _found.clear()
    yield
    if _found:
        found = list(dict.fromkeys(_found))
        _found.clear()
        raise DeprecatedByUs("our code triggered deprecations:\n  " + "\n  ".join(found))
