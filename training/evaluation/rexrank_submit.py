"""A ReXrank submission in the form of its `inference.py`: `rrg rexrank-submit`.

ReXrank runs a submitted `inference.py --input_json_file TEST.json --save_json_file OUT.json --img_root_dir IMAGES`.
This command is that script for an rrg model: it reads the test file ([`training.data.rexrank.load_rexrank_json`]:
every view of a study, the `context`'s indication prepended to the instruction), generates one report per study and
writes `OUT.json`: the input mapping with each entry's `model_prediction` added.

Resumable: each finished batch is appended (and fsynced) to `OUT.json.partial.jsonl`; a rerun skips the studies
already there, and the final JSON is written atomically when every study has its report (then the partial file is
removed). A partial file from another model or test file is refused.

```bash
rrg rexrank-submit --model outputs/demo/stage2 --input_json_file mimic_test.json --save_json_file mimic_rrg.json \\
    --img_root_dir /data/MIMIC-CXR-JPG/files --num_beams 3
```
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path

from tqdm.auto import tqdm

from ..data.rexrank import load_rexrank_json
from ..fileio import write_json_atomic
from .evaluator import read_predictions

__all__ = ["rexrank_submission", "main"]

logger = logging.getLogger(__name__)


def _fingerprint(model_path, input_json_file, generation_kwargs) -> str:
    digest = hashlib.sha256(Path(input_json_file).read_bytes()).hexdigest()[:16]
    return json.dumps({"model": str(Path(model_path).resolve()) if model_path else None, "input": digest,
                       "generation": generation_kwargs}, sort_keys=True)


def rexrank_submission(input_json_file, save_json_file, img_root_dir=None, model_path=None, model=None, processor=None,
                       batch_size: int = 8, generation_kwargs: dict | None = None, use_indication: bool = True,
                       image_loader=None) -> dict:
    """Generate a report for every study of a ReXrank test file and write the submission JSON.

    Args:
        input_json_file: ReXrank's test JSON.
        save_json_file: Output JSON (`{study id: entry + "model_prediction"}`).
        img_root_dir (*optional*): Root of the relative image paths.
        model_path (*optional*): A trained rrg folder (loaded with `training.model_io.load_trained`), or pass a loaded
            `model` and `processor`.
        batch_size (`int`): Studies per `generate` call.
        generation_kwargs (`dict`, *optional*): Passed to `generate`.
        use_indication (`bool`): Prepend each study's indication (from `context`) to the instruction.
        image_loader (*optional*): Path -> PIL image (defaults to `training.data.images.load_image`).

    Returns:
        `dict`: the submission (also written to `save_json_file`).
    """
    import torch

    from .generation import generate_batch

    if image_loader is None:
        from ..data.images import load_image as image_loader
    save_json_file = Path(save_json_file)
    partial = save_json_file.with_name(save_json_file.name + ".partial.jsonl")
    generation_kwargs = dict(generation_kwargs or {})
    rows = load_rexrank_json(input_json_file, track="findings+impression", img_root_dir=img_root_dir,
                             skip_empty=False)
    fingerprint = _fingerprint(model_path, input_json_file, generation_kwargs)
    done = {}
    records = read_predictions(partial)
    if records:
        if records[0].get("fingerprint") != fingerprint:
            raise ValueError(f"{partial} holds predictions of another model, test file or generation settings; "
                             "delete it (or pick another --save_json_file) to start over.")
        done = {r["id"]: r["model_prediction"] for r in records[1:]}
        logger.info("Resuming: %d of %d studies already in %s.", len(done), len(rows), partial)
    todo = [row for row in rows if row["id"] not in done]
    missing = [p for row in todo for p in row["image_path"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of the test file are missing under --img_root_dir, e.g. "
                                f"{missing[0]}.")
    if todo and model is None:
        from ..model_io import load_trained

        model, processor = load_trained(model_path, merge=True,
                                        device="cuda" if torch.cuda.is_available() else "cpu")
        model.eval()
    save_json_file.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a", encoding="utf-8") as handle:
        if not records:
            handle.write(json.dumps({"fingerprint": fingerprint}) + "\n")
        for start in tqdm(range(0, len(todo), batch_size), desc="ReXrank studies", unit="batch"):
            chunk = todo[start : start + batch_size]
            studies = [[image_loader(p) for p in row["image_path"][: processor.max_views]] for row in chunk]
            indications = [row["indication"] for row in chunk] if use_indication else None
            outputs = generate_batch(model, processor, studies, generation_kwargs, indications=indications)
            lines = []
            for row, output in zip(chunk, outputs):
                done[row["id"]] = output["report"]
                lines.append(json.dumps({"id": row["id"], "model_prediction": output["report"]}) + "\n")
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
    submission = {row["id"]: {**row["entry"], "model_prediction": done[row["id"]]} for row in rows}
    write_json_atomic(save_json_file, submission)
    partial.unlink()
    logger.info("ReXrank submission written to %s (%d studies).", save_json_file, len(submission))
    return submission


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rrg rexrank-submit", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.environ.get("RRG_MODEL"),
                   help="Trained rrg folder (default: $RRG_MODEL, so ReXrank's plain inference.py call works).")
    p.add_argument("--input_json_file", "--input-json-file", required=True)
    p.add_argument("--save_json_file", "--save-json-file", required=True)
    p.add_argument("--img_root_dir", "--img-root-dir", default=None)
    p.add_argument("--batch_size", "--batch-size", type=int, default=8)
    p.add_argument("--num_beams", "--num-beams", type=int, default=1)
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=128)
    p.add_argument("--repetition_penalty", "--repetition-penalty", type=float, default=1.0)
    p.add_argument("--no_indication", "--no-indication", action="store_true",
                   help="Do not prepend the context's indication to the instruction.")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if not a.model:
        raise ValueError("Pass the trained rrg folder with --model DIR (or set RRG_MODEL).")
    generation = {"num_beams": a.num_beams, "max_new_tokens": a.max_new_tokens,
                  "repetition_penalty": a.repetition_penalty}
    rexrank_submission(a.input_json_file, a.save_json_file, a.img_root_dir, model_path=a.model,
                       batch_size=a.batch_size, generation_kwargs=generation, use_indication=not a.no_indication)
    return 0
