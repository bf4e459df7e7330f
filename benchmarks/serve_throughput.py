"""Serving throughput: lensops serve against Ray Serve's floor, a naive Ray Serve app and the raw forward.

  lensops serve    ingress -> preprocessing deployment -> @serve.batch model deployment
  floor            one deployment that reads the body and answers a constant: what Ray Serve costs
  naive            one deployment (FastAPI): torchvision preprocessing and a forward per request
  raw forward      the same network in this process on ready tensors, batches of max_batch_size

Each runs in both of Ray Serve's modes, each mode in a Ray of its own (a mode is fixed when Ray
starts): "direct", lensops' default (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: the ingress replica
answers HTTP itself, deployments call each other over gRPC), and "proxy", Ray Serve's default
(every request through its HTTP proxy). The apps serve the same registered version on 127.0.0.1
and get the same PNG requests from a thread pool at concurrency 1 and 32; the script prints
requests/s, p50 and p99, where each request's CPU goes (per process), and the ratios. The client
shares the machine's cores with the server.

In direct mode lensops also runs with capture off, with a shadow on every request
(`serve.shadow`, the champion's own version, so its forward costs what the champion's does), and
capturing every image (`monitoring.capture.sample_rate=1`), and `/predict/batch` gets 32 images
per request from 4 clients, `--requests` / 8 requests (50: 1,600 images, over a second; at 12
requests the round lasted about 0.4 s).

    python benchmarks/serve_throughput.py [--requests 400] [--size 32] [--model smallcnn] [-S key=value ...]
    python benchmarks/serve_throughput.py --model resnet18 --size 64 --epochs 1   # a forward that costs something
"""

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
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

from lensops.core.ports import free_port  # noqa: E402

# The served application four ways; "lensops" is the default capture policy and no shadow.
CAPTURE = {
    "capture off": {"monitoring.capture.enabled": False},
    "lensops": {},
    "shadow all": {"serve.shadow": "champion", "serve.shadow_fraction": 1.0},
    "capture all": {"monitoring.capture.sample_rate": 1.0, "monitoring.capture.low_score_below": None},
}


# Ray Serve's modes: "direct" is lensops' default (throughput-optimized: the ingress replica answers
# HTTP itself, gRPC between deployments), "proxy" Ray Serve's own default (every request through its proxy).
MODES = {"proxy": "0", "direct": "1"}


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU time used so far by each process on this machine: pid -> (name, seconds). Ray names its
    actors' processes, and renames them while they run a method (`ray::ProxyActor.receive_...`), so
    the name is cut at the method."""
    import psutil

    used: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times", "nice"]):
        name = " ".join(p.info["cmdline"] or [])[:48].strip() or p.info["name"] or "?"
        if name.startswith("ray::"):
            name = name.split(".")[0].split()[0]
        if (p.info["nice"] or 0) >= 19:  # the heavy decoding lane's worker, apart from the light ones
            name += " (nice 19)"
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
    parser.add_argument("--rows", help=argparse.SUPPRESS)  # internal: one mode's rows, in a fresh Ray
    args = parser.parse_args()
    if args.rows:
        return serve_rows(args)

    from data.digits import write_digits
    from data.prepare import prepare_dataset
    from lensops.core.registry import Registry
    from lensops.core.settings import load_settings
    from training.promotion import promote
    from training.train import train

    root = Path(tempfile.mkdtemp(prefix="lensops-serve-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        write_digits(root / "data" / "raw", size=args.size)
        settings = load_settings(root / "params.yaml", _overrides(args))
        prepare_dataset(settings, progress=False)
        train(settings, progress=False)
        promote(settings, reason="benchmark", force=True)
        import ray

        ray.shutdown()
        results = {}
        for mode, optimized in MODES.items():  # each in a Ray of its own: the mode is fixed when Ray starts
            out = root / f"{mode}.json"
            env = {**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": optimized}
            command = [sys.executable, __file__, "--rows", f"{mode}:{root}:{out}", *sys.argv[1:]]
            subprocess.run(command, env=env, check=True)
            results.update({(row, int(c)): r for row, c, r in json.loads(out.read_text())})
        with Registry.of(settings).open("@champion") as version:
            network = version.network()
        report(results, raw_forward(network, settings.serve.max_batch_size, args.size))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _overrides(args) -> list[str]:
    return [
        f"train.epochs={args.epochs}",
        f"train.model={args.model}",
        *args.set,
        f"train.preprocessing.size={args.size}",
        "registry.model_name=bench",
        "registry.experiment=bench",
    ]


def serve_rows(args) -> None:
    """One Ray Serve mode's rows ("direct": lensops' default; "proxy": Ray Serve's default), as JSON."""
    from ray import serve

    from lensops.core.compute import ensure_ray
    from lensops.core.registry import Registry
    from lensops.core.settings import load_settings
    from serving.app import build_app
    from serving.server import ingress_url, stop

    mode, root, out = args.rows.split(":")
    settings = load_settings(Path(root) / "params.yaml", _overrides(args))
    bodies = [p.read_bytes() for p in sorted((Path(root) / "data" / "raw").rglob("*.png"))[:200]]
    started_ray = ensure_ray()  # each application's ingress takes the next free port of Ray's range
    port = free_port()  # the proxy's
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    variants = CAPTURE if mode == "direct" else {"lensops": {}}
    apps = {f"{name} ({mode})": (build_app(settings.updated(o)), "/healthz") for name, o in variants.items()}
    apps[f"floor ({mode})"] = (floor_app(), "/")
    apps[f"naive ({mode})"] = (naive_app(Registry.of(settings), "@champion", args.size), "/docs")
    rows = []
    for name, (app, ready) in apps.items():
        app_name = name.split()[0]
        serve.run(app, name=app_name, route_prefix="/", blocking=False)
        url = ingress_url("127.0.0.1", port, app=app_name)
        _wait(url, path=ready)
        for c in (1, 32):
            rows.append((name, c, load(url, bodies, c, args.requests)))
        if name.startswith("lensops"):
            batches = max(8, args.requests // 8)
            rows.append((f"batch of 32 ({mode})", 4, load(url, bodies, 4, batches, per_request=32)))
        serve.delete(app_name)
    stop(started_ray)
    Path(out).write_text(json.dumps(rows))


def raw_forward(network, batch_size: int, size: int) -> float:
    """Images/s of the network alone, in this process, on ready tensors."""
    batch = torch.randn(batch_size, 3, size, size)
    with torch.no_grad():
        for _ in range(5):
            network(batch)
        started = time.perf_counter()
        rounds = 50
        for _ in range(rounds):
            network(batch)
    return rounds * batch_size / (time.perf_counter() - started)


def report(results: dict, raw_rps: float) -> None:
    print(f"\n{'':<30}{'req/s':>9}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for (name, c), r in results.items():
        row = f"{r['rps']:>9.1f}{r['images_per_s']:>10.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
        print(f"{name + f' c={c}':<30}{row}")
    print(f"{'raw forward b=32':<30}{raw_rps:>9.1f}")
    cpu_rows = ["lensops (direct)", "shadow all (direct)", "naive (direct)", "lensops (proxy)", "naive (proxy)"]
    for name, c in [(name, 32) for name in [*cpu_rows, "floor (proxy)"]] + [("batch of 32 (direct)", 4)]:
        split = ", ".join(f"{k.strip()} {v:.1f}" for k, v in results[(name, c)]["cpu_ms"].items())
        print(f"CPU ms per request, {name} c={c}: {split}")
    rps = {key: r["rps"] for key, r in results.items()}
    lensops = "lensops (direct)"
    for base in ("floor (proxy)", "floor (direct)", "naive (proxy)", "naive (direct)", "lensops (proxy)"):
        print(f"{lensops} / {base}: {rps[(lensops, 1)] / rps[(base, 1)]:.2f} at c=1, "
              f"{rps[(lensops, 32)] / rps[(base, 32)]:.2f} at c=32")  # fmt: skip
    for base in ("naive (proxy)", "naive (direct)"):
        p50 = results[(lensops, 1)]["p50_ms"] - results[(base, 1)]["p50_ms"]
        print(f"concurrency 1: p50 {lensops} - {base} = {p50:+.1f} ms")
    batch = results[("batch of 32 (direct)", 4)]["images_per_s"]
    print(f"/predict/batch of 32: {batch:.1f} images/s = {batch / raw_rps:.3f} of the raw batched forward")
    for name in ("lensops", "capture all"):
        ratios = [rps[(f"{name} (direct)", c)] / rps[("capture off (direct)", c)] for c in (1, 32)]
        print(f"{name} / capture off: req/s ratio {ratios[0]:.2f} at c=1, {ratios[1]:.2f} at c=32")
    shadow, plain = results[("shadow all (direct)", 1)]["p50_ms"], results[(lensops, 1)]["p50_ms"]
    ratio = rps[("shadow all (direct)", 32)] / rps[(lensops, 32)]
    print(f"shadow on every request: p50 at c=1 {shadow / plain:.2f} of lensops', req/s at c=32 {ratio:.2f}")


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
