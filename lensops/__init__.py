"""lensops: a model-lifecycle platform for image models.

This package holds only what several stages share: the command line, the settings, and
(as later stages land) the registry helpers and the production-log format. It imports no
stage package, so `data`, `training`, `serving` and `monitoring` can all depend on it.
"""

__version__ = "0.1.0"
