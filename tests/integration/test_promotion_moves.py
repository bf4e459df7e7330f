"""Promotion and rollback move two aliases; no reader may see them on one version, or neither set."""

from __future__ import annotations

import threading
from urllib.parse import urlparse

import pytest

from lensops.core import tags as T
from lensops.core.registry import CHAMPION, PREVIOUS, Registry
from tests.conftest import register_tiny_export

pytestmark = pytest.mark.slow


@pytest.fixture
def three_versions(tmp_path, monkeypatch):
    """Settings of a project whose registry holds three versions of `tiny` (one real export, registered thrice)."""
    from lensops.core.settings import load_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = load_settings(overrides=["registry.model_name=tiny"])
    registry = Registry.of(settings)
    run_id = register_tiny_export(registry)
    client = registry.client()
    files = urlparse(client.get_model_version_download_uri("tiny", "1")).path
    for _ in range(2):
        client.create_model_version("tiny", f"file://{files}", run_id=run_id)
    return settings


def test_no_reader_sees_both_aliases_on_one_version_or_neither(three_versions):
    from training.promotion import promote, rollback

    settings = three_versions
    registry = Registry.of(settings)
    promote(settings, "1", reason="first", force=True)
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(registry.aliases())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for step in range(3):
            promote(settings, str(2 + step % 2), reason=f"move {step}", force=True)
            rollback(settings, reason=f"back {step}")  # a swap: the two aliases trade versions
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 20
    bad = [a for a in seen if CHAMPION not in a or a[CHAMPION] == a.get(PREVIOUS)]
    assert bad == [], bad[:3]
    assert registry.aliases() == {"challenger": "1", CHAMPION: "1", PREVIOUS: "2"}  # v2, rolled back to v1


def test_a_move_that_died_half_way_is_repaired_by_the_next_rollback(three_versions):
    from training.promotion import promote, rollback

    settings = three_versions
    registry = Registry.of(settings)
    promote(settings, "1", reason="first", force=True)
    promote(settings, "2", reason="second", force=True)
    # What a promotion of v3 leaves when its process dies before the last write: v3 is the
    # champion, tagged with what `previous` must become (v2), and `previous` is gone.
    registry.tag_version("3", {T.alias_tag(CHAMPION, T.REPLACED): "2"})
    registry.client().delete_registered_model_alias("tiny", PREVIOUS)
    registry.set_alias(CHAMPION, "3", reason="interrupted")
    move = rollback(settings, reason="incident")
    assert move.champion == "2" and registry.aliases() == {"challenger": "1", CHAMPION: "2", PREVIOUS: "3"}
    with registry.open("2") as handle:
        assert handle.tags[T.alias_tag(CHAMPION, T.PROMOTION_VERDICT)] == "rollback"
