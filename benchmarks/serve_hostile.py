"""Normal traffic while clients send decoder bombs: does serving keep its throughput?

    python benchmarks/serve_hostile.py [--seconds 30] [--pairs 3] [--attackers 10] [--concurrency 8]
    python benchmarks/serve_hostile.py --idle-burner cpu --idle-burner memory   # and what idle-priority work costs

It trains and promotes a small digits model, serves it with `lensops serve`'s application, and
measures normal digit requests at `--concurrency` for `--seconds`, in `--pairs` pairs of rounds
run back to back (the machine's speed drifts over minutes, so each ratio compares rounds that
saw the same machine):

1. alone (the baseline);
2. while `--attackers` clients send hostile uploads in a loop, in turn: an 8,000-page TIFF of
   1x1 pages, a progressive JPEG of 100,000 scans, a PNG bomb (20,000 x 20,000 in a few KB), a
   6,000 x 6,000 RGBA PNG (36 MP: under the pixel limit, a real decode), and a progressive JPEG
   within the scan limit whose decode outlasts `serve.decode_timeout_s` when `--slow-jpeg` is
   large enough.

The attackers run in a process of their own, as they would on other machines: threads in the
measuring process would take its interpreter lock from the normal clients. Both share the
machine's cores with the server.

It prints the normal requests/s of both rounds of each pair, their ratio and the median ratio (the
aim: at least 0.8), the CPU per normal request of each process in the last pair's rounds, and for
the hostile uploads their statuses, whether every answer was JSON, and the slowest answer against
`serve.request_timeout_s`.
`--idle-burner` adds a round beside one process at Linux's idle priority that spins on the CPU
or streams memory: what the heavy decoding lane's worker costs normal traffic here even when the
scheduler gives it only the cores nothing else wants.
"""

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve_throughput import cpu_ms_per_request, cpu_seconds  # noqa: E402  (this folder is on the path)

from lensops.core.ports import free_port  # noqa: E402

# One process at Linux's idle scheduling class (it runs only on a core nothing else wants), doing
# nothing but CPU work, or streaming memory as a large decode does.
_IDLE = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
BURNERS = {
    "cpu": _IDLE + "x = 0\nwhile True:\n    x += 1",
    "memory": _IDLE + "import numpy as np\na = np.ones(36_000_000, np.float32)\nwhile True:\n    b = a * 2",
}


def hostile_files(slow_jpeg_size: int) -> dict[str, bytes]:
    import io

    from PIL import Image

    from tests.hostile import flat_png, many_page_tiff, many_scan_jpeg
    from tests.imagefactory import png_bomb

    slow = io.BytesIO()  # a big progressive photo-like JPEG: many blocks per scan, under the scan limit
    Image.effect_noise((slow_jpeg_size, slow_jpeg_size), 60).convert("RGB").save(
        slow, format="JPEG", progressive=True, quality=95
    )
    return {
        "pages.tif": many_page_tiff(8000),
        "scans.jpg": many_scan_jpeg(copies=100_000),
        "bomb.png": png_bomb(),
        "big.png": flat_png(6000, 6000, "RGBA"),
        "slow.jpg": slow.getvalue(),
    }


def normal_load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()

    def client(k: int) -> None:
        session, i = requests.Session(), k
        while time.monotonic() < stop:
            started = time.perf_counter()
            status = session.post(f"{url}/predict", data=bodies[i % len(bodies)], timeout=60).status_code
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
            i += concurrency

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "rps": statuses[200] / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "statuses": dict(statuses),
    }


def attack(url: str, files: dict[str, bytes], attackers: int, seconds: float, out) -> None:
    """`attackers` clients sending `files` in turn for `seconds`; runs in a process of its own (as
    attackers would be on other machines), so the measuring client's interpreter is not theirs.
    Puts a list of (file, status, whether JSON, seconds) on `out`."""
    outcomes: list[tuple[str, int, bool, float]] = []
    lock = threading.Lock()
    names = list(files)
    stop = time.monotonic() + seconds

    def attacker(k: int) -> None:
        session, i = requests.Session(), k
        while time.monotonic() < stop:
            name = names[i % len(names)]
            started = time.perf_counter()
            try:
                answer = session.post(f"{url}/predict", data=files[name], timeout=120)
                status, is_json = (
                    answer.status_code,
                    answer.headers.get("content-type", "").startswith("application/json"),
                )
            except requests.RequestException:
                status, is_json = 0, False
            with lock:
                outcomes.append((name, status, is_json, time.perf_counter() - started))
            i += 1

    threads = [threading.Thread(target=attacker, args=(k,), daemon=True) for k in range(attackers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 180)
    out.put(outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="per round")
    parser.add_argument("--pairs", type=int, default=3, help="rounds alone and attacked, back to back")
    parser.add_argument("--attackers", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--slow-jpeg", type=int, default=3000, help="side of the big progressive JPEG")
    parser.add_argument("-S", "--set", action="append", default=[], help="params override")
    parser.add_argument(
        "--idle-burner",
        action="append",
        choices=sorted(BURNERS),
        default=[],
        help="a last round beside one process at Linux's idle priority that spins on the CPU or streams memory",
    )
    args = parser.parse_args()

    from data.digits import write_digits
    from data.prepare import prepare_dataset
    from lensops.core.settings import load_settings
    from serving.server import start, stop
    from training.promotion import promote
    from training.train import train

    root = Path(tempfile.mkdtemp(prefix="lensops-hostile-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        write_digits(root / "data" / "raw", size=32)
        overrides = ["train.epochs=1", "registry.model_name=bench", "registry.experiment=bench", *args.set]
        settings = load_settings(root / "params.yaml", overrides)
        prepare_dataset(settings, progress=False)
        train(settings, progress=False)
        promote(settings, reason="benchmark", force=True)
        bodies = [p.read_bytes() for p in sorted((root / "data" / "raw").rglob("*.png"))[:200]]
        files = hostile_files(args.slow_jpeg)
        url, started_ray = start(settings, port=free_port())
        _wait(url)
        normal_load(url, bodies, args.concurrency, 5)  # warm-up
        pairs = [measure_pair(url, bodies, files, args) for _ in range(args.pairs)]
        healthy = requests.get(f"{url}/healthz", timeout=10).status_code
        burned = {}
        for kind in args.idle_burner:  # what any work at the lowest priority costs normal traffic here
            burner = subprocess.Popen([sys.executable, "-c", BURNERS[kind]])
            time.sleep(1)
            burned[kind] = normal_load(url, bodies, args.concurrency, args.seconds)
            burner.kill()
            burner.wait()
        stop(started_ray)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report(pairs, burned, healthy, files, settings.serve.request_timeout_s, args)


def measure_pair(url: str, bodies: list[bytes], files: dict[str, bytes], args) -> dict:
    """One round of normal traffic alone, then one while the attackers send; back to back, so
    that both rounds see the same machine (its speed drifts over minutes on a shared host)."""
    before = cpu_seconds()
    alone = normal_load(url, bodies, args.concurrency, args.seconds)
    alone["cpu_ms"] = cpu_ms_per_request(before, cpu_seconds(), sum(alone["statuses"].values()))
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    attackers = context.Process(target=attack, args=(url, files, args.attackers, args.seconds + 4, out))
    attackers.start()
    time.sleep(2)
    before = cpu_seconds()
    attacked = normal_load(url, bodies, args.concurrency, args.seconds)
    attacked["cpu_ms"] = cpu_ms_per_request(before, cpu_seconds(), sum(attacked["statuses"].values()))
    outcomes = out.get(timeout=args.seconds + 300)
    attackers.join()
    time.sleep(2)  # the heavy lane's last rest, before the next round alone
    return {"alone": alone, "attacked": attacked, "outcomes": outcomes}


def report(pairs: list[dict], burned: dict, healthy: int, files: dict, timeout: float, args) -> None:
    ratios = [p["attacked"]["rps"] / p["alone"]["rps"] for p in pairs]
    print(f"\nnormal traffic, concurrency {args.concurrency}, {args.seconds:g} s per round, {len(pairs)} pair(s)")
    for k, (pair, ratio) in enumerate(zip(pairs, ratios, strict=True), 1):
        alone, attacked = pair["alone"], pair["attacked"]
        print(f"  pair {k}: alone {alone['rps']:7.1f} req/s (p50 {alone['p50_ms']:5.1f} ms), "
              f"with {args.attackers} attackers {attacked['rps']:7.1f} req/s (p50 {attacked['p50_ms']:5.1f} ms), "
              f"ratio {ratio:.2f}")  # fmt: skip
    print(f"  ratio, median of {len(ratios)}: {statistics.median(ratios):.2f} (aim: at least 0.8)")
    for name in ("alone", "attacked"):
        split = ", ".join(f"{k.strip()} {v:.1f}" for k, v in pairs[-1][name]["cpu_ms"].items() if v >= 0.2)
        print(f"  CPU ms per normal request, {name} (last pair): {split}")
    alone_rps = statistics.median(p["alone"]["rps"] for p in pairs)
    for kind, round_ in burned.items():
        print(f"  beside a {kind} burner at idle priority: {round_['rps']:7.1f} req/s  "
              f"ratio {round_['rps'] / alone_rps:.2f}")  # fmt: skip
    outcomes = [o for p in pairs for o in p["outcomes"]]
    print(f"hostile uploads: {len(outcomes)}; /healthz afterwards: {healthy}")
    for name in files:
        mine = [o for o in outcomes if o[0] == name]
        if mine:
            statuses = dict(Counter(o[1] for o in mine))
            slowest = max(o[3] for o in mine)
            print(f"  {name:<10} {len(mine):>5} sent  statuses {statuses}  all JSON: {all(o[2] for o in mine)}  "
                  f"slowest {slowest:.2f} s (request timeout {timeout:g} s)")  # fmt: skip


def _wait(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


if __name__ == "__main__":
    main()
