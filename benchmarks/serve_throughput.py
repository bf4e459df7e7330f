"""Serving throughput: lensops serve against a naive Ray Serve app and the raw model forward.

  (a) lensops serve    ingress -> preprocessing deployment -> @serve.batch model deployment
  (b) naive            one Ray Serve deployment: torchvision preprocessing and a forward per request
  (c) raw forward      the same network in this process on ready tensors, batches of max_batch_size

(a) and (b) serve the same registered version on 127.0.0.1 and get the same PNG requests from a
thread pool at concurrency 1 and 32; the script prints requests/s, p50 and p99 latency, and the
ratios a/b and a/c. The client shares the machine's cores with the server.

(a) runs four times: with capture off, with the default capture policy, with a shadow on every
request (`serve.shadow`, the champion's own version, so its forward costs what the champion's
does), and capturing every image (`monitoring.capture.sample_rate=1`); the script prints what
capture and the shadow cost.

    python benchmarks/serve_throughput.py [--requests 400] [--size 32] [--model smallcnn] [-S key=value ...]
    python benchmarks/serve_throughput.py --model resnet18 --size 64 --epochs 1   # a forward that costs something
"""

import argparse
import io
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# The served application four ways; "lensops" is the default capture policy and no shadow.
CAPTURE = {
    "capture off": {"monitoring.capture.enabled": False},
    "lensops": {},
    "shadow all": {"serve.shadow": "champion", "serve.shadow_fraction": 1.0},
    "capture all": {"monitoring.capture.sample_rate": 1.0, "monitoring.capture.low_score_below": None},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU time used so far by each process on this machine: pid -> (name, seconds). Ray names its
    actors' processes, and renames them while they run a method (`ray::ProxyActor.receive_...`), so
    the name is cut at the method."""
    import psutil

    used: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        name = " ".join(p.info["cmdline"] or [])[:48].strip() or p.info["name"] or "?"
        if name.startswith("ray::"):
            name = name.split(".")[0].split()[0]
        if p.info["cpu_times"] is not None:
            used[p.pid] = (name, p.info["cpu_times"].user + p.info["cpu_times"].system)
    return used


def cpu_ms_per_request(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], n: int):
    """Per process name, the CPU milliseconds spent per request between two `cpu_seconds()` calls
    (a process that started in between counts from zero)."""
    spent: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        spent[name] = spent.get(name, 0.0) + 1000 * (seconds - before.get(pid, (name, 0.0))[1]) / n
    return spent


def load(url: str, bodies: list[bytes], concurrency: int, n: int, per_request: int = 1) -> dict[str, float]:
    """`n` requests at `concurrency`: one image per `/predict`, or `per_request` per `/predict/batch`."""
    session_per_thread: dict[int, requests.Session] = {}

    def one(i: int) -> float:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        started = time.perf_counter()
        if per_request == 1:
            answer = session.post(f"{url}/predict", data=bodies[i % len(bodies)], timeout=60)
        else:
            picked = [bodies[(i * per_request + j) % len(bodies)] for j in range(per_request)]
            files = [("file", (f"{j}.png", body, "image/png")) for j, body in enumerate(picked)]
            answer = session.post(f"{url}/predict/batch", files=files, timeout=120)
        assert answer.status_code == 200, answer.text
        return time.perf_counter() - started

    for i in range(min(20, n)):  # warm-up
        one(i)
    before = cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    after = cpu_seconds()
    cpu_ms = cpu_ms_per_request(before, after, n)
    return {
        "rps": n / wall,
        "images_per_s": n * per_request / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "cpu_ms": {k: v for k, v in sorted(cpu_ms.items(), key=lambda kv: -kv[1]) if v >= 0.2},
    }


def floor_app():
    """The framework's floor: one deployment that reads the body and answers a constant, through
    the same proxy. No app on Ray Serve's HTTP proxy answers faster on this machine."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
    class Floor:
        async def __call__(self, request):
            await request.body()
            return {"label": "0", "score": 1.0}

    return Floor.bind()


def naive_app(registry, ref: str, size: int):
    """The baseline: one deployment, per-request torchvision preprocessing, no batching."""
    from fastapi import FastAPI, Request
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
    @serve.ingress(api)
    class Naive:
        def __init__(self):
            from torchvision import transforms

            with registry.open(ref) as version:
                self.model = version.network()
            self.transform = transforms.Compose(
                [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
            )

        @api.post("/predict")
        async def predict(self, request: Request):
            from PIL import Image

            image = Image.open(io.BytesIO(await request.body())).convert("RGB")
            with torch.no_grad():
                logits, _ = self.model(self.transform(image).unsqueeze(0))
            p = torch.softmax(logits, 1)[0]
            return {"label": int(p.argmax()), "score": float(p.max())}

    return Naive.bind()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="smallcnn", help="any name create_model knows")
    parser.add_argument("-S", "--set", action="append", default=[], help="params override, e.g. serve.batch_wait_ms=5")
    args = parser.parse_args()

    from ray import serve

    from data.digits import write_digits
    from data.prepare import prepare_dataset
    from lensops.core.registry import Registry
    from lensops.core.settings import load_settings
    from serving.app import build_app
    from serving.server import start, stop
    from training.promotion import promote
    from training.train import train

    root = Path(tempfile.mkdtemp(prefix="lensops-serve-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        write_digits(root / "data" / "raw", size=args.size)
        overrides = [
            f"train.epochs={args.epochs}",
            f"train.model={args.model}",
            *args.set,
            f"train.preprocessing.size={args.size}",
            "registry.model_name=bench",
            "registry.experiment=bench",
        ]
        settings = load_settings(root / "params.yaml", overrides)
        prepare_dataset(settings, progress=False)
        train(settings, progress=False)
        promote(settings, reason="benchmark", force=True)
        bodies = [p.read_bytes() for p in sorted((root / "data" / "raw").rglob("*.png"))[:200]]
        registry = Registry.of(settings)

        port = free_port()
        url, started_ray = start(settings.updated(CAPTURE["capture off"]), port=port)
        results = {}
        for name, overrides in CAPTURE.items():
            serve.run(build_app(settings.updated(overrides)), name="lensops", route_prefix="/", blocking=False)
            _wait(url)
            for c in (1, 32):
                results[(name, c)] = load(url, bodies, c, args.requests)
            if name == "lensops":
                results[("batch of 32", 4)] = load(url, bodies, 4, max(8, args.requests // 32), per_request=32)
        serve.delete("lensops")
        serve.run(floor_app(), name="floor", route_prefix="/", blocking=False)
        _wait(url, path="/")
        for c in (1, 32):
            results[("floor", c)] = load(url, bodies, c, args.requests)
        serve.delete("floor")
        serve.run(naive_app(registry, "@champion", args.size), name="naive", route_prefix="/", blocking=False)
        _wait(url, path="/docs")
        for c in (1, 32):
            results[("naive", c)] = load(url, bodies, c, args.requests)
        stop(started_ray)

        with registry.open("@champion") as version:
            network = version.network()
        batch = torch.randn(settings.serve.max_batch_size, 3, args.size, args.size)
        with torch.no_grad():
            for _ in range(5):
                network(batch)
            started = time.perf_counter()
            rounds = 50
            for _ in range(rounds):
                network(batch)
        raw_rps = rounds * len(batch) / (time.perf_counter() - started)

        print(f"\n{'':<22}{'req/s':>9}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        for (name, c), r in results.items():
            row = f"{r['rps']:>9.1f}{r['images_per_s']:>10.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            print(f"{name + f' c={c}':<22}{row}")
        print(f"{'raw forward b=' + str(len(batch)):<22}{raw_rps:>9.1f}")
        for name in ("lensops", "shadow all", "naive"):  # where a request's CPU goes, at concurrency 32
            split = ", ".join(f"{k.strip()} {v:.1f}" for k, v in results[(name, 32)]["cpu_ms"].items())
            print(f"CPU ms per request, {name} c=32: {split}")
        for c in (1, 32):
            a, b = results[("lensops", c)]["rps"], results[("naive", c)]["rps"]
            print(f"concurrency {c}: a/b = {a / b:.2f}   a/c = {a / raw_rps:.3f}")
        for c in (1, 32):
            floor = results[("floor", c)]["rps"]
            print(f"concurrency {c}: lensops / floor = {results[('lensops', c)]['rps'] / floor:.2f}")
        batch = results[("batch of 32", 4)]["images_per_s"]
        print(f"/predict/batch of 32: {batch:.1f} images/s = {batch / raw_rps:.3f} of the raw batched forward")
        p50 = results[("lensops", 1)]["p50_ms"] - results[("naive", 1)]["p50_ms"]
        print(f"concurrency 1: p50 lensops - naive = {p50:+.1f} ms")
        for name in ("lensops", "capture all"):
            ratios = [results[(name, c)]["rps"] / results[("capture off", c)]["rps"] for c in (1, 32)]
            print(f"{name} / capture off: req/s ratio {ratios[0]:.2f} at c=1, {ratios[1]:.2f} at c=32")
        shadow, plain = results[("shadow all", 1)]["p50_ms"], results[("lensops", 1)]["p50_ms"]
        rps = results[("shadow all", 32)]["rps"] / results[("lensops", 32)]["rps"]
        print(f"shadow on every request: p50 at c=1 {shadow / plain:.2f} of lensops', req/s at c=32 {rps:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait(url: str, path: str = "/healthz", timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url + path, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


if __name__ == "__main__":
    np.random.seed(0)
    main()
