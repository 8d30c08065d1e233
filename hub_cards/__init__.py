"""Model card templates, shipped as package data so `rrg export` finds them in a wheel install too.

Read them with `importlib.resources.files("hub_cards") / "model_card.jinja"`
(see `training.release.export.default_card_template`).
"""
