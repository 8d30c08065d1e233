"""Data: reading radiographs (`images`), report text (`reports`), dataset loaders (`loaders`), CheXpert labels.

The lowest floor of `training/`: it imports nothing from the other sub-packages.
"""
