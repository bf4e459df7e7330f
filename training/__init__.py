"""Training: model factory, Ray Train driver and per-worker loop, evaluation, tuning, review.

Imports `data` and `lensops`, never `serving` or `monitoring`.
"""
