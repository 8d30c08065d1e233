"""Small helpers the benchmark scripts share: logging set-up, incremental JSON output, atomic PNG writes."""

import logging
import os
from pathlib import Path

__all__ = ["setup", "json_saver", "save_figure"]


def setup() -> None:
    """Offline Hub, timestamped INFO logs, and the libraries' own chatter down to errors."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("transformers", "trl", "accelerate", "datasets", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def json_saver(path):
    """A `save(result)` that writes `result` to `path` atomically (a no-op without a path): called after each part,
    so a long run on a loaded machine keeps what it measured."""

    def save(result):
        if path:
            from training.fileio import write_json_atomic

            write_json_atomic(Path(path), result)

    return save


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure to `path` (PNG) through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
