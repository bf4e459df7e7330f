"""Lineage of a training run: the code, the data version and the params it came from."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

from lensops.core import tags as T
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


def dvc_hash(folder: Path) -> str:
    """DVC's md5 of a folder (`<md5>.dir`), computed as DVC does: equal to the hash in dvc.lock."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), str(folder), fs, "md5", dry_run=True)
    return obj.hash_info.value


def params_hash(settings: Settings) -> str:
    """A short, stable hash of every setting in force (after -S overrides)."""
    canonical = json.dumps(settings.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def lineage_tags(settings: Settings, prepared: Path) -> dict[str, str]:
    return {
        T.GIT_COMMIT: git_commit(settings.root),
        T.DATA_HASH: dvc_hash(prepared),
        T.PARAMS_HASH: params_hash(settings),
    }
