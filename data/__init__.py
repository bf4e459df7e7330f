"""The data layer: demo dataset, image manifest, validation suite and splits.

Stages (training, serving, monitoring) import from here; this package imports only `lensops`.
"""
