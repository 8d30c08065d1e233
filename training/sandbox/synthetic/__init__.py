"""A synthetic chest X-ray report-generation benchmark whose reports are determined by the image.

No real chest radiographs can be downloaded on our machines (and MIMIC-CXR is credentialed), so the
demo, the tests and the benchmarks use a data set generated here. It keeps the task *real*: every
finding in a report has a visual signature in the image, so a model that ignores the image scores
poorly and one that reads it scores well.

Each study is:

* a procedurally rendered frontal (PA) radiograph (and optionally a lateral view): body outline, two
  lung fields with vascular markings, heart and mediastinum, trachea, spine, ribs, clavicles,
  diaphragm and gastric bubble, with random anatomy jitter (size, rotation, position, exposure,
  noise);
* structured ground truth (`findings`): cardiomegaly, pleural effusion, pneumothorax,
  consolidation / lung opacity (optionally pneumonia), pulmonary edema, atelectasis, nodule / mass,
  support devices (endotracheal tube, central line, pacemaker) and rib fracture, with laterality,
  zone and severity where they apply;
* a report written from that ground truth in radiology style (FINDINGS and IMPRESSION sections,
  varied phrasing, explicit negatives);
* the 14 CheXpert labels of the report (1 / 0 / -1 / None, see `training.data.chexpert`).

Image convention: as on a real PA film, the patient's right is on the image's **left**. So a
"right pleural effusion" brightens the lower-left corner of the lung fields in the image.

Everything is deterministic from a seed: every study gets its own `numpy.random.SeedSequence`
(seed, split, index), so the output does not depend on the number of worker processes.

Output layout (R2Gen `annotation.json`, as used for IU X-Ray and MIMIC-CXR)::

    out/
      annotation.json          {"train": [...], "val": [...], "test": [...]}
      images/train/train_000000/0.png  (frontal)  1.png (lateral, with --lateral)

Each entry has `id`, `study_id`, `subject_id`, `report`, `image_path` (relative to `out/images`),
`chexpert` ({observation: 1 / 0 / -1 / null}) and `findings` (the structured ground truth).

The package, one file per job:

* `findings.py` — samples the structured ground truth (`sample_findings`);
* `render.py` — renders the radiographs from it (`render_study`);
* `report.py` + `phrases.json` — writes the report and its labels (`write_report`); the words are data;
* `dataset.py` — one study (`generate_study`) and the whole folder (`generate_synthetic_dataset`);
* `cli.py` — `rrg data` / `python -m training.sandbox.synthetic`.

Usage::

    python -m training.sandbox.synthetic --out data/synthetic --num-train 3000 --num-val 300 \\
        --num-test 300 --image-size 128 --seed 0
"""

from .cli import main
from .dataset import finding_maps, generate_study, generate_synthetic_dataset
from .findings import FINDING_NAMES, sample_findings
from .render import render_study
from .report import SyntheticReport, chexpert_labels, write_report

__all__ = [
    "FINDING_NAMES",
    "SyntheticReport",
    "sample_findings",
    "render_study",
    "write_report",
    "chexpert_labels",
    "finding_maps",
    "generate_study",
    "generate_synthetic_dataset",
    "main",
]
