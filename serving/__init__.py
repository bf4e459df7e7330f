"""Serving: the Ray Serve application and its config.

Imports `data` and `lensops`, never `training` or `monitoring`.
"""
