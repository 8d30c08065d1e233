"""Scoring speed for 3,858 report pairs (the MIMIC-CXR test split size): rrg's NLG scoring vs pycocoevalcap's
four scorers called directly, plus the cost of the 1,000-replicate bootstrap intervals.

Usage: `HF_HUB_OFFLINE=1 python benchmarks/scoring_speed.py`
"""

import random
import time

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from training.data.report_cleaning import clean_report_r2gen
from training.evaluation.bootstrap import confidence_intervals, mean_stats
from training.evaluation.metrics.ngram import CiderStats, bleu_stats

SENTENCES = ["the lungs are clear", "no pleural effusion or pneumothorax", "heart size is normal",
             "right-sided picc line terminates in the mid svc", "mild pulmonary edema", "1.5 cm nodule in the right upper lobe",
             "bibasilar atelectasis", "no acute cardiopulmonary process", "stable cardiomegaly", "small left effusion"]


def reports(n, seed):
    rng = random.Random(seed)
    return [clean_report_r2gen(". ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 8))) + ".")
            for _ in range(n)]


def main(n=3858):
    hyps, refs = reports(n, 0), reports(n, 1)
    gts, res = {i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}
    meteor = Meteor()
    meteor.compute_score({0: ["warm up"]}, {0: ["warm up"]})
    t = time.perf_counter()
    Bleu(4).compute_score(gts, res, verbose=0), meteor.compute_score(gts, res)
    Rouge().compute_score(gts, res), Cider().compute_score(gts, res)
    direct = time.perf_counter() - t
    t = time.perf_counter()
    stats = bleu_stats(hyps, refs)
    corpus, per = meteor.compute_score(gts, res)
    stats.append(mean_stats("METEOR", per))
    stats.append(mean_stats("ROUGE-L", Rouge().compute_score(gts, res)[1]))
    stats.append(CiderStats(hyps, refs).metric())
    values = [m.value() for m in stats]
    ours = time.perf_counter() - t
    t = time.perf_counter()
    confidence_intervals(stats, replicates=1000)
    boot = time.perf_counter() - t
    print(f"{n} pairs: pycocoevalcap direct {direct:.2f} s; rrg {ours:.2f} s; bootstrap 1000 replicates {boot:.2f} s")
    return values


if __name__ == "__main__":
    main()
