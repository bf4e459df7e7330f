"""A registry nobody can poison: versions whose files could run code on loading are refused.

Each poisoned version is a real registered version whose files are a copy of a real export,
altered the way an attacker with write access to the artifact store would alter them.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from lensops.core.artifact_check import UntrustedArtifact, check_pt2
from lensops.core.registry import Registry
from tests.conftest import register_tiny_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Registry, Path]:
    """One real registered export of a small network, and its files on disk."""
    root = tmp_path_factory.mktemp("artifacts")
    registry = Registry(f"sqlite:///{root / 'mlflow.db'}", "tiny", (root / "artifacts").as_uri())
    register_tiny_export(registry)
    client = registry.client()
    return registry, Path(urlparse(client.get_model_version_download_uri("tiny", "1")).path)


def poisoned(registry: Registry, files: Path, dest: Path, alter) -> str:
    """A new version of `tiny` whose files are a copy of `files`, altered by `alter(folder)`."""
    shutil.copytree(files, dest)
    alter(dest)
    return str(registry.client().create_model_version("tiny", dest.as_uri(), run_id=None).version)


def rewrite(archive: Path, changes: dict[str, bytes | None]) -> None:
    """The zip with members replaced (bytes), removed (None) or added."""
    members = {}
    with zipfile.ZipFile(archive) as old:
        members = {name: old.read(name) for name in old.namelist()}
    for name, data in changes.items():
        full = next((m for m in members if m.endswith(name)), f"model/{name}")
        members.pop(full, None)
        if data is not None:
            members[full] = data
    with zipfile.ZipFile(archive, "w") as new:
        for name, data in members.items():
            new.writestr(name, data)


def opener(marker: Path) -> bytes:
    """A pickle that creates `marker` when unpickled: proof that code ran."""
    return (
        b"\x80\x02cbuiltins\nopen\nq\x00X"
        + len(str(marker)).to_bytes(4, "little")
        + str(marker).encode()
        + (b"X\x01\x00\x00\x00w\x86R.")
    )


def torch_save_with(pickle_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as inner:
        inner.writestr("archive/data.pkl", pickle_bytes)
        inner.writestr("archive/version", b"3\n")
    return buffer.getvalue()


def test_a_clean_export_loads(clean):
    registry, files = clean
    check_pt2(files / "data" / "model.pt2")
    with registry.open("1") as version:
        logits, embedding = version.network()(__import__("torch").zeros(1, 3, 16, 16))
    assert logits.shape == (1, 3) and embedding.shape == (1, 128)


def test_a_pickled_weight_is_refused_and_would_have_run_code(clean, tmp_path, monkeypatch):
    registry, files = clean
    marker = tmp_path / "code-ran"

    def alter(folder: Path) -> None:
        archive = folder / "data" / "model.pt2"
        with zipfile.ZipFile(archive) as z:
            config = json.loads(z.read("model/data/weights/model_weights_config.json"))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        rewrite(archive, {"weights/model_weights_config.json": json.dumps(config).encode(),
                          f"weights/{first['path_name']}": opener(marker)})  # fmt: skip

    version = poisoned(registry, files, tmp_path / "v", alter)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # does not switch lensops' check off
    with registry.open(version) as handle, pytest.raises(UntrustedArtifact, match="pickled payloads"):
        handle.network()
    assert not marker.exists()
    trusting = Registry(registry.tracking_uri, "tiny", registry.artifact_root, trust_artifacts=True)
    with trusting.open(version) as handle, pytest.raises(Exception):  # noqa: B017  (what fails after is torch's business)
        handle.network()
    assert marker.exists()  # what the check stopped: the archive ran its code on loading


@pytest.mark.parametrize(
    "payload, found",
    [
        (opener(Path("/tmp/never")), "builtins.open"),
        (pickle.dumps(print, protocol=4), "named on the stack"),
        (b"\x80\x02cos\nsystem\nq\x00.", "os.system"),
    ],
    ids=["open", "stack-global", "os-system"],
)
def test_example_inputs_that_name_a_global_are_refused(clean, tmp_path, payload, found):
    registry, files = clean
    alter = lambda folder: rewrite(folder / "data" / "model.pt2", {"sample_inputs/model.pt": torch_save_with(payload)})  # noqa: E731
    version = poisoned(registry, files, tmp_path / "v", alter)
    with registry.open(version) as handle, pytest.raises(UntrustedArtifact, match=found):
        handle.network()


def test_unexpected_members_and_modules_named_by_mlmodel_are_refused(clean, tmp_path):
    registry, files = clean
    add_library = lambda f: rewrite(f / "data" / "model.pt2", {"data/aot.so": b"\x7fELF"})  # noqa: E731
    not_a_zip = lambda f: (f / "data" / "model.pt2").write_bytes(b"not a zip")  # noqa: E731

    def names_a_module(folder: Path) -> None:
        meta = yaml.safe_load((folder / "MLmodel").read_text())
        meta["flavors"]["python_function"]["loader_module"] = "evil.loader"
        (folder / "MLmodel").write_text(yaml.safe_dump(meta))

    def ships_code(folder: Path) -> None:
        meta = yaml.safe_load((folder / "MLmodel").read_text())
        meta["flavors"]["pytorch"]["code"] = "code"
        (folder / "MLmodel").write_text(yaml.safe_dump(meta))

    cases = {
        poisoned(registry, files, tmp_path / "a", add_library): "unexpected member 'model/data/aot.so'",
        poisoned(registry, files, tmp_path / "b", names_a_module): "names module 'evil.loader'",
        poisoned(registry, files, tmp_path / "c", ships_code): "ships code",
        poisoned(registry, files, tmp_path / "d", not_a_zip): "not a pt2",
    }
    for version, message in cases.items():
        with registry.open(version) as handle, pytest.raises(UntrustedArtifact, match=message):
            handle.network()
