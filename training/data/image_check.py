"""Check every image of the rows a run uses before its first step: decodable, in parallel, cached.

`rrg train` and `rrg evaluate` call [`check_rows`] on the rows they are about to use. Each image is decoded with the
loaders' own check (`training.data.loaders._verify_image`, the same decoder training uses), in a thread pool; results are
cached by path, size and modification time (`$RRG_CACHE/file_checks.sqlite`), so a second run over unchanged files
does not open them again. A bad image is an error naming the data source, split, row, id and file; with
`on_bad_rows: skip` its row is skipped and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from ..manifest import _LOCK, open_cache

logger = logging.getLogger(__name__)

__all__ = ["check_images", "check_rows"]



def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def check_images(paths: Sequence[str | os.PathLike], workers: int | None = None) -> dict[str, str]:
    """
    Decode every image once (in parallel) and return `{path: problem}` for the ones that fail.

    Args:
        paths: Image files (duplicates are checked once).
        workers (`int`, *optional*): Threads; defaults to `min(16, cpu_count + 4)` (PIL and zlib release the GIL).

    Returns:
        `dict[str, str]`: the problem of each bad file (missing, empty, truncated, not an image); good files are
        absent.
    """
    from .loaders import _verify_image

    unique = list(dict.fromkeys(str(p) for p in paths))
    problems: dict[str, str] = {}
    todo: list[tuple[str, tuple[int, int]]] = []
    with closing(open_cache()) as conn:
        for path in unique:
            key = _stat_key(Path(path))
            if key is None:
                problems[path] = f"image not found: {path}"
                continue
            hit = conn.execute("SELECT size, mtime_ns, problem FROM images WHERE path = ?", (path,)).fetchone()
            if hit is not None and (hit[0], hit[1]) == key:
                if hit[2]:
                    problems[path] = hit[2]
                continue
            todo.append((path, key))
        if todo:
            workers = workers or min(16, (os.cpu_count() or 1) + 4)
            logger.info("Checking %d image(s) (%d already checked and unchanged) with %d threads.",
                        len(todo), len(unique) - len(todo), workers)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(lambda item: _verify_image(Path(item[0])), todo))
            with _LOCK, conn:
                conn.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)",
                                 [(p, k[0], k[1], r) for (p, k), r in zip(todo, results)])
            problems.update({p: r for (p, _), r in zip(todo, results) if r})
    return problems


def check_rows(rows, split: str, source: str, on_bad_rows: str = "raise", max_views: int | None = None) -> list[int]:
    """
    Check the images of `rows` (dicts or a `datasets.Dataset` with an `image_path` list column).

    Args:
        rows: The rows a run will use, in order.
        split (`str`): Split name, for messages.
        source (`str`): Data path, for messages.
        on_bad_rows (`str`): `"raise"` (error naming file and row) or `"skip"`.
        max_views (`int`, *optional*): Only the first views of a study are used (and checked).

    Returns:
        `list[int]`: indices of the rows whose images are all good (all of them unless skipping).
    """
    from .loaders import _SKIP_OPTIONS

    if on_bad_rows not in ("raise", "skip"):
        raise ValueError(f"on_bad_rows must be 'raise' or 'skip', got {on_bad_rows!r}.")
    image_lists = [list(paths)[:max_views] if max_views else list(paths) for paths in _column(rows, "image_path")]
    ids = _column(rows, "id")
    problems = check_images([p for paths in image_lists for p in paths])
    good, skipped = [], []
    for i, paths in enumerate(image_lists):
        bad = next((p for p in paths if p in problems), None)
        if bad is None:
            good.append(i)
            continue
        message = f"{source}, split {split!r} row {i} (id {ids[i]!r}): {problems[bad]}"
        if on_bad_rows == "raise":
            raise ValueError(f"{message}; fix the row, or skip bad rows: {_SKIP_OPTIONS}.")
        skipped.append(message)
    if skipped:
        logger.warning("Skipped %d row(s) of split %r with unusable images. First: %s", len(skipped), split,
                       "; ".join(skipped[:5]))
        if not good:
            raise ValueError(f"{source}: every row of split {split!r} has an unusable image; nothing is left to use.")
    return good


def _column(rows, name: str) -> list:
    if hasattr(rows, "column_names"):
        return list(rows[name]) if name in rows.column_names else [None] * len(rows)
    return [row.get(name) for row in rows]
