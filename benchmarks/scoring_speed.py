"""Scoring speed: rrg's metric registry vs the reference implementations called directly.

- 3,858 report pairs (the MIMIC-CXR test split size): the registry's `bleu`, `meteor`, `rouge_l` and `cider` entries vs
  pycocoevalcap's four scorers, plus the cost of the 1,000-replicate bootstrap intervals;
- 2,347 pairs: ReXrank's per-report BLEU-2 (`rexrank/BLEU-2`) vs nltk's `sentence_bleu` (weights 1/2, 1/2, smoothing
  method 1) in a loop.

Usage: `HF_HUB_OFFLINE=1 python benchmarks/scoring_speed.py`
"""

import random
import time

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from training.data.report_cleaning import clean_report_r2gen
from training.evaluation.bootstrap import confidence_intervals
from training.evaluation.metrics.ngram import _get_meteor, rexrank_tokens
from training.evaluation.metrics.registry import Inputs, compute_metric, per_report_scores

SENTENCES = ["the lungs are clear", "no pleural effusion or pneumothorax", "heart size is normal",
             "right-sided picc line terminates in the mid svc", "mild pulmonary edema", "1.5 cm nodule in the right upper lobe",
             "bibasilar atelectasis", "no acute cardiopulmonary process", "stable cardiomegaly", "small left effusion"]


def reports(n, seed):
    rng = random.Random(seed)
    return [clean_report_r2gen(". ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 8))) + ".")
            for _ in range(n)]


def nlg(n=3858):
    hyps, refs = reports(n, 0), reports(n, 1)
    gts, res = {i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}
    meteor = Meteor()
    meteor.compute_score({0: ["warm up"]}, {0: ["warm up"]})
    _get_meteor().compute_score({0: ["warm up"]}, {0: ["warm up"]})  # the registry's JVM, started outside the timing
    t = time.perf_counter()
    Bleu(4).compute_score(gts, res, verbose=0), meteor.compute_score(gts, res)
    Rouge().compute_score(gts, res), Cider().compute_score(gts, res)
    direct = time.perf_counter() - t
    t = time.perf_counter()
    inputs = Inputs(hyps, refs, {"clean": None})
    stats = [m for name in ("bleu", "meteor", "rouge_l", "cider") for m in compute_metric(name, inputs)]
    values = [m.value() for m in stats]
    ours = time.perf_counter() - t
    t = time.perf_counter()
    confidence_intervals(stats, replicates=1000)
    boot = time.perf_counter() - t
    print(f"{n} pairs: pycocoevalcap direct {direct:.2f} s; rrg registry {ours:.2f} s; "
          f"bootstrap 1000 replicates {boot:.2f} s")
    return values


def bleu2(n=2347):
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rng = random.Random(2)
    refs = [". ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 8))).capitalize() + "." for _ in range(n)]
    hyps = [". ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 8))).capitalize() + "." for _ in range(n)]
    smooth = SmoothingFunction().method1
    t = time.perf_counter()
    expected = [sentence_bleu([rexrank_tokens(r)], rexrank_tokens(h), weights=(0.5, 0.5), smoothing_function=smooth)
                for h, r in zip(hyps, refs)]
    reference = time.perf_counter() - t
    t = time.perf_counter()
    ours = per_report_scores("rexrank/BLEU-2", hyps, refs)
    mine = time.perf_counter() - t
    gap = max(abs(a - b) for a, b in zip(ours, expected))
    print(f"{n} pairs: rexrank/BLEU-2 nltk sentence_bleu loop {reference:.3f} s; rrg {mine:.3f} s; "
          f"largest difference {gap:.1e}")


if __name__ == "__main__":
    nlg()
    bleu2()
