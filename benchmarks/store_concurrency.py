"""Everything at once on the embedded SQLite store: its default rollback journal against WAL.

    .venv/bin/python benchmarks/store_concurrency.py [--seconds 10]

The five jobs of `tests/integration/test_concurrency.py` (serving's alias polling, promotion,
drift, a retraining, a tune sweep), each its own process, run at once against a fresh SQLite store
for the given time, first in SQLite's default journal (`LENSOPS_SQLITE_WAL=0`), then in WAL mode,
as lensops opens it. Printed: the operations each job finished, the errors it met, the reads that
showed a half-moved alias, and the ratio of WAL's total to the default journal's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.test_concurrency import ROLES, _seed  # noqa: E402


def run(mode: str, seconds: float, folder: Path) -> dict[str, dict]:
    env = {**os.environ, "LENSOPS_SQLITE_WAL": "1" if mode == "wal" else "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    uri = f"sqlite:///{folder / f'{mode}.db'}"
    os.environ["LENSOPS_SQLITE_WAL"] = env["LENSOPS_SQLITE_WAL"]
    _seed(uri, "race")
    command = [sys.executable, "-m", "tests.concurrency"]
    jobs = {
        role: subprocess.Popen(
            [*command, role, uri, "race", str(seconds), str(folder / f"{mode}-{role}.json")],
            cwd=REPO, env=env, stderr=subprocess.DEVNULL,
        )
        for role in ROLES
    }  # fmt: skip
    for job in jobs.values():
        job.wait()
    return {role: json.loads((folder / f"{mode}-{role}.json").read_text()) for role in ROLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: run(mode, args.seconds, Path(tmp)) for mode in ("delete", "wal")}
    print(f"{'job':<10}" + "".join(f"{m + ' ops':>12}{m + ' errors':>14}" for m in results))
    for role in ROLES:
        cells = "".join(f"{r[role]['done']:>12}{len(r[role]['errors']):>14}" for r in results.values())
        print(f"{role:<10}{cells}")
    totals = {m: sum(r[role]["done"] for role in ROLES) for m, r in results.items()}
    torn = {m: len(r["poll"]["violations"]) for m, r in results.items()}
    print(f"total ops: default journal {totals['delete']}, WAL {totals['wal']}; half-moved reads {torn}")
    print(f"ratio WAL / default journal: {totals['wal'] / max(totals['delete'], 1):.2f}")


if __name__ == "__main__":
    main()
