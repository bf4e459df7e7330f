"""Monitoring: drift jobs, reports and the retraining trigger.

Imports `data` and `lensops`, never `training` or `serving`.
"""
