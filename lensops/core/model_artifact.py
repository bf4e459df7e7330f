"""The model artifact: what a registered version holds, written in one place.

A version is self-contained: the network exported with torch.export (MLflow's `pt2` format,
loaded without pickle and without lensops code), its signature and input example, and beside it
in the same model folder the files every other stage reads through `ModelVersion`:

| file | what it is |
| --- | --- |
| `extra_files/preprocessing.json` | the preprocessing spec (`data.transforms.eval_transform` builds from it) |
| `extra_files/classes.json` | the class names, in output order |
| `extra_files/metrics.json` | test and validation metrics |
| `extra_files/baseline_embeddings.parquet` | embeddings and predictions of the validation images (with |
| | their image stats) and of up to `train.reference_max` training images; `split` says which |
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import tags as T
from .registry import CHALLENGER, MODEL_ARTIFACT, Registry, fluent_run
from .sections import PreprocessingSpec

EXTRA = ("preprocessing.json", "classes.json", "metrics.json", "baseline_embeddings.parquet")
IMAGE_STATS = ("width", "height", "brightness", "contrast")


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
        for column in IMAGE_STATS:
            frame[column] = stats[column].to_numpy()
    return frame


def _signature(model, example: np.ndarray):
    """Input `image` (-1, 3, H, W); outputs `logits` and `embedding`, named so a fresh process gets the tuple."""
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with torch.no_grad():
        logits, embedding = model(torch.from_numpy(example))
    size = example.shape[-1]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size), "image")]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, logits.shape[1]), "logits"),
                TensorSpec(np.dtype(np.float32), (-1, embedding.shape[1]), "embedding"),
            ]
        ),
    )


def register_model(
    registry: Registry,
    *,
    run_id: str,
    model,
    example: np.ndarray,
    classes: list[str],
    spec: PreprocessingSpec,
    metrics: dict[str, Any],
    baseline: pd.DataFrame,
) -> str:
    """Log the model (pt2) with its files into the run, register a version, alias it `challenger`.

    The run's lensops tags (lineage, links) are copied onto the version, with its training run
    and test accuracy, so the registry alone answers where a version came from.
    """
    import mlflow
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "preprocessing.json").write_text(spec.model_dump_json(indent=2) + "\n")
        (folder / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        baseline.to_parquet(folder / "baseline_embeddings.parquet", index=False)
        with fluent_run(registry, run_id):
            info = mlflow.pytorch.log_model(
                model.eval(),
                name=MODEL_ARTIFACT,
                serialization_format="pt2",
                signature=_signature(model, example),
                input_example=example,
                extra_files=[str(folder / f) for f in EXTRA],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
                # MLflow's check replays the example through its own REST scoring path, which
                # does not take tensor batches; lensops serves through Ray Serve instead.
                validate_serving_input=False,
            )
            version = str(mlflow.register_model(info.model_uri, registry.model_name).version)
    run_tags = T.lensops_tags(registry.client().get_run(run_id).data.tags)
    registry.tag_version(
        version,
        {**run_tags, T.TRAINING_RUN: run_id, T.TEST_ACCURACY: f"{metrics['test']['accuracy']:.4f}"},
    )
    registry.set_alias(CHALLENGER, version, reason="newly trained")
    return version


def load_network(program: Path, *, device: str | None = None, trusted: bool = False):
    """An exported program (`model.pt2`) as a callable module, on `device` if given.

    Unless `trusted`, the archive is also checked as MLflow's own loader checks it (every record
    through torch's `weights_only` unpickler), whatever MLFLOW_ALLOW_PICKLE_DESERIALIZATION says;
    `ModelVersion.network` has run lensops' stricter check first (`lensops.core.artifact_check`).
    Then it is loaded with `torch.export.load`. A device other than the CPU is reached with
    torch.export's own pass: MLflow's loader refuses to move a pt2 model off the device it was
    exported on (training exports on the CPU).
    """
    import mlflow.pytorch
    import torch

    if not trusted:
        mlflow.pytorch._validate_pt2_archive_is_pickle_free(str(program))
    exported = torch.export.load(program)
    if device and device != "cpu":
        from torch.export.passes import move_to_device_pass

        exported = move_to_device_pass(exported, device)
    return exported.module()
