"""Run manifests: what produced a resumable output, so a resume never mixes two runs.

A manifest is a small JSON file written beside an output that a later command may resume (`predictions.jsonl` of
`rrg evaluate`, a training stage folder). It names the model (folder + a hash of its weight files), the data (path +
a hash of the annotation / dataset files), the split, the sample limit and the generation settings or training
recipe. Before resuming, the command builds the manifest it would write and compares: any difference is refused
with a message naming the differing fields (`--overwrite` starts fresh instead).

Hashing is cheap on a second run: file hashes are cached by path, size and modification time in
`$RRG_CACHE/file_checks.sqlite` (default `~/.cache/rrg`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

from .fileio import write_json_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "cache_path",
    "file_sha256",
    "files_fingerprint",
    "model_fingerprint",
    "data_fingerprint",
    "diff_manifests",
    "read_manifest",
    "write_manifest",
]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow")
_LOCK = threading.Lock()


def cache_path() -> Path:
    """The sqlite file caching file hashes and image checks (keyed by path, size and mtime)."""
    root = Path(os.environ.get("RRG_CACHE", Path.home() / ".cache" / "rrg"))
    root.mkdir(parents=True, exist_ok=True)
    return root / "file_checks.sqlite"


def open_cache() -> sqlite3.Connection:
    """A connection to the check cache, with its tables created. Callers close it."""
    conn = sqlite3.connect(cache_path(), timeout=60, check_same_thread=False)
    conn.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS images (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, problem TEXT)"
    )
    return conn


def file_sha256(path: str | os.PathLike, conn: sqlite3.Connection | None = None) -> str:
    """sha256 of a file, cached by (absolute path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    own = conn is None
    conn = conn or open_cache()
    try:
        with _LOCK:
            hit = conn.execute("SELECT size, mtime_ns, sha256 FROM hashes WHERE path = ?", (str(path),)).fetchone()
        if hit is not None and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            return hit[2]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        with _LOCK, conn:
            conn.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)",
                         (str(path), stat.st_size, stat.st_mtime_ns, value))
        return value
    finally:
        if own:
            conn.close()


def files_fingerprint(files: list[Path], root: Path) -> str:
    """One hash over the names (relative to `root`), sizes and sha256 of `files`."""
    lines = []
    with closing(open_cache()) as conn:
        for file in sorted(files):
            lines.append(f"{file.relative_to(root).as_posix()}\t{file.stat().st_size}\t{file_sha256(file, conn)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def model_fingerprint(model_path: str | os.PathLike | None = None, model=None) -> dict:
    """
    Identity of a model: its folder and a hash of its weight files (for a LoRA adapter, also of the base model it
    loads onto). Without a folder (a model object in memory), the hash of its parameters and buffers.
    """
    if model_path is None:
        if model is None:
            raise ValueError("model_fingerprint needs a model folder or a model.")
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
        return {"folder": None, "weights_sha256": digest.hexdigest()}
    from .model_io import is_adapter_dir, resolve_model_dir

    folder = resolve_model_dir(model_path).resolve()
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"{folder} holds no weight files (*.safetensors / *.bin).")
    out = {"folder": str(folder), "weights_sha256": files_fingerprint(files, folder)}
    if is_adapter_dir(folder):
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base and Path(base).exists():
            out["base_model"] = model_fingerprint(base)
    return out


def _byte_dtype():
    import torch

    return torch.uint8


def data_fingerprint(data: str | os.PathLike) -> dict:
    """
    Identity of a dataset: its path and a hash of its annotation / table files (`annotation.json`, CSV, JSON lines,
    parquet, arrow shards). Images are not hashed here; they are checked (decodable, by size and mtime) before a run.
    A Hub id is identified by its name only.
    """
    path = Path(data)
    if not path.exists():
        return {"path": str(data), "sha256": None}
    path = path.resolve()
    if path.is_file():
        return {"path": str(path), "sha256": file_sha256(path)}
    if (path / "annotation.json").is_file():
        return {"path": str(path), "sha256": file_sha256(path / "annotation.json")}
    files = [f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in _DATA_SUFFIXES]
    return {"path": str(path), "sha256": files_fingerprint(files, path)}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_manifests(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two manifests, one per differing (dotted) field."""
    a, b = _flatten(_jsonable(old)), _flatten(_jsonable(new))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {_short(a.get(key, '<absent>'))} -> {_short(b.get(key, '<absent>'))}")
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def read_manifest(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable manifest ({err}); use --overwrite to start fresh.") from err


def write_manifest(path: str | os.PathLike, manifest: dict) -> Path:
    return write_json_atomic(path, _jsonable(manifest))
