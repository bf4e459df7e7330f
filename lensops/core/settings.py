"""Typed settings: `params.yaml`, `-S key=value` overrides and the environment.

`params.yaml` has one section per stage. Each section is a pydantic model that forbids
unknown keys, so a typo such as `prepare.sed` fails loudly (naming `prepare.seed`) instead
of silently running with the default seed.

Relative paths in the settings are relative to the project root: the folder that holds the
params file (or the working directory when there is none). Nothing here runs at import.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from .errors import UsageError
from .review_sections import GateSettings, ReviewSettings
from .sections import (
    KNOWN_FORMATS,
    AuditSettings,
    CaptureSettings,
    DataSettings,
    DemoSettings,
    DriftSettings,
    LabelSettings,
    MonitoringSettings,
    MonitorSettings,
    NearDuplicateSettings,
    PrepareSettings,
    PreprocessingSpec,
    QualitySettings,
    RegistrySettings,
    RetrainSettings,
    Section,
    ServeSettings,
    TrainSettings,
    TuneSettings,
    ValidateSettings,
)

__all__ = [
    "KNOWN_FORMATS",
    "AuditSettings",
    "CaptureSettings",
    "DataSettings",
    "DemoSettings",
    "DriftSettings",
    "GateSettings",
    "LabelSettings",
    "MonitoringSettings",
    "NearDuplicateSettings",
    "PrepareSettings",
    "PreprocessingSpec",
    "QualitySettings",
    "RegistrySettings",
    "RetrainSettings",
    "ReviewSettings",
    "ServeSettings",
    "Settings",
    "SettingsError",
    "TrainSettings",
    "TuneSettings",
    "ValidateSettings",
    "load_settings",
    "tracking_uri",
]

PARAMS_FILE = "params.yaml"


class SettingsError(UsageError):
    """Raised for a params file or override that cannot be used; the message says what to fix."""


class Settings(Section):
    data: DataSettings = Field(default_factory=DataSettings)
    demo: DemoSettings = Field(default_factory=DemoSettings)
    validate_: ValidateSettings = Field(default_factory=ValidateSettings, alias="validate")
    prepare: PrepareSettings = Field(default_factory=PrepareSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    label: LabelSettings = Field(default_factory=LabelSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def root(self) -> Path:
        return self._root

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A copy with dotted keys replaced (`{"train.lr": 0.001}`), validated as params.yaml is."""
        tree = self.model_dump(mode="json", by_alias=True)
        for key, value in changes.items():
            _apply(tree, key.split("."), value, key)
        try:
            settings = Settings.model_validate(tree)
        except ValidationError as e:
            raise SettingsError("\n".join(_describe(err, "changed settings") for err in e.errors())) from None
        settings._root = self._root
        return settings

    def path(self, p: Path | str) -> Path:
        """A settings path made absolute against the project root."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else self._root / p


def tracking_uri(root: Path | None = None) -> str:
    """MLflow tracking URI: `MLFLOW_TRACKING_URI`, else a SQLite store under `<root>/mlruns/`."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = (root or Path.cwd()).resolve()
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`prepare.seed=7` -> (["prepare", "seed"], 7). Values are YAML, as in `dvc exp run -S`."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"override {text!r} is not of the form section.key=value (e.g. prepare.seed=7)")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise SettingsError(f"override {text!r} has an empty part in its key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SettingsError(f"override {text!r}: value is not valid YAML ({e})") from None
    return parts, value


def _apply(tree: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SettingsError(f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the model that holds the key at `loc` (for "did you mean" hints)."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return [f.alias or n for n, f in model.model_fields.items()]


def _describe(err: dict[str, Any], source: str) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        valid = _fields_at(err["loc"])
        close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.5)
        prefix = "".join(f"{p}." for p in err["loc"][:-1])
        hint = f"did you mean {prefix + close[0]!r}?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{source}: unknown key {key!r} ({hint})"
    where = f"{key}: " if key else ""
    return f"{source}: {where}{err['msg']} (got {err.get('input')!r})"


def load_settings(params: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Read the params file (default `./params.yaml`, or `LENSOPS_PARAMS`), apply overrides, validate."""
    explicit = params is not None or "LENSOPS_PARAMS" in os.environ
    path = Path(params or os.environ.get("LENSOPS_PARAMS") or PARAMS_FILE).expanduser()
    tree: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SettingsError(f"{path}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{path}: expected sections (a mapping), got {type(loaded).__name__}")
        tree = loaded or {}
    elif explicit:
        raise SettingsError(f"params file {path} does not exist")

    for text in overrides:
        parts, value = parse_override(text)
        _apply(tree, parts, value, text)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as e:
        overridden = [tuple(parse_override(t)[0]) for t in overrides]
        lines = []
        for err in e.errors():
            loc = tuple(str(p) for p in err["loc"])
            hit = any(loc[: len(o)] == o or o[: len(loc)] == loc for o in overridden)
            lines.append(_describe(err, f"{path.name} with -S overrides" if hit else str(path)))
        raise SettingsError("\n".join(lines)) from None
    settings._root = path.resolve().parent if path.is_file() else Path.cwd().resolve()
    return settings
