"""Loading a registered version runs no code from its artifact: the archive is checked before it is opened.

Whoever can write to a shared artifact store could otherwise run code in serving, review, drift
and replay, which all load versions through `lensops.core.model_artifact.load_network`:

- `torch.export.load` unpickles (with `weights_only=False`) any payload the archive's weights or
  constants config marks `use_pickle`, and the example inputs (a `torch.save` file);
- MLflow's loaders import the module an `MLmodel` file names (`pickle_module_name`,
  `loader_module`) and put its `code` folder on the path.

So before loading, the `MLmodel` file must name only MLflow's own PyTorch modules and no code
folder, and the `.pt2` archive must hold only the members a lensops export writes (a version
folder, JSON configs, raw tensor bytes, one `torch.save` file of example inputs), with no payload
marked `use_pickle` and, inside the example inputs, no pickle global but the handful that rebuild
a tensor. Anything else is refused with `UntrustedArtifact`, naming what was found. MLflow's own
check (`weights_only` unpickling of every record) runs too, whatever `MLFLOW_ALLOW_PICKLE_
DESERIALIZATION` says. `registry.trust_artifacts: true` skips all of it, for a store only you write.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from pathlib import Path

import yaml

from .errors import UsageError

MEMBERS = re.compile(
    r"^[\w.-]+/("
    r"archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json"
    r"|data/(weights|constants)/[\w.-]+"
    r"|data/sample_inputs/[\w.-]+\.pt"
    r")$"
)
CONFIGS = re.compile(r"^[\w.-]+/data/(weights|constants)/[\w.-]+_config\.json$")
# What a `torch.save` of plain tensors in tuples, lists and dicts names, and nothing else.
SAFE_GLOBALS = {
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "collections.OrderedDict",
    "torch.Size",
    *(f"torch.{kind}Storage" for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char")),
    *(f"torch.{kind}Storage" for kind in ("Byte", "Bool")),
}
TORCH_MODULES = {None, "mlflow.pytorch", "mlflow.pytorch.pickle_module"}


class UntrustedArtifact(UsageError):
    """A version's files hold something that could run code on loading."""


def check_mlmodel(path: Path) -> None:
    """The MLmodel file names no module but MLflow's PyTorch ones, and no code folder."""
    try:
        meta = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UntrustedArtifact(f"{path}: not a readable MLmodel file ({e})") from None
    flavors = meta.get("flavors") or {}
    unknown = sorted(set(flavors) - {"pytorch", "python_function"})
    if unknown:
        raise UntrustedArtifact(f"{path}: flavors {unknown} are not a lensops export")
    for name, flavor in flavors.items():
        flavor = flavor or {}
        for key in ("pickle_module_name", "loader_module"):
            if flavor.get(key) not in TORCH_MODULES:
                raise UntrustedArtifact(f"{path}: flavor {name} names module {flavor[key]!r} ({key})")
        if flavor.get("code"):
            raise UntrustedArtifact(f"{path}: flavor {name} ships code ({flavor['code']!r}) to import")


def check_pt2(path: Path) -> None:
    """Only a lensops export's members; no pickled payload; example inputs of plain tensors."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise UntrustedArtifact(f"{path}: not a pt2 archive ({e})") from None
    with archive:
        for member in archive.namelist():
            if member.endswith("/"):
                continue
            if not MEMBERS.match(member):
                raise UntrustedArtifact(f"{path}: unexpected member {member!r} in the archive")
            if CONFIGS.match(member):
                _check_config(path, member, archive.read(member))
            elif member.endswith(".pt"):
                _check_torch_save(path, member, archive.read(member))


def _check_config(path: Path, member: str, data: bytes) -> None:
    try:
        entries = json.loads(data).get("config", {})
    except (ValueError, AttributeError):
        raise UntrustedArtifact(f"{path}: {member} is not a JSON config") from None
    pickled = sorted(name for name, entry in entries.items() if not isinstance(entry, dict) or entry.get("use_pickle"))
    if pickled:
        raise UntrustedArtifact(f"{path}: {member} marks {pickled[:3]} as pickled payloads")


def _check_torch_save(path: Path, member: str, data: bytes) -> None:
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UntrustedArtifact(f"{path}: {member} is not a torch.save archive") from None
    with inner:
        for name in inner.namelist():
            if name.endswith(".pkl"):
                for found in _globals(inner.read(name), f"{member}:{name}", path):
                    if found not in SAFE_GLOBALS:
                        raise UntrustedArtifact(f"{path}: {member} names {found!r}, which unpickling would call")


def _globals(data: bytes, where: str, path: Path) -> list[str]:
    """Every global a pickle stream would look up (GLOBAL and INST name theirs in the opcode).

    STACK_GLOBAL takes its name from the stack, which the memo can fill from anywhere: it is
    refused outright (`torch.save` writes protocol 2, which never uses it)."""
    found = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append("<a global named on the stack>")
    except Exception as e:  # a stream pickletools cannot walk is one no one should unpickle
        raise UntrustedArtifact(f"{path}: {where} is not a well-formed pickle ({e})") from None
    return found
