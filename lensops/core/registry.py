"""The one way to reach the MLflow registry: a `Registry` value and `ModelVersion` handles.

`Registry` is a small frozen value (tracking URI and model name) that pickles, so Ray actors
(the serving replicas, Tune trials, Ray Train callbacks) receive it as an argument. Every MLflow
client it builds names its tracking URI explicitly: nothing here, or anywhere in lensops, sets a
process-global tracking URI, except `fluent_run` around the one MLflow call that has no client
form (logging a model into a run).

`Registry.open(ref)` turns any model reference into a `ModelVersion`:

| reference | means |
| --- | --- |
| `None` | the default alias (`@champion` for serving and drift, `@challenger` for review) |
| `7`, `v7` | version 7 of the registry's model |
| `champion`, `@champion` | the version an alias points at now |
| `digits/7`, `digits@champion` | another model name |
| `models:/digits/7`, `models:/digits@champion` | MLflow's URI form |

A handle knows its version, aliases, tags (legacy tag keys renamed, see `lensops.core.tags`),
training run and lineage at once, and fetches each file of the version only when asked: the
network, the preprocessing spec, the classes, the metrics, the baseline. Files go to one
temporary folder per handle, removed by `close()` (or leaving a `with` block).
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import store
from . import tags as T
from .errors import UsageError
from .sections import PreprocessingSpec

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
MODEL_ARTIFACT = "model"
# Set by `lensops retrain` for the pipeline it starts: the training run links itself to it.
TRIGGER_ENV = "LENSOPS_TRIGGER_RUN_ID"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"

# Files inside a version's model folder.
NETWORK_FILE = "data/model.pt2"
SPEC_FILE = "extra_files/preprocessing.json"
CLASSES_FILE = "extra_files/classes.json"
METRICS_FILE = "extra_files/metrics.json"
BASELINE_FILE = "extra_files/baseline_embeddings.parquet"


class UnknownModelError(UsageError):
    """A model reference that does not resolve; the message lists the versions and aliases that exist."""


def who() -> str:
    """Who is acting: `LENSOPS_ACTOR` (a pipeline names itself), else the OS user."""
    if actor := os.environ.get("LENSOPS_ACTOR"):
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- references --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A parsed model reference: a name and either a version or an alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version else f"models:/{self.name}@{self.alias}"


def parse_reference(ref: str | None, *, model_name: str, default_alias: str = CHAMPION) -> Reference:
    """The one parser of model references (see the module's table)."""
    text = (ref or "").strip()
    if not text:
        return Reference(model_name, alias=default_alias)
    body = text.removeprefix("models:/")
    if "://" in body or body.count("@") > 1 or not body.strip("/@"):
        raise UnknownModelError(
            f"{ref!r} is not a model reference: give a version (7), an alias (@champion), "
            "or models:/<name>/<version> or models:/<name>@<alias>"
        )
    if "@" in body:
        name, alias = body.split("@", 1)
        return Reference(name.strip("/") or model_name, alias=alias)
    name, _, token = body.rpartition("/")
    number = token.removeprefix("v")
    if number.isdigit():
        return Reference(name or model_name, version=str(int(number)))
    if name:
        raise UnknownModelError(f"{ref!r}: after the model name give a version number, or use {name}@{token}")
    return Reference(model_name, alias=token)


# --- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """Where versions live: an MLflow tracking URI and the project's model name. Picklable."""

    tracking_uri: str
    model_name: str
    artifact_root: str | None = None  # where a local store keeps new experiments' artifacts
    trust_artifacts: bool = False  # load versions without checking their files (lensops.core.artifact_check)

    @classmethod
    def of(cls, settings) -> Registry:
        from .settings import tracking_uri

        uri = tracking_uri(settings.root)
        local = uri.split(":", 1)[0] in ("sqlite", "file")
        root = (settings.root / "mlruns" / "artifacts").resolve().as_uri() if local else None
        return cls(uri, settings.registry.model_name, root, settings.registry.trust_artifacts)

    def client(self):
        return store.client(self.tracking_uri)

    # -- resolving --

    def reference(self, ref: str | None = None, *, default_alias: str = CHAMPION) -> Reference:
        return parse_reference(ref, model_name=self.model_name, default_alias=default_alias)

    def resolve(self, ref: str | None = None, *, default_alias: str = CHAMPION) -> str:
        """The version number a reference points at now; UnknownModelError naming what exists."""
        import mlflow

        parsed = self.reference(ref, default_alias=default_alias)
        try:
            if parsed.alias:
                return str(self.client().get_model_version_by_alias(parsed.name, parsed.alias).version)
            return str(self.client().get_model_version(parsed.name, parsed.version).version)
        except mlflow.exceptions.MlflowException:
            hint = " (promote one with `lensops promote`)" if parsed.alias == CHAMPION else ""
            asked = f"{ref!r} ({parsed.uri})" if ref else parsed.uri
            raise UnknownModelError(f"unknown model reference {asked}{hint}: {self.describe(parsed.name)}") from None

    def find(self, ref: str | None = None, *, default_alias: str = CHAMPION) -> str | None:
        """Like `resolve`, but None when no reference was given and the default alias is not set."""
        try:
            return self.resolve(ref, default_alias=default_alias)
        except UnknownModelError:
            if ref is None:
                return None
            raise

    def open(self, ref: str | None = None, *, default_alias: str = CHAMPION) -> ModelVersion:
        """A handle on the version a reference points at now (nothing is downloaded yet)."""
        parsed = self.reference(ref, default_alias=default_alias)
        version = self.resolve(ref, default_alias=default_alias)
        entity = self.client().get_model_version(parsed.name, version)
        return ModelVersion(self, entity, self.aliases(parsed.name))

    # -- listing --

    def aliases(self, name: str | None = None) -> dict[str, str]:
        """alias -> version of a registered model; UnknownModelError when the model does not exist."""
        import mlflow

        try:
            model = self.client().get_registered_model(name or self.model_name)
        except mlflow.exceptions.MlflowException:
            raise UnknownModelError(self.describe(name)) from None
        return {alias: str(version) for alias, version in model.aliases.items()}

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version of the model, newest first, as handles (nothing downloaded)."""
        name = name or self.model_name
        aliases = self.aliases(name)
        found = self.client().search_model_versions(f"name = '{name}'")
        handles = [ModelVersion(self, v, aliases) for v in found]
        return sorted(handles, key=lambda h: int(h.version), reverse=True)

    def describe(self, name: str | None = None) -> str:
        """What a user could have meant: the versions and aliases that exist (for error messages)."""
        import mlflow

        name = name or self.model_name
        client = self.client()
        try:
            model = client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            models = [m.name for m in client.search_registered_models()]
            if models:
                return f"no registered model {name!r}; registered models: {', '.join(models)}"
            return f"no registered model {name!r}; nothing is registered yet (run `lensops train`)"
        numbers = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        aliases = ", ".join(f"@{a}=v{v}" for a, v in sorted(model.aliases.items())) or "none"
        return f"model {name!r} has versions {', '.join(map(str, numbers)) or 'none'}; aliases: {aliases}"

    # -- writing --

    def set_alias(self, alias: str, version: str, *, reason: str, extra: dict[str, str] | None = None) -> None:
        """Point `alias` at `version`, recording who, when and why on the version."""
        store.retry_locked(self.client().set_registered_model_alias)(self.model_name, alias, version)
        record = {"set_by": who(), "set_at": now(), "reason": reason, **(extra or {})}
        self.tag_version(version, {T.alias_tag(alias, field): value for field, value in record.items()})

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            store.retry_locked(client.set_model_version_tag)(self.model_name, version, key, value)

    def delete_alias(self, alias: str) -> None:
        store.retry_locked(self.client().delete_registered_model_alias)(self.model_name, alias)

    def experiment_id(self, name: str) -> str:
        """The experiment called `name`, created if missing (a local store keeps its artifacts in the project)."""
        client = self.client()
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        return client.create_experiment(name, artifact_location=self.artifact_root)

    def log_epoch(self, run_id: str, metrics: dict[str, Any], *, synchronous: bool = False) -> None:
        """One epoch's numbers in a single batch, asynchronous by default: tracking stays off the training path."""
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(metrics["epoch"])
        batch = [
            Metric(k, float(v), stamp, step) for k, v in metrics.items() if k != "epoch" and isinstance(v, int | float)
        ]
        self.client().log_batch(run_id, metrics=batch, synchronous=synchronous)


@contextlib.contextmanager
def fluent_run(registry: Registry, run_id: str) -> Iterator[None]:
    """MLflow's fluent API, pointed at `registry` for one block, inside the run `run_id`.

    Only `mlflow.pytorch.log_model` needs it: logging a model has no client form (it needs an
    active run). The global tracking URI and `MLFLOW_TRACKING_URI` (which `set_tracking_uri` also
    writes, for subprocesses to inherit) are put back afterwards, so no other project in this
    process, and no `lensops` or `dvc repro` it starts, writes into this store by accident.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before_env = os.environ.get(ENV_TRACKING_URI)
    before_uri = tracking_utils._tracking_uri  # None when never set: MLflow's default applies
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        mlflow.set_tracking_uri(before_uri)
        if before_env is None:
            os.environ.pop(ENV_TRACKING_URI, None)
        else:
            os.environ[ENV_TRACKING_URI] = before_env


def download(registry: Registry, artifact_uri: str, dest: Path) -> Path:
    """Fetch one artifact (a file or folder URI) into `dest`; returns its local path."""
    import mlflow

    dest.mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri,
            dst_path=str(dest),
            tracking_uri=registry.tracking_uri,
            registry_uri=registry.tracking_uri,
        )
    )


# --- a version ---------------------------------------------------------------------------------


class ModelVersion:
    """One registered version: metadata at once, files on demand, one cache removed by `close()`."""

    def __init__(self, registry: Registry, entity, aliases: dict[str, str]):
        self.registry = registry
        self.name = entity.name
        self.version = str(entity.version)
        self.aliases = sorted(a for a, v in aliases.items() if v == self.version)
        self.tags = T.normalize(entity.tags)
        self.run_id = self.tags.get(T.TRAINING_RUN) or entity.run_id
        self.created_ms = int(entity.creation_timestamp or 0)
        self._cache: Path | None = None

    def __repr__(self) -> str:
        return f"ModelVersion({self.name!r}, v{self.version}, aliases={self.aliases})"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def lineage(self) -> dict[str, str]:
        return {key.removeprefix(T.PREFIX): self.tags.get(key, "") for key in T.LINEAGE}

    def current_tags(self) -> dict[str, str]:
        """The version's tags as the registry holds them now (after a review or promotion)."""
        entity = self.registry.client().get_model_version(self.name, self.version)
        self.tags = T.normalize(entity.tags)
        return self.tags

    # -- files, fetched once each --

    @functools.cached_property
    def location(self) -> str:
        """Where the version's files are stored. Asked of this registry's client: MLflow's `models:/`
        download path looks the version up in the process-global registry instead."""
        return self.registry.client().get_model_version_download_uri(self.name, self.version).rstrip("/")

    def fetch(self, relative: str) -> Path:
        """A file or folder of the version's model folder, downloaded into this handle's cache once."""
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix=f"lensops-{self.name}-v{self.version}-"))
        local = self._cache / relative
        if not local.exists():
            import mlflow

            try:
                download(self.registry, f"{self.location}/{relative}", local.parent)
            except mlflow.exceptions.MlflowException as e:
                raise FileNotFoundError(f"{self.uri} has no {relative} ({e})") from None
        if not local.exists():
            raise FileNotFoundError(f"{self.uri} has no {relative}")
        return local

    @functools.cached_property
    def spec(self) -> PreprocessingSpec:
        return PreprocessingSpec.model_validate_json(self.fetch(SPEC_FILE).read_text())

    @functools.cached_property
    def classes(self) -> list[str]:
        return json.loads(self.fetch(CLASSES_FILE).read_text())

    @functools.cached_property
    def metrics(self) -> dict[str, Any]:
        return json.loads(self.fetch(METRICS_FILE).read_text())

    def baseline(self):
        """The validation set's embeddings, predictions and image stats (monitoring's reference)."""
        import pandas as pd

        return pd.read_parquet(self.fetch(BASELINE_FILE))

    def network(self, device: str | None = None):
        """The exported network, `model(batch) -> (logits, embedding)`, on `device` (default the CPU)."""
        from .model_artifact import load_network  # the artifact's own loader (it imports this module)

        program = self.fetch(NETWORK_FILE)
        if not self.registry.trust_artifacts:
            from .artifact_check import check_mlmodel, check_pt2

            check_mlmodel(self.fetch("MLmodel"))
            check_pt2(program)
        return load_network(program, device=device, trusted=self.registry.trust_artifacts)

    def size_mb(self) -> float:
        return self.fetch(NETWORK_FILE).stat().st_size / 2**20

    # -- lifetime --

    def close(self) -> None:
        if self._cache is not None:
            shutil.rmtree(self._cache, ignore_errors=True)
            self._cache = None

    def __enter__(self) -> ModelVersion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
