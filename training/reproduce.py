"""`lensops reproduce VERSION`: a version's recorded inputs re-created in a scratch folder, trained again, compared.

1. **Code**: the recorded git commit, checked out as a git worktree (`git worktree add --detach`).
   A version trained on a tree with uncommitted changes is refused unless `allow_dirty`: the commit
   alone does not hold its code.
2. **Data**: the recorded data version (`lensops.raw_hash`, DVC's hash of data/raw) pulled from the
   DVC remote into the worktree's own, empty cache. A data version that only this checkout's cache
   holds is not reproducible by a teammate, so it is an error that says how to push it.
3. **Params**: every setting of the run (its `settings.json`, or its MLflow params for older runs)
   written as the worktree's `params.yaml`, the original run's `-S` overrides included.
4. `lensops data prepare` (which validates first) and `lensops train` run in the worktree on the
   commit's own code (it comes first on `PYTHONPATH`), into a scratch MLflow store: the commit's
   training registers a version, and nothing should reach the project's registry unless asked.
5. Both versions are evaluated by this code on the re-prepared test split and compared
   (`training.reproduce_report`): a report, and an MLflow run that is a child of the original
   training run. `register=True` adds the reproduced model to the registry as a new version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lensops.core import tags as T
from lensops.core.errors import CheckFailed, NotFound, UsageError
from lensops.core.fingerprint import dvc_hash
from lensops.core.registry import TRIGGER_ENV, ModelVersion, Registry
from lensops.core.settings import Settings

SETTINGS_ARTIFACT = "settings.json"  # every setting of a training run, as `lensops train` saw it
REMOTE_NAME = "lensops-reproduce"  # the remote added to the worktree for --remote or LENSOPS_DVC_REMOTE
# Variables that would point the reproduction at the project's store, params or a retraining.
NOT_INHERITED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LENSOPS_PARAMS", TRIGGER_ENV)


@dataclass
class Recorded:
    """What a version says it was trained from."""

    version: ModelVersion
    run_id: str
    experiment_id: str
    commit: str  # without `-dirty`
    dirty: bool
    tags: dict[str, str]  # the training run's lineage tags
    settings: dict[str, Any]  # the full settings tree of the run

    @property
    def deterministic(self) -> bool:
        return bool(self.settings.get("train", {}).get("deterministic"))

    @property
    def raw(self) -> Path:
        return Path(self.settings["data"]["raw"])


@dataclass
class Reproduced:
    """The reproduction's own store and version, in the worktree's project folder."""

    project: Path
    registry: Registry
    version: str
    run_id: str
    code: str  # "commit" when the commit holds the lensops packages, else "installed"
    remote: str


def recorded_inputs(registry: Registry, reference: str, *, allow_dirty: bool) -> Recorded:
    """The version's commit, data version and settings; UsageError when one cannot be had."""
    version = registry.open(reference)
    if not version.run_id:
        raise UsageError(f"{version.uri} records no training run: nothing says how it was made")
    client = registry.client()
    run = client.get_run(version.run_id)
    tags = {**version.tags, **T.normalize(run.data.tags)}
    commit = tags.get(T.GIT_COMMIT, "unknown")
    if commit in ("", "unknown"):
        raise UsageError(f"{version.uri} records no git commit: its training ran outside a git repository")
    if not tags.get(T.RAW_HASH):
        raise UsageError(f"{version.uri} records no data version ({T.RAW_HASH}): it predates data versioning")
    dirty = commit.endswith("-dirty")
    if dirty and not allow_dirty:
        raise UsageError(
            f"{version.uri} was trained on uncommitted changes to {commit.removesuffix('-dirty')}: the commit "
            "alone does not hold its code. --allow-dirty reproduces from the commit, and the report says "
            "whether the code hash still matched"
        )
    settings = _recorded_settings(client, version.run_id, dict(run.data.params))
    return Recorded(version, version.run_id, run.info.experiment_id, commit.removesuffix("-dirty"), dirty,
                    T.lensops_tags(tags), settings)  # fmt: skip


def _recorded_settings(client, run_id: str, params: dict[str, str]) -> dict[str, Any]:
    """The run's `settings.json`; for runs logged before it existed, the params unflattened."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(Path(client.download_artifacts(run_id, SETTINGS_ARTIFACT, tmp)).read_text())
        except Exception:  # an older run: its params are the settings, flattened
            pass
    if not params:
        raise UsageError(f"training run {run_id} logged no params: its settings cannot be recovered")
    return settings_from_params(params)


def settings_from_params(params: dict[str, str]) -> dict[str, Any]:
    """MLflow params (`training.tracking.flatten`: dotted keys, strings) back to the settings tree.

    Sections are walked by their fields; a mapping that is not a section (`tune.space`, whose keys
    hold dots themselves) takes the rest of the key but its last part as one key.
    """
    from lensops.core.sections import Section
    from lensops.core.settings import Settings

    tree: dict[str, Any] = {}
    for key, text in params.items():
        parts, node, model = key.split("."), tree, Settings
        while len(parts) > 1:
            field = model.model_fields.get(parts[0]) if model else None
            kind = field.annotation if field else None
            if isinstance(kind, type) and issubclass(kind, Section):
                node, model, parts = node.setdefault(parts[0], {}), kind, parts[1:]
            elif field is not None and len(parts) > 2:  # a mapping field: {dotted key: {leaf: value}}
                node = node.setdefault(parts[0], {}).setdefault(".".join(parts[1:-1]), {})
                parts, model = parts[-1:], None
            else:
                node, model, parts = node.setdefault(parts[0], {}), None, parts[1:]
        node[parts[0]] = _param_value(text)
    return tree


def _param_value(text: str) -> Any:
    """A param's string back to its value: `None`, `True`, JSON (numbers, lists, mappings), else the text."""
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- the worktree ------------------------------------------------------------------------------


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise UsageError(f"`git {' '.join(args)}` failed in {cwd}: {result.stderr.strip() or result.stdout.strip()}")
    return result


@contextmanager
def worktree(root: Path, commit: str, *, keep: bool = False) -> Iterator[Path]:
    """The project folder inside a detached worktree of `commit`; removed afterwards unless `keep`."""
    if git(root, "rev-parse", "--show-toplevel", check=False).returncode != 0:
        raise UsageError(f"{root} is not in a git repository: a version's code is found by its commit")
    top = Path(git(root, "rev-parse", "--show-toplevel").stdout.strip()).resolve()
    if git(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        raise UsageError(
            f"commit {commit} is not in the git repository at {top}: fetch it (`git fetch --all`) "
            "or reproduce from a clone that has it"
        )
    scratch = Path(tempfile.mkdtemp(prefix="lensops-reproduce-"))
    tree = scratch / "tree"
    git(top, "worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree / root.resolve().relative_to(top)
    finally:
        if keep:
            print(f"kept the reproduction's worktree: {tree} (`git worktree remove --force {tree}` removes it)")
        else:
            git(top, "worktree", "remove", "--force", str(tree), check=False)
            git(top, "worktree", "prune", check=False)
            shutil.rmtree(scratch, ignore_errors=True)


# --- the data version --------------------------------------------------------------------------


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    dvc_bin = Path(sys.executable).with_name("dvc")
    command = [str(dvc_bin) if dvc_bin.exists() else "dvc", *args]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise UsageError(f"`dvc {' '.join(args)}` failed in {project}: {(result.stderr or result.stdout).strip()}")
    return result


def pull_data(source: Path, project: Path, recorded: Recorded, remote: str | None) -> str:
    """data/raw at the recorded hash, from the DVC remote into the worktree's own cache; returns the remote."""
    if recorded.raw.is_absolute():
        raise UsageError(f"data.raw of the run is an absolute path ({recorded.raw}): it cannot be re-created")
    if not (project / ".dvc").is_dir():
        dvc(project, "init", "--quiet", *([] if (project / ".git").exists() else ["--subdir"]))
    if (source / ".dvc" / "config.local").is_file():  # the remotes configured on this checkout only
        shutil.copy(source / ".dvc" / "config.local", project / ".dvc" / "config.local")
    remote, remotes = remote or os.environ.get("LENSOPS_DVC_REMOTE"), _remotes(project)
    if remote and remote not in remotes:  # a URL: added to the worktree's own config
        dvc(project, "remote", "add", "--local", "--force", REMOTE_NAME, remote)
        remote, url = REMOTE_NAME, remote
    else:
        remote = remote or dvc(project, "remote", "default", check=False).stdout.strip()
        url = remotes.get(remote, "")
    if not remote:
        raise UsageError("no DVC remote is configured: pass --remote URL or set LENSOPS_DVC_REMOTE")
    raw_hash = recorded.tags[T.RAW_HASH]
    pointer = project / recorded.raw.parent / f"{recorded.raw.name}.dvc"
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": raw_hash, "hash": "md5", "path": recorded.raw.name}]}))
    pulled = dvc(project, "pull", "--remote", remote, str(pointer.relative_to(project)), check=False)
    if pulled.returncode != 0 or dvc_hash(project / recorded.raw) != raw_hash:
        raise NotFound(
            f"data version {raw_hash} of {recorded.raw} ({recorded.version.uri}) is not in the DVC remote "
            f"{remote} ({url}): push it from a checkout whose cache holds it (`dvc push {recorded.raw}.dvc`). "
            f"DVC said: {_tail(pulled.stderr or pulled.stdout)}"
        )
    return f"{remote} ({url})"


def _remotes(project: Path) -> dict[str, str]:
    listed = dvc(project, "remote", "list", check=False).stdout
    return dict(line.split(None, 1) for line in listed.splitlines() if len(line.split(None, 1)) == 2)


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()) or "nothing"


# --- training in the worktree ------------------------------------------------------------------


def retrain(project: Path, recorded: Recorded, remote: str) -> Reproduced:
    """Prepare and train with the commit's code and the recorded settings, into a scratch store."""
    (project / "params.yaml").write_text(yaml.safe_dump(recorded.settings, sort_keys=False))
    store = f"sqlite:///{(project / 'mlruns' / 'mlflow.db').resolve()}"
    (project / "mlruns").mkdir(exist_ok=True)
    own_code = (project / "lensops" / "__init__.py").is_file() and (project / "training").is_dir()
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env["MLFLOW_TRACKING_URI"] = store
    if own_code:  # the commit's packages before the installed ones, in this process and in Ray's workers
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), env.get("PYTHONPATH")]))
    for stage in (["data", "prepare"], ["train"]):  # prepare validates data/raw first (`data validate` is its report)
        print(f"reproduce: lensops {' '.join(stage)} (in {project})", flush=True)
        command = [sys.executable, "-c", "from lensops.cli import app; app(prog_name='lensops')", *stage]
        done = subprocess.run(command, cwd=project, env=env)
        if done.returncode != 0:
            raise CheckFailed(
                f"the reproduction's `lensops {' '.join(stage)}` failed (exit {done.returncode}) on commit "
                f"{recorded.commit}; its output is above (--keep keeps the worktree to look into)"
            )
    name = recorded.settings["registry"]["model_name"]
    scratch = Registry(store, name, (project / "mlruns" / "artifacts").resolve().as_uri(), trust_artifacts=True)
    newest = scratch.versions(name)[0]
    return Reproduced(project, scratch, newest.version, newest.run_id, "commit" if own_code else "installed", remote)


def reproduce(
    settings: Settings,
    reference: str,
    *,
    allow_dirty: bool = False,
    remote: str | None = None,
    register: bool = False,
    keep: bool = False,
    tolerances: tuple[float, float] = (0.5, 2.0),
    out: Path | None = None,
):
    """Re-create `reference`'s inputs, train again, compare; returns the `Reproduction` (report written)."""
    from .reproduce_report import compare, record

    registry = Registry.of(settings)
    recorded = recorded_inputs(registry, reference, allow_dirty=allow_dirty)
    registry = dataclasses.replace(registry, model_name=recorded.version.name)  # models:/other/3 names its model
    try:
        with worktree(settings.root, recorded.commit, keep=keep) as project:
            where = pull_data(settings.root, project, recorded, remote)
            reproduced = retrain(project, recorded, where)
            result = compare(recorded, reproduced, tolerances)
            return record(settings, registry, recorded, reproduced, result, register=register, out=out)
    finally:
        recorded.version.close()
