"""Shared fixtures: a throw-away project folder, real image folders, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.imagefactory import write_class_folders

REPO = Path(__file__).resolve().parents[1]


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
