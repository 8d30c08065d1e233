"""Report text: R2Gen cleaning (so scores compare with published tables) and FINDINGS / IMPRESSION sections."""

from __future__ import annotations

import re

from .report_cleaning import clean_report_r2gen

__all__ = ["REPORT_SECTIONS", "clean_report", "split_sections", "select_section", "report_indication"]

REPORT_SECTIONS = ("both", "findings", "impression", "full")


def clean_report(text: str, style: str = "mimic") -> str:
    """
    Cleans a report the way R2Gen (Chen et al., 2020) does before tokenisation, so scores are
    comparable with published MIMIC-CXR / IU X-Ray results.

    R2Gen's own rules, token for token (see [`~training.data.report_cleaning.clean_report_r2gen`], which this
    calls: hyphens kept, `"1. "` removed anywhere, `2.`-`5.` list numbers only, IU keeps line breaks), with one
    declared difference: sentences left empty by the cleaning are dropped (R2Gen keeps them as stray `" ."`).

    Args:
        text (`str`): Raw report.
        style (`str`, *optional*, defaults to `"mimic"`): `"mimic"` or `"iu"`.

    Returns:
        `str`: the cleaned report, e.g. `"the lungs are clear . no pleural effusion ."`.

    Example:

    ```python
    >>> clean_report("FINDINGS: 1. Heart size is normal.  2. No effusion, ___ noted.")
    'findings heart size is normal . no effusion noted .'
    ```
    """
    return clean_report_r2gen(text, style=style)


_SECTION_HEADER_RE = re.compile(r"(?im)^\s*(findings|impression|conclusion)\s*:|\b(FINDINGS|IMPRESSION|CONCLUSION)\s*:")


def split_sections(report: str) -> dict[str, str]:
    """
    Splits a report into its FINDINGS and IMPRESSION sections.

    Headers are recognised at the start of a line (any case) or in upper case anywhere, e.g.
    `"FINDINGS: ... IMPRESSION: ..."`; `CONCLUSION` counts as impression. Text before the first
    header (indication, comparison, ...) is returned as `"preamble"`.

    Args:
        report (`str`): Report text.

    Returns:
        `dict[str, str]` with keys `"preamble"`, `"findings"`, `"impression"` (empty strings when absent).
    """
    out = {"preamble": "", "findings": "", "impression": ""}
    matches = list(_SECTION_HEADER_RE.finditer(report))
    if not matches:
        out["preamble"] = report.strip()
        return out
    out["preamble"] = report[: matches[0].start()].strip()
    for m, nxt in zip(matches, matches[1:] + [None]):
        name = (m.group(1) or m.group(2)).lower()
        name = "impression" if name == "conclusion" else name
        body = report[m.end() : nxt.start() if nxt else len(report)].strip()
        out[name] = (out[name] + " " + body).strip()
    return out


def select_section(report: str, section: str = "both") -> str:
    """
    Selects the part of a report to train on.

    Args:
        report (`str`): Report text.
        section (`str`, *optional*, defaults to `"both"`):
            `"findings"`, `"impression"`, `"both"` (findings then impression, headers dropped) or
            `"full"` (the text unchanged). A report without section headers is used whole for
            `"both"` and `"findings"` (R2Gen's MIMIC-CXR annotation stores findings only), and is
            empty for `"impression"`.

    Returns:
        `str`: the selected text (possibly empty).
    """
    if section not in REPORT_SECTIONS:
        raise ValueError(f"section must be one of {REPORT_SECTIONS}, got {section!r}.")
    if section == "full":
        return report.strip()
    parts = split_sections(report)
    if not parts["findings"] and not parts["impression"]:
        return parts["preamble"] if section in ("both", "findings") else ""
    if section == "both":
        return " ".join(p for p in (parts["findings"], parts["impression"]) if p)
    return parts[section]


_INDICATION_RE = re.compile(
    r"(?im)(?:^|\b)(indication|clinical history|history|reason for (?:exam|examination|study))\s*:\s*"
)
_HEADERS = r"findings|impression|conclusion|comparison|technique|examination|exam|history|indication|recommendations?"
# a known header at the start of a line (any case) or in upper case anywhere, as `_SECTION_HEADER_RE`
_NEXT_HEADER_RE = re.compile(rf"(?im:^\s*(?:{_HEADERS})\s*:)|\b(?:{_HEADERS.upper()})\s*:")


def report_indication(report: str) -> str:
    """
    The indication of a report: the text after an `INDICATION:` (or `HISTORY:`, `CLINICAL HISTORY:`, `REASON FOR
    EXAM:`) header, up to the next section header; empty when there is none.

    Args:
        report (`str`): Report text.

    Returns:
        `str`: the indication (stripped), e.g. `"Positive TB test"`.
    """
    match = _INDICATION_RE.search(report)
    if not match:
        return ""
    rest = report[match.end() :]
    while (repeated := _INDICATION_RE.match(rest)) is not None:  # "INDICATION: INDICATION: ..." (IU X-Ray)
        rest = rest[repeated.end() :]
    following = _NEXT_HEADER_RE.search(rest)
    return (rest[: following.start()] if following else rest).strip()
