"""The argument groups every `rrg` command shares: where the data is, how reports are generated, how they are scored.

Each group is a plain dataclass, parsed by trl's `TrlParser` (a `transformers.HfArgumentParser`) the way trl's
`sft.py` parses `ScriptArguments` / `DatasetMixtureConfig` and transformers' examples `DataTrainingArguments`:

| group                  | commands                                | what it holds                                          |
|------------------------|-----------------------------------------|--------------------------------------------------------|
| [`DataArguments`]      | `rrg train`, `rrg evaluate`, `rrg analyze` | source, format, image root, columns, section, cleaning, bad-row and outside-root policies |
| [`GenerationArguments`] | `rrg evaluate`                         | decoding (beams, length, repetition), generation batch size |
| [`ScoringArguments`]   | `rrg evaluate`                          | labeler, tokenization, cleaning, METEOR, BERTScore, RadGraph, reference truncation, bootstrap |

Every field is a command-line flag under its own name (`--image_column`) and with dashes (`--image-column`), and a key
of the YAML file `--config` reads (command-line flags override it). A few fields keep the shorter flag the commands
had before these groups existed (`--data` for `dataset_path`, `--bootstrap` for `replicates`), as aliases.

The module imports nothing from `training/`, so every floor may use it: the loaders take a [`DataArguments`]
([`training.data.loaders.load_splits`]) and validate what they alone know (a report section, a column).

Which split a command reads is the command's own argument (`train_split` / `eval_split` of a training recipe,
`--split` of `rrg evaluate` and `rrg analyze`), not part of [`DataArguments`]: the same data description serves a
training run and the evaluation of its test split.

Example:

```python
>>> from training.arguments import DataArguments, GenerationArguments
>>> data = DataArguments(dataset_path="data/hf", image_column="image_path", report_column="findings")
>>> data.loader_kwargs()["image_column"]
'image_path'
>>> GenerationArguments(num_beams=3).to_generation_kwargs()
{'num_beams': 3, 'max_new_tokens': 128, 'repetition_penalty': 1.0, 'do_sample': False}
```
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = [
    "DATASET_FORMATS",
    "BAD_ROW_POLICIES",
    "REPORT_CLEANINGS",
    "DataArguments",
    "GenerationArguments",
    "ScoringArguments",
    "flag",
    "parse_command",
]

DATASET_FORMATS = ("auto", "annotation", "hf")
BAD_ROW_POLICIES = ("raise", "skip")
REPORT_CLEANINGS = ("mimic", "iu", "none")


def flag(name: str) -> str:
    """How a field is written on the command line of every command (`image_column` -> `--image_column`); messages
    that tell a user which setting to change name it this way (a recipe or config takes the bare field name)."""
    return f"--{name}"


def parse_command(command: str, dataclass_types: tuple, argv=None, description: str | None = None) -> tuple:
    """
    Parse an `rrg` command's flags and `--config FILE.yaml` into its argument groups, with trl's `TrlParser` (the
    config file sets defaults, flags override them; `env:` in the file sets environment variables).

    Args:
        command (`str`): The sub-command (`"train"`, `"evaluate"`, ...), for `--help` and messages.
        dataclass_types (`tuple`): The groups, e.g. `(EvaluateArguments, DataArguments, GenerationArguments,
            ScoringArguments)`; no two may share a field name.
        argv (`list[str]`, *optional*): The arguments after the command (default: `sys.argv[1:]`).
        description (`str`, *optional*): First line of `--help`.

    Returns:
        One instance per group, in order.

    Raises:
        `ValueError`: a flag or config key no group has (the message says where to list them).
    """
    from trl import TrlParser

    parser = TrlParser(dataclass_types, prog=f"rrg {command}", description=description)
    try:
        return tuple(parser.parse_args_and_config(args=argv))
    except ValueError as err:
        if "Unknown arguments" in str(err) or "not used by the HfArgumentParser" in str(err):
            raise ValueError(f"{err} Run `rrg {command} --help` for its options.") from err
        raise


def _check_choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} ({flag(name)}) must be one of {', '.join(map(str, choices))}; got {value!r}.")


@dataclass
class DataArguments:
    """
    Where a command reads its studies from, and how rows become `(id, image_path, report)` (see
    [`training.data.loaders.load_splits`], which takes this group).

    Args:
        dataset_path (`str`): An R2Gen `annotation.json`, a folder holding one (the synthetic benchmark), or a Hugging
            Face dataset (a `save_to_disk` folder, an image folder with metadata, a CSV/JSON/parquet file, a Hub id).
        dataset_format (`str`, defaults to `"auto"`): `"annotation"`, `"hf"`, or `"auto"` (an `annotation.json`
            when there is one).
        image_root (`str`, *optional*): Folder relative image paths start from (default: next to the data).
        image_column, report_column, split_column, id_column (`str`): Hugging Face datasets: the column with the
            image path(s) (a path or a list of paths per row), the report, the split name of each row (without it the
            dataset's own splits are used) and the study id (default `"{split}_{row}"`). Ignored for annotation.json.
        report_section (`str`, defaults to `"both"`): `findings`, `impression`, `both` or `full` (see
            [`training.data.reports.select_section`]).
        clean_reports (`str`, *optional*): R2Gen cleaning of the loaded reports (`mimic`, `iu`; `none` or unset:
            as written). Scoring cleans its own copy ([`ScoringArguments.clean`]).
        on_bad_rows (`str`, defaults to `"raise"`): Rows with a missing/corrupt image, an empty report, a duplicate
            id or an image path outside the image root: `raise` names the first, `skip` skips and counts them.
        allow_outside_image_root (`bool`, defaults to `False`): Accept image paths that leave the image root.
    """

    dataset_path: str | None = field(
        default=None,
        metadata={"aliases": ["--data"],
                  "help": "annotation.json (R2Gen layout), a folder holding one (e.g. the synthetic benchmark), or a "
                          "Hugging Face dataset (hub id, save_to_disk folder, imagefolder, CSV/JSON file)."},
    )
    dataset_format: str = field(default="auto", metadata={"help": "auto | annotation | hf"})
    image_root: str | None = field(default=None, metadata={"help": "Folder the image paths are relative to."})
    image_column: str = field(default="image", metadata={"help": "HF datasets: image path (or list of paths) column."})
    report_column: str = field(default="report", metadata={"help": "HF datasets: report column."})
    split_column: str | None = field(default=None, metadata={"help": "HF datasets: column holding the split name."})
    id_column: str | None = field(
        default=None, metadata={"help": "HF datasets: study id column (default: '{split}_{row}')."}
    )
    report_section: str = field(default="both", metadata={"help": "findings | impression | both | full"})
    clean_reports: str | None = field(
        default=None, metadata={"help": "R2Gen-style cleaning of the loaded reports: mimic | iu | none"}
    )
    on_bad_rows: str = field(
        default="raise",
        metadata={"help": "raise | skip: rows with a missing/corrupt image, an empty report, a duplicate id or an image "
                          "path outside image_root (skipped rows are counted in a warning)."},
    )
    allow_outside_image_root: bool = field(
        default=False, metadata={"help": "Accept image paths that leave the image root (absolute, or '..')."}
    )

    def __post_init__(self):
        if self.dataset_path is not None:
            self.dataset_path = str(self.dataset_path)
        if self.image_root is not None:
            self.image_root = str(self.image_root)
        if self.clean_reports == "none":
            self.clean_reports = None
        _check_choice("DataArguments", "dataset_format", self.dataset_format, DATASET_FORMATS)
        _check_choice("DataArguments", "on_bad_rows", self.on_bad_rows, BAD_ROW_POLICIES)
        _check_choice("DataArguments", "clean_reports", self.clean_reports, (None, "mimic", "iu"))

    def loader_kwargs(self) -> dict:
        """The keyword arguments of [`training.data.loaders.load_hf_dataset`] this group sets (annotation files
        read the subset that applies to them)."""
        return {"image_root": self.image_root, "image_column": self.image_column, "report_column": self.report_column,
                "split_column": self.split_column, "id_column": self.id_column, "section": self.report_section,
                "clean": self.clean_reports, "on_error": self.on_bad_rows,
                "allow_outside_root": self.allow_outside_image_root}


@dataclass
class GenerationArguments:
    """
    How reports are generated (`model.generate` keyword arguments, see [`to_generation_kwargs`]).

    Args:
        num_beams (`int`, defaults to 1): 1 is greedy decoding.
        max_new_tokens (`int`, defaults to 128): Report length limit.
        min_new_tokens (`int`, *optional*): Generate at least this many tokens (the EOS is held back until then).
        repetition_penalty (`float`, defaults to 1.0): 1.0 is none.
        no_repeat_ngram_size (`int`, defaults to 0): Forbid repeating n-grams of this size (0: off).
        batch_size (`int`, defaults to 8): Studies per `generate` call.
        do_sample, temperature, top_p: Sampling instead of search (for stage-3 rollouts; evaluation is
            deterministic by default).
    """

    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: greedy)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Report length limit in tokens."})
    min_new_tokens: int | None = field(default=None, metadata={"help": "Generate at least this many tokens."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty (1.0: none)."})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "Forbid repeated n-grams of this size (0: off)."})
    batch_size: int = field(default=8, metadata={"help": "Studies per generate call."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy / beam search."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with do_sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (with do_sample)."})

    def __post_init__(self):
        for name in ("num_beams", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GenerationArguments.{name} ({flag(name)}) must be >= 1; got {getattr(self, name)}.")

    def to_generation_kwargs(self) -> dict:
        """The `generate` keyword arguments: unset options (n-gram blocking, sampling parameters without sampling)
        are left out, so the model's generation config keeps them."""
        out = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
               "repetition_penalty": self.repetition_penalty, "do_sample": self.do_sample}
        if self.min_new_tokens is not None:
            out["min_new_tokens"] = self.min_new_tokens
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        return out


# ScoringArguments fields that configure something other than `score_reports` (the labeler, files read first).
_NOT_SCORER_KWARGS = ("labeler", "radgraph_annotations")


@dataclass
class ScoringArguments:
    """
    How generated reports are scored ([`training.evaluation.scorecard.score_reports`]; see [`score_kwargs`]).

    Args:
        labeler (`str`, defaults to `"rule"`): Clinical-efficacy labeler, `rule` (offline) or `chexbert`.
        chexbert_checkpoint, chexbert_tokenizer (`str`, *optional*): Local `chexbert.pth` and bert-base-uncased
            tokenizer folder for `labeler: chexbert` and ReXrank's SembScore (never downloaded).
        tokenization (`str`, defaults to `"r2gen"`): `r2gen` (cleaned text as given) or `ptb` (pycocoevalcap's).
        clean (`str`, defaults to `"mimic"`): R2Gen cleaning of both sides before the NLG metrics (`mimic`, `iu`,
            `none`); clinical efficacy reads the raw text.
        meteor (`bool`, defaults to `True`): Compute METEOR (needs java); `--no_meteor` skips it.
        bertscore_model (`str`, *optional*), bertscore_layer (`int`, *optional*): Local encoder folder (and layer)
            for BERTScore.
        radgraph_model (`str`, *optional*): Local RadGraph model folder for RadGraph-F1.
        radgraph_encoder (`str`, *optional*): Local folder with the config and tokenizer of the encoder the RadGraph
            model's config.json names (when that id is not in the Hub cache).
        radgraph_model_type (`str`, *optional*): RadGraph model type (`radgraph` = the original model, `radgraph-xl`,
            ...); read from the model folder, needed with saved annotations.
        radgraph_annotations (`str`, *optional*): JSON of saved RadGraph graphs, `{study id: {"prediction": graph,
            "reference": graph}}`, instead of a model.
        green_model (`str`, *optional*): Local folder of a released GREEN judge (a causal LM with its tokenizer, e.g.
            StanfordAIMI/GREEN-RadLlama2-7b) for ReXrank's GREEN column (never downloaded).
        ratescore_ner_model, ratescore_embedding_model (`str`, *optional*): Local RaTE-NER-Deberta and BioLORD-2023-C
            folders for ReXrank's RaTEScore column (never downloaded).
        reference_max_tokens (`int`, *optional*): R2Gen protocol: cut references to this many tokens.
        replicates (`int`, defaults to 1000): Bootstrap replicates of the 95% intervals (0: none).
        protocol (`str`, defaults to `"r2gen"`): Scoring protocol(s) of the metric registry
            (`training/evaluation/metrics/protocols.py`): `r2gen` (R2Gen's tables), `rexrank` (ReXrank's columns,
            named `rexrank/...`), or several, comma-separated (`r2gen,rexrank`). Checked before generation: a protocol
            entry whose model folder is not given stops the run naming the flag.
    """

    labeler: str = field(default="rule", metadata={"help": "rule | chexbert"})
    chexbert_checkpoint: str | None = field(default=None, metadata={"help": "Path of chexbert.pth (never downloaded)."})
    chexbert_tokenizer: str | None = field(default=None, metadata={"help": "Local bert-base-uncased tokenizer folder."})
    tokenization: str = field(default="r2gen", metadata={"help": "r2gen | ptb"})
    clean: str | None = field(
        default="mimic",
        metadata={"help": "mimic | iu | none: R2Gen-style cleaning of both sides before the NLG metrics (clinical "
                          "efficacy uses raw text)."},
    )
    meteor: bool = field(default=True, metadata={"help": "Compute METEOR (needs java); --no_meteor skips it."})
    bertscore_model: str | None = field(
        default=None, metadata={"help": "Local encoder checkpoint folder for BERTScore (nothing is downloaded)."}
    )
    bertscore_layer: int | None = field(default=None, metadata={"help": "Hidden layer for BERTScore (default: last)."})
    radgraph_model: str | None = field(
        default=None, metadata={"help": "Local RadGraph model folder (config.json, vocabulary/, weights.th)."}
    )
    radgraph_encoder: str | None = field(
        default=None, metadata={"help": "Local config + tokenizer folder of the encoder the RadGraph config names."}
    )
    radgraph_model_type: str | None = field(
        default=None, metadata={"help": "radgraph (the original model) | radgraph-xl | ... (needed with saved graphs)."}
    )
    radgraph_annotations: str | None = field(
        default=None,
        metadata={"help": "RadGraph annotations saved elsewhere: {study id: {'prediction': graph, 'reference': graph}}."},
    )
    green_model: str | None = field(
        default=None, metadata={"help": "Local GREEN judge folder (causal LM + tokenizer) for rexrank/GREEN."}
    )
    ratescore_ner_model: str | None = field(
        default=None, metadata={"help": "Local RaTE-NER-Deberta folder (token classification) for rexrank/RaTEScore."}
    )
    ratescore_embedding_model: str | None = field(
        default=None, metadata={"help": "Local BioLORD-2023-C folder (entity encoder) for rexrank/RaTEScore."}
    )
    reference_max_tokens: int | None = field(
        default=None,
        metadata={"help": "R2Gen protocol: cut references to max sequence length N before scoring (default: untruncated)."},
    )
    replicates: int = field(
        default=1000, metadata={"aliases": ["--bootstrap"], "help": "Bootstrap replicates for the 95%% intervals (0: none)."}
    )
    protocol: str = field(
        default="r2gen",
        metadata={"help": "Scoring protocol(s) of the metric registry: r2gen | rexrank | r2gen,rexrank (names in "
                          "metrics.json state the protocol, e.g. rexrank/BLEU-2)."},
    )

    def __post_init__(self):
        if self.clean == "none":
            self.clean = None
        _check_choice("ScoringArguments", "labeler", self.labeler, ("rule", "chexbert"))
        _check_choice("ScoringArguments", "tokenization", self.tokenization, ("r2gen", "ptb"))
        _check_choice("ScoringArguments", "clean", self.clean, (None, "mimic", "iu"))
        if not isinstance(self.protocol, str) or not self.protocol.strip():
            raise ValueError(f"ScoringArguments.protocol (--protocol) must name a scoring protocol such as 'r2gen' or "
                             f"'r2gen,rexrank'; got {self.protocol!r}.")
        if self.replicates < 0:
            raise ValueError(f"ScoringArguments.replicates (--bootstrap) must be >= 0; got {self.replicates}.")

    def labeler_kwargs(self) -> dict:
        """Keyword arguments of [`training.evaluation.labeler.get_labeler`] for [`labeler`]."""
        if self.labeler == "chexbert":
            return {"checkpoint_path": self.chexbert_checkpoint, "tokenizer_name_or_path": self.chexbert_tokenizer}
        return {}

    def score_kwargs(self) -> dict:
        """Every field `score_reports` takes, by its own name (the labeler and annotation file are built by the
        caller: they are objects, not settings)."""
        return {k: v for k, v in asdict(self).items() if k not in _NOT_SCORER_KWARGS}
