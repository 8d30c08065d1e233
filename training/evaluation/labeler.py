"""CheXpert-style labelers that turn a radiology report into the 14 CheXpert observation labels.

Two labelers share one interface (`name`, `label`, `label_batch`):

- [`RuleBasedLabeler`]: our own offline rule-based labeler. Mention phrases for the 14 observations
  plus NegEx-style negation and uncertainty scopes; its phrase lists are data files in
  `training/evaluation/labeler_data/`. Needs nothing but the standard library.
- [`CheXbertLabeler`]: the CheXbert model (Smit et al., 2020) most papers use, loaded from a
  `chexbert.pth` the user supplies. Nothing is ever downloaded.

Labels follow the CheXpert labeler's CSV conventions (see `training.data.chexpert`): 1 positive,
0 negative, -1 uncertain, `None` not mentioned.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..data.chexpert import CHEXPERT_OBSERVATIONS, NEGATIVE, NOT_MENTIONED, POSITIVE, UNCERTAIN

__all__ = [
    "RuleBasedLabeler",
    "CheXbertLabeler",
    "get_labeler",
    "LABELER_DATA_DIR",
    "CHEXBERT_DOWNLOAD_HINT",
]

logger = logging.getLogger(__name__)

LABELER_DATA_DIR = Path(__file__).resolve().parent / "labeler_data"

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"

CHEXBERT_DOWNLOAD_HINT = (
    "CheXbert weights are not distributed with rrg and are never downloaded automatically. Obtain "
    "`chexbert.pth` from the CheXbert authors (https://github.com/stanfordmlgroup/CheXbert, section "
    "'Checkpoint download'; it requires accepting their terms) and pass its local path. The tokenizer "
    "must be a local copy of the `bert-base-uncased` tokenizer folder (e.g. one saved with "
    "`BertTokenizer.save_pretrained`)."
)

# A decimal point ("1.5 cm") does not end a sentence; ".", "?", "!", ";" and line breaks do.
_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|\.(?=\s|$)|[?!;\n]")


def _normalize(text: str) -> str:
    # Hyphens become spaces so "right-sided", "ground-glass" and "port-a-cath" need one spelling in
    # the phrase lists; whitespace is collapsed so phrases can be written with single spaces.
    text = text.lower().replace("-", " ")
    return " ".join(text.split())


def _compile_any(patterns: Sequence[str], source: str) -> re.Pattern:
    if not patterns:
        return re.compile(r"(?!x)x")  # matches nothing
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"Invalid regular expression {pattern!r} in {source}: {error}") from error
    # Longest alternatives first so that "pleural effusion" wins over "effusion" at the same start.
    ordered = sorted(patterns, key=len, reverse=True)
    # Word boundaries, except next to punctuation so that a cue like ", small" can still match.
    body = "|".join(f"(?:{p})" for p in ordered)
    return re.compile(r"(?:(?<!\w)|(?=[^\w\s]))(?:" + body + r")(?:(?!\w)|(?<=[^\w\s]))")


def _mask(text: str, pattern: re.Pattern) -> str:
    # Replace with spaces of the same length so that character offsets stay valid.
    return pattern.sub(lambda match: " " * len(match.group(0)), text)


class RuleBasedLabeler:
    """Offline rule-based CheXpert-style labeler (mention phrases + NegEx-style negation/uncertainty).

    For each sentence the labeler finds mentions of the 14 CheXpert observations, then classifies each
    mention by the nearest cue in its scope: an uncertainty cue ("may represent", "possible", "cannot be
    excluded") gives -1, a negation cue ("no", "without", "free of", "has resolved") gives 0, otherwise 1.
    A cue's scope ends at the sentence end or at a termination word ("but", "however", "there is");
    phrases that look like negations but are not ("no change", "not only") are masked first. Some
    phrases state normality themselves ("heart size is normal") and are negative mentions.

    Mentions of one observation are aggregated as in the CheXpert labeler: positive if any mention is
    positive, else uncertain if any is uncertain, else negative. "No Finding" is 1 when no observation
    other than Support Devices is positive or uncertain (this includes an empty report, as in the
    CheXpert labeler) and `None` otherwise; it is never 0.

    Args:
        data_dir (`str` or `os.PathLike`, *optional*):
            Folder with `mentions.json` and `cues.json`. Defaults to `training/evaluation/labeler_data/`.

    Example:

    ```python
    >>> from training.evaluation.labeler import RuleBasedLabeler
    >>> labeler = RuleBasedLabeler()
    >>> labels = labeler.label("Small left pleural effusion. No pneumothorax. Possible early pneumonia.")
    >>> labels["Pleural Effusion"], labels["Pneumothorax"], labels["Pneumonia"], labels["No Finding"]
    (1, 0, -1, None)
    ```
    """

    name = "rrg-rule-based-v1"

    def __init__(self, data_dir: str | os.PathLike | None = None):
        data_dir = Path(data_dir) if data_dir is not None else LABELER_DATA_DIR
        mentions_path, cues_path = data_dir / "mentions.json", data_dir / "cues.json"
        for path in (mentions_path, cues_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"Labeler phrase list {path} not found; pass `data_dir` pointing to a folder with "
                    "mentions.json and cues.json (the default is training/evaluation/labeler_data/)."
                )
        with open(mentions_path, encoding="utf-8") as f:
            mentions = json.load(f)
        with open(cues_path, encoding="utf-8") as f:
            cues = json.load(f)

        unknown = set(mentions) - set(CHEXPERT_OBSERVATIONS)
        if unknown:
            raise ValueError(
                f"{mentions_path} has entries {sorted(unknown)} that are not CheXpert observations; "
                f"use names from training.data.chexpert.CHEXPERT_OBSERVATIONS."
            )
        required_cues = (
            "pre_negation", "post_negation", "pre_uncertainty", "post_uncertainty",
            "pseudo_negation", "ignore", "pre_termination", "post_termination",
        )  # fmt: skip
        missing = [key for key in required_cues if key not in cues]
        if missing:
            raise ValueError(f"{cues_path} is missing the cue lists {missing}.")

        # (observation, compiled pattern, fixed label or None when the cues decide)
        self._mention_patterns: list[tuple[str, re.Pattern, int | None]] = []
        for observation, entry in mentions.items():
            if observation == NO_FINDING:
                continue
            self._mention_patterns.append(
                (observation, _compile_any(entry.get("mentions", []), f"{mentions_path}:{observation}"), None)
            )
            if entry.get("normal_mentions"):
                self._mention_patterns.append(
                    (observation, _compile_any(entry["normal_mentions"], f"{mentions_path}:{observation}"), NEGATIVE)
                )
        # "No Finding" phrases ("no acute cardiopulmonary process") are masked together with the
        # pseudo-negations and ignored phrases: their "no" must not negate a later mention.
        masked_phrases = cues["pseudo_negation"] + cues["ignore"] + mentions.get(NO_FINDING, {}).get("mentions", [])
        self._masked = _compile_any(masked_phrases, f"{cues_path} (pseudo_negation/ignore) and No Finding")
        self._pre_cues = [
            (UNCERTAIN, _compile_any(cues["pre_uncertainty"], f"{cues_path}:pre_uncertainty")),
            (NEGATIVE, _compile_any(cues["pre_negation"], f"{cues_path}:pre_negation")),
        ]
        self._post_cues = [
            (UNCERTAIN, _compile_any(cues["post_uncertainty"], f"{cues_path}:post_uncertainty")),
            (NEGATIVE, _compile_any(cues["post_negation"], f"{cues_path}:post_negation")),
        ]
        self._pre_termination = _compile_any(cues["pre_termination"], f"{cues_path}:pre_termination")
        # Punctuation cannot sit inside the word-boundary wrapper, so commas are handled separately.
        post_terms = [t for t in cues["post_termination"] if t != ","]
        self._post_termination = _compile_any(post_terms, f"{cues_path}:post_termination")
        self._post_comma = "," in cues["post_termination"]

    # ----------------------------------------------------------------------------------------------
    def label(self, report: str) -> dict[str, int | None]:
        """Label one report.

        Args:
            report (`str`): The report text (findings and/or impression).

        Returns:
            `dict[str, int | None]`: One entry per CheXpert observation, in CheXbert head order, with
            values 1 (positive), 0 (negative), -1 (uncertain) or `None` (not mentioned).
        """
        if not isinstance(report, str):
            raise TypeError(f"`report` must be a string, got {type(report).__name__}.")
        found: dict[str, list[int]] = {}
        for sentence in _SENTENCE_SPLIT.split(_normalize(report)):
            sentence = sentence.strip()
            if sentence:
                for observation, value in self._label_sentence(sentence):
                    found.setdefault(observation, []).append(value)

        labels: dict[str, int | None] = {}
        for observation in CHEXPERT_OBSERVATIONS:
            values = found.get(observation)
            if not values:
                labels[observation] = NOT_MENTIONED
            elif POSITIVE in values:
                labels[observation] = POSITIVE
            elif UNCERTAIN in values:
                labels[observation] = UNCERTAIN
            else:
                labels[observation] = NEGATIVE
        has_finding = any(
            labels[o] in (POSITIVE, UNCERTAIN) for o in CHEXPERT_OBSERVATIONS if o not in (NO_FINDING, SUPPORT_DEVICES)
        )
        labels[NO_FINDING] = NOT_MENTIONED if has_finding else POSITIVE
        return labels

    def label_batch(self, reports: Iterable[str]) -> list[dict[str, int | None]]:
        """Label several reports; see [`~RuleBasedLabeler.label`]."""
        if isinstance(reports, str):
            raise TypeError("`reports` must be a list of strings, not a single string; use `label` for one report.")
        return [self.label(report) for report in reports]

    # ----------------------------------------------------------------------------------------------
    def _find_mentions(self, text: str) -> list[tuple[int, int, str, int | None]]:
        candidates = []
        for observation, pattern, fixed in self._mention_patterns:
            for match in pattern.finditer(text):
                candidates.append((match.start(), match.end(), observation, fixed))
        # Keep the longest non-overlapping spans ("pleural thickening" beats "thickening"); the same
        # span may carry several observations ("hydropneumothorax").
        candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
        kept: list[tuple[int, int, str, int | None]] = []
        for start, end, observation, fixed in candidates:
            overlaps = [k for k in kept if start < k[1] and k[0] < end]
            if not overlaps or all((k[0], k[1]) == (start, end) for k in overlaps):
                kept.append((start, end, observation, fixed))
        return kept

    def _label_sentence(self, sentence: str) -> list[tuple[str, int]]:
        text = _mask(sentence, self._masked)
        results = []
        for start, end, observation, fixed in self._find_mentions(text):
            if fixed is not None:
                results.append((observation, fixed))
                continue
            pre_value, pre_pos = self._nearest_pre_cue(text[:start])
            post_value, post_pos = self._nearest_post_cue(text[end:])
            values = {v for v in (pre_value, post_value) if v is not None}
            if UNCERTAIN in values:
                results.append((observation, UNCERTAIN))
            elif NEGATIVE in values:
                results.append((observation, NEGATIVE))
            else:
                results.append((observation, POSITIVE))
        return results

    def _nearest_pre_cue(self, before: str) -> tuple[int | None, int]:
        # The scope of a cue before the mention starts after the last termination word.
        scope_start = 0
        for match in self._pre_termination.finditer(before):
            scope_start = match.end()
        window = before[scope_start:]
        best: tuple[int | None, int] = (None, -1)
        for value, pattern in self._pre_cues:
            for match in pattern.finditer(window):
                # The nearest cue wins: "possible effusion, no pneumothorax" negates the pneumothorax.
                if match.end() > best[1]:
                    best = (value, match.end())
        return best

    def _nearest_post_cue(self, after: str) -> tuple[int | None, int]:
        scope_end = len(after)
        match = self._post_termination.search(after)
        if match:
            scope_end = match.start()
        if self._post_comma and "," in after[:scope_end]:
            scope_end = after.index(",")
        window = after[:scope_end]
        best: tuple[int | None, int] = (None, len(after) + 1)
        for value, pattern in self._post_cues:
            match = pattern.search(window)
            if match and match.start() < best[1]:
                best = (value, match.start())
        return best


class CheXbertLabeler:
    """The CheXbert labeler (Smit et al., 2020) from a user-supplied `chexbert.pth`.

    The architecture is that of stanfordmlgroup/CheXbert's `bert_labeler`: a BERT encoder
    (bert-base-uncased geometry), dropout on the [CLS] hidden state, 13 linear heads with 4 classes
    (0 blank, 1 positive, 2 negative, 3 uncertain) and one 2-class head for "No Finding" (0 blank,
    1 positive). The checkpoint is a dict with a `model_state_dict` whose keys start with `module.`
    (the model was trained under `nn.DataParallel`). Reports are preprocessed as CheXbert does
    (strip, line breaks to spaces, whitespace collapsed) and truncated to 512 tokens.

    Nothing is downloaded: both the weights and the tokenizer folder must be local.

    Args:
        checkpoint_path (`str` or `os.PathLike`):
            Path to `chexbert.pth`.
        tokenizer_name_or_path (`str` or `os.PathLike`):
            Local folder with the `bert-base-uncased` tokenizer files.
        device (`str`, *optional*, defaults to `"cpu"`):
            Torch device to run on.
        batch_size (`int`, *optional*, defaults to 16):
            Reports per forward pass.

    Example:

    ```python
    >>> from training.evaluation.labeler import CheXbertLabeler
    >>> labeler = CheXbertLabeler("/data/models/chexbert.pth", "/data/models/bert-base-uncased")  # doctest: +SKIP
    >>> labeler.label("No pneumothorax.")["Pneumothorax"]  # doctest: +SKIP
    0
    ```
    """

    name = "chexbert"
    # Class index -> CheXpert label value, as in CheXbert's label conversion.
    CLASS_TO_LABEL = {0: NOT_MENTIONED, 1: POSITIVE, 2: NEGATIVE, 3: UNCERTAIN}

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        tokenizer_name_or_path: str | os.PathLike,
        device: str = "cpu",
        batch_size: int = 16,
    ):
        import torch
        from transformers import BertConfig, BertModel, BertTokenizer

        checkpoint_path = Path(checkpoint_path)
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"CheXbert checkpoint {checkpoint_path} does not exist. {CHEXBERT_DOWNLOAD_HINT}")
        tokenizer_path = Path(tokenizer_name_or_path)
        if not tokenizer_path.is_dir():
            raise FileNotFoundError(
                f"Tokenizer folder {tokenizer_path} does not exist; CheXbert needs a local bert-base-uncased "
                f"tokenizer folder (vocab.txt, tokenizer_config.json). {CHEXBERT_DOWNLOAD_HINT}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")

        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
            raise ValueError(
                f"{checkpoint_path} is not a CheXbert checkpoint: expected a dict with a `model_state_dict` "
                f"entry (as in the released chexbert.pth). {CHEXBERT_DOWNLOAD_HINT}"
            )
        state_dict = {
            (key[len("module.") :] if key.startswith("module.") else key): value
            for key, value in checkpoint["model_state_dict"].items()
        }
        config = self._config_from_state_dict(state_dict, BertConfig)
        # The number of attention heads cannot be read from the weights: take it from a config.json
        # beside the tokenizer when there is one (a saved bert-base-uncased folder has it), else use
        # bert-base's 64-dimensional heads (12 heads for the released chexbert.pth).
        config_file = tokenizer_path / "config.json"
        if config_file.is_file():
            with open(config_file, encoding="utf-8") as f:
                heads = json.load(f).get("num_attention_heads")
            if isinstance(heads, int) and heads > 0 and config.hidden_size % heads == 0:
                config.num_attention_heads = heads

        self.tokenizer = BertTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._torch = torch
        self.model = _build_chexbert_module(config, BertModel, torch)
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        # The released checkpoint predates the `position_ids` buffer of newer BertModel versions.
        missing = [key for key in missing if not key.endswith("position_ids")]
        unexpected = [key for key in unexpected if not key.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(
                f"{checkpoint_path} does not match the CheXbert architecture: missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]}. Expected the `model_state_dict` of CheXbert's bert_labeler."
            )
        self.model.to(self.device).eval()
        logger.info("Loaded CheXbert labeler from %s (hidden size %d).", checkpoint_path, config.hidden_size)

    @staticmethod
    def _config_from_state_dict(state_dict: dict, config_class):
        # Read the geometry from the weights so that the real checkpoint (bert-base) and tiny test
        # checkpoints load the same way, without fetching a config from the Hub.
        try:
            vocab_size, hidden_size = state_dict["bert.embeddings.word_embeddings.weight"].shape
            max_positions = state_dict["bert.embeddings.position_embeddings.weight"].shape[0]
            type_vocab = state_dict["bert.embeddings.token_type_embeddings.weight"].shape[0]
            intermediate = state_dict["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]
        except KeyError as error:
            raise ValueError(
                f"The checkpoint's model_state_dict lacks {error.args[0]!r}; it is not a CheXbert bert_labeler "
                "state dict (keys like `module.bert.embeddings.word_embeddings.weight`, "
                "`module.linear_heads.0.weight`)."
            ) from error
        layers = {int(key.split(".")[3]) for key in state_dict if key.startswith("bert.encoder.layer.")}
        num_layers = max(layers) + 1
        # bert-base uses 64-dimensional attention heads; tiny test models may not divide evenly.
        num_heads = max(1, hidden_size // 64) if hidden_size % 64 == 0 else _guess_heads(hidden_size)
        heads = sorted(
            int(key.split(".")[1]) for key in state_dict if key.startswith("linear_heads.") and key.endswith(".weight")
        )
        if heads != list(range(len(CHEXPERT_OBSERVATIONS))):
            raise ValueError(
                f"Expected {len(CHEXPERT_OBSERVATIONS)} linear heads (linear_heads.0 .. linear_heads.13) in the "
                f"CheXbert checkpoint, found {heads}."
            )
        return config_class(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_positions,
            type_vocab_size=type_vocab,
        )

    def _encode(self, report: str) -> list[int]:
        # CheXbert's preprocessing: strip, newlines to spaces, collapse whitespace; empty report -> [CLS][SEP].
        text = " ".join(report.replace("\n", " ").split())
        tokens = self.tokenizer.tokenize(text)
        if not tokens:
            return [self.tokenizer.cls_token_id, self.tokenizer.sep_token_id]
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        ids = [self.tokenizer.cls_token_id] + ids + [self.tokenizer.sep_token_id]
        max_len = min(512, self.model.bert.config.max_position_embeddings)
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [self.tokenizer.sep_token_id]
        return ids

    def label_batch(self, reports: Iterable[str]) -> list[dict[str, int | None]]:
        """Label several reports.

        Args:
            reports (`list[str]`): Report texts.

        Returns:
            `list[dict[str, int | None]]`: One label dict per report (1, 0, -1 or `None` per observation).
        """
        if isinstance(reports, str):
            raise TypeError("`reports` must be a list of strings, not a single string; use `label` for one report.")
        reports = list(reports)
        for report in reports:
            if not isinstance(report, str):
                raise TypeError(f"Every report must be a string, got {type(report).__name__}.")
        torch = self._torch
        results: list[dict[str, int | None]] = []
        for offset in range(0, len(reports), self.batch_size):
            encoded = [self._encode(r) for r in reports[offset : offset + self.batch_size]]
            length = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), length), self.tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
            for row, ids in enumerate(encoded):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
            with torch.no_grad():
                logits = self.model(input_ids.to(self.device), attention_mask.to(self.device))
            classes = torch.stack([head.argmax(dim=-1) for head in logits], dim=1).tolist()
            for row in classes:
                results.append(
                    {obs: self.CLASS_TO_LABEL[int(c)] for obs, c in zip(CHEXPERT_OBSERVATIONS, row, strict=True)}
                )
        return results

    def label(self, report: str) -> dict[str, int | None]:
        """Label one report; see [`~CheXbertLabeler.label_batch`]."""
        if not isinstance(report, str):
            raise TypeError(f"`report` must be a string, got {type(report).__name__}.")
        return self.label_batch([report])[0]


def _guess_heads(hidden_size: int) -> int:
    for heads in (4, 2, 1):
        if hidden_size % heads == 0:
            return heads
    return 1


def _build_chexbert_module(config, bert_model_class, torch):
    nn = torch.nn

    class _CheXbertModule(nn.Module):
        # Attribute names match CheXbert's bert_labeler so its state dict loads unchanged.
        def __init__(self):
            super().__init__()
            self.bert = bert_model_class(config)
            self.dropout = nn.Dropout(0.1)
            hidden = config.hidden_size
            self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in range(len(CHEXPERT_OBSERVATIONS) - 1)])
            self.linear_heads.append(nn.Linear(hidden, 2))

        def forward(self, input_ids, attention_mask):
            cls_hidden = self.bert(input_ids, attention_mask=attention_mask)[0][:, 0, :]
            cls_hidden = self.dropout(cls_hidden)
            return [head(cls_hidden) for head in self.linear_heads]

    return _CheXbertModule()


def get_labeler(name: str = "rule", **kwargs):
    """Build a labeler by name.

    Args:
        name (`str`, *optional*, defaults to `"rule"`):
            `"rule"` for [`RuleBasedLabeler`] (offline, default) or `"chexbert"` for [`CheXbertLabeler`].
        **kwargs:
            Passed to the labeler's constructor (`checkpoint_path`, `tokenizer_name_or_path`, `device` for
            CheXbert; `data_dir` for the rule-based labeler).

    Example:

    ```python
    >>> from training.evaluation.labeler import get_labeler
    >>> get_labeler("rule").name
    'rrg-rule-based-v1'
    ```
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string, got {type(name).__name__}.")
    key = name.lower().replace("_", "-")
    if key in ("rule", "rule-based", "rules", RuleBasedLabeler.name):
        return RuleBasedLabeler(**kwargs)
    if key == "chexbert":
        if "checkpoint_path" not in kwargs or "tokenizer_name_or_path" not in kwargs:
            raise ValueError(
                "The 'chexbert' labeler needs `checkpoint_path` (chexbert.pth) and `tokenizer_name_or_path` "
                f"(a local bert-base-uncased tokenizer folder). {CHEXBERT_DOWNLOAD_HINT}"
            )
        return CheXbertLabeler(**kwargs)
    raise ValueError(f"Unknown labeler {name!r}; choose 'rule' (offline, default) or 'chexbert'.")
