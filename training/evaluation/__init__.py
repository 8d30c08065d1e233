"""Evaluation: generating reports for a split and scoring them (`evaluator`), the NLG and clinical-efficacy scores
(`scoring`), the CheXpert labelers (`labeler`) and `evaluate` modules (`metrics/`).
"""
