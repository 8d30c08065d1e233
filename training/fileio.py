"""Atomic writes: a crash leaves either the old file / folder or the new one, never a half-written one."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json_atomic", "replace_dir", "atomic_dir"]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload, indent: int = 2) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=indent, default=str) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished folder `tmp` to `final`, replacing an existing `final` (moved aside, then deleted)."""
    tmp, final = Path(tmp), Path(final)
    if tmp.stat().st_mode & 0o777 == 0o700:  # tempfile.mkdtemp folders are private; outputs are meant to be shared
        os.chmod(tmp, 0o755)
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, trash / "old")
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """
    Build a folder in a fresh temporary folder beside `final`, then move it into place ([`replace_dir`]).

    If the block raises, the temporary folder is removed and `final` is left as it was.

    Example:

    ```python
    >>> with atomic_dir("outputs/model") as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    ```
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
