"""The 14 CheXpert observations and the label values shared by data, labeler and metrics."""

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "CHEXPERT_5",
    "POSITIVE",
    "NEGATIVE",
    "UNCERTAIN",
    "NOT_MENTIONED",
]

# Order of the CheXpert labeler / CheXbert output heads (Irvin et al., 2019).
CHEXPERT_OBSERVATIONS = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)

# The 5-observation subset reported by many papers (the CheXpert competition tasks).
CHEXPERT_5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# Label values, as in the CheXpert labeler's CSV output (blank = not mentioned).
POSITIVE = 1
NEGATIVE = 0
UNCERTAIN = -1
NOT_MENTIONED = None
