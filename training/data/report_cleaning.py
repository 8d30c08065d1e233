"""R2Gen's report cleaning, rule for rule: what the published MIMIC-CXR / IU X-Ray tables scored.

R2Gen (Chen et al., 2020, `modules/tokenizers.py`) cleans every report before building its vocabulary and
before scoring; R2GenCMN, R2GenGPT and most later papers reuse it. Our BLEU / METEOR / ROUGE-L / CIDEr are only
comparable with theirs when the text is cleaned the same way, so this module reproduces its rules exactly
(tested token for token against R2Gen's own functions on a large set of realistic reports, see
`tests/data/r2gen_cleaning.jsonl.gz`). The rules, in order:

1. `style="mimic"` only: line breaks (`\\n`) become spaces; then runs of `_` are halved 7 times and runs of
   spaces 6 times (R2Gen chains `.replace("__", "_")`, which halves a run each time, so a run of `n` becomes
   `ceil(n / 2**k)`: MIMIC's `___` placeholders become one `_`). IU X-Ray keeps line breaks as they are.
2. Runs of `.` are halved 8 times (`mimic`) or 3 times (`iu`): `...` becomes `.`.
3. List numbering, as literal replacements applied one after another over the whole text: `"1. "` is removed
   *anywhere* (so `"11. "` leaves `"1"` and `"T1. "` leaves `"T"`), then `". 2. "` .. `". 5. "` and then
   `" 2. "` .. `" 5. "` become `". "`. Numbers from 6 on are left alone, as in R2Gen.
4. Strip, lower-case, split into sentences at `". "`.
5. In each sentence, remove `"`, `/`, `\\` and `'`, then every character of R2Gen's class
   `[.,?;*!%^&_+():-\\[\\]{}]`. In that class the `-` is a *range* from `:` to `[` (`: ; < = > ? @`, `A`-`Z`,
   `[`), not a hyphen: hyphens are kept (`right-sided`, `t-spine`) while `<`, `=`, `>` and `@` go.
6. Sentences are joined with `" . "` and the report ends with `" ."`.

One declared difference: R2Gen keeps sentences that are empty after cleaning (its test `sent != []` compares a
string with a list and is always true), which adds stray `.` tokens (`"a . . b ."`); we drop them. Whitespace in
the output is normalised to single spaces; R2Gen's scored text is re-joined from `split()` tokens, so this
changes no token.
"""

from __future__ import annotations

import re

__all__ = ["CLEANING_STYLES", "clean_report_r2gen"]

CLEANING_STYLES = ("mimic", "iu")

# R2Gen's character class with its `:`..`[` range written out; the upper-case letters inside the range are
# already gone by then (the sentence is lower-cased first) but are listed for fidelity.
_SENTENCE_REMOVE = re.compile(r"[!%&()*+,.:;<=>?@A-Z\[\]^_{}]")
_SENTENCE_DROP = str.maketrans("", "", "\"/\\'")

# (character, number of halving passes) per style, applied in this order.
_RUN_HALVING = {
    "mimic": (("_", 7), (" ", 6), (".", 8)),
    "iu": ((".", 3),),
}

# Literal replacements for list numbering, applied one after another (order matters: `". 2. 3. "` needs the
# second rule to see the output of the first).
_NUMBERING = (
    [("1. ", "")]
    + [(f". {n}. ", ". ") for n in range(2, 6)]
    + [(f" {n}. ", ". ") for n in range(2, 6)]
)


def _halve_runs(text: str, char: str, passes: int) -> str:
    """What `passes` chained `replace(char * 2, char)` calls do: a run of n becomes ceil(n / 2**passes)."""
    divisor = 2**passes
    return re.sub(re.escape(char) + "{2,}", lambda m: char * -(-len(m.group()) // divisor), text)


def clean_report_r2gen(text: str, style: str = "mimic") -> str:
    """Clean a report exactly as R2Gen does before scoring (see the module docstring for every rule).

    Args:
        text (`str`): Raw report.
        style (`str`, *optional*, defaults to `"mimic"`): `"mimic"` (R2Gen's `clean_report_mimic_cxr`) or `"iu"`
            (`clean_report_iu_xray`).

    Returns:
        `str`: The cleaned report, sentences joined with `" . "` and ending in `" ."`; `""` when nothing is left.

    Example:

    ```python
    >>> clean_report_r2gen("FINDINGS: 1. Right-sided PICC, tip at ___.  2. No effusion.")
    'findings right-sided picc tip at . no effusion .'
    ```
    """
    if style not in CLEANING_STYLES:
        raise ValueError(f"style must be one of {CLEANING_STYLES}, got {style!r}.")
    if not isinstance(text, str):
        raise TypeError(f"clean_report_r2gen expects a string, got {type(text).__name__}.")
    if style == "mimic":
        text = text.replace("\n", " ")
    for char, passes in _RUN_HALVING[style]:
        text = _halve_runs(text, char, passes)
    for old, new in _NUMBERING:
        text = text.replace(old, new)
    sentences = []
    for sentence in text.strip().lower().split(". "):
        sentence = sentence.translate(_SENTENCE_DROP).strip().lower()
        tokens = _SENTENCE_REMOVE.sub("", sentence).split()
        if tokens:  # the declared difference: R2Gen keeps empty sentences
            sentences.append(" ".join(tokens))
    return " . ".join(sentences) + " ." if sentences else ""
