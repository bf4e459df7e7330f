"""What a model is trained from: the data version, the code and the params, each as a hash.

Training records these on its run and on the version it registers; `lensops retrain` computes
them for the working tree and retrains only when one differs from what the champion was trained
on. Retraining on the same inputs would only make the same model again.

| tag | hash of |
| --- | --- |
| `lensops.raw_hash` | `data/raw` as DVC hashes it (`<md5>.dir`, as in `data/raw.dvc`), provenance records included |
| `lensops.code_hash` | the source of the packages that turn data into a model: `data`, `training`, `lensops.core` |
| `lensops.training_params_hash` | the settings sections that change the model: `data`, `validate`, `prepare`, `train` |

The code is read as files, found by package name without importing any stage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
from pathlib import Path

from . import tags as T

CODE_PACKAGES = ("data", "training", "lensops.core")
PARAM_SECTIONS = ("data", "validate", "prepare", "train")


def dvc_hash(folder: Path) -> str:
    """DVC's md5 of a folder (`<md5>.dir`), computed as DVC does: equal to the hash in a `.dvc` file or dvc.lock."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), str(folder), fs, "md5", dry_run=True)
    return obj.hash_info.value


def code_hash(packages: tuple[str, ...] = CODE_PACKAGES) -> str:
    """A hash of every `.py` file of the packages, by path within the package and content."""
    digest = hashlib.sha256()
    for name in packages:
        spec = importlib.util.find_spec(name)
        for location in spec.submodule_search_locations or [] if spec else []:
            base = Path(location)
            for path in sorted(base.rglob("*.py")):
                digest.update(f"{name}/{path.relative_to(base).as_posix()}\0".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def training_params_hash(settings) -> str:
    tree = settings.model_dump(mode="json", by_alias=True)
    canonical = json.dumps({k: tree[k] for k in PARAM_SECTIONS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def training_inputs(settings) -> dict[str, str]:
    """The tags that say what a model trained now would be trained from."""
    raw = settings.path(settings.data.raw)
    return {
        T.RAW_HASH: dvc_hash(raw) if raw.is_dir() else "missing",
        T.CODE_HASH: code_hash(),
        T.TRAINING_PARAMS_HASH: training_params_hash(settings),
    }


def differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Which inputs differ ("data", "code", "params"); an input the version never recorded counts as different."""
    names = {T.RAW_HASH: "data", T.CODE_HASH: "code", T.TRAINING_PARAMS_HASH: "params"}
    return [name for key, name in names.items() if recorded.get(key) != current.get(key)]
