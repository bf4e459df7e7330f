"""The one way to open a model version, on a real MLflow store with really registered (untrained) versions."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import pytest

from lensops.core import tags as T
from lensops.core.registry import (
    CHALLENGER,
    CHAMPION,
    Reference,
    Registry,
    UnknownModelError,
    parse_reference,
)


@pytest.mark.parametrize(
    "ref, expected",
    [
        (None, Reference("digits", alias="champion")),
        ("7", Reference("digits", version="7")),
        ("v7", Reference("digits", version="7")),
        ("champion", Reference("digits", alias="champion")),
        ("@challenger", Reference("digits", alias="challenger")),
        ("other/3", Reference("other", version="3")),
        ("other@previous", Reference("other", alias="previous")),
        ("models:/digits/12", Reference("digits", version="12")),
        ("models:/other@champion", Reference("other", alias="champion")),
    ],
)
def test_every_reference_form_parses_to_one_meaning(ref, expected):
    assert parse_reference(ref, model_name="digits") == expected


@pytest.mark.parametrize("ref", ["s3://bucket/model", "models:/", "a@b@c", "digits/latest"])
def test_a_malformed_reference_is_a_usage_error(ref):
    with pytest.raises(UnknownModelError):
        parse_reference(ref, model_name="digits")


def test_legacy_tag_keys_read_as_the_current_ones():
    old = {"lensops.run_id": "r1", "lensops.trigger_run_id": "r2", "lensops.review.verdict": "promote"}
    assert T.normalize(old) == {T.TRAINING_RUN: "r1", T.RETRAIN_RUN: "r2", T.REVIEW_VERDICT: "promote"}
    assert T.normalize({"lensops.run_id": "old", T.TRAINING_RUN: "new"})[T.TRAINING_RUN] == "new"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """Two registered versions of `tiny` (small untrained networks, real files), v1 champion, v2 challenger."""
    from lensops.core.model_artifact import baseline_frame, register_model
    from lensops.core.settings import PreprocessingSpec
    from training.models import create_model

    root = tmp_path_factory.mktemp("registry")
    registry = Registry(f"sqlite:///{root / 'mlflow.db'}", "tiny", (root / "artifacts").as_uri())
    client = registry.client()
    spec = PreprocessingSpec(size=16)
    for seed in (1, 2):
        import torch

        torch.manual_seed(seed)
        model = create_model("smallcnn", 3).eval()
        run_id = client.create_run(registry.experiment_id("tiny"), tags={T.STAGE: "train"}).info.run_id
        embeddings = np.random.default_rng(seed).normal(size=(6, 128)).astype(np.float32)
        labels = np.array([0, 1, 2, 0, 1, 2])
        baseline = baseline_frame(embeddings, labels, labels, [f"{i}.png" for i in range(6)], ["a", "b", "c"])
        metrics = {"test": {"accuracy": 0.5}, "val": {"accuracy": 0.5}}
        register_model(
            registry,
            run_id=run_id,
            model=model,
            example=np.zeros((2, 3, 16, 16), np.float32),
            classes=["a", "b", "c"],
            spec=spec,
            metrics=metrics,
            baseline=baseline,
        )
        client.set_terminated(run_id)
    registry.set_alias(CHAMPION, "1", reason="test")
    return registry


def test_any_reference_opens_the_same_version_with_its_metadata(registry):
    for ref in ("1", "v1", "champion", "@champion", "tiny/1", "models:/tiny@champion"):
        with registry.open(ref) as version:
            assert (version.name, version.version) == ("tiny", "1")
            assert version.aliases == [CHAMPION] and version.tags[T.STAGE] == "train"
            assert version.run_id and version.tags[T.TRAINING_RUN] == version.run_id
    with registry.open(default_alias=CHALLENGER) as version:
        assert version.version == "2" and version.tags[T.TEST_ACCURACY] == "0.5000"


def test_an_unknown_reference_lists_what_exists(registry):
    with pytest.raises(UnknownModelError, match=r"has versions 1, 2; aliases: @challenger=v2, @champion=v1"):
        registry.open("9")
    with pytest.raises(UnknownModelError, match="no registered model 'other'"):
        registry.open("other/1")
    client = registry.client()
    client.delete_registered_model_alias("tiny", CHAMPION)
    try:
        with pytest.raises(UnknownModelError, match="promote one with `lensops promote`"):
            registry.open()  # the default: @champion, not set yet
    finally:
        client.set_registered_model_alias("tiny", CHAMPION, "1")


def test_files_are_fetched_only_when_asked(registry):
    with registry.open("2") as version:
        assert version._cache is None  # metadata needs no download
        baseline = version.baseline()
        assert isinstance(baseline, pd.DataFrame) and len(baseline) == 6
        fetched = {p.relative_to(version._cache).as_posix() for p in version._cache.rglob("*") if p.is_file()}
        assert fetched == {"extra_files/baseline_embeddings.parquet"}  # drift never downloads the network
        assert version.classes == ["a", "b", "c"] and version.spec.size == 16
        logits, embedding = version.network()(__import__("torch").zeros(4, 3, 16, 16))
        assert tuple(logits.shape) == (4, 3) and tuple(embedding.shape) == (4, 128)


def test_opening_switching_and_closing_leaves_no_temporary_folders(registry, tmp_path, monkeypatch):
    from serving.model import AliasFollower, load_served

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for ref in ("1", "2", "@champion"):
        with registry.open(ref) as version:
            version.network(), version.baseline(), version.metrics
    served = load_served(registry, "1", "cpu")  # what the serving replica does at start and on each switch
    follower = AliasFollower(registry, "@champion")
    assert follower.candidate(served.version) is None
    registry.set_alias(CHAMPION, "2", reason="switch")
    try:
        assert follower.candidate(served.version) == "2"
        served = load_served(registry, "2", "cpu")
        assert served.version == "2" and served.classes == ["a", "b", "c"]
    finally:
        registry.set_alias(CHAMPION, "1", reason="back")
    assert list(tmp_path.iterdir()) == []


def test_a_version_that_fails_to_load_backs_off_instead_of_retrying_every_poll(registry):
    from serving.model import AliasFollower

    follower = AliasFollower(registry, "@challenger")
    assert follower.candidate("1") == "2"
    first = follower.failed_to_load("2", poll_seconds=2)
    assert follower.candidate("1") is None  # backing off
    assert follower.failed_to_load("2", poll_seconds=2) == 2 * first  # and the wait doubles


def test_retraining_decides_from_the_version_its_own_run_produced(registry):
    from monitoring.retrain import own_version

    inputs = {T.RAW_HASH: "r", T.CODE_HASH: "c", T.TRAINING_PARAMS_HASH: "p"}
    registry.tag_version("2", {T.RETRAIN_RUN: "run-a"})
    assert own_version(registry, "run-a", inputs).version == "2"  # named by its training run
    assert own_version(registry, "run-b", inputs) is None  # nothing of this run, nothing trained on these inputs
    registry.tag_version("2", inputs)  # a version trained on exactly the current inputs, left unpromoted
    assert own_version(registry, "run-b", inputs).version == "2"
    registry.tag_version("1", inputs)
    assert own_version(registry, "run-b", inputs).version == "2"  # never the champion itself
