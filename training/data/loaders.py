"""Data loading for radiology report generation: R2Gen annotation files, Hugging Face datasets, DICOM.

Every loader returns a `datasets.DatasetDict` with the split names `"train"`, `"validation"` and
`"test"` (R2Gen's `"val"` becomes `"validation"`) and the same columns:

| column       | type                     | content                                                    |
|--------------|--------------------------|------------------------------------------------------------|
| `id`         | `string`                 | study / example id                                         |
| `image_path` | `list[string]`           | absolute paths of the study's images (frontal first)       |
| `report`     | `string`                 | report text (section selected, optionally cleaned)         |
| `study_id`   | `string` or `None`       | as in the source, stringified                              |
| `subject_id` | `string` or `None`       | as in the source, stringified                              |
| `chexpert`   | `struct` or `None`       | `{observation: 1 / 0 / -1 / None}` for the 14 CheXpert observations, `None` when the source has no labels |

Images are *not* decoded into the dataset: rows hold paths, and [`training.data.images.load_image`] decodes them at
batch time (PNG / JPEG of any bit depth, DICOM through pydicom). Datasets that store decoded
images (Hugging Face `Image` features, PIL images) have them written once to a cache folder and the
rows point there.

Bad input is never silently dropped. A missing image, an empty report, a missing key or column
raises an error that names the file and row; with `on_error="skip"` the row is skipped instead and
the number of skipped rows is logged as a warning with the first reasons. A split that ends up with
no rows is always an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..arguments import DataArguments
from ..fileio import write_bytes_atomic
from .chexpert import CHEXPERT_OBSERVATIONS
from .images import load_image
from .reports import REPORT_SECTIONS, clean_report, select_section

__all__ = [
    "FEATURES",
    "SPLIT_ALIASES",
    "split_key",
    "load_annotation_json",
    "load_hf_dataset",
    "load_synthetic",
    "load_rows",
    "dataset_labels",
    "describe_dataset",
    "load_splits",
]

logger = logging.getLogger(__name__)


FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image_path": datasets.Sequence(datasets.Value("string")),
        "report": datasets.Value("string"),
        "study_id": datasets.Value("string"),
        "subject_id": datasets.Value("string"),
        "chexpert": {obs: datasets.Value("int8") for obs in CHEXPERT_OBSERVATIONS},
    }
)

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validate": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom", ""}


def _check_images(paths: Sequence[Path], verify: bool, where: str, problems: _Problems) -> bool:
    """Reports the first missing / corrupt image of a row; returns whether all are usable."""
    for path in paths:
        if not path.is_file():
            problems.report(where, f"image not found: {path}", error=FileNotFoundError)
            return False
        problem = _verify_image(path) if verify else None
        if problem:
            problems.report(where, problem)
            return False
    return True


def _verify_image(path: Path) -> str | None:
    """Returns a problem description or `None`: the image is decoded in full, as training will decode it (a header
    check passes truncated files)."""
    try:
        if path.stat().st_size == 0:
            return f"empty (zero-byte) image file {path}"
        load_image(path)
    except Exception as err:  # PIL and pydicom raise many types for broken files
        return f"corrupt image {path}: {err.__cause__ or err}"  # the cause: load_image's message repeats the path
    return None


def _read_utf8(path: Path) -> str:
    """The text of `path`; a byte that is not UTF-8 is an error naming the file, the byte and where it is."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at byte offset {err.start} (line {line}, "
            f"byte {column} of the line) cannot be decoded ({err.reason}); re-save the file as UTF-8."
        ) from None


def _outside_root(value: str | os.PathLike, root: Path) -> bool:
    """Whether a path from the data escapes `root` (absolute, or `..` leading out). Lexical on purpose: an image
    root may hold symlinks to another disk, which are inside it as far as the data is concerned."""
    root = os.path.abspath(root)
    joined = os.path.abspath(os.path.join(root, value))  # an absolute value replaces the root here
    return os.path.commonpath([joined, root]) != root


# The settings a message tells the user to change, as every entry point spells them: the same flag for `rrg train`,
# `rrg evaluate` and `rrg analyze` (`training.arguments.DataArguments`), the same key in a recipe or `--config` file.
_OUTSIDE_FIX = ("image paths must stay inside the image root: point --image_root at the folder they are in, or pass "
                "--allow_outside_image_root (`allow_outside_image_root: true` in a recipe or config) if the data "
                "really points elsewhere")



# --------------------------------------------------------------------------------------------
# Row normalisation shared by the loaders
# --------------------------------------------------------------------------------------------
# How a user skips bad rows, in each entry point.
_SKIP_OPTIONS = ("--on_bad_rows skip (rrg train, evaluate, analyze; `on_bad_rows: skip` in a recipe or config; "
                 "on_error='skip' in Python)")
# load_hf_dataset's column arguments that are also command-line flags (DataArguments fields of the same name).
_COLUMN_FLAGS = ("image_column", "report_column", "split_column", "id_column")


class _RowError(ValueError):
    """A bad row found below the row loop: the loop reports it once, with the row's location and `fix`."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem)
        self.fix = fix


class _Problems:
    """Collects bad rows: raises at once (`on_error="raise"`) or counts them (`"skip"`)."""

    def __init__(self, on_error: str, source: str):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        self.on_error = on_error
        self.source = source
        self.skipped: list[str] = []

    def report(self, where: str, problem: str, fix: str = "", error: type[Exception] = ValueError) -> None:
        message = f"{self.source}, {where}: {problem}"
        if self.on_error == "raise":
            raise error(f"{message}; {fix or 'fix the row'}, or skip bad rows: {_SKIP_OPTIONS}.")
        self.skipped.append(message)

    def log(self) -> None:
        if self.skipped:
            examples = "; ".join(self.skipped[:5])
            logger.warning("Skipped %d bad row(s) from %s. First: %s", len(self.skipped), self.source, examples)


def _normalise_split(name: str, source: str) -> str:
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(
            f"{source}: unknown split {name!r}; expected one of {sorted(set(SPLIT_ALIASES))} "
            "(rename it, or choose splits with `splits=`)."
        )
    return SPLIT_ALIASES[key]


def _normalise_chexpert(value: Any, where: str) -> dict[str, int | None] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: 'chexpert' is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{where}: 'chexpert' must be a dict {{observation: 1/0/-1/null}}, got {type(value).__name__}.")
    unknown = set(value) - set(CHEXPERT_OBSERVATIONS)
    if unknown:
        raise ValueError(f"{where}: unknown CheXpert observation(s) {sorted(unknown)}; expected names from training.data.chexpert.CHEXPERT_OBSERVATIONS.")
    out: dict[str, int | None] = {}
    for obs in CHEXPERT_OBSERVATIONS:
        v = value.get(obs)
        if v is not None and (isinstance(v, float) and np.isnan(v)):
            v = None
        if v is not None and int(v) not in (1, 0, -1):
            raise ValueError(f"{where}: CheXpert label {obs!r} must be 1, 0, -1 or null, got {v!r}.")
        out[obs] = None if v is None else int(v)
    return out


def _process_report(raw: Any, section: str, clean: str | None, where: str, problems: _Problems) -> str | None:
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        raw = ""
    if not isinstance(raw, str):
        raise TypeError(f"{where}: report must be a string, got {type(raw).__name__}.")
    text = select_section(raw, section)
    if clean is not None:
        text = clean_report(text, clean)
    text = text.strip()
    if not text:
        what = "report is empty" if not raw.strip() else f"report has no {section!r} text"
        problems.report(where, what, "fill in the report or choose another --report_section")
        return None
    return text


def _as_path_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike, dict, Image.Image)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise _RowError(f"image entry must be a path, a list of paths or an image, got {type(value).__name__}",
                    "point the image column at a column of paths (--image_column)")


def _build(rows_by_split: dict[str, list[dict]], source: str) -> datasets.DatasetDict:
    out = {}
    for split, rows in rows_by_split.items():
        if not rows:
            raise ValueError(f"{source}: split {split!r} has no rows (after skipping bad rows); add data or leave the split out with `splits=`.")
        out[split] = datasets.Dataset.from_list(rows, features=FEATURES, split=split)
    return datasets.DatasetDict(out)


# --------------------------------------------------------------------------------------------
# R2Gen annotation.json
# --------------------------------------------------------------------------------------------
def load_annotation_json(
    annotation_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
    clean: str | None = None,
    on_error: str = "raise",
    section: str = "both",
    verify_images: bool = False,
    allow_outside_root: bool = False,
) -> datasets.DatasetDict:
    """
    Loads an R2Gen-style `annotation.json` (IU X-Ray, MIMIC-CXR, or the synthetic benchmark).

    The file is `{"train": [...], "val": [...], "test": [...]}`; each entry has `id`, `report`,
    `image_path` (a list of paths relative to the image root) and optionally `study_id`,
    `subject_id` and `chexpert`. MIMIC-CXR-JPG (`files/p10/p10000032/s50414267/*.jpg`) and IU X-Ray
    (`CXR1_1_IM-0001/0.png`) both work through it: the paths are simply joined to `image_root`.

    Args:
        annotation_path (`str` or `os.PathLike`): Path of `annotation.json`.
        image_root (`str` or `os.PathLike`, *optional*):
            Folder the `image_path` entries are relative to. Defaults to `images/` next to the
            annotation file if it exists (R2Gen's `data/iu_xray/images/`), else the file's folder.
        splits (`Sequence[str]`, *optional*):
            Splits to load (`"train"`, `"val"`/`"validation"`, `"test"`); defaults to all in the file.
        clean (`str`, *optional*):
            `"mimic"` or `"iu"` to apply [`clean_report`]; `None` keeps the text as written.
        on_error (`str`, *optional*, defaults to `"raise"`):
            `"raise"` stops at the first bad row with an error naming file and row; `"skip"` skips
            bad rows and logs how many were skipped and why.
        section (`str`, *optional*, defaults to `"both"`): See [`select_section`].
        verify_images (`bool`, *optional*, defaults to `False`):
            Also open every image header to catch corrupt files up front (slower). Missing files
            are always caught; corrupt ones otherwise surface in [`load_image`] with the path.
        allow_outside_root (`bool`, *optional*, defaults to `False`):
            Accept image paths that leave `image_root` (absolute, or `..` leading out); refused by default.

    A study id used twice in a split is a bad row (the error names both rows; skipping keeps the first).

    Returns:
        `datasets.DatasetDict` with the columns listed in the module docstring.
    """
    annotation_path = Path(annotation_path)
    if not annotation_path.is_file():
        raise FileNotFoundError(f"Annotation file not found: {annotation_path}")
    try:
        data = json.loads(_read_utf8(annotation_path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{annotation_path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{annotation_path}: expected the R2Gen layout {{'train': [...], 'val': [...], 'test': [...]}}, got {type(data).__name__} with keys {list(data)[:5] if isinstance(data, dict) else ''}.")
    if image_root is None:
        image_root = annotation_path.parent / "images"
        if not image_root.is_dir():
            image_root = annotation_path.parent
    image_root = Path(image_root).resolve()
    if not image_root.is_dir():
        raise FileNotFoundError(f"Image root not found: {image_root} (pass --image_root, the folder the image_path entries are relative to).")
    if section not in REPORT_SECTIONS:
        raise ValueError(f"section must be one of {REPORT_SECTIONS}, got {section!r}.")
    if clean not in (None, "mimic", "iu"):
        raise ValueError(f"clean must be None, 'mimic' or 'iu', got {clean!r}.")

    file_splits = {_normalise_split(k, str(annotation_path)): k for k in data}
    if splits is None:
        wanted = list(file_splits)
    else:
        wanted = [_normalise_split(s, "splits argument") for s in splits]
        missing = [s for s in wanted if s not in file_splits]
        if missing:
            raise ValueError(f"{annotation_path}: split(s) {missing} not in the file, which has {list(data)}.")

    problems = _Problems(on_error, str(annotation_path))
    rows_by_split: dict[str, list[dict]] = {}
    for split in wanted:
        key = file_splits[split]
        rows = []
        first_row: dict[str, int] = {}
        entries = data[key]
        for i, entry in enumerate(tqdm(entries, desc=f"Reading {key}", disable=len(entries) < 5000)):
            where = f"split {key!r} row {i}"
            if not isinstance(entry, dict):
                problems.report(where, f"entry must be an object, got {type(entry).__name__}")
                continue
            missing_keys = [k for k in ("id", "report", "image_path") if k not in entry]
            if missing_keys:
                problems.report(where, f"missing key(s) {missing_keys} (has {sorted(entry)})")
                continue
            where = f"split {key!r} row {i} (id {entry['id']!r})"
            if str(entry["id"]) in first_row:
                problems.report(where, f"duplicate id {str(entry['id'])!r}: row {first_row[str(entry['id'])]} has it "
                                       "too", "give each study its own id")
                continue
            try:
                raw_paths = _as_path_list(entry["image_path"])
            except _RowError as err:
                problems.report(where, str(err), err.fix)
                continue
            escaping = [str(p) for p in raw_paths if not allow_outside_root and _outside_root(str(p), image_root)]
            if escaping:
                problems.report(where, f"image path {escaping[0]!r} is outside the image root {image_root}",
                                _OUTSIDE_FIX)
                continue
            paths = [image_root / str(p) for p in raw_paths]
            if not paths:
                problems.report(where, "image_path is empty")
                continue
            if not _check_images(paths, verify_images, where, problems):
                continue
            report = _process_report(entry["report"], section, clean, where, problems)
            if report is None:
                continue
            first_row[str(entry["id"])] = i
            rows.append(
                {
                    "id": str(entry["id"]),
                    "image_path": [str(p) for p in paths],
                    "report": report,
                    "study_id": None if entry.get("study_id") is None else str(entry["study_id"]),
                    "subject_id": None if entry.get("subject_id") is None else str(entry["subject_id"]),
                    "chexpert": _normalise_chexpert(entry.get("chexpert"), f"{annotation_path}, {where}"),
                }
            )
        rows_by_split[split] = rows
    problems.log()
    return _build(rows_by_split, str(annotation_path))


def load_synthetic(output_dir: str | os.PathLike, **kwargs) -> datasets.DatasetDict:
    """
    Loads a folder written by [`training.sandbox.synthetic.generate_synthetic_dataset`].

    Args:
        output_dir (`str` or `os.PathLike`): The generated folder.
        kwargs: Passed to [`load_annotation_json`] (`splits`, `clean`, `section`, ...).

    Returns:
        `datasets.DatasetDict` with `train`, `validation` and `test`, `chexpert` filled in.
    """
    output_dir = Path(output_dir)
    if not (output_dir / "annotation.json").is_file():
        raise FileNotFoundError(f"{output_dir / 'annotation.json'} not found; generate the data with `rrg data --out {output_dir}`.")
    return load_annotation_json(output_dir / "annotation.json", image_root=output_dir / "images", **kwargs)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (hub, save_to_disk, imagefolder, CSV / JSON lines)
# --------------------------------------------------------------------------------------------
def _open_hf(name_or_path: str, cache_dir: str | None) -> tuple[datasets.DatasetDict, Path | None]:
    path = Path(name_or_path)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        return (ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict({"train": ds})), path
    if path.is_file():
        fmt = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: unsupported table format {path.suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet.")
        kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        # keep_default_na=False: an empty report must stay "" (and be reported), not become NaN.
        if fmt == "csv":
            kwargs["keep_default_na"] = False
        return datasets.load_dataset(fmt, data_files={"train": str(path)}, cache_dir=cache_dir, **kwargs), path.parent
    if path.is_dir() and any((path / m).is_file() for m in ("metadata.jsonl", "metadata.csv")):
        meta = path / "metadata.jsonl" if (path / "metadata.jsonl").is_file() else path / "metadata.csv"
        # Read the metadata ourselves: the imagefolder builder decodes images and drops rows whose
        # file is missing, while we want paths and a clear error per bad row.
        return datasets.DatasetDict({"train": _read_metadata(meta)}), path
    if path.is_dir():
        ds = datasets.load_dataset(str(path), cache_dir=cache_dir)
        return (ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict({"train": ds})), path
    if path.exists() or name_or_path.startswith((".", "/")):
        raise FileNotFoundError(f"Dataset not found: {name_or_path}")
    ds = datasets.load_dataset(name_or_path, cache_dir=cache_dir)
    return (ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict({"train": ds})), None


def _read_metadata(meta: Path) -> datasets.Dataset:
    rows: list[dict] = []
    text = _read_utf8(meta)
    if meta.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{meta}, line {n}: invalid JSON ({err}).") from err
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows:
        raise ValueError(f"{meta} has no rows.")
    columns = sorted({k for r in rows for k in r})
    # Keep values as Python objects (lists of file names are allowed); stringify nothing.
    return datasets.Dataset.from_dict({c: [r.get(c) for r in rows] for c in columns})


def _materialise_image(value: Any, base: Path | None, cache: Path, allow_outside_root: bool = True) -> Path:
    """Turns one image entry (path, `{"path", "bytes"}` dict or PIL image) into a file path; a bad entry raises
    [`_RowError`] (without the row's location, which the caller adds)."""
    if isinstance(value, dict):
        data, src = value.get("bytes"), value.get("path")
        if data is None:
            if not src:
                raise _RowError("image entry has neither 'bytes' nor 'path'")
            value = src
        else:
            digest = hashlib.sha1(data).hexdigest()
            suffix = Path(src).suffix.lower() if src and Path(src).suffix.lower() in _IMAGE_SUFFIXES else ".png"
            target = cache / f"{digest}{suffix or '.png'}"
            if not target.is_file():
                write_bytes_atomic(target, data)
            return target
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        data = buf.getvalue()
        target = cache / f"{hashlib.sha1(data).hexdigest()}.png"
        if not target.is_file():
            write_bytes_atomic(target, data)
        return target
    if isinstance(value, (str, os.PathLike)):
        p = Path(value)
        if base is not None and not allow_outside_root and _outside_root(p, base):
            raise _RowError(f"image path {str(value)!r} is outside the image root {base}", _OUTSIDE_FIX)
        if not p.is_absolute() and base is not None:
            p = base / p
        return p.resolve()
    raise _RowError(f"unsupported image value of type {type(value).__name__}")


def load_hf_dataset(
    name_or_path: str | os.PathLike | DataArguments,
    image_column: str = "image",
    report_column: str | None = "report",
    split_column: str | None = None,
    findings_column: str | None = None,
    impression_column: str | None = None,
    id_column: str | None = None,
    study_id_column: str | None = None,
    subject_id_column: str | None = None,
    chexpert_column: str | None = None,
    splits: Sequence[str] | None = None,
    section: str = "both",
    clean: str | None = None,
    on_error: str = "raise",
    image_root: str | os.PathLike | None = None,
    image_cache_dir: str | os.PathLike | None = None,
    cache_dir: str | None = None,
    verify_images: bool = False,
    allow_outside_root: bool = False,
) -> datasets.DatasetDict:
    """
    Loads a report-generation dataset through the Hugging Face `datasets` library.

    Accepted sources:

    * a folder written by `save_to_disk` (read with `load_from_disk`);
    * an image folder with `metadata.jsonl` or `metadata.csv` (the `imagefolder` layout: the image
      column holds file names relative to the folder, or a list of them for multi-view studies);
    * a `.csv` / `.tsv` / `.json` / `.jsonl` / `.parquet` file whose image column holds paths
      relative to the file (or to `image_root`);
    * a Hub id (needs network access; with `HF_HUB_OFFLINE=1` only a cached copy works).

    Image columns may hold paths, lists of paths, `datasets.Image` values or PIL images. Decoded
    images (bytes or PIL) are written once to `image_cache_dir` (bytes as stored, PIL images as
    PNG, named by content hash) and the rows point there, so every loader yields paths.

    Args:
        name_or_path (`str`, `os.PathLike` or [`training.arguments.DataArguments`]): Hub id or local path, see above;
            or the data argument group of the `rrg` commands, whose fields then set the source, the image root, the
            image / report / split / id columns, the section, the cleaning and the bad-row and outside-root policies
            (the keywords below set only what the group does not hold).
        image_column (`str`, *optional*, defaults to `"image"`): Column with the image(s).
        report_column (`str`, *optional*, defaults to `"report"`):
            Column with the full report. Set to `None` and give `findings_column` and/or
            `impression_column` to build the report from section columns.
        split_column (`str`, *optional*):
            Column whose values (`train`/`val`/`validation`/`test`, ...) assign rows to splits;
            without it the dataset's own splits are used (a single table is `"train"`).
        findings_column (`str`, *optional*): Column with the FINDINGS section.
        impression_column (`str`, *optional*): Column with the IMPRESSION section.
        id_column (`str`, *optional*): Column with the example id (defaults to `"{split}_{row}"`).
        study_id_column (`str`, *optional*): Column with the study id.
        subject_id_column (`str`, *optional*): Column with the patient id.
        chexpert_column (`str`, *optional*): Column with CheXpert labels (dict or JSON string).
        splits (`Sequence[str]`, *optional*): Splits to keep; defaults to all.
        section (`str`, *optional*, defaults to `"both"`):
            With `report_column`, see [`select_section`]; with section columns, which of them to use.
        clean (`str`, *optional*): `"mimic"` or `"iu"` for [`clean_report`].
        on_error (`str`, *optional*, defaults to `"raise"`): `"raise"` or `"skip"` bad rows.
        image_root (`str` or `os.PathLike`, *optional*): Folder relative image paths start from.
        image_cache_dir (`str` or `os.PathLike`, *optional*):
            Where decoded images are written; defaults to `~/.cache/rrg/images`.
        cache_dir (`str`, *optional*): `datasets` cache folder.
        verify_images (`bool`, *optional*, defaults to `False`): Decode every image up front.
        allow_outside_root (`bool`, *optional*, defaults to `False`):
            Accept image paths that leave the image root (absolute, or `..` leading out); refused by default.

    A study id used twice in a split is a bad row (the error names both rows; skipping keeps the first).

    Returns:
        `datasets.DatasetDict` with the columns listed in the module docstring.
    """
    if isinstance(name_or_path, DataArguments):  # its fields, and the keywords it has no field for
        return load_hf_dataset(
            name_or_path.dataset_path, findings_column=findings_column, impression_column=impression_column,
            study_id_column=study_id_column, subject_id_column=subject_id_column, chexpert_column=chexpert_column,
            splits=splits, image_cache_dir=image_cache_dir, cache_dir=cache_dir, verify_images=verify_images,
            **name_or_path.loader_kwargs(),
        )
    if report_column is None and findings_column is None and impression_column is None:
        raise ValueError("Give report_column, or findings_column and/or impression_column, to say where the report text is.")
    if section not in REPORT_SECTIONS:
        raise ValueError(f"section must be one of {REPORT_SECTIONS}, got {section!r}.")
    if clean not in (None, "mimic", "iu"):
        raise ValueError(f"clean must be None, 'mimic' or 'iu', got {clean!r}.")
    source = str(name_or_path)
    dsd, base = _open_hf(source, cache_dir)
    if image_root is not None:
        base = Path(image_root)
    cache = Path(image_cache_dir) if image_cache_dir is not None else Path(os.environ.get("RRG_CACHE", Path.home() / ".cache" / "rrg")) / "images"

    wanted_columns = {
        "image_column": image_column,
        "report_column": report_column,
        "split_column": split_column,
        "findings_column": findings_column,
        "impression_column": impression_column,
        "id_column": id_column,
        "study_id_column": study_id_column,
        "subject_id_column": subject_id_column,
        "chexpert_column": chexpert_column,
    }
    for split_name, ds in dsd.items():
        for arg, col in wanted_columns.items():
            if col is not None and col not in ds.column_names:
                how = (f"name the right one with --{arg} (`{arg}:` in a recipe or config)" if arg in _COLUMN_FLAGS
                       else f"check {arg}=")
                raise ValueError(f"{source} (split {split_name!r}): column {col!r} not found; available columns: "
                                 f"{ds.column_names}; {how}.")
    if image_column in (c for ds in dsd.values() for c in ds.column_names):
        dsd = datasets.DatasetDict(
            {k: (ds.cast_column(image_column, datasets.Image(decode=False)) if isinstance(ds.features[image_column], datasets.Image) else ds) for k, ds in dsd.items()}
        )
        for k, ds in dsd.items():
            feat = ds.features[image_column]
            inner = getattr(feat, "feature", None)
            if isinstance(inner, datasets.Image):
                dsd[k] = ds.cast_column(image_column, datasets.Sequence(datasets.Image(decode=False)))

    problems = _Problems(on_error, source)
    rows_by_split: dict[str, list[dict]] = {}
    first_row: dict[tuple[str, str], str] = {}
    for split_name, ds in dsd.items():
        default_split = None if split_column else _normalise_split(split_name, source)
        for i, row in enumerate(tqdm(ds, desc=f"Reading {split_name}", disable=ds.num_rows < 5000)):
            where = f"split {split_name!r} row {i}"
            if split_column:
                value = row[split_column]
                if value is None or str(value).strip() == "":
                    problems.report(where, f"empty split value in column {split_column!r}")
                    continue
                split = _normalise_split(str(value), f"{source}, {where}, column {split_column!r}")
            else:
                split = default_split
            if splits is not None and split not in {_normalise_split(s, "splits argument") for s in splits}:
                continue
            ex_id = str(row[id_column]) if id_column else f"{split_name}_{i}"
            where = f"split {split_name!r} row {i} (id {ex_id!r})"
            if (split, ex_id) in first_row:
                problems.report(where, f"duplicate id {ex_id!r}: {first_row[split, ex_id]} has it too",
                                "give each study its own id")
                continue
            try:
                paths = [_materialise_image(v, base, cache, allow_outside_root) for v in _as_path_list(row[image_column])]
            except _RowError as err:
                problems.report(where, str(err), err.fix)
                continue
            if not paths:
                problems.report(where, f"no image in column {image_column!r}")
                continue
            if not _check_images(paths, verify_images, where, problems):
                continue
            if report_column is not None:
                raw = row[report_column]
                sec = section
            else:
                use_f = findings_column is not None and section in ("both", "findings", "full")
                use_i = impression_column is not None and section in ("both", "impression", "full")
                parts = []
                if use_f and row[findings_column]:
                    parts.append(f"FINDINGS: {row[findings_column]}")
                if use_i and row[impression_column]:
                    parts.append(f"IMPRESSION: {row[impression_column]}")
                raw, sec = "\n\n".join(parts), section
            report = _process_report(raw, sec, clean, where, problems)
            if report is None:
                continue
            first_row[split, ex_id] = f"split {split_name!r} row {i}"
            rows_by_split.setdefault(split, []).append(
                {
                    "id": ex_id,
                    "image_path": [str(p) for p in paths],
                    "report": report,
                    "study_id": None if not study_id_column or row[study_id_column] is None else str(row[study_id_column]),
                    "subject_id": None if not subject_id_column or row[subject_id_column] is None else str(row[subject_id_column]),
                    "chexpert": _normalise_chexpert(row[chexpert_column], f"{source}, {where}") if chexpert_column else None,
                }
            )
    if splits is not None:
        for s in splits:
            rows_by_split.setdefault(_normalise_split(s, "splits argument"), [])
    problems.log()
    return _build(rows_by_split, source)


# Folder names of the public chest X-ray data sets as their users lay them out (R2Gen's data/iu_xray, data/mimic_cxr).
KNOWN_DATASETS = {r"mimic[-_ ]?cxr": "MIMIC-CXR", r"iu[-_ ]?x[-_ ]?ray|open[-_ ]?i\b": "IU X-Ray"}


def describe_dataset(name: str) -> str:
    """
    A readable name for a data set the run or evaluation recorded: a Hub id as it is; for a local folder the
    `pretty_name` of its `dataset_info.json` (the synthetic benchmark writes one) or of its dataset card, else the
    public data set its path names (MIMIC-CXR, IU X-Ray), else the folder name.
    """
    path = Path(name)
    if not path.exists() and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return name  # a Hub id
    folder = path if path.is_dir() else path.parent
    info = folder / "dataset_info.json"
    if info.is_file():
        try:
            pretty = json.loads(info.read_text(encoding="utf-8")).get("pretty_name")
        except (ValueError, AttributeError):
            pretty = None
        if pretty:
            return str(pretty)
    card = folder / "README.md"
    if card.is_file():
        match = re.search(r"^pretty_name:\s*(.+)$", card.read_text(encoding="utf-8", errors="replace"), flags=re.M)
        if match:
            return match.group(1).strip().strip("\"'")
    for pattern, pretty in KNOWN_DATASETS.items():
        if re.search(pattern, str(path.resolve()), flags=re.I):
            return pretty
    return folder.name if path.is_file() else path.name
# --------------------------------------------------------------------------------------------
# One entry point for train, evaluate and analyze
# --------------------------------------------------------------------------------------------
def split_key(name: str) -> str:
    """The DatasetDict key of a split name as users write it ("val" -> "validation"), as the loaders normalise it."""
    return SPLIT_ALIASES.get(name.strip().lower(), name)


def load_splits(data_args: DataArguments, splits: Sequence[str]) -> datasets.DatasetDict:
    """
    Loads the named splits of any supported source: an `annotation.json` (or a folder holding one, like the synthetic
    benchmark) or anything [`load_hf_dataset`] reads (a `save_to_disk` folder, an image folder, a table, a Hub id).

    `rrg train`, `rrg evaluate` and `rrg analyze` all load data through this function from the same argument group,
    so the three accept the same sources, columns and flags.

    Args:
        data_args ([`training.arguments.DataArguments`]): The source and how its rows are read (`dataset_path`,
            `dataset_format`, `image_root`, the columns, `report_section`, `clean_reports`, `on_bad_rows`,
            `allow_outside_image_root`); columns apply to Hugging Face datasets only.
        splits (`Sequence[str]`): Splits to load (`"train"`, `"val"`/`"validation"`, `"test"`); each must exist.

    Returns:
        `datasets.DatasetDict` keyed by normalised split names (see [`split_key`]).

    Example:

    ```python
    >>> from training.arguments import DataArguments
    >>> from training.data.loaders import load_splits
    >>> test = load_splits(DataArguments(dataset_path="outputs/demo/data"), splits=["test"])["test"]  # doctest: +SKIP
    ```
    """
    if data_args.dataset_path is None:
        raise ValueError("No dataset given: set dataset_path (--dataset_path / --data, or `dataset_path:` in a recipe "
                         "or config) to an annotation.json, a dataset folder or a HF dataset.")
    source = str(data_args.dataset_path)
    path = Path(source)
    dataset_format = data_args.dataset_format
    if dataset_format not in ("auto", "annotation", "hf"):
        raise ValueError(f"dataset_format must be auto, annotation or hf; got {dataset_format!r}.")
    annotation = None
    if dataset_format in ("auto", "annotation"):
        if path.name == "annotation.json" or (dataset_format == "annotation" and path.is_file()):
            annotation = path
        elif path.is_dir() and (path / "annotation.json").is_file():
            annotation = path / "annotation.json"
        elif dataset_format == "annotation":
            raise FileNotFoundError(f"No annotation.json at {path}.")
    splits = [s for s in splits if s]
    if annotation is not None:
        kwargs = data_args.loader_kwargs()
        dataset = load_annotation_json(annotation, splits=splits, **{k: kwargs[k] for k in (
            "image_root", "clean", "on_error", "section", "allow_outside_root")})
    else:
        dataset = load_hf_dataset(data_args, splits=splits)
    for split in splits:
        if split_key(split) not in dataset:
            raise ValueError(f"Split {split!r} not found in {source}; it has {list(dataset)}.")
    return dataset


def load_rows(data_args, splits, chexpert_column: str | None = None) -> dict[str, list[dict]]:
    """Rows of `splits` (split -> list of row dicts) as [`load_splits`] reads them; `chexpert_column` names a
    Hugging Face dataset's labels column (an annotation.json carries its labels in each entry's `chexpert` key)."""
    if chexpert_column is not None:
        # DataArguments has no labels column (train and evaluate read none): a HF dataset names it here.
        path = Path(data_args.dataset_path)
        if data_args.dataset_format == "annotation" or path.name == "annotation.json" or \
                (path / "annotation.json").is_file():
            raise ValueError("chexpert_column is for Hugging Face datasets; an annotation.json carries its labels "
                             "in each entry's 'chexpert' key.")
        dataset = load_hf_dataset(data_args, chexpert_column=chexpert_column, splits=splits)
    else:
        dataset = load_splits(data_args, splits=splits)
    return {split: list(dataset[split_key(split)]) for split in splits}


def dataset_labels(rows: list[dict], labels_from: str, labeler, split: str) -> tuple[list[dict], str]:
    """
    Ground-truth CheXpert labels of `rows` (from [`load_rows`]) and where they came from: the dataset's own
    (`chexpert` of each row: the synthetic benchmark's ground truth, a HF dataset's `chexpert_column`) or `labeler`'s
    labels of the reference reports. `labels_from`: `"dataset"`, `"labeler"` or `"auto"` (the dataset's when every
    row has them). Shared by `rrg probe` and `rrg compare --labels_from dataset`.

    Returns:
        `(list[dict], str)`: one label dict per row, and `"dataset"` or `"labeler:<name>"`.
    """
    have = sum(row.get("chexpert") is not None for row in rows)
    if labels_from == "auto":
        labels_from = "dataset" if have == len(rows) else "labeler"
        if 0 < have < len(rows):
            logger.warning("Split %r has CheXpert labels for %d of %d studies only; labelling every reference report "
                           "with %s instead.", split, have, len(rows), labeler.name)
    if labels_from == "dataset":
        if have < len(rows):
            missing = [row["id"] for row in rows if row.get("chexpert") is None]
            raise ValueError(
                f"labels_from='dataset' but {len(missing)} studies of split {split!r} have no CheXpert labels (e.g. "
                f"{missing[:3]}); give a HF dataset its chexpert_column, or use labels_from='labeler'."
            )
        return [dict(row["chexpert"]) for row in rows], "dataset"
    if labels_from == "labeler":
        return labeler.label_batch([row["report"] for row in rows]), f"labeler:{labeler.name}"
    raise ValueError(f"labels_from must be auto, dataset or labeler; got {labels_from!r}.")
