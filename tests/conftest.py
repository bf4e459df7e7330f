"""Shared fixtures: a throw-away project folder, real image folders, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.imagefactory import write_class_folders

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    from lensops.core.compute import ray_environment

    ray_environment()  # before any test starts Ray (the session's, or a test's own cluster), as lensops does


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project with the repository's params.yaml, as the working directory."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for var in ("LENSOPS_PARAMS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    return tmp_path


@pytest.fixture
def good_raw(project: Path) -> Path:
    """A valid three-class dataset of distinct noise images under data/raw."""
    raw = project / "data" / "raw"
    write_class_folders(raw, {"ant": 12, "bee": 12, "cat": 12})
    return raw


class Cli:
    """The real `lensops` Typer app, invoked in process."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        from lensops.cli import app

        return self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a server a test starts (and stops)."""
    from lensops.core.ports import free_port

    return free_port()


# --- training fixtures: one Ray and one small prepared dataset per test session --------------

TINY_TRAINING = [
    "train.epochs=2",
    "train.batch_size=16",
    "train.preprocessing.size=16",
    "train.num_workers=2",
    "train.early_stopping_patience=5",
    "registry.model_name=tiny",
    "registry.experiment=tiny",
]
# For fixtures whose subject is not the input path: a DataLoader per worker starts in a second,
# where a Ray Data pipeline takes about ten on two cores (test_training covers both paths).
TINY_TRAINING_FAST_INPUT = [*TINY_TRAINING, "train.input=dataloader"]


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray shared by every test that needs one (it takes seconds to start)."""

    import ray

    if not ray.is_initialized():
        # The dashboard holds the state API that Ray Train's placement-group cleaner needs (see lensops.core.compute).
        # address="local": never join a cluster a crashed test left in /tmp/ray/ray_current_cluster.
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_project(tmp_path_factory) -> Path:
    """A prepared project of three digit classes at 16x16, built once per session."""
    from data.digits import write_digits
    from data.prepare import prepare_dataset
    from lensops.core.settings import load_settings

    root = tmp_path_factory.mktemp("digits_project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    everything = root / "all"
    write_digits(everything, size=16)
    for label in ("0", "1", "7"):
        shutil.copytree(everything / label, root / "data" / "raw" / label)
    shutil.rmtree(everything)
    prepare_dataset(load_settings(root / "params.yaml"), progress=False)
    return root


def project_copy(digits_project: Path, dest: Path) -> Path:
    """A private copy of the prepared project (its own mlruns/ and ray_results/)."""
    shutil.copytree(digits_project, dest, ignore=shutil.ignore_patterns("mlruns", "ray_results", "reports", "metrics"))
    return dest


def champion_project(digits_project: Path, dest: Path, overrides: list[str], reason: str):
    """A private copy of the prepared project whose trained model is @champion; its settings."""
    from lensops.core.settings import load_settings
    from training.promotion import promote
    from training.train import train

    settings = load_settings(project_copy(digits_project, dest) / "params.yaml", overrides)
    train(settings, progress=False)
    promote(settings, reason=reason, force=True)
    return settings


def mlflow_client(settings):
    """An MLflow client on the project's own store, as lensops reaches it (no process-global URI)."""
    from lensops.core.registry import Registry

    return Registry.of(settings).client()


def register_tiny_export(registry) -> str:
    """One real export of a small untrained network registered as a version of `tiny`; its run id."""
    import numpy as np
    import torch

    from lensops.core import tags as T
    from lensops.core.model_artifact import baseline_frame, register_model
    from lensops.core.settings import PreprocessingSpec
    from training.models import create_model

    client = registry.client()
    torch.manual_seed(0)
    run_id = client.create_run(registry.experiment_id("tiny"), tags={T.STAGE: "train"}).info.run_id
    labels = np.array([0, 1, 2, 0, 1, 2])
    embeddings = np.random.default_rng(0).normal(size=(6, 128)).astype(np.float32)
    register_model(
        registry,
        run_id=run_id,
        model=create_model("smallcnn", 3).eval(),
        example=np.zeros((2, 3, 16, 16), np.float32),
        classes=["a", "b", "c"],
        spec=PreprocessingSpec(size=16),
        metrics={"test": {"accuracy": 0.5}, "val": {"accuracy": 0.5}},
        baseline=baseline_frame(embeddings, labels, labels, [f"{i}.png" for i in range(6)], ["a", "b", "c"]),
    )
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="session")
def team_stack():
    """One `lensops stack` (PostgreSQL, the object store, an MLflow server) for the tests that need it.

    Its folder is outside pytest's private temp folder, which PostgreSQL's own user cannot enter.
    Yields the stack; `stack.state()["env"]` is what `lensops stack up` tells a user to export.
    """
    import tempfile

    from lensops.stack import Stack

    folder = Path(tempfile.mkdtemp(prefix="lensops-stack-"))
    stack = Stack(folder, log=lambda line: None)
    stack.up()
    try:
        yield stack
    finally:
        stack.down(quiet=True, keep_objects=False)  # the folder goes next: no copy of the objects
        shutil.rmtree(folder, ignore_errors=True)
