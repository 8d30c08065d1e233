"""Local `evaluate` module folder (the script is rrg_clinical_efficacy.py); an __init__ so that wheels include it."""
