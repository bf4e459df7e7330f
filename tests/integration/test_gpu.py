"""The GPU paths, run for real where Ray sees an NVIDIA GPU (skipped elsewhere, see conftest).

Training with `train.use_gpu` (bf16 autocast and channels_last in the loop) and serving with the
model deployment on a GPU replica. The CPU paths of the same code are covered by
test_training.py and test_serving.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
import torch

from tests.conftest import TINY_TRAINING, free_port, project_copy

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def gpu_trained(ray_session, digits_project, tmp_path_factory):
    from lensops.core.settings import load_settings
    from training.train import train

    root = project_copy(digits_project, tmp_path_factory.mktemp("gpu") / "project")
    overrides = [*TINY_TRAINING, "train.use_gpu=true", "train.num_workers=1", "train.epochs=3"]
    settings = load_settings(root / "params.yaml", overrides)
    return settings, train(settings, progress=False)


def test_training_on_the_gpu_registers_a_version_that_loads_anywhere(gpu_trained):
    from lensops.core.registry import Registry

    settings, result = gpu_trained
    assert result.extra["use_gpu"] is True
    assert result.test_metrics["accuracy"] > 0.5  # three classes: better than chance after three epochs
    with Registry.of(settings).open(result.model_version) as files:
        on_cpu = files.network()  # exported on the CPU: loads without a GPU
        on_gpu = files.network(device="cuda")
    images = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        cpu_logits, _ = on_cpu(images)
        gpu_logits, gpu_embedding = on_gpu(images.cuda())
    assert gpu_embedding.is_cuda
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, atol=1e-3, rtol=1e-3)


def test_serving_on_a_gpu_replica_answers_as_the_offline_path(gpu_trained):
    from ray import serve

    from data.prepare import load_prepared
    from lensops.core.registry import Registry
    from serving.server import start
    from training.datasets import load_images, split_frame
    from training.promotion import promote

    settings, _ = gpu_trained
    settings = settings.updated({"serve.use_gpu": True})
    promote(settings, reason="gpu serving test", force=True)
    url, _ = start(settings, port=free_port())
    try:
        deadline = time.monotonic() + 120
        while requests.get(f"{url}/healthz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the GPU replica never became healthy"
            time.sleep(0.5)
        assert requests.get(f"{url}/model", timeout=10).json()["device"] == "cuda"

        manifest, classes, raw = load_prepared(settings.path(settings.data.prepared))
        test = split_frame(manifest, "test").head(8)
        with Registry.of(settings).open("@champion") as files, torch.no_grad():
            logits, _ = files.network()(torch.from_numpy(load_images(test, raw, files.spec)))
        expected = torch.softmax(logits, dim=1).numpy()
        for row, path in enumerate(test.path):
            answer = requests.post(f"{url}/predict?top_k=3", data=(raw / path).read_bytes(), timeout=30).json()
            scores = {p["label"]: p["score"] for p in answer["predictions"]}
            np.testing.assert_allclose([scores[c] for c in classes], expected[row], atol=1e-3)
    finally:
        serve.shutdown()
