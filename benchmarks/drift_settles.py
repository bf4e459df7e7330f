"""Does drift settle once the model has learnt the shift, and still alarm on a shift it has not?

    .venv/bin/python benchmarks/drift_settles.py [--seeds 0 1 2] [--labels 600] [--epochs 15]

For each seed, the production data loop of `make demo`, in process, on the full digits (32 px):

1. train v1 on the digits, promote it; answer clean held-out traffic (the test split)  -> drift?
2. answer scanner-shifted traffic (train and val splits, shift seed s) and a shifted hold-out
   (the test split, another seed), measuring accuracy on the hold-out                  -> drift?
3. export `--labels` captured images (the default `balanced` strategy, or `--strategy`),
   label them from the true labels, import them, prepare, train v2, review, promote
4. answer the same shifted traffic again with v2                                        -> drift?
   only clean digits with v2 (a subset of what it learnt)                                -> drift?
   only shifted hold-out digits with v2 (the other subset)                               -> drift?
   inverted digits (a shift neither version trained on)                                  -> drift?

It prints, per seed, the novelty share of each window against `drift.novelty_share` (the
margin is the distance to it), the hold-out accuracy before and after, and at the end the false
alarm rate on covered traffic and the detection rate on uncovered traffic over all seeds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
COVERED = ("clean", "after", "clean after", "shifted only after")
UNCOVERED = ("shifted", "inverted after")


def images(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.png"))


def drift_share(settings, log: Path, method: str) -> float:
    from monitoring.drift import run_drift

    window = settings.updated({"monitoring.log_dir": str(log), "drift.novelty_method": method})
    return run_drift(window, report_dir=log.parent / f"{log.name}-{method}-drift", track=False, html=False).score


def one_seed(seed: int, args, root: Path) -> dict[str, float]:
    from data.digits import write_digits, write_traffic
    from data.labels import import_labels
    from data.prepare import prepare_dataset
    from lensops.client import fill_labels
    from lensops.core.capture import sha256_of
    from lensops.core.settings import load_settings
    from monitoring.labelling import export_batch
    from monitoring.replay import replay
    from training.promotion import promote
    from training.review import review
    from training.train import train

    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    overrides = [f"train.epochs={args.epochs}", f"train.seed={seed}", "train.input=dataloader", *args.set]
    settings = load_settings(root / "params.yaml", overrides)
    write_digits(settings.path(settings.data.raw), size=32)
    prepared = settings.path(settings.data.prepared)
    prepare_dataset(settings, progress=False)
    train(settings, progress=False)
    promote(settings, reason="benchmark", force=True)
    traffic = root / "traffic"
    write_traffic(prepared, traffic / "clean", splits=("test",))
    write_traffic(prepared, traffic / "shifted", splits=("train", "val"), shift="scanner", seed=100 + seed)
    write_traffic(prepared, traffic / "holdout", splits=("test",), shift="scanner", seed=200 + seed)
    write_traffic(prepared, traffic / "inverted", splits=("test",), shift="inverted", seed=300 + seed)
    truth = {sha256_of(p.read_bytes()): p.parent.name for p in traffic.glob("*/*/*.png")}
    logs, out = root / "logs", {}

    def answer(name: str, kind: str) -> float:
        answers = replay(settings, images(traffic / kind), logs / name)
        return float((answers.label == answers.predicted).mean())

    answer("clean", "clean")
    out["accuracy before"] = answer("holdout", "holdout")
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    answer("shifted", "shifted")
    for method in args.methods:
        out[method] = {"clean": drift_share(settings, logs / "clean", method)}
        out[method]["shifted"] = drift_share(settings, logs / "shifted", method)

    labelled = settings.updated({"monitoring.log_dir": str(logs / "shifted")})
    batch = export_batch(labelled, n=args.labels, strategy=args.strategy, since=since)
    fill_labels(batch.folder / "labels.csv", truth)
    out["imported"] = len(import_labels(settings, batch.folder / "labels.csv").imported)
    prepare_dataset(settings, progress=False)
    train(settings, progress=False)
    out["review"] = review(settings, report_dir=root / "review").verdict
    promote(settings, reason="benchmark: retrained on labelled production images", force=True)

    answer("after", "shifted")
    out["accuracy after"] = answer("holdout after", "holdout")
    answer("clean after", "clean")
    answer("inverted after", "inverted")
    for method in args.methods:
        for name in ("after", "clean after", "inverted after"):
            out[method][name] = drift_share(settings, logs / name, method)
        out[method]["shifted only after"] = drift_share(settings, logs / "holdout after", method)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels", type=int, default=600, help="images labelled from production")
    parser.add_argument("--strategy", default="balanced")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("-S", "--set", action="append", default=[], help="params override")
    parser.add_argument("--methods", nargs="+", default=["lof", "knn"], help="novelty methods to compare")
    parser.add_argument("--keep", help="keep each seed's project under this folder (to look at it afterwards)")
    args = parser.parse_args()

    import ray

    from lensops.core.settings import DriftSettings

    threshold = DriftSettings().novelty_share
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"lensops-settle-{seed}-") as scratch:
            root = Path(args.keep) / f"seed{seed}" if args.keep else Path(scratch)
            root.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            results.append(one_seed(seed, args, root))
            print(f"seed {seed} ({time.perf_counter() - started:.0f} s): {results[-1]}", flush=True)
    ray.shutdown()
    for method in args.methods:
        report(method, [r[method] for r in results], results, args.seeds, threshold)


def report(
    method: str, shares: list[dict[str, float]], results: list[dict], seeds: list[int], threshold: float
) -> None:
    print(f"\n{method}: novelty share per window (drift above {threshold}); accuracy on the shifted hold-out")
    print("seed | " + " | ".join(COVERED + UNCOVERED) + " | acc before | acc after | review")
    for seed, share, r in zip(seeds, shares, results, strict=True):
        cells = [f"{share[k]:.3f}" for k in COVERED + UNCOVERED]
        print(
            f"{seed} | "
            + " | ".join(cells)
            + f" | {r['accuracy before']:.3f} | {r['accuracy after']:.3f} | {r['review']}"
        )
    false_alarms = sum(s[k] > threshold for s in shares for k in COVERED)
    detections = sum(s[k] > threshold for s in shares for k in UNCOVERED)
    margin = threshold - max(s[k] for s in shares for k in COVERED)
    print(f"false alarms on covered traffic: {false_alarms}/{len(shares) * len(COVERED)}; "
          f"detections on uncovered traffic: {detections}/{len(shares) * len(UNCOVERED)}; "
          f"smallest margin below the threshold on covered traffic: {margin:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
