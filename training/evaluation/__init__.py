"""Evaluation: generating reports for a split and scoring them (`evaluator`, `scorecard`), the one metric registry
and its protocols (`metrics/`, also the local `evaluate` modules), the bootstrap (`bootstrap`), `rrg compare`
(`compare`) and the CheXpert labelers (`labeler`).
"""
