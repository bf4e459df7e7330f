"""lensops: a model-lifecycle platform for image models.

Two floors:

- `lensops.core`: what every stage shares (settings, the registry and model artifact, tag keys,
  errors, the production log, Ray start-up). It imports no stage.
- the front door: `lensops.cli` (the `lensops` command) and `lensops.closed_loop` (the closed
  loop that `make demo` runs). They stand on top of the stages and call them.

Importing `lensops` itself loads neither.
"""

__version__ = "0.1.0"
