from pathlib import Path

import pytest
import yaml

from lensops.core.settings import Settings, SettingsError, load_settings, parse_override, tracking_uri
from tests.conftest import REPO


def test_repository_params_equal_the_coded_defaults():
    # params.yaml documents the defaults; the two must not drift apart.
    from_file = load_settings(REPO / "params.yaml").model_dump(by_alias=True)
    assert from_file == Settings().model_dump(by_alias=True)


def test_unknown_key_in_file_names_key_and_nearest(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"prepare": {"sed": 3}}))
    with pytest.raises(SettingsError) as e:
        load_settings(params)
    assert "unknown key 'prepare.sed'" in str(e.value)
    assert "did you mean 'prepare.seed'" in str(e.value)
    assert str(params) in str(e.value)


def test_unknown_section_suggests_nearest(project):
    with pytest.raises(SettingsError, match=r"unknown key 'prepar'.*'prepare'"):
        load_settings(overrides=["prepar.seed=1"])


def test_unknown_key_without_close_match_lists_valid_keys(project):
    with pytest.raises(SettingsError, match="valid keys here: train, val, test, seed"):
        load_settings(overrides=["prepare.zzzzzz=1"])


def test_overrides_are_yaml_typed(project):
    s = load_settings(overrides=["prepare.seed=7", "validate.formats=[png, jpeg]", "data.classes=[a, b]"])
    assert s.prepare.seed == 7
    assert s.validate_.formats == ["PNG", "JPEG"]
    assert s.data.classes == ["a", "b"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("demo.size=abc", "demo.size"),
        ("prepare.train=0.5", "must be 1"),
        ("validate.formats=[PNG, XYZ]", "unknown image format 'XYZ'"),
        ("validate.max_pixels=-1", "validate.max_pixels"),
        ("prepare=3", "prepare"),
        ("noequals", "section.key=value"),
        ("=3", "section.key=value"),
        ("a..b=1", "empty part"),
    ],
)
def test_bad_overrides_are_rejected_with_the_key_named(project, override, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(overrides=[override])


def test_override_into_a_value_is_rejected(project):
    with pytest.raises(SettingsError, match="is a value, not a section"):
        load_settings(overrides=["prepare.seed.x=1"])


def test_parse_override():
    assert parse_override("prepare.seed=7") == (["prepare", "seed"], 7)
    assert parse_override("data.raw=some/dir") == (["data", "raw"], "some/dir")


def test_invalid_yaml_and_missing_explicit_file(tmp_path: Path):
    bad = tmp_path / "p.yaml"
    bad.write_text("prepare: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    bad.write_text("- a list\n- not sections\n")
    with pytest.raises(SettingsError, match="expected sections"):
        load_settings(bad)


def test_paths_resolve_against_the_params_folder(tmp_path: Path, monkeypatch):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "params.yaml").write_text("data:\n  raw: images\n")
    monkeypatch.chdir(tmp_path)
    s = load_settings(tmp_path / "proj" / "params.yaml")
    assert s.path(s.data.raw) == tmp_path / "proj" / "images"
    assert s.path("/abs/x") == Path("/abs/x")


def test_missing_default_params_file_gives_defaults_rooted_at_cwd(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LENSOPS_PARAMS", raising=False)
    s = load_settings()
    assert s.root == tmp_path.resolve()
    assert s.prepare == Settings().prepare


def test_tracking_uri_default_and_environment(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"


@pytest.mark.slow
def test_two_projects_in_one_process_keep_their_own_mlflow_stores(tmp_path: Path, monkeypatch):
    """Each project reaches its own store through an explicit client; no process-global URI is set or leaked."""
    import os

    from mlflow.tracking._tracking_service import utils as tracking_utils

    from lensops.core.registry import Registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.yaml").write_text((REPO / "params.yaml").read_text())
    first, second = (Registry.of(load_settings(tmp_path / name / "params.yaml")) for name in ("first", "second"))
    first.client().create_experiment("only-in-first")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing left behind for the next project or a subprocess
    assert tracking_utils._tracking_uri is None  # and no process-global tracking URI
    names = {e.name for e in second.client().search_experiments()}
    assert "only-in-first" not in names
    assert (tmp_path / "first" / "mlruns" / "mlflow.db").is_file() and (tmp_path / "second" / "mlruns").is_dir()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(tmp_path / "shared"))  # the user's choice wins
    shared = Registry.of(load_settings(tmp_path / "first" / "params.yaml"))
    assert shared.tracking_uri == tracking_uri(tmp_path / "shared")
    shared.client().create_experiment("in-shared")
    assert os.environ["MLFLOW_TRACKING_URI"] == tracking_uri(tmp_path / "shared")
    assert "in-shared" not in {e.name for e in first.client().search_experiments()}


def test_a_runs_params_give_back_its_settings(tmp_path):
    """`lensops reproduce` of a run logged before `settings.json`: its MLflow params, unflattened, are its settings."""
    from training.reproduce import settings_from_params
    from training.tracking import as_params

    original = load_settings(REPO / "params.yaml", ["train.weights=/models/start.pt", "data.classes=['0', '7']"])
    params = {p.key: p.value for p in as_params(original.model_dump(mode="json", by_alias=True))}
    assert params["train.weights"] == "/models/start.pt" and params["validate.max_frames"] == "1000"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings_from_params(params)))
    again = load_settings(tmp_path / "params.yaml")
    assert again.model_dump(mode="json") == original.model_dump(mode="json")
