"""Lineage of a training run: the code, the data version and the params it came from."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from lensops.core import tags as T
from lensops.core.fingerprint import code_hash, dvc_hash, training_params_hash
from lensops.core.settings import Settings


def git_commit(root: Path) -> str:
    """HEAD's commit, with `-dirty` when tracked files differ from it; `unknown` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def params_hash(settings: Settings) -> str:
    """A short, stable hash of every setting in force (after -S overrides)."""
    canonical = json.dumps(settings.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def lineage_tags(settings: Settings, prepared: Path, raw: Path) -> dict[str, str]:
    """The code, data and params a run comes from (the data both as prepared and as data/raw)."""
    return {
        T.GIT_COMMIT: git_commit(settings.root),
        T.DATA_HASH: dvc_hash(prepared),
        T.PARAMS_HASH: params_hash(settings),
        T.RAW_HASH: dvc_hash(raw),
        T.CODE_HASH: code_hash(),
        T.TRAINING_PARAMS_HASH: training_params_hash(settings),
    }
