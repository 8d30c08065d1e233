"""Entry point of a Hugging Face Space written by `rrg serve MODEL --write-space DIR`; the Space runs it as it is.

The model comes from the Space variable `RRG_MODEL`, else from `rrg_space.json` (written with the folder). The code it
runs is the copy of the `training` package (and `modeling_rrg`, which its analysis code imports) next to this file.
"""

import json
import os
from pathlib import Path

from training.serve import launch

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    model = os.environ.get("RRG_MODEL") or json.loads((HERE / "rrg_space.json").read_text())["model"]
    # Spaces route their public URL to port 7860 on every interface of the container.
    launch(model, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
