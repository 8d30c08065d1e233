"""RadGraph-F1 on our transformers, as registry entries: RadEval's vendored `radgraph`, a local model folder, every
number named by model and level.

Registry entries: `radgraph` (the reward levels, for the `r2gen` protocol and LLaVA-Rad / MAIRA-2 rows) and
`rexrank/RadGraph` (entity, relation and combined on the original model, ReXrank's column); both read one set of
annotations per run: from `radgraph_model` (+ `radgraph_encoder`) or from saved `radgraph_annotations` with their
`radgraph_model_type`.

Annotation. The `radgraph` package (0.1.18, its newest release) calls `tokenizer.encode_plus`, which transformers 5
removed. RadEval 2.2.1 (`radeval` on PyPI) vendors a patched copy of it that runs on transformers 5
(`radeval/metrics/radgraph/_vendor/`); we call that copy's `RadGraph` directly (see [`vendored_radgraph`]: the one
place where RadEval's import defect is handled) and never `import radeval` (whose `__init__` calls `nltk.download`).

Model folder. The user's local copy of a released RadGraph model, i.e. the content of the `radgraph.tar.gz` /
`radgraph-xl.tar.gz` archives (`config.json`: the AllenNLP/DyGIE++ training config, `vocabulary/`: the label
namespaces `<model type>__ner_labels.txt` and `<model type>__relation_labels.txt`, `weights.th`: the state dict).
The model type is read from the vocabulary's namespace names. `config.json` names the BERT encoder by its Hub id;
weights.th holds its weights, so only its `config.json` and tokenizer files are needed: the local folder passed as
`encoder_dir` (`--radgraph-encoder`), or the Hub cache when it holds that id. Nothing is downloaded.

Levels (each metrics.json name says level and model: `RadGraph-F1-<level>/<model type>`):

- `simple`, `partial`, `complete`: the reward levels of the `radgraph` package's `compute_reward` (entities; entities
  + whether they have a relation, the "RG_ER" that LLaVA-Rad and MAIRA-2 report; entities with every relation). An
  empty hypothesis or reference scores 0, as in the package's `F1RadGraph`.
- `entity`, `relation`, `combined`: CXR-Report-Metric's RadGraph (`CXRMetric/radgraph_evaluate_model.py`): F1 of the
  sets of (tokens, label) entities and of (entity, entity, relation) triples, and their mean per report, which is
  ReXrank's RadGraph column and RadCliQ's input when the model is the original `radgraph` one.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import sys
import tempfile
import types
from pathlib import Path

from .registry import Inputs, Metric, MetricStats, mean_stats, register

__all__ = [
    "RADGRAPH_METRIC_NAMES",
    "REXRANK_RADGRAPH_NAMES",
    "RADGRAPH_MODEL_TYPES",
    "REWARD_LEVELS",
    "REXRANK_LEVELS",
    "RADGRAPH_LEVELS",
    "radgraph_metric_name",
    "vendored_radgraph",
    "check_radgraph_folder",
    "radgraph_model_type",
    "RadGraphAnnotator",
    "radgraph_pair_f1",
    "entity_relation_f1",
    "radgraph_f1_from_annotations",
]

logger = logging.getLogger(__name__)

# The model types of the released archives (StanfordAIMI/RRG_scorers); "radgraph" is the original RadGraph model
# (Jain et al., 2021; the one of CXR-Report-Metric, ReXrank and radgraph==0.0.9), "radgraph-xl" the default of
# radgraph 0.1.x and RadEval.
RADGRAPH_MODEL_TYPES = ("radgraph", "radgraph-xl", "modern-radgraph-xl", "echograph")
REWARD_LEVELS = ("simple", "partial", "complete")
REXRANK_LEVELS = ("entity", "relation", "combined")
RADGRAPH_LEVELS = REWARD_LEVELS + REXRANK_LEVELS
RADEVAL_VERSION = "2.2.1"
_VENDOR = "RadEval.metrics.radgraph._vendor"


def radgraph_metric_name(level: str, model_type: str) -> str:
    """The metrics.json name of one RadGraph number: `RadGraph-F1-<level>/<model type>`."""
    if level not in RADGRAPH_LEVELS:
        raise ValueError(f"Unknown RadGraph level {level!r}; choose one of {RADGRAPH_LEVELS}.")
    return f"RadGraph-F1-{level}/{model_type}"


# metrics.json names: the reward levels of every model type (`radgraph`), CXR-Report-Metric's on the original model
RADGRAPH_METRIC_NAMES = tuple(radgraph_metric_name(level, t) for t in RADGRAPH_MODEL_TYPES for level in REWARD_LEVELS)
REXRANK_RADGRAPH_NAMES = tuple(radgraph_metric_name(level, "radgraph") for level in REXRANK_LEVELS)


def vendored_radgraph(module: str = "core") -> types.ModuleType:
    """A module of RadEval's vendored radgraph (`core`, `rewards`, `allennlp.data`, ...), imported without RadEval.

    RadEval 2.2.1's vendored files import themselves as `RadEval.metrics.radgraph._vendor...` (capital R) while the
    package installs as `radeval`, so on a case-sensitive file system they fail to import (jbdel/RadEval issue 27).
    This is the one place that handles it: `RadEval` is registered in `sys.modules` as a bare package whose path is
    the installed `radeval` folder, so those imports resolve to the installed files, and `radeval/__init__.py` (which
    imports every metric and calls `nltk.download`) never runs.
    """
    if "RadEval" not in sys.modules:
        spec = importlib.util.find_spec("radeval")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                f"RadGraph annotation needs RadEval's vendored radgraph: `pip install --no-deps radeval=={RADEVAL_VERSION}` "
                "(its own dependencies pull a CUDA torch; the vendored radgraph needs only what the `radgraph` extra "
                "of rrg-cxr installs)."
            )
        alias = types.ModuleType("RadEval")
        alias.__path__ = list(spec.submodule_search_locations)
        alias.__package__ = "RadEval"
        sys.modules["RadEval"] = alias
    return importlib.import_module(f"{_VENDOR}.{module}")


def check_radgraph_folder(model_dir) -> Path:
    """The model folder, or a clear error naming what is missing."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"RadGraph model folder {model_dir} does not exist. RadGraph-F1 needs a released RadGraph model extracted "
            "locally (config.json, vocabulary/, weights.th; nothing is downloaded); pass it with --radgraph-model."
        )
    missing = [n for n in ("config.json", "vocabulary", "weights.th") if not (model_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"RadGraph model folder {model_dir} lacks {', '.join(missing)} (expected the "
                                "content of the released radgraph.tar.gz or radgraph-xl.tar.gz).")
    return model_dir


def radgraph_model_type(model_dir, model_type: str | None = None) -> str:
    """The model type of a released folder, read from its vocabulary (`<model type>__ner_labels.txt`): the vendored
    code tags every report with the model type and the model only has label heads for the types it was trained on."""
    vocabulary = check_radgraph_folder(model_dir) / "vocabulary"
    found = sorted(p.name[: -len("__ner_labels.txt")] for p in vocabulary.glob("*__ner_labels.txt"))
    found = [t for t in found if t in RADGRAPH_MODEL_TYPES]
    if model_type is not None:
        if model_type not in RADGRAPH_MODEL_TYPES:
            raise ValueError(f"Unknown RadGraph model type {model_type!r}; choose one of {RADGRAPH_MODEL_TYPES}.")
        if found and model_type not in found:
            raise ValueError(f"{vocabulary} holds the labels of model type {found}, not {model_type!r}.")
        return model_type
    if len(found) != 1:
        raise ValueError(
            f"Cannot tell the RadGraph model type of {model_dir}: {vocabulary} has ner label files for {found or 'none'} "
            f"(expected exactly one of {RADGRAPH_MODEL_TYPES}, e.g. radgraph__ner_labels.txt); pass the model type."
        )
    return found[0]


def _encoder_names(config: dict) -> list[tuple[dict, str]]:
    """The (dict, key) places of config.json that name the BERT encoder."""
    try:
        places = [config["dataset_reader"]["token_indexers"]["bert"], config["model"]["embedder"]["token_embedders"]["bert"]]
    except (KeyError, TypeError) as error:
        raise ValueError(f"RadGraph config.json lacks {error}: expected the AllenNLP config of a released RadGraph "
                         "model (dataset_reader.token_indexers.bert, model.embedder.token_embedders.bert).") from error
    return [(place, "model_name") for place in places]


def _resolve_encoder(name: str, encoder_dir, config_path: Path) -> str:
    if encoder_dir is not None:
        encoder_dir = Path(encoder_dir)
        missing = [n for n in ("config.json",) if not (encoder_dir / n).is_file()]
        if not encoder_dir.is_dir() or missing:
            raise FileNotFoundError(f"RadGraph encoder folder {encoder_dir} must hold the config.json and tokenizer "
                                    f"files of {name!r} (the model named in {config_path}).")
        return str(encoder_dir.resolve())
    if Path(name).is_dir():
        return str(Path(name).resolve())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=name, local_files_only=True)
    except Exception:  # not in the local Hub cache (or not a Hub id)
        pass
    raise FileNotFoundError(
        f"{config_path} names the encoder {name!r}, which is neither a local folder nor in the Hub cache (nothing is "
        "downloaded). Pass a local folder with its config.json and tokenizer files (its weights are in weights.th) "
        "with --radgraph-encoder DIR."
    )


class RadGraphAnnotator:
    """Annotate reports (entities and relations) with a local released RadGraph model, through RadEval's vendored
    radgraph. Each distinct text is annotated once per annotator.

    Args:
        model_dir: Local model folder (see [`check_radgraph_folder`]).
        model_type (`str`, *optional*): The folder's model type; read from its vocabulary when not given.
        encoder_dir (*optional*): Local folder with the config and tokenizer of the encoder `config.json` names.
        device (`str`): `"cpu"` or `"cuda[:i]"`.
        chunk_size (`int`): Reports per call of the vendored model (the progress bar's step).
    """

    def __init__(self, model_dir, model_type: str | None = None, encoder_dir=None, device: str = "cpu",
                 chunk_size: int = 64):
        self.model_dir = check_radgraph_folder(model_dir).resolve()
        self.model_type = radgraph_model_type(self.model_dir, model_type)
        core = vendored_radgraph("core")
        config_path = self.model_dir / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        places = _encoder_names(config)
        self.encoder = places[0][0][places[0][1]]
        resolved = _resolve_encoder(self.encoder, encoder_dir, config_path)
        for place, key in places:
            place[key] = resolved
        # The vendored RadGraph loads `<cache dir>/<model type>/` and downloads when it is missing or empty: give it
        # a temporary folder with the user's vocabulary and weights (links) and the config naming the local encoder.
        self._tmp = tempfile.TemporaryDirectory(prefix="rrg-radgraph-")
        folder = Path(self._tmp.name) / self.model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        for name in ("vocabulary", "weights.th"):
            os.symlink(self.model_dir / name, folder / name)
        cuda = -1 if device == "cpu" else int(device.partition(":")[2] or 0)
        with contextlib.redirect_stdout(io.StringIO()):  # the vendored code prints its device
            self.model = core.RadGraph(model_type=self.model_type, model_cache_dir=self._tmp.name, cuda=cuda)
        self.chunk_size = chunk_size
        self._cache: dict[str, dict] = {}

    def annotate(self, reports: list[str]) -> list[dict]:
        """One annotation (`{"text", "entities": {id: {"tokens", "label", "start_ix", "end_ix", "relations"}}}`)
        per report; an empty report is annotated as the text "None", as the vendored `RadGraph` does."""
        from tqdm.auto import tqdm

        todo = [r for r in dict.fromkeys(reports) if r not in self._cache]
        chunks = range(0, len(todo), self.chunk_size)
        for start in tqdm(chunks, desc="RadGraph annotation", unit="chunk", disable=len(chunks) < 2):
            chunk = todo[start : start + self.chunk_size]
            with contextlib.redirect_stdout(io.StringIO()):
                out = self.model(list(chunk))
            for i, text in enumerate(chunk):
                # the vendored postprocessing skips (and prints) a report it cannot convert: no entities
                self._cache[text] = out.get(str(i), {"text": text, "entities": {}})
        return [self._cache[r] for r in reports]


def radgraph_pair_f1(hypothesis: dict, reference: dict) -> dict[str, float]:
    """The reward levels of one hypothesis/reference pair of annotations (`{"entities": {...}}`), by the vendored
    `compute_reward` (the `radgraph` package's): `simple`, `partial`, `complete`."""
    compute_reward = vendored_radgraph("rewards").compute_reward
    simple, partial, complete = compute_reward(hypothesis, reference, "all")
    return {"simple": float(simple), "partial": float(partial), "complete": float(complete)}


def _set_f1(test: set, retrieved: set) -> float:
    # CXR-Report-Metric's compute_f1: 0 when either set is empty or nothing matches
    tp = len(test & retrieved)
    precision = tp / len(retrieved) if retrieved else 0.0
    recall = tp / len(test) if test else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _entities_relations(annotation: dict) -> tuple[set, set]:
    entities = annotation.get("entities", {})
    ents = {(e["tokens"], e["label"]) for e in entities.values()}
    rels = {((e["tokens"], e["label"]), (entities[t]["tokens"], entities[t]["label"]), kind)
            for e in entities.values() for kind, t in e["relations"] if t in entities}
    return ents, rels


def entity_relation_f1(hypothesis: dict, reference: dict) -> dict[str, float]:
    """CXR-Report-Metric's RadGraph scores of one pair: entity F1, relation F1 and their mean (`combined`)."""
    hyp_ents, hyp_rels = _entities_relations(hypothesis)
    ref_ents, ref_rels = _entities_relations(reference)
    entity, relation = _set_f1(ref_ents, hyp_ents), _set_f1(ref_rels, hyp_rels)
    return {"entity": entity, "relation": relation, "combined": (entity + relation) / 2}


def _check_annotation(annotation, index: int) -> None:
    if not isinstance(annotation, dict) or not isinstance(annotation.get("entities"), dict):
        raise ValueError(f"Report {index}: a RadGraph annotation is a dict with an 'entities' mapping, got "
                         f"{type(annotation).__name__}.")


def radgraph_f1_from_annotations(hypotheses: list[dict | None], references: list[dict | None], model_type: str,
                                 levels=RADGRAPH_LEVELS) -> dict[str, list[float]]:
    """Per-report RadGraph scores from annotations, under `RadGraph-F1-<level>/<model type>`.

    A missing annotation (`None`: an empty report) scores 0 at every reward level, as in the package's `F1RadGraph`,
    and counts as no entities for the CXR-Report-Metric levels.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"Got {len(hypotheses)} hypothesis annotations but {len(references)} reference annotations.")
    unknown = [level for level in levels if level not in RADGRAPH_LEVELS]
    if unknown:
        raise ValueError(f"Unknown RadGraph levels {unknown}; choose from {RADGRAPH_LEVELS}.")
    per_report = {radgraph_metric_name(level, model_type): [] for level in levels}
    empty = {"entities": {}}
    want_rewards = any(level in REWARD_LEVELS for level in levels)
    want_sets = any(level in REXRANK_LEVELS for level in levels)
    for i, (h, r) in enumerate(zip(hypotheses, references)):
        for annotation in (h, r):
            if annotation is not None:
                _check_annotation(annotation, i)
        scores = {}
        if want_rewards:
            scores.update(dict.fromkeys(REWARD_LEVELS, 0.0) if h is None or r is None else radgraph_pair_f1(h, r))
        if want_sets:
            scores.update(entity_relation_f1(h or empty, r or empty))
        for level in levels:
            per_report[radgraph_metric_name(level, model_type)].append(scores[level])
    return per_report


def _annotations(inputs: Inputs) -> tuple[str, list, list]:
    """`(model type, prediction graphs, reference graphs)` of the run, annotated once (shared by both entries)."""

    def make():
        settings = inputs.settings
        if settings.get("radgraph_model"):
            annotator = RadGraphAnnotator(settings["radgraph_model"], model_type=settings.get("radgraph_model_type"),
                                          encoder_dir=settings.get("radgraph_encoder"))
            graphs = annotator.annotate(inputs.predictions + inputs.references)
            n = len(inputs.predictions)
            inputs.record.update({"radgraph_model": str(annotator.model_dir), "radgraph_model_type": annotator.model_type,
                                  "radgraph_encoder": annotator.encoder})
            inputs.record["radgraph_settings"] = (
                f"annotated by RadEval {RADEVAL_VERSION}'s vendored radgraph (radgraph 0.1.18 patched for transformers "
                f"5), model type {annotator.model_type!r}; {_LEVELS_NOTE}")
            return annotator.model_type, graphs[:n], graphs[n:]
        hyps, refs = settings["radgraph_annotations"]
        model_type = settings.get("radgraph_model_type")
        if model_type not in RADGRAPH_MODEL_TYPES:
            raise ValueError(
                "Saved RadGraph annotations do not say which model made them: pass --radgraph-model-type (one of "
                f"{', '.join(RADGRAPH_MODEL_TYPES)}; 'radgraph' is the original model), got {model_type!r}.")
        inputs.record.update({"radgraph_model_type": model_type,
                              "radgraph_settings": f"from saved annotations of model type {model_type!r}; {_LEVELS_NOTE}"})
        return model_type, list(hyps), list(refs)

    return inputs.cached("radgraph_annotations", make)


_LEVELS_NOTE = ("simple/partial/complete: the radgraph package's compute_reward (partial = RG_ER; an empty report "
                "scores 0); entity/relation/combined: CXR-Report-Metric's set F1s and their mean")


def _radgraph(inputs: Inputs) -> list[MetricStats]:
    model_type, hyps, refs = _annotations(inputs)
    # F1RadGraph: a pair with an empty side scores 0 at every reward level
    keep = [bool(p) and bool(r) for p, r in zip(inputs.predictions, inputs.references)]
    scores = radgraph_f1_from_annotations([h if k else None for h, k in zip(hyps, keep)],
                                          [r if k else None for r, k in zip(refs, keep)], model_type, REWARD_LEVELS)
    return [mean_stats(name, values) for name, values in scores.items()]


def _radgraph_rexrank(inputs: Inputs) -> list[MetricStats]:
    model_type, hyps, refs = _annotations(inputs)
    if model_type != "radgraph":
        raise ValueError(
            f"ReXrank's RadGraph column is computed with the original RadGraph model (model type 'radgraph'); the "
            f"RadGraph model given is {model_type!r}. Pass the original model's folder to compare with ReXrank (the "
            "r2gen protocol's RadGraph-F1-<level>/<model type> rows take any model).")
    scores = radgraph_f1_from_annotations(hyps, refs, model_type, REXRANK_LEVELS)
    return [mean_stats(name, values) for name, values in scores.items()]


register(Metric("radgraph", "radgraph", _radgraph, RADGRAPH_METRIC_NAMES, needs=("raw text",),
                model=("radgraph_model", "radgraph_annotations"), level="mean",
                implementation=f"RadEval {RADEVAL_VERSION}'s vendored radgraph: annotation and compute_reward",
                description="RadGraph-F1-{simple,partial,complete}/<model type> (partial = RG_ER of LLaVA-Rad, MAIRA-2) "
                            "from a local model (--radgraph-model) or saved graphs"))
register(Metric("rexrank/RadGraph", "radgraph", _radgraph_rexrank, REXRANK_RADGRAPH_NAMES, needs=("raw text",),
                model=("radgraph_model", "radgraph_annotations"), level="mean",
                implementation=(f"RadEval {RADEVAL_VERSION}'s vendored radgraph (annotation); CXR-Report-Metric's "
                                "entity / relation F1 (CXRMetric/radgraph_evaluate_model.py)"),
                description="ReXrank's RadGraph: (entity F1 + relation F1) / 2 per report on the original model"))
