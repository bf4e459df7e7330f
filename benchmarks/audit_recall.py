"""How many deliberately flipped labels `lensops data audit` puts among its top suspects.

For each seed: the 1,797 demo digits at `demo.size`, `--flips` of them moved to a wrong class
folder (never one with a near copy: validation refuses those already), `prepare`, then the audit
with the repository's params.yaml (5 folds, audit.epochs, train's model and size). Prints the
recall in the top `--top` suspects per seed and over all seeds, against what a random ranking
would find, and the audit's time.

    .venv/bin/python benchmarks/audit_recall.py [--seeds 3] [--flips 20] [--top 40] [-S audit.epochs=6 ...]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_seed(seed: int, flips: int, top: int, overrides: list[str]) -> dict:
    from data.digits import flip_labels, write_digits
    from data.prepare import prepare_dataset
    from lensops.core.settings import load_settings
    from training.audit import audit

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        settings = load_settings(root / "params.yaml", [*overrides, f"audit.seed={seed}", f"audit.top={top}"])
        write_digits(root / "data" / "raw", size=settings.demo.size)
        flipped = flip_labels(root / "data" / "raw", flips, seed=seed)
        prepare_dataset(settings, progress=False)
        started = time.perf_counter()
        report = audit(settings, progress=False)
        seconds = time.perf_counter() - started
        found = len(set(report.top["path"]) & set(flipped))
        flagged = set(report.table.loc[report.table["issue"].str.contains("label"), "path"])
        return {
            "seed": seed,
            "found": found,
            "flagged": len(set(flipped) & flagged),
            "label_issues": report.summary["issues"]["label"],
            "accuracy": report.summary["out_of_sample_accuracy"],
            "seconds": seconds,
            "n": len(report.table),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flips", type=int, default=20)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="params override, as the CLI's")
    args = parser.parse_args()

    from lensops.core.compute import ensure_ray

    ensure_ray()
    rows = []
    for seed in range(args.seeds):
        row = one_seed(seed, args.flips, args.top, args.overrides)
        rows.append(row)
        print(
            f"seed {seed}: {row['found']}/{args.flips} flipped in the top {args.top} "
            f"(cleanlab flagged {row['flagged']} of them among {row['label_issues']} label issues), "
            f"out-of-sample accuracy {row['accuracy']:.3f}, audit {row['seconds']:.0f} s",
            flush=True,
        )
    found = sum(r["found"] for r in rows)
    recall = found / (args.flips * len(rows))
    chance = args.top / rows[0]["n"]  # a random ranking's expected recall in the top `top`
    print(
        f"recall in the top {args.top}: {recall:.3f} ({found}/{args.flips * len(rows)} over {len(rows)} seeds); "
        f"random ranking: {chance:.3f}; ratio {recall / chance:.0f}x; "
        f"audit {sum(r['seconds'] for r in rows) / len(rows):.0f} s per run"
    )


if __name__ == "__main__":
    main()
