"""Scaffolding that exists only because nothing can be downloaded here: the synthetic benchmark, tiny models and
tokenizer, pretraining the demo backbones, and `rrg demo` that runs the whole pipeline on them.
"""
