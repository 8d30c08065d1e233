"""RadGraph on transformers 5 through RadEval's vendored radgraph: a tiny model in the released format, real IU X-Ray
report text, and equality with RadEval's own functions (its `RadGraph` / `F1RadGraph`, its RadCliQ's entity and
relation F1) on the same inputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import iu_findings_or, one_torch_thread_fixture, radeval_module

pytest.importorskip("radeval", reason="RadGraph annotation needs `pip install --no-deps radeval==2.2.1`")

from training.evaluation.metrics.radgraph import (  # noqa: E402
    RADGRAPH_LEVELS,
    RadGraphAnnotator,
    entity_relation_f1,
    radgraph_f1_from_annotations,
    radgraph_metric_name,
    radgraph_model_type,
    vendored_radgraph,
)
from training.evaluation.metrics.registry import Inputs, compute_metric  # noqa: E402
from training.sandbox.tiny_scorers import save_tiny_radgraph  # noqa: E402

FALLBACK = [
    "No evidence of acute cardiopulmonary process. Moderate hiatal hernia.",
    "Small left pleural effusion. The heart is normal in size.",
    "Heart size normal. Lungs are clear. No pneumothorax.",
    "Mild cardiomegaly with small bilateral pleural effusions.",
]


_one_thread = one_torch_thread_fixture()


def _pairs(count=8):
    texts = iu_findings_or(FALLBACK, 2 * count)
    hyps, refs = texts[:count], texts[count : 2 * count]
    # two hypotheses are their reference less its first sentence: relations shared in part, not 0 or 1
    for i in (count - 2, count - 1):
        hyps[i] = refs[i].split(". ", 1)[-1]
    return hyps, refs


@pytest.fixture(scope="module")
def tiny_radgraph(tmp_path_factory):
    root = tmp_path_factory.mktemp("radgraph")
    hyps, refs = _pairs()
    model_dir, encoder_dir = save_tiny_radgraph(root / "released", hyps + refs + FALLBACK)
    # The released config names the encoder by Hub id; for the reference run, the same vocabulary and weights with
    # a config naming the local encoder folder, which RadEval's own RadGraph loads unchanged.
    reference = root / "reference" / "radgraph"
    reference.mkdir(parents=True)
    config = json.loads((model_dir / "config.json").read_text())
    config["dataset_reader"]["token_indexers"]["bert"]["model_name"] = str(encoder_dir)
    config["model"]["embedder"]["token_embedders"]["bert"]["model_name"] = str(encoder_dir)
    (reference / "config.json").write_text(json.dumps(config))
    for name in ("vocabulary", "weights.th"):
        (reference / name).symlink_to(model_dir / name)
    return model_dir, encoder_dir, reference.parent


def test_vendored_import_needs_no_radeval_init_and_no_download():
    # RadEval 2.2.1's vendored files import `RadEval.` (capital R): the alias makes them import; `radeval/__init__`
    # (nltk.download, every metric) must not run.
    code = (
        "import sys, nltk\n"
        "nltk.download = lambda *a, **k: (_ for _ in ()).throw(AssertionError('nltk.download called'))\n"
        "from training.evaluation.metrics.radgraph import vendored_radgraph\n"
        "core = vendored_radgraph('core')\n"
        "print(core.RadGraph.__module__, 'radeval' in sys.modules, 'radeval.radeval' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split()[-3:] == ["RadEval.metrics.radgraph._vendor.core", "False", "False"]


def test_annotations_and_reward_levels_equal_radevals_f1radgraph(tiny_radgraph):
    model_dir, encoder_dir, ref_cache = tiny_radgraph
    hyps, refs = _pairs()
    hyps[3] = ""  # an empty hypothesis scores 0 at every reward level (F1RadGraph)
    inputs = Inputs(hyps, refs, {"radgraph_model": str(model_dir), "radgraph_encoder": str(encoder_dir)})
    ours = {"per_report": {m.name: m.per_report().tolist() for m in compute_metric("radgraph", inputs)}}
    assert inputs.record["radgraph_model_type"] == "radgraph"
    assert set(ours["per_report"]) == {f"RadGraph-F1-{level}/radgraph" for level in ("simple", "partial", "complete")}

    core = vendored_radgraph("core")
    reference = core.F1RadGraph(reward_level="all", model_type="radgraph", model_cache_dir=str(ref_cache), cuda=-1)
    _, (simple, partial, complete), hyp_graphs, ref_graphs = reference(refs=refs, hyps=hyps)
    for level, values in (("simple", simple), ("partial", partial), ("complete", complete)):
        assert ours["per_report"][radgraph_metric_name(level, "radgraph")] == pytest.approx(values, abs=0), level
    # the random model finds entities and relations, and the pairs differ: the comparison is not 0 == 0
    assert len(set(partial)) > 3 and max(partial) > 0 and ours["per_report"]["RadGraph-F1-partial/radgraph"][3] == 0
    assert sum(len(e["relations"]) for g in ref_graphs for e in g["entities"].values()) > 0

    # our annotations are RadEval's RadGraph's, report by report
    annotator = RadGraphAnnotator(model_dir, encoder_dir=encoder_dir)
    ours_graphs = annotator.annotate([h for h in hyps if h])
    assert [g["entities"] for g in ours_graphs] == [g["entities"] for g in hyp_graphs]


def test_combined_levels_equal_radevals_radcliq_functions(tiny_radgraph):
    pytest.importorskip("sklearn", reason="RadEval's RadCliQ module imports scikit-learn")
    model_dir, encoder_dir, _ = tiny_radgraph
    hyps, refs = _pairs()
    annotator = RadGraphAnnotator(model_dir, encoder_dir=encoder_dir)
    hyp_graphs, ref_graphs = annotator.annotate(hyps), annotator.annotate(refs)

    radcliq = radeval_module("radeval.metrics.RadCliQv1.radcliq")
    expected_entity, expected_relation = [], []
    for h, r in zip(hyp_graphs, ref_graphs):
        expected_entity.append(radcliq.compute_f1(radcliq.extract_entities(r), radcliq.extract_entities(h)))
        expected_relation.append(radcliq.compute_f1(radcliq.extract_relations(r), radcliq.extract_relations(h)))
    scores = radgraph_f1_from_annotations(hyp_graphs, ref_graphs, "radgraph", levels=("entity", "relation", "combined"))
    assert scores["RadGraph-F1-entity/radgraph"] == pytest.approx(expected_entity, abs=1e-15)
    assert scores["RadGraph-F1-relation/radgraph"] == pytest.approx(expected_relation, abs=1e-15)
    combined = [(e + r) / 2 for e, r in zip(expected_entity, expected_relation)]
    assert scores["RadGraph-F1-combined/radgraph"] == pytest.approx(combined, abs=1e-15)
    assert len(set(combined)) > 3 and max(expected_relation) > 0


def test_hand_made_graphs_every_level():
    ref = {"entities": {
        "1": {"tokens": "effusion", "label": "OBS-DP", "relations": [["located_at", "2"]]},
        "2": {"tokens": "pleural", "label": "ANAT-DP", "relations": []},
        "3": {"tokens": "heart", "label": "ANAT-DP", "relations": []},
    }}
    hyp = {"entities": {
        "1": {"tokens": "effusion", "label": "OBS-DP", "relations": []},
        "2": {"tokens": "pleural", "label": "ANAT-DP", "relations": []},
        "3": {"tokens": "heart", "label": "ANAT-DP", "relations": []},
    }}
    assert entity_relation_f1(hyp, ref) == {"entity": 1.0, "relation": 0.0, "combined": 0.5}
    assert entity_relation_f1(ref, ref) == {"entity": 1.0, "relation": 1.0, "combined": 1.0}
    scores = radgraph_f1_from_annotations([hyp, ref, None], [ref, ref, ref], "radgraph-xl")
    assert set(scores) == {f"RadGraph-F1-{level}/radgraph-xl" for level in RADGRAPH_LEVELS}
    assert scores["RadGraph-F1-partial/radgraph-xl"] == pytest.approx([2 / 3, 1.0, 0.0])
    assert scores["RadGraph-F1-combined/radgraph-xl"] == pytest.approx([0.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="'entities' mapping"):
        radgraph_f1_from_annotations([{"nodes": {}}], [ref], "radgraph")


def test_missing_folder_files_encoder_and_model_type_are_named(tmp_path, tiny_radgraph):
    model_dir, encoder_dir, _ = tiny_radgraph
    with pytest.raises(FileNotFoundError, match="does not exist.*--radgraph-model"):
        RadGraphAnnotator(tmp_path / "absent")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks vocabulary, weights.th"):
        RadGraphAnnotator(tmp_path / "partial")
    # the encoder named in config.json is a Hub id that is not cached: named, with the flag to pass
    with pytest.raises(FileNotFoundError, match="microsoft/BiomedNLP.*--radgraph-encoder"):
        RadGraphAnnotator(model_dir)
    with pytest.raises(ValueError, match="not 'radgraph-xl'"):
        radgraph_model_type(model_dir, "radgraph-xl")
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["embedder"]["token_embedders"]["bert"]["model_name"].startswith("microsoft/")
    assert radgraph_model_type(model_dir) == "radgraph"
    assert (encoder_dir / "vocab.txt").is_file()


def test_rexrank_radgraph_entry_and_saved_annotations_need_the_model_type(tiny_radgraph):
    from training.evaluation.scorecard import score_reports

    model_dir, encoder_dir, _ = tiny_radgraph
    hyps, refs = _pairs(4)
    m = score_reports(hyps, refs, meteor=False, replicates=10, protocol="r2gen,rexrank", radgraph_model=str(model_dir),
                      radgraph_encoder=str(encoder_dir))
    annotator = RadGraphAnnotator(model_dir, encoder_dir=encoder_dir)
    expected = radgraph_f1_from_annotations(annotator.annotate(hyps), annotator.annotate(refs), "radgraph")
    for name in ("RadGraph-F1-partial/radgraph", "RadGraph-F1-combined/radgraph"):
        assert m[name] == pytest.approx(sum(expected[name]) / 4) and name in m["confidence_intervals"]
    assert m["radgraph_model_type"] == "radgraph" and m["metric_definitions"]["RadGraph-F1-combined/radgraph"]
    graph = {"entities": {"1": {"tokens": "edema", "label": "OBS-DP", "start_ix": 0, "end_ix": 0, "relations": []}}}
    with pytest.raises(ValueError, match="--radgraph-model-type"):
        score_reports(["a"], ["b"], meteor=False, replicates=0, radgraph_annotations=([graph], [graph]))
    saved = score_reports(["a"], ["b"], meteor=False, replicates=0, radgraph_annotations=([graph], [graph]),
                          radgraph_model_type="radgraph-xl")
    assert saved["RadGraph-F1-partial/radgraph-xl"] == 1.0
    # ReXrank's column is the original model's: another model type is refused, naming it
    with pytest.raises(ValueError, match="original RadGraph model.*'radgraph-xl'"):
        score_reports(["a"], ["b"], meteor=False, replicates=0, protocol="rexrank",
                      radgraph_annotations=([graph], [graph]), radgraph_model_type="radgraph-xl")
