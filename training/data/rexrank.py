"""ReXrank's test JSON (Zhang et al., 2024; the MIMIC-CXR / IU X-Ray / CheXpert Plus / ReXGradient test files) as rrg rows.

A ReXrank test file maps a study id to its entry:

```json
{"s50414267": {"image_path": ["p10/p10000032/s50414267/02aa804e.jpg", "p10/.../174413ec.jpg"],
               "frontal_lateral": ["Frontal", "Lateral"], "key_image_path": "p10/.../02aa804e.jpg",
               "context": "Age:50-60. Gender:F. Indication: ___ with cough.",
               "findings": "...", "impression": "...", "report": "FINDINGS: ... IMPRESSION: ..."}}
```

[`load_rexrank_json`] turns it into rows `{"id", "image_path": [every view], "indication", "age", "sex", "report",
"entry"}`: all views (not only the key image), the `context` string parsed into indication, age and sex, and the
reference of the chosen track: `findings` or `findings+impression` (ReXrank's two leaderboards). The reference
comes from the entry's `findings` / `impression` fields when present, else from the sections of its `report`
(`training.data.reports.split_sections`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .reports import split_sections

__all__ = ["REXRANK_TRACKS", "parse_context", "rexrank_reference", "load_rexrank_json"]

REXRANK_TRACKS = ("findings", "findings+impression")
_CONTEXT_FIELD = re.compile(r"(?i)\b(age|gender|sex|indication)\s*:")


def parse_context(context: str | None) -> dict[str, str | None]:
    """`{"age", "sex", "indication"}` from ReXrank's `context` (`"Age:50-60. Gender:F. Indication: ..."`); a field
    that is absent, `N/A` or only `___` (MIMIC's de-identification) is `None`."""
    out: dict[str, str | None] = {"age": None, "sex": None, "indication": None}
    if not context:
        return out
    matches = list(_CONTEXT_FIELD.finditer(context))
    for match, following in zip(matches, matches[1:] + [None]):
        key = match.group(1).lower()
        key = "sex" if key == "gender" else key
        value = context[match.end() : following.start() if following else len(context)].strip()
        if key != "indication":
            value = value.rstrip(".").strip()
        if value and value.upper() not in ("N/A", "NA") and value.strip("_ .") != "":
            out[key] = value
    return out


def rexrank_reference(entry: dict, track: str = "findings") -> str:
    """The reference report of a ReXrank entry for `track` (`"findings"` or `"findings+impression"`)."""
    if track not in REXRANK_TRACKS:
        raise ValueError(f"ReXrank track must be one of {REXRANK_TRACKS}, got {track!r}.")
    findings, impression = entry.get("findings"), entry.get("impression")
    if findings is None and impression is None and entry.get("report"):
        sections = split_sections(entry["report"])
        findings, impression = sections["findings"] or None, sections["impression"] or None
    findings, impression = (findings or "").strip(), (impression or "").strip()
    if track == "findings":
        return findings
    return " ".join(part for part in (findings, impression) if part)


def load_rexrank_json(path, track: str = "findings", img_root_dir=None, skip_empty: bool = True) -> list[dict]:
    """Rows of a ReXrank test JSON, in file order.

    Args:
        path: The test JSON (`{study id: entry}`).
        track (`str`): `"findings"` or `"findings+impression"`: which reference each row carries.
        img_root_dir (*optional*): Joined before relative image paths (ReXrank's `--img_root_dir`).
        skip_empty (`bool`): Leave out studies whose reference is empty for this track (ReXrank scores only studies
            that have the section); `False` keeps them with an empty `report`.

    Returns:
        `list[dict]`: `id`, `image_path` (every view, key image first), `indication`, `age`, `sex`, `report` and
        `entry` (the study's original dict).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ReXrank test file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a ReXrank test file maps study ids to entries, got a {type(data).__name__}.")
    rows = []
    for study_id, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: study {study_id!r} is a {type(entry).__name__}, expected a dict.")
        views = entry.get("image_path")
        views = [views] if isinstance(views, str) else list(views or [])
        key = entry.get("key_image_path")
        if key:
            views = [key] + [v for v in views if v != key]
        if not views:
            raise ValueError(f"{path}: study {study_id!r} has no image_path (expected the list of its views).")
        if img_root_dir is not None:
            views = [str(Path(img_root_dir) / v) if not Path(v).is_absolute() else v for v in views]
        reference = rexrank_reference(entry, track)
        if skip_empty and not reference:
            continue
        rows.append({"id": str(study_id), "image_path": views, **parse_context(entry.get("context")),
                     "report": reference, "entry": entry})
    return rows
