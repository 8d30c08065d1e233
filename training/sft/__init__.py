"""Supervised fine-tuning: both training stages on trl's `SFTTrainer` (`train`), their recipes, the frozen-encoder
feature cache and loading a trained folder (`loading`). Imports only `training.data` below it.
"""
