"""Review on real traffic: a shadow challenger, the live review that judges it, and a canary.

One server for the module: champion v1 (a trained tiny model), `serve.shadow=challenger`, the
canary on. The candidates are variants of v1 registered here: the same weights with two class
names swapped, copies whose preprocessing spec their network cannot take (they raise on every
call), and exact copies. The tests run in file order; the last one promotes.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time

import numpy as np
import pandas as pd
import pytest
import requests

from tests.conftest import TINY_TRAINING_FAST_INPUT, champion_project, free_port
from tests.integration.test_serving import _test_images, _wait_healthy

pytestmark = pytest.mark.slow

OFFLINE_GATES_OFF = [
    f"review.gates.{name}=null"
    for name in ("min_accuracy", "max_accuracy_drop", "max_class_recall_drop", "max_latency_ratio", "max_slice_drop")
]
OVERRIDES = [
    *TINY_TRAINING_FAST_INPUT,
    *OFFLINE_GATES_OFF,
    "serve.alias_poll_seconds=0.5",
    "serve.shadow=challenger",
    "monitoring.flush_seconds=0.2",
    "review.gates.min_live_records=20",
    "review.latency_repeats=2",
    "review.robustness=[]",
    "serve.canary.min_requests=20",
    "monitoring.capture.sample_rate=1.0",  # every image kept: the report shows each disagreement
]


@pytest.fixture(scope="module")
def shadowed(ray_session, digits_project, tmp_path_factory):
    """Champion v1 served with `serve.shadow=challenger`; v2 (v1 with two classes swapped) is @challenger."""
    from ray import serve

    from serving.server import start

    settings = champion_project(
        digits_project, tmp_path_factory.mktemp("shadow") / "project", OVERRIDES, "shadow tests"
    )
    classes = _classes(settings, "1")
    swapped = register_variant(settings, "1", classes=[classes[0], classes[2], classes[1], *classes[3:]])
    url, _ = start(settings, port=free_port())
    _wait_healthy(url)
    test, raw = _test_images(settings, 40)
    images = [(raw / p).read_bytes() for p in test.path]
    yield settings, url, images, {"swapped": swapped, "classes": classes}
    serve.shutdown()


def _classes(settings, version: str) -> list[str]:
    from lensops.core.registry import Registry

    with Registry.of(settings).open(version) as handle:
        return list(handle.classes)


def register_variant(
    settings, source: str, *, classes: list[str] | None = None, size: int | None = None, slow: bool = False
) -> str:
    """v`source`'s weights registered again (new run, @challenger): with other class names, another
    input size, or (`slow`) the same answers some tens of milliseconds later."""
    import torch

    from lensops.core.model_artifact import register_model
    from lensops.core.registry import Registry
    from training.models import create_model

    registry = Registry.of(settings)
    with registry.open(source) as handle:
        model = create_model(settings.train.model, len(handle.classes))
        model.load_state_dict(handle.network().state_dict())
        spec, baseline, original = handle.spec, handle.baseline(), handle.spec.size
        names = classes or list(handle.classes)
    run_id = registry.client().create_run(registry.experiment_id(registry.model_name)).info.run_id
    with torch.no_grad():
        version = register_model(
            registry,
            run_id=run_id,
            model=(_slow(model) if slow else model).eval(),
            example=np.zeros((2, 3, original, original), np.float32),  # the network only takes this size
            classes=names,
            spec=spec.model_copy(update={"size": size or original}),
            metrics={"test": {"accuracy": 0.0}, "val": {"accuracy": 0.0}},
            baseline=baseline,
        )
    registry.client().set_terminated(run_id)
    return version


def _slow(network):
    import torch

    class Slow(torch.nn.Module):
        """The network, then a 1,024 x 1,024 matrix product multiplied by zero: the same answers,
        tens of milliseconds later."""

        def __init__(self):
            super().__init__()
            self.network = network
            self.register_buffer("weight", torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            logits, embedding = self.network(x)
            return logits + 0 * (self.weight @ self.weight).mean(), embedding

    return Slow()


def lensops(cli, settings, *args):
    """The CLI on the module's project, with its overrides."""
    return cli("--params", settings.root / "params.yaml", *args, *(a for o in OVERRIDES for a in ("-S", o)))


def _send(url: str, images: list[bytes], version: str | None = "1") -> list[str]:
    """Each image's top label; every answer a 200 (from `version`, when given)."""
    labels = []
    for body in images:
        answer = requests.post(f"{url}/predict", data=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert version is None or answer.json()["model"]["version"] == version
        labels.append(answer.json()["predictions"][0]["label"])
    return labels


def _send_both(url: str, images: list[bytes], version: str = "1") -> None:
    """`images` one by one through /predict, then together in one /predict/batch: every answer a
    200 from `version`."""
    _send(url, images, version)
    files = [("file", (f"{i}.png", body, "image/png")) for i, body in enumerate(images)]
    answer = requests.post(f"{url}/predict/batch", files=files, timeout=30)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [200] * len(images), results
    assert {r["model"]["version"] for r in results} == {version}


def _versions(url: str, images: list[bytes], n: int, keys: list[str | None], threads: int = 8) -> list[tuple]:
    """`n` requests (image and client key taken in turn) from a pool: (key, answering version) per request."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int):
        key = keys[i % len(keys)]
        headers = {"X-Client-Key": key} if key else {}
        answer = requests.post(f"{url}/predict", data=images[i % len(images)], headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        return key, answer.json()["model"]["version"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


@contextlib.contextmanager
def _traffic(url: str, image: bytes):
    """Requests one after another in a thread while the block runs; yields the list of their statuses."""
    statuses, stop = [], threading.Event()

    def send():
        while not stop.is_set():
            statuses.append(requests.post(f"{url}/predict", data=image, timeout=30).status_code)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        time.sleep(1)
        yield statuses
    finally:
        stop.set()
        thread.join()


def _until(condition, timeout: float = 30, every: float = 0.3, action=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout} s")
        if action is not None:
            action()
        time.sleep(every)


def _shadow_records(settings, version: str, since, n: int, url: str, images: list[bytes], timeout: float = 40):
    """Send `images` until the shadow log holds `n` records of `version` since `since`; returns them."""
    from lensops.core.log_reader import scan_log

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = scan_log(settings.path(settings.monitoring.shadow_log_dir), model_version=version, since=since).frame
        if len(frame) >= n:
            return frame
        _send(url, images)
        time.sleep(0.5)
    raise TimeoutError(f"fewer than {n} shadow records of v{version} after {timeout} s")


def _shadow_metric(url: str, outcome: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf'lensops_shadow_images_total{{outcome="{outcome}"}} ([0-9.e+]+)', text)
    return float(found[1]) if found else 0.0


def test_a_challenger_with_two_classes_swapped_disagrees_only_there_and_the_live_review_holds_it(shadowed, cli):
    settings, url, images, variants = shadowed
    since = pd.Timestamp.now(tz="UTC")
    _shadow_records(settings, variants["swapped"], since, len(images), url, images)
    out = settings.root / "live-swapped"
    result = lensops(cli, settings, "review", "--live", "--since", since.isoformat(), "--report-dir", out)
    assert result.exit_code == 3, result.output  # hold
    report = json.loads((out / "review.json").read_text())
    live = report["live"]
    first, second = variants["classes"][1:3]  # "1" and "7": the two classes a tiny model mixes up
    assert live["n"] >= len(images) and live["challenger_version"] == variants["swapped"]
    for name, per_class in live["per_class"].items():
        assert per_class["agreement"] == (0.0 if name in (first, second) else 1.0), name
    assert {first, second} & set(live["per_class"]) and set(live["per_class"]) - {first, second}  # both kinds
    assert {(d["champion"], d["challenger"]) for d in live["disagreements"]} <= {(first, second), (second, first)}
    failed = {g["name"] for g in report["gates"] if not g["passed"]}
    assert "max_live_class_disagreement" in failed
    page = (out / "review.html").read_text()
    assert "live: shadowed traffic" in page and "live: disagreements" in page
    assert (out / "live_matrix.png").is_file() and (out / "live_disagreements.png").is_file()
    assert "agreement" in result.output and "live" in result.output


def test_a_shadow_that_raises_on_every_call_changes_no_answer_and_the_server_stays_healthy(shadowed):
    from lensops.core.registry import Registry

    settings, url, images, variants = shadowed
    before = _send(url, images[:20])
    failed_before = _shadow_metric(url, "failed")
    broken = register_variant(settings, "1", size=2 * settings.train.preprocessing.size)  # now @challenger
    deadline = time.monotonic() + 30
    while _shadow_metric(url, "failed") < failed_before + 20 and time.monotonic() < deadline:
        assert _send(url, images[:20]) == before  # every answer the champion's, while the shadow fails
    assert _shadow_metric(url, "failed") >= failed_before + 20, "the broken shadow never ran"
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    Registry.of(settings).set_alias("challenger", variants["swapped"], reason="test done")
    assert broken


def test_a_canary_at_ten_percent_answers_ten_percent_sticks_per_key_and_stops_without_failing_a_request(shadowed, cli):
    from lensops.core import canary
    from lensops.core.registry import Registry

    settings, url, images, variants = shadowed
    registry = Registry.of(settings)
    candidate = register_variant(settings, "1")
    registry.set_alias("challenger", variants["swapped"], reason="the shadow stays on the swapped version")
    assert lensops(cli, settings, "canary", "start", candidate, "--fraction", "0.1").exit_code == 0
    _until(lambda: candidate in {v for _, v in _versions(url, images, 20, [None])})
    answered = [v for _, v in _versions(url, images, 2000, [None])]
    share = answered.count(candidate) / len(answered)
    assert set(answered) == {"1", candidate} and 0.07 <= share <= 0.13, share
    keyed = _versions(url, images, 600, [f"client-{i}" for i in range(200)])
    by_key = {}
    for key, version in keyed:
        by_key.setdefault(key, set()).add(version)
    assert all(len(v) == 1 for v in by_key.values())  # each client meets one version
    assert 0 < sum(v == {candidate} for v in by_key.values()) < 60
    assert "lensops_version_answers_total" in requests.get(f"{url}/metrics", timeout=10).text
    status = lensops(cli, settings, "canary", "status")
    assert f"canary v{candidate}" in status.output and "10.0%" in status.output

    # Stopped while traffic flows: every request is answered, and soon only by the champion.
    with _traffic(url, images[0]) as statuses:
        assert lensops(cli, settings, "canary", "stop", "--reason", "enough").exit_code == 0
        _until(lambda: {v for _, v in _versions(url, images, 40, [None])} == {"1"})
    assert statuses and set(statuses) == {200}
    assert canary.decision(registry, candidate) | {"at": "", "by": ""} == {
        "decision": "stopped", "why": "enough", "at": "", "by": ""
    }  # fmt: skip


def test_a_failing_canary_is_stopped_automatically_and_no_client_sees_its_failure(shadowed, cli):
    from lensops.core import canary
    from lensops.core.registry import Registry

    settings, url, images, variants = shadowed
    registry = Registry.of(settings)
    broken = register_variant(settings, "1", size=2 * settings.train.preprocessing.size)
    registry.set_alias("challenger", variants["swapped"], reason="the shadow stays on the swapped version")
    assert lensops(cli, settings, "canary", "start", broken, "--fraction", "0.5").exit_code == 0
    # A /predict/batch's chunk the canary was drawn to answer falls back on the champion as a whole.
    _until(lambda: not canary.status(registry)["running"], timeout=60, action=lambda: _send_both(url, images[:10]))
    decided = canary.decision(registry, broken)
    assert decided["decision"] == "stopped-automatically" and "error rate" in decided["why"], decided
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert re.search(
        rf'lensops_version_answers_total{{outcome="error",side="canary",version="{broken}"}} [1-9]', metrics
    )


def test_a_slow_canary_is_stopped_on_its_p95_latency_and_no_client_sees_an_error(shadowed, cli):
    from lensops.core import canary
    from lensops.core.registry import Registry

    settings, url, images, variants = shadowed
    registry = Registry.of(settings)
    slow = register_variant(settings, "1", slow=True)  # the champion's answers, tens of ms later
    registry.set_alias("challenger", variants["swapped"], reason="the shadow stays on the swapped version")
    assert lensops(cli, settings, "canary", "start", slow, "--fraction", "0.5").exit_code == 0
    _until(lambda: not canary.status(registry)["running"], timeout=60, action=lambda: _send(url, images[:10], None))
    decided = canary.decision(registry, slow)
    assert decided["decision"] == "stopped-automatically" and "p95 latency" in decided["why"], decided
    assert _send(url, images[:10]) and requests.get(f"{url}/healthz", timeout=10).status_code == 200


def test_promotion_after_a_passing_live_review_records_the_live_evidence(shadowed, cli):
    from lensops.core import tags as T
    from lensops.core.registry import Registry

    settings, url, images, _ = shadowed
    copy = register_variant(settings, "1")  # the champion's weights and classes: it agrees everywhere
    since = pd.Timestamp.now(tz="UTC")
    _shadow_records(settings, copy, since, 30, url, images)
    out = settings.root / "live-copy"
    result = lensops(cli, settings, "review", "--live", "--since", since.isoformat(), "--report-dir", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "review.json").read_text())
    assert report["live"]["agreement"] == 1.0 and report["verdict"] == "promote"
    assert {g["name"] for g in report["gates"]} >= {"min_live_records", "min_live_agreement"}
    assert lensops(cli, settings, "canary", "start", copy, "--fraction", "0.5").exit_code == 0
    _until(lambda: copy in {v for _, v in _versions(url, images, 20, [None])})
    with _traffic(url, images[0]) as statuses:  # promoted while traffic flows
        assert lensops(cli, settings, "canary", "promote").exit_code == 0
        _until(lambda: {v for _, v in _versions(url, images, 20, [None])} == {copy})
    assert statuses and set(statuses) == {200}
    assert Registry.of(settings).aliases()["champion"] == copy and "canary" not in Registry.of(settings).aliases()
    tags = Registry.of(settings).client().get_model_version(settings.registry.model_name, copy).tags
    assert tags[T.alias_tag("champion", T.PROMOTION_LIVE)].startswith(f"n={report['live']['n']} agreement=1.000")
    assert tags[T.REVIEW_LIVE] == tags[T.alias_tag("champion", T.PROMOTION_LIVE)]
