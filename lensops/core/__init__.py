"""The shared core every stage stands on: settings, the registry, the model artifact, tag keys,
errors, the production log and Ray start-up.

It imports no stage package (`data`, `training`, `serving`, `monitoring`), not even lazily;
`tests/test_layout.py` checks it. The front door (`lensops.cli`, `lensops.closed_loop`) sits
above the stages and is the only part of `lensops` that reaches them.
"""
