"""`lensops drift --last 10000` on a production log of a million records against one of ten thousand.

    .venv/bin/python benchmarks/log_read.py [--records 1000000] [--last 10000] [--dim 128]

Both logs hold records of the same registered version (a small untrained network, registered
with a real baseline), written as `lensops serve` writes them and then compacted as `lensops drift`
compacts them (segments of `monitoring.compact_records`). Each drift run is the real command, in
process, with the HTML report off (the verdict and drift.json, nothing else). The aim: the big log
costs at most twice the small one, because a window reads only the segments that hold it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def register(root: Path) -> None:
    """A project with one registered, promoted version whose baseline is real."""
    import shutil

    from lensops.core.model_artifact import baseline_frame, register_model
    from lensops.core.registry import CHAMPION, Registry
    from lensops.core.settings import PreprocessingSpec, load_settings
    from training.models import create_model

    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    registry = Registry.of(load_settings(root / "params.yaml"))
    client = registry.client()
    run_id = client.create_run(registry.experiment_id("bench")).info.run_id
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    embeddings = rng.normal(size=(2000, 128)).astype(np.float32)
    stats = pd.DataFrame({"width": 32, "height": 32, "brightness": 100.0, "contrast": 40.0}, index=range(2000))
    baseline = baseline_frame(embeddings, labels, labels, [f"{i}.png" for i in range(2000)], list("0123456789"), stats)
    baseline["split"] = np.where(np.arange(2000) < 1500, "train", "val")
    register_model(
        registry,
        run_id=run_id,
        model=create_model("smallcnn", 10).eval(),
        example=np.zeros((2, 3, 32, 32), np.float32),
        classes=list("0123456789"),
        spec=PreprocessingSpec(size=32),
        metrics={"test": {"accuracy": 0.0}},
        baseline=baseline,
    )
    registry.set_alias(CHAMPION, "1", reason="benchmark")


def write_log(folder: Path, records: int, dim: int, per_segment: int) -> None:
    """`records` records of version 1, a second apart in time order, in segments of `per_segment`."""
    import pyarrow as pa

    from lensops.core.production_log import schema, write_table

    rng = np.random.default_rng(1)
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=records + 3600)).floor("s")  # within retention
    for first in range(0, records, per_segment):
        n = min(per_segment, records - first)
        values = pa.array(rng.normal(size=n * dim).astype(np.float32))
        columns = {
            "time": pa.array(start + pd.to_timedelta(np.arange(first, first + n), unit="s"), pa.timestamp("ms", "UTC")),
            "request_id": [f"r{i}" for i in range(first, first + n)],
            "model_name": ["digits"] * n,
            "model_version": ["1"] * n,
            "embedding": pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32)), values),
            "label": rng.integers(0, 10, n).astype(str).tolist(),
            "score": rng.uniform(0.5, 1, n),
            "width": np.full(n, 32, np.int32),
            "height": np.full(n, 32, np.int32),
            "brightness": rng.normal(100, 10, n),
            "contrast": rng.normal(40, 5, n),
            "sha256": [None] * n,
            "captured": [False] * n,
        }
        write_table(folder, pa.Table.from_pydict(columns, schema=schema()))


def drift_seconds(root: Path, log: Path, last: int) -> float:
    from typer.testing import CliRunner

    from lensops.cli import app

    args = ["--params", str(root / "params.yaml"), "drift", "--last", str(last), "--no-html"]
    args += ["-S", f"monitoring.log_dir={log}", "-S", "registry.model_name=digits"]
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - started
    if result.exit_code not in (0, 4):
        raise SystemExit(f"lensops drift failed ({result.exit_code}): {result.output[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--last", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        register(root)
        segment = 50_000  # monitoring.compact_records' default: what compaction leaves
        started = time.perf_counter()
        write_log(root / "big", args.records, args.dim, segment)
        write_log(root / "small", args.last, args.dim, segment)
        print(f"wrote {args.records:,} and {args.last:,} records in {time.perf_counter() - started:.0f} s")
        drift_seconds(root, root / "small", args.last)  # warm: imports, the baseline download, MLflow's store
        small = min(drift_seconds(root, root / "small", args.last) for _ in range(args.repeats))
        big = min(drift_seconds(root, root / "big", args.last) for _ in range(args.repeats))
        size = sum(p.stat().st_size for p in (root / "big").glob("*.parquet")) / 2**20
        print(f"lensops drift --last {args.last:,}: {small:.2f} s on {args.last:,} records, {big:.2f} s on "
              f"{args.records:,} ({size:.0f} MB); ratio {big / small:.2f} (aim: at most 2)")  # fmt: skip


if __name__ == "__main__":
    main()
