"""rrg natural-language metrics as a local `evaluate` module: BLEU-1..4, METEOR, ROUGE-L, CIDEr.

Thin wrapper around the metric registry (`training.evaluation.metrics.ngram.compute_nlg_metrics`: the `bleu`,
`meteor`, `rouge_l` and `cider` entries, equal to pycocoevalcap's scorers). Load it offline
with `evaluate.load("<repo>/training/evaluation/metrics/rrg_nlg")`.
"""

import evaluate

# Imported inside `try` (indented) on purpose: `evaluate` scans top-level imports and would ask to
# `pip install training`, which is not our package.
try:
    from training.evaluation.metrics import report_pair_info
    from training.evaluation.metrics.ngram import compute_nlg_metrics
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The rrg_nlg metric wraps training.evaluation.metrics (the metric registry) from the rrg repository; install it with "
        "`pip install -e <path to the rrg repository>` or run from the repository root."
    ) from error

_CITATION = """\
@inproceedings{papineni2002bleu, title={BLEU: a Method for Automatic Evaluation of Machine Translation}, author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}
@inproceedings{denkowski2014meteor, title={Meteor Universal: Language Specific Translation Evaluation for Any Target Language}, author={Denkowski, Michael and Lavie, Alon}, booktitle={WMT}, year={2014}}
@inproceedings{lin2004rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries}, author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation}, author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
"""

_DESCRIPTION = """\
BLEU-1..4, METEOR, ROUGE-L and CIDEr for radiology report generation, computed by pycocoevalcap's
scorers (the implementation behind the published MIMIC-CXR / IU X-Ray tables). By default the strings
are scored as given, as R2Gen does with its cleaned reports; `tokenization="ptb"` runs pycocoevalcap's
PTBTokenizer first. METEOR needs java; without it METEOR is left out and a warning is returned.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated reports.
    references (`list[str]`): one reference report per prediction.
    tokenization (`str`, optional): "r2gen" (default) or "ptb".
    meteor (`bool`, optional): compute METEOR (default True).
Returns:
    dict with "BLEU-1".."BLEU-4", "METEOR" (when computed), "ROUGE-L", "CIDEr", "tokenization",
    "implementation", "num_samples", "warnings".
Examples:
    >>> nlg = evaluate.load("training/evaluation/metrics/rrg_nlg")  # doctest: +SKIP
    >>> nlg.compute(predictions=["no effusion ."], references=["no effusion ."], meteor=False)["ROUGE-L"]  # doctest: +SKIP
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RrgNlg(evaluate.Metric):
    def _info(self):
        return report_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, "https://github.com/salaniz/pycocoevalcap")

    def _compute(self, predictions, references, tokenization="r2gen", meteor=True):
        return compute_nlg_metrics(list(predictions), list(references), tokenization=tokenization, meteor=meteor)
