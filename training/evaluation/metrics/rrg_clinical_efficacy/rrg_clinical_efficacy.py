"""rrg clinical efficacy as a local `evaluate` module: CheXpert-label precision / recall / F1.

Thin wrapper around the metric registry (`training.evaluation.metrics.clinical.compute_clinical_efficacy`: the
`clinical_efficacy` entry's uncertain-as-negative table). Load it offline with
`evaluate.load("<repo>/training/evaluation/metrics/rrg_clinical_efficacy")`.
"""

import evaluate

# Imported inside `try` (indented) on purpose: `evaluate` scans top-level imports and would ask to
# `pip install training`, which is not our package.
try:
    from training.evaluation.labeler import get_labeler
    from training.evaluation.metrics import report_pair_info
    from training.evaluation.metrics.clinical import compute_clinical_efficacy
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The rrg_clinical_efficacy metric wraps training.evaluation.metrics (the metric registry) from the rrg repository; install it with "
        "`pip install -e <path to the rrg repository>` or run from the repository root."
    ) from error

_CITATION = """\
@inproceedings{irvin2019chexpert, title={CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison}, author={Irvin, Jeremy and others}, booktitle={AAAI}, year={2019}}
@inproceedings{smit2020chexbert, title={CheXbert: Combining Automatic Labelers and Expert Annotations for Accurate Radiology Report Labeling Using BERT}, author={Smit, Akshay and others}, booktitle={EMNLP}, year={2020}}
"""

_DESCRIPTION = """\
Clinical efficacy of generated radiology reports: the 14 CheXpert observations are extracted from
prediction and reference by the same labeler, then precision, recall and F1 are computed (micro and
macro, over the 14 observations and the 5-observation subset, and per observation). Only label 1
counts as positive (uncertain, negative and blank do not), as in R2GenCMN / METransformer. The default
labeler is rrg's offline rule-based labeler; `labeler="chexbert"` uses a user-supplied chexbert.pth.
The result names the labeler, so numbers from different labelers are never mixed up.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated reports.
    references (`list[str]`): one reference report per prediction.
    labeler (`str`, optional): "rule" (default) or "chexbert".
    chexbert_checkpoint (`str`, optional): path to chexbert.pth (labeler="chexbert").
    chexbert_tokenizer (`str`, optional): local bert-base-uncased tokenizer folder (labeler="chexbert").
    device (`str`, optional): torch device for CheXbert (default "cpu").
    zero_division (`float`, optional): value of undefined scores (default 0.0, as scikit-learn).
Returns:
    dict with precision/recall/f1 _micro/_macro _14/_5, "per_observation", "labeler",
    "positive_definition", "zero_division", "num_samples".
Examples:
    >>> ce = evaluate.load("training/evaluation/metrics/rrg_clinical_efficacy")  # doctest: +SKIP
    >>> ce.compute(predictions=["Small left effusion."], references=["Small left effusion."])["f1_micro_14"]  # doctest: +SKIP
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RrgClinicalEfficacy(evaluate.Metric):
    def _info(self):
        return report_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, "https://github.com/stanfordmlgroup/CheXbert")

    def _compute(
        self,
        predictions,
        references,
        labeler="rule",
        chexbert_checkpoint=None,
        chexbert_tokenizer=None,
        device="cpu",
        zero_division=0.0,
    ):
        if labeler == "chexbert":
            instance = get_labeler(
                "chexbert",
                checkpoint_path=chexbert_checkpoint,
                tokenizer_name_or_path=chexbert_tokenizer,
                device=device,
            )
        else:
            instance = get_labeler(labeler)
        return compute_clinical_efficacy(
            list(predictions), list(references), labeler=instance, zero_division=zero_division
        )
