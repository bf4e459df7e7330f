"""MLflow tracking and registry helpers shared by every stage.

A registered version is self-contained: the network exported with torch.export (the `pt2`
format: loading it runs no pickle and needs no lensops code), its signature and input
example, and beside it in the same model folder `preprocessing.json`, `classes.json`,
`metrics.json` and `baseline_embeddings.parquet`. Anything that holds a `models:/` URI can
rebuild the exact evaluation input and compare production against the baseline.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lensops.settings import PreprocessingSpec, Settings, tracking_uri

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
MODEL_ARTIFACT = "model"
# Set by `lensops retrain` for the pipeline it starts: the training run tags itself with it.
TRIGGER_ENV = "LENSOPS_TRIGGER_RUN_ID"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
EXTRA = ("preprocessing.json", "classes.json", "metrics.json", "baseline_embeddings.parquet")


def use_tracking_uri(uri: str) -> None:
    """Point this process's MLflow at `uri`, leaving `MLFLOW_TRACKING_URI` as the user set it.

    `mlflow.set_tracking_uri` also writes the URI into the environment, for subprocesses. lensops
    resolves the store per project (`lensops.settings.tracking_uri` reads that variable first), so
    a URI left behind by one project would send the runs and versions of the next project in the
    same process, or of any `lensops`/`dvc repro` it starts, to the first one's store.
    """
    import mlflow

    before = os.environ.get(ENV_TRACKING_URI)
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop(ENV_TRACKING_URI, None)
    else:
        os.environ[ENV_TRACKING_URI] = before


def client(settings: Settings):
    """An MlflowClient on the project's tracking URI (set here, never at import)."""
    import mlflow

    use_tracking_uri(tracking_uri(settings.root))
    return mlflow.MlflowClient()


def experiment_id(settings: Settings) -> str:
    """The experiment named in params; with the local store its artifacts go under mlruns/artifacts."""
    mlflow_client = client(settings)
    name = settings.registry.experiment
    existing = mlflow_client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    # A local store keeps artifacts in the project, wherever the command runs from (MLflow's
    # default would be ./mlruns of the current directory). A server decides its own store.
    location = None
    if tracking_uri(settings.root).split(":", 1)[0] in ("sqlite", "file"):
        location = (settings.root / "mlruns" / "artifacts").resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def who() -> str:
    """Who is acting: `LENSOPS_ACTOR` (a pipeline names itself), else the OS user."""
    if actor := os.environ.get("LENSOPS_ACTOR"):
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def log_epoch(run_id: str, metrics: dict[str, Any], *, synchronous: bool = False) -> None:
    """One epoch's numbers in a single batch, asynchronous by default: tracking stays off the training path."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    step = int(metrics["epoch"])
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch" and isinstance(v, int | float)]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch, synchronous=synchronous)


def baseline_frame(
    embeddings: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray,
    paths,
    classes: list[str],
    stats: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The validation set's embeddings, predictions and image stats: what monitoring compares production to.

    `stats` holds the production log's image columns (width, height, brightness, contrast),
    one row per image, computed as serving computes them.
    """
    frame = pd.DataFrame(
        {
            "path": list(paths),
            "label": [classes[i] for i in labels],
            "predicted": [classes[i] for i in predicted],
        }
    )
    frame["embedding"] = list(embeddings.astype(np.float32))
    if stats is not None:
        for column in ("width", "height", "brightness", "contrast"):
            frame[column] = stats[column].to_numpy()
    return frame


def register_model(
    settings: Settings,
    *,
    run_id: str,
    model,
    example: np.ndarray,
    classes: list[str],
    spec: PreprocessingSpec,
    metrics: dict[str, Any],
    baseline: pd.DataFrame,
    tags: dict[str, str] | None = None,
) -> str:
    """Log the model (pt2) with its files into the run, register a version, alias it `challenger`."""
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = spec.size
    with torch.no_grad():
        logits, embedding = model(torch.from_numpy(example))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size), "image")]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, logits.shape[1]), "logits"),
                TensorSpec(np.dtype(np.float32), (-1, embedding.shape[1]), "embedding"),
            ]
        ),
    )
    mlflow_client = client(settings)
    name = settings.registry.model_name
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "preprocessing.json").write_text(spec.model_dump_json(indent=2) + "\n")
        (folder / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        baseline.to_parquet(folder / "baseline_embeddings.parquet", index=False)
        active = mlflow.active_run()
        reuse = active is not None and active.info.run_id == run_id
        with contextlib.nullcontext() if reuse else mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model.eval(),
                name=MODEL_ARTIFACT,
                serialization_format="pt2",
                signature=signature,
                input_example=example,
                extra_files=[str(folder / f) for f in EXTRA],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
                # MLflow's check replays the example through its own REST scoring path, which
                # does not take tensor batches; lensops serves through Ray Serve instead.
                validate_serving_input=False,
            )
    version = mlflow.register_model(info.model_uri, name, tags=tags).version
    run = mlflow_client.get_run(run_id)
    for key, value in {**run.data.tags, **(tags or {})}.items():
        if key.startswith("lensops."):
            mlflow_client.set_model_version_tag(name, version, key, value)
    mlflow_client.set_model_version_tag(name, version, "lensops.run_id", run_id)
    mlflow_client.set_model_version_tag(name, version, "lensops.test_accuracy", f"{metrics['test']['accuracy']:.4f}")
    set_alias(settings, CHALLENGER, version, reason="newly trained")
    return str(version)


def set_alias(settings: Settings, alias: str, version: str, *, reason: str) -> None:
    """Point `alias` at `version`, recording who, when and why on the version."""
    mlflow_client = client(settings)
    name = settings.registry.model_name
    mlflow_client.set_registered_model_alias(name, alias, version)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    mlflow_client.set_model_version_tag(name, version, f"lensops.{alias}.set_by", who())
    mlflow_client.set_model_version_tag(name, version, f"lensops.{alias}.set_at", stamp)
    mlflow_client.set_model_version_tag(name, version, f"lensops.{alias}.reason", reason)


@dataclass
class ModelFiles:
    """What a registered version carries besides the network."""

    uri: str
    version: str
    spec: PreprocessingSpec
    classes: list[str]
    metrics: dict[str, Any]
    folder: Path  # local copy of the model folder

    def baseline(self) -> pd.DataFrame:
        return pd.read_parquet(self.folder / "extra_files" / "baseline_embeddings.parquet")


def resolve(settings: Settings, ref: str | None = None, *, alias: str = CHAMPION) -> str:
    """`models:/<name>@alias` by default; a version number or alias alone also works."""
    name = settings.registry.model_name
    if not ref:
        return f"models:/{name}@{alias}"
    if ref.startswith("models:/") or "://" in ref:
        return ref
    return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


def version_of(settings: Settings, uri: str) -> str:
    """The version number a models:/ URI points at now."""
    mlflow_client = client(settings)
    tail = uri.removeprefix("models:/")
    if "@" in tail:
        name, alias = tail.split("@", 1)
        return str(mlflow_client.get_model_version_by_alias(name, alias).version)
    return tail.rsplit("/", 1)[1]


def download(settings: Settings, uri: str, dest: Path | None = None) -> ModelFiles:
    """Fetch a version's model folder (network and files) into `dest` (a temporary folder by default)."""
    import mlflow

    client(settings)
    dest = dest or Path(tempfile.mkdtemp(prefix="lensops-model-"))
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    extra = folder / "extra_files"
    return ModelFiles(
        uri=uri,
        version=version_of(settings, uri),
        spec=PreprocessingSpec.model_validate_json((extra / "preprocessing.json").read_text()),
        classes=json.loads((extra / "classes.json").read_text()),
        metrics=json.loads((extra / "metrics.json").read_text()),
        folder=folder,
    )


def load_network(folder_or_uri: str | Path, *, device: str | None = None):
    """The exported network: `model(batch) -> (logits, embedding)`; no pickle, no lensops code.

    With a `device` ("cpu", "cuda"), the exported program is read from a downloaded version's
    folder and moved there by torch.export's own pass: MLflow's loader refuses to move a pt2
    model off the device it was exported on (training exports on the CPU).
    """
    if device is None:
        import mlflow.pytorch

        return mlflow.pytorch.load_model(str(folder_or_uri))
    import torch
    from torch.export.passes import move_to_device_pass

    program = Path(folder_or_uri) / "data" / "model.pt2"
    if not program.is_file():
        raise FileNotFoundError(f"{program} is missing: with a device, load_network needs a downloaded version folder")
    return move_to_device_pass(torch.export.load(program), device).module()


def existing_refs(settings: Settings) -> str:
    """What a user could have meant: the registered versions and aliases, for error messages."""
    import mlflow

    mlflow_client = client(settings)
    name = settings.registry.model_name
    try:
        model = mlflow_client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        models = [m.name for m in mlflow_client.search_registered_models()]
        return f"no registered model {name!r}" + (
            f"; registered models: {', '.join(models)}"
            if models
            else "; nothing is registered yet (run `lensops train`)"
        )
    versions = sorted(int(v.version) for v in mlflow_client.search_model_versions(f"name = '{name}'"))
    aliases = ", ".join(f"@{a}=v{v}" for a, v in sorted(model.aliases.items())) or "none"
    return f"model {name!r} has versions {', '.join(map(str, versions)) or 'none'}; aliases: {aliases}"
