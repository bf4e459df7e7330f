"""The Ray Serve application on 127.0.0.1 with a tiny registered model: the HTTP contract end to end."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
import torch

from tests.conftest import TINY_TRAINING_FAST_INPUT, champion_project, free_port
from tests.data.test_upload import AWKWARD, BAD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(ray_session, digits_project, tmp_path_factory):
    """A trained, promoted `tiny` model behind the real application; stopped by this fixture."""
    from ray import serve

    from serving.server import start

    overrides = [
        *TINY_TRAINING_FAST_INPUT,
        "serve.alias_poll_seconds=0.5",
        "monitoring.flush_seconds=0.2",
        "monitoring.capture.sample_rate=1.0",  # every answer captured: the capture test can name each file
    ]
    settings = champion_project(
        digits_project, tmp_path_factory.mktemp("serving") / "project", overrides, "serving tests"
    )
    url, started_ray = start(settings, port=free_port())
    assert not started_ray  # it joined the session's Ray
    _wait_healthy(url)
    yield [settings, url]  # a list: a test that deploys the application again puts its new address here
    serve.shutdown()


def _wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} never became healthy")


def _deploy(app) -> str:
    """The application deployed again (new settings), once healthy; its address. With Ray Serve's
    direct ingress each new ingress replica listens on a port of its own."""
    from ray import serve

    from serving.server import ingress_url

    serve.run(app, name="lensops", route_prefix="/", blocking=False)
    url = ingress_url("127.0.0.1", 0)
    _wait_healthy(url)
    return url


def _test_images(settings, n: int = 12):
    from data.prepare import load_prepared
    from training.datasets import split_frame

    manifest, _, raw = load_prepared(settings.path(settings.data.prepared))
    test = split_frame(manifest, "test").head(n)
    return test, raw


def test_answers_match_the_offline_evaluation_path(served):
    from lensops.core.registry import Registry
    from training.datasets import load_images

    settings, url = served
    test, raw = _test_images(settings)
    with Registry.of(settings).open("@champion") as files, torch.no_grad():
        logits, _ = files.network()(torch.from_numpy(load_images(test, raw, files.spec)))
    expected = torch.softmax(logits, dim=1).numpy()
    for row, path in enumerate(test.path):
        answer = requests.post(
            f"{url}/predict?top_k=3", data=(raw / path).read_bytes(), headers={"content-type": "image/png"}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == {"name": "tiny", "version": files.version}
        assert body["request_id"] == answer.headers["x-request-id"]  # the id Ray Serve answers with
        top = body["predictions"][0]
        assert top["label"] == files.classes[int(expected[row].argmax())]
        assert top["score"] == pytest.approx(float(expected[row].max()), abs=1e-5)
        assert [p["score"] for p in body["predictions"]] == sorted(
            (p["score"] for p in body["predictions"]), reverse=True
        )


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_get_the_right_4xx_and_the_server_stays_healthy(served, name):
    _, url = served
    body, status = BAD[name]
    answer = requests.post(f"{url}/predict", data=body, headers={"content-type": "image/jpeg"}, timeout=60)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error", "detail", "request_id"} and answer.json()["detail"]
    assert answer.headers["x-request-id"] == answer.json()["request_id"]
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("name", list(AWKWARD))
def test_awkward_valid_images_are_answered(served, name):
    _, url = served
    answer = requests.post(
        f"{url}/predict", data=AWKWARD[name](), headers={"content-type": "application/octet-stream"}, timeout=30
    )
    assert answer.status_code == 200, answer.text


def test_multipart_single_and_batch_with_one_bad_file(served):
    settings, url = served
    test, raw = _test_images(settings, 2)
    good = (raw / test.path.iloc[0]).read_bytes()
    single = requests.post(f"{url}/predict", files={"file": ("a.png", good, "image/png")}, timeout=30)
    assert single.status_code == 200
    files = [
        ("file", ("a.png", good, "image/png")),
        ("file", ("b.jpg", b"not an image", "image/jpeg")),
        ("file", ("c.png", (raw / test.path.iloc[1]).read_bytes(), "image/png")),
    ]
    batch = requests.post(f"{url}/predict/batch", files=files, timeout=30)
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["status"] for r in results] == [200, 415, 200] and results[1]["error"] == "unsupported_format"


def test_uploads_of_several_megabytes_are_answered_alone_and_in_a_batch(served):
    """Replicas call each other over gRPC, whose default message cap (4 MB) is below one upload
    under `serve.max_body_bytes`: a photo of 5 MB, or a batch of them, is still answered."""
    from PIL import Image

    _, url = served
    noise = np.random.default_rng(0).integers(0, 256, (1300, 1300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
    photo = buffer.getvalue()
    assert 4 * 2**20 < len(photo) < 10 * 2**20
    answer = requests.post(f"{url}/predict", data=photo, timeout=60)
    assert answer.status_code == 200, answer.text
    files = [("file", (f"{i}.png", photo, "image/png")) for i in range(2)]
    batch = requests.post(f"{url}/predict/batch", files=files, timeout=60)
    assert batch.status_code == 200 and [r["status"] for r in batch.json()["results"]] == [200, 200], batch.text


def test_every_answer_that_is_not_a_200_is_json_and_counted(served):
    settings, url = served
    image = (lambda t, raw: (raw / t.path.iloc[0]).read_bytes())(*_test_images(settings, 1))
    answers = {
        "unknown route": (requests.get(f"{url}/nowhere", timeout=10), 404, "not_found"),
        "wrong method": (requests.get(f"{url}/predict", timeout=10), 405, "method_not_allowed"),
        "malformed multipart": (
            requests.post(
                f"{url}/predict",
                data=b"--xyz\r\nContent-Disposition: form-data; name=file\r\n\r\nabc",  # never closed
                headers={"content-type": "multipart/form-data; boundary=xyz"},
                timeout=10,
            ),
            400,
            None,
        ),
        "1,000 files": (
            requests.post(
                f"{url}/predict/batch",
                files=[("file", (f"{i}.png", image, "image/png")) for i in range(1000)],
                timeout=60,
            ),
            400,
            "bad_multipart",
        ),
    }
    for name, (answer, status, code) in answers.items():
        assert answer.status_code == status, (name, answer.text)
        body = answer.json()
        assert set(body) == {"error", "detail", "request_id"} and body["detail"], name
        assert code is None or body["error"] == code, (name, body)
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert 'lensops_requests_total{route="other",status="404"}' in metrics
    assert 'lensops_requests_total{route="/predict",status="405"}' in metrics
    assert 'lensops_requests_total{route="/predict/batch",status="400"}' in metrics
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


def test_mutants_over_http_get_a_200_or_a_json_4xx_never_a_5xx(served):
    """A few hundred seeded mutants of every format through /predict and /predict/batch."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.fuzz import mutants

    _settings, url = served
    cases = list(mutants(300, seed=7))

    def send(case):
        name, body = case
        answer = requests.post(f"{url}/predict", data=body, timeout=60)
        return name, answer.status_code, answer.headers.get("content-type", "")

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, cases))
    bad = [(name, status, kind) for name, status, kind in outcomes if status >= 500 or "json" not in kind]
    assert not bad, f"{len(bad)} mutants answered badly, e.g. {bad[:5]} (reproduce with tests.fuzz.mutant(7, i))"
    assert {status for _, status, _ in outcomes} <= {200, 413, 415, 422}
    files = [("file", (name, body, "application/octet-stream")) for name, body in cases[:48]]
    batch = requests.post(f"{url}/predict/batch", files=files, timeout=120)
    assert batch.status_code == 200 and all(r["status"] < 500 for r in batch.json()["results"])
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


def test_schemathesis_finds_no_server_error_in_the_openapi_document(served, tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    _settings, url = served
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "20",
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    operations = re.search(r"Tested: (\d+)", out.stdout)
    cases = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert operations and int(operations.group(1)) == 5, out.stdout[-4000:]  # every operation
    assert cases and int(cases.group(2)) >= 50, out.stdout[-4000:]
    assert "No issues found" in out.stdout, out.stdout[-4000:]
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_chunked_upload_is_stopped_at_the_byte_limit(served):
    _settings, url = served
    sent = []

    def chunks():  # 30 MB with no Content-Length: requests sends it chunked
        for _ in range(30):
            sent.append(2**20)
            yield b"\xff" * 2**20

    try:
        answer = requests.post(f"{url}/predict", data=chunks(), timeout=60)
    except requests.ConnectionError:  # the server answered and closed before the upload ended
        answer = None
    if answer is not None:
        assert answer.status_code == 413 and answer.json()["error"] == "too_large", answer.text
        assert "stopped reading" in answer.json()["detail"]
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


def test_decoder_bombs_get_a_422_and_a_runaway_decoder_is_stopped(served):
    from serving.app import build_app
    from tests.hostile import flat_png, many_page_tiff, many_scan_jpeg

    settings, url = served
    test, raw = _test_images(settings, 1)
    image = (raw / test.path.iloc[0]).read_bytes()
    for body, words in ((many_page_tiff(8000), "more than 1,000 frames"), (many_scan_jpeg(), "JPEG scans")):
        answer = requests.post(f"{url}/predict", data=body, timeout=60)
        assert answer.status_code == 422 and words in answer.json()["detail"], answer.text
    # Over the light lane's 4 MP: decoded by the heavy lane's low-priority worker, and answered.
    assert requests.post(f"{url}/predict", data=flat_png(2100, 2000), timeout=60).status_code == 200
    lenient = settings.updated({"serve.max_scans": 10**6, "serve.decode_timeout_s": 0.3})
    url = _deploy(build_app(lenient))
    try:
        hostile = many_scan_jpeg(copies=100_000)
        deadline, answer = time.monotonic() + 30, None
        while time.monotonic() < deadline:  # until the new preprocessing replica answers
            answer = requests.post(f"{url}/predict", data=hostile, timeout=60)
            if "took longer" in answer.json().get("detail", ""):
                break
        assert answer.status_code == 422 and "took longer than 0.3 s" in answer.json()["detail"], answer.text
        assert requests.post(f"{url}/predict", data=image, timeout=30).status_code == 200  # the replica goes on
        # In a batch the files are decoded together; when one overruns, the others are decoded alone and answered.
        files = [("file", (name, body, "image/jpeg")) for name, body in (("a", image), ("b", hostile), ("c", image))]
        batch = requests.post(f"{url}/predict/batch", files=files, timeout=60).json()["results"]
        assert [r["status"] for r in batch] == [200, 422, 200] and "took longer" in batch[1]["detail"], batch
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        served[1] = _deploy(build_app(settings))


def test_parameters_model_route_and_metrics(served):
    settings, url = served
    test, raw = _test_images(settings, 1)
    image = (raw / test.path.iloc[0]).read_bytes()
    assert len(requests.post(f"{url}/predict?top_k=1", data=image, timeout=30).json()["predictions"]) == 1
    bad = requests.post(f"{url}/predict?top_k=0", data=image, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "bad_parameter" and "top_k" in bad.json()["detail"]
    info = requests.get(f"{url}/model", timeout=10).json()
    assert info["classes"] == ["0", "1", "7"] and info["preprocessing"]["size"] == 16
    assert info["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert (
        'lensops_requests_total{route="/predict",status="200"}' in metrics
        and "lensops_request_seconds_bucket" in metrics
    )
    assert "lensops_model_batch_size_count" in metrics and 'lensops_model_version{name="tiny"}' in metrics
    assert requests.get(f"{url}/docs", timeout=10).status_code == 200


def test_production_log_has_one_record_per_successful_answer(served):
    from lensops.core.production_log import read_log

    settings, url = served
    folder = settings.path(settings.monitoring.log_dir)
    time.sleep(0.6)  # let earlier tests' records land
    before = len(read_log(folder))
    test, raw = _test_images(settings, 5)
    ok = sum(
        requests.post(f"{url}/predict", data=(raw / p).read_bytes(), timeout=30).status_code == 200 for p in test.path
    )
    requests.post(f"{url}/predict", data=b"", timeout=30)  # a 422 logs nothing
    deadline = time.monotonic() + 10
    while len(read_log(folder)) < before + ok and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    frame = read_log(folder)
    assert ok == 5 and len(frame) == before + ok
    last = frame.tail(ok)
    assert set(last.model_version) == {"1"} and len(last.embedding.iloc[0]) == 128
    assert (last.width == 16).all() and last.brightness.between(0, 255).all()


def test_captured_images_are_the_bytes_received_and_their_records_point_at_them(served):
    import hashlib

    from lensops.core.production_log import read_log

    settings, url = served
    folder, store = settings.path(settings.monitoring.log_dir), settings.path(settings.monitoring.capture.dir)
    test, raw = _test_images(settings, 4)
    sent = {}
    for p in test.path:
        body = (raw / p).read_bytes()
        answer = requests.post(f"{url}/predict", data=body, timeout=30).json()
        assert answer["sha256"] == hashlib.sha256(body).hexdigest()
        sent[answer["sha256"]] = (answer["request_id"], body)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        frame = read_log(folder)
        if {request_id for request_id, _ in sent.values()} <= set(frame.request_id):
            break
        time.sleep(0.3)
    records = frame.set_index("request_id")
    for sha256, (request_id, body) in sent.items():
        assert records.loc[request_id, "sha256"] == sha256 and bool(records.loc[request_id, "captured"])
        assert (store / sha256[:2] / sha256).read_bytes() == body
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    captured = next(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("lensops_captured_total")
    )
    assert captured >= len(sent) and "lensops_log_failures_total 0.0" in metrics


def test_following_the_champion_alias_switches_versions_without_failed_requests(served):
    """Promote a new version while requests flow: every answer is 200 and the version changes."""
    import threading

    from training.promotion import promote
    from training.train import train

    settings, url = served
    test, raw = _test_images(settings, 1)
    image = (raw / test.path.iloc[0]).read_bytes()
    version = train(settings.updated({"train.seed": 5}), progress=False).model_version
    seen, statuses, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            answer = requests.post(f"{url}/predict", data=image, timeout=30)
            statuses.append(answer.status_code)
            if answer.status_code == 200:
                seen.append(answer.json()["model"]["version"])

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(1)
        promote(settings, version, reason="switch test", force=True)
        deadline = time.monotonic() + 30
        while (not seen or seen[-1] != version) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert set(statuses) == {200}
    assert seen[0] == "1" and seen[-1] == version


def test_concurrent_requests_share_one_forward(served):
    """Requests that arrive together are preprocessed and predicted as one batch, each answered on its own."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.app import build_app

    settings, url = served
    test, raw = _test_images(settings, 8)
    bodies = [(raw / p).read_bytes() for p in test.path]
    patient = settings.updated({"serve.max_batch_size": 8, "serve.batch_wait_ms": 3000})
    url = _deploy(build_app(patient))
    try:
        deadline = time.monotonic() + 30  # until the new ingress (fresh metrics) answers
        while "lensops_model_batch_size_count 0.0" not in requests.get(f"{url}/metrics", timeout=10).text:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: requests.post(f"{url}/predict?top_k=3", data=b, timeout=30), bodies))
        assert [a.status_code for a in answers] == [200] * 8
        assert len({a.json()["request_id"] for a in answers}) == 8
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        forwards = float(metrics.split("lensops_model_batch_size_count ")[1].split()[0])
        images = float(metrics.split("lensops_model_batch_size_sum ")[1].split()[0])
        assert images == 8 and forwards < 8  # eight answers from fewer forwards (one, when all came in the window)
    finally:
        served[1] = _deploy(build_app(settings))


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU where there is none")
def test_asking_for_a_gpu_without_one_is_a_clear_error(served):
    from serving.server import ServeError, start

    settings, _ = served
    with pytest.raises(ServeError, match=r"serve\.use_gpu is true but no GPU is visible"):
        start(settings.updated({"serve.use_gpu": True}), port=free_port())


def test_api_key_guards_every_route_but_healthz(served, monkeypatch):
    from serving.app import build_app

    settings, url = served
    url = _deploy(build_app(settings, api_key="s3cret"))
    try:
        image = io.BytesIO()
        from PIL import Image

        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image, format="PNG")
        deadline = time.monotonic() + 30
        while (
            requests.post(f"{url}/predict", data=image.getvalue(), timeout=30).status_code != 401
            and time.monotonic() < deadline
        ):
            time.sleep(0.3)  # the old ingress drains first
        assert requests.post(f"{url}/predict", data=image.getvalue(), timeout=30).json()["error"] == "unauthorised"
        assert requests.get(f"{url}/model", timeout=10).status_code == 401
        for route in ("/docs", "/openapi.json", "/metrics"):
            assert requests.get(f"{url}{route}", timeout=10).status_code == 401, route
        keyed_docs = requests.get(f"{url}/openapi.json", headers={"x-api-key": "s3cret"}, timeout=10)
        assert keyed_docs.status_code == 200 and "/predict" in keyed_docs.json()["paths"]
        assert requests.get(f"{url}/model", headers={"x-api-key": "s3cre"}, timeout=10).status_code == 401
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        keyed = requests.post(f"{url}/predict", data=image.getvalue(), headers={"x-api-key": "s3cret"}, timeout=30)
        assert keyed.status_code == 200
    finally:
        served[1] = _deploy(build_app(settings, api_key=""))


def test_overload_gets_fast_503s_and_a_slow_answer_gets_408(served):
    """With one image admitted, a burst is turned away at once with lensops's JSON 503, not left to time out."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.app import build_app

    settings, url = served
    test, raw = _test_images(settings, 1)
    image = (raw / test.path.iloc[0]).read_bytes()
    tight = settings.updated({"serve.max_images_in_flight": 1, "serve.batch_wait_ms": 300})
    url = _deploy(build_app(tight))
    try:

        def call(_):
            started = time.perf_counter()
            answer = requests.post(f"{url}/predict", data=image, timeout=60)
            if answer.status_code == 503:  # lensops's own answer, not Ray Serve's plain text
                assert answer.json()["error"] == "overloaded", answer.text
            return answer.status_code, time.perf_counter() - started

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, range(32)))
        rejected = [seconds for status, seconds in results if status == 503]
        assert {status for status, _ in results} <= {200, 503}
        served_seconds = [seconds for status, seconds in results if status == 200]
        assert rejected and served_seconds
        # Turned away at once: no 503 waits as long as an answered request.
        assert max(rejected) < min(served_seconds)

        # Adaptive batching: a lone request does not wait out a 5 s batch window (it would get a 408 at 3 s).
        lone = settings.updated({"serve.batch_wait_ms": 5000, "serve.request_timeout_s": 3})
        url = _deploy(build_app(lone))
        for _ in range(3):
            answer = requests.post(f"{url}/predict", data=image, timeout=30)
            assert answer.status_code == 200, answer.text
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert "lensops_images_in_flight 0.0" in metrics

        slow = settings.updated(
            {"serve.request_timeout_s": 0.05, "serve.batch_wait_ms": 500, "serve.max_batch_size": 64}
        )
        url = _deploy(build_app(slow))
        deadline = time.monotonic() + 30
        answer = requests.post(f"{url}/predict", data=image, timeout=30)
        while answer.status_code != 408 and time.monotonic() < deadline:  # until the new ingress answers
            answer = requests.post(f"{url}/predict", data=image, timeout=30)
        assert answer.status_code == 408 and answer.json()["error"] == "timeout"
    finally:
        served[1] = _deploy(build_app(settings))


def test_a_batch_request_goes_to_the_model_in_chunks_and_holds_up_no_lone_request(served):
    """A /predict/batch's images are a batch already: they go to the model in chunks of
    `serve.max_batch_size`, and a /predict arriving meanwhile does not wait for them to join its batch."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.app import build_app
    from tests.hostile import many_scan_jpeg

    settings, url = served
    test, raw = _test_images(settings, 10)
    bodies = [(raw / p).read_bytes() for p in test.path]
    patient = settings.updated(
        {
            "serve.max_batch_size": 4,
            "serve.batch_wait_ms": 6000,  # a /predict that waited for the batch's images would get a 408
            "serve.request_timeout_s": 5,
            "serve.max_scans": 10**6,
            "serve.decode_timeout_s": 3,
        }
    )
    url = _deploy(build_app(patient))
    try:
        files = [("file", (f"{i}.png", body, "image/png")) for i, body in enumerate(bodies)]
        answer = requests.post(f"{url}/predict/batch", files=files, timeout=30)
        assert [r["status"] for r in answer.json()["results"]] == [200] * 10, answer.text
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert float(metrics.split("lensops_model_batch_size_count ")[1].split()[0]) == 3  # 4 + 4 + 2

        slow = [("file", ("slow.jpg", many_scan_jpeg(copies=100_000), "image/jpeg"))]  # decoded to its 3 s deadline
        with ThreadPoolExecutor(1) as pool:
            batch = pool.submit(requests.post, f"{url}/predict/batch", files=slow, timeout=30)
            time.sleep(0.5)
            lone = requests.post(f"{url}/predict", data=bodies[0], timeout=30)
            assert lone.status_code == 200 and not batch.done(), lone.text
            assert [r["status"] for r in batch.result().json()["results"]] == [422]
    finally:
        served[1] = _deploy(build_app(settings))
