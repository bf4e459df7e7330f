"""Time to a drift verdict: lensops against Evidently's default embeddings report, same data, same method.

    .venv/bin/python benchmarks/drift_speed.py [--rows 10000] [--dim 512]

For each scenario (a shifted current set, and one drawn from the reference distribution) it
times, on the same 10k x 512 reference and current embeddings:

(a) lensops' verdict: Evidently's embeddings drift method called directly on every row, plus
    the predicted-label and image-stat column tests (`monitoring.checks`), as `lensops drift`
    decides before any plot;
(b) (a) followed by the HTML report rendered from a `drift.report_sample` subsample, which is
    what `lensops drift` does in total;
(c) Evidently's default path: `Report([EmbeddingsDrift(...)]).run(...)` on all rows with the
    same method, which also computes the t-SNE projection it draws.

Both with the default `drift.pca_components` (32: Evidently's own option, PCA fitted on the
reference before the classifier) and without it.

It checks that (a) and (c) reach the same verdict and prints the ratios c/a and c/b.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lensops.core.settings import DriftSettings
from monitoring.checks import column_checks, drift_method, embedding_frame, render_report, shift_test


def frames(rows: int, dim: int, shift: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference (baseline-like) and current (log-like) frames with embeddings, labels and image stats."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(16, dim)).astype(np.float32)  # embeddings live near a low-dimensional space

    def side(n: int, offset: float, label_key: str, brightness: float) -> pd.DataFrame:
        latent = rng.normal(size=(n, 16)).astype(np.float32) + offset
        embeddings = np.maximum(latent @ basis + rng.normal(scale=0.3, size=(n, dim)).astype(np.float32), 0)
        frame = pd.DataFrame({label_key: rng.choice([str(d) for d in range(10)], size=n)})
        frame["embedding"] = list(embeddings)
        frame["brightness"], frame["contrast"] = rng.normal(brightness, 10, n), rng.normal(60, 8, n)
        frame["width"], frame["height"] = 32, 32
        return frame

    return side(rows, 0.0, "predicted", 90.0), side(rows, shift, "label", 90.0 - 40 * shift)


def evidently_default(reference: np.ndarray, current: np.ndarray, cfg: DriftSettings) -> tuple[float, bool]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift

    ref, cur = embedding_frame(reference), embedding_frame(current)
    definition = DataDefinition(embeddings={"embedding": list(ref.columns)})
    method = drift_method(cfg, dim=reference.shape[1], rows=len(reference))
    snapshot = Report([EmbeddingsDrift(embeddings_name="embedding", drift_method=method)]).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )
    score = float(snapshot.dict()["metrics"][0]["value"])
    return score, score > cfg.threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    default = DriftSettings()
    print(f"{args.rows} x {args.dim} current against {args.rows} x {args.dim} reference; method {default.method}, "
          f"threshold {default.threshold}, HTML from {default.report_sample} rows per side")  # fmt: skip
    import evidently  # noqa: F401  (imported once, outside every timing)

    rows = []
    configs = [
        (f"pca {default.pca_components} (default)", default),
        ("no pca", default.model_copy(update={"pca_components": None})),
    ]
    for (name, shift), (config_name, cfg) in itertools.product((("shifted", 0.5), ("no shift", 0.0)), configs):
        name = f"{name}, {config_name}"
        baseline, log = frames(args.rows, args.dim, shift, seed=1)
        reference, current = np.stack(baseline["embedding"].to_numpy()), np.stack(log["embedding"].to_numpy())

        started = time.perf_counter()
        score, drift = shift_test(reference, current, cfg)
        column_checks(baseline, log, cfg)
        verdict_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            render_report(baseline, log, cfg, Path(scratch) / "drift.html")
            report_s = time.perf_counter() - started

        started = time.perf_counter()
        ev_score, ev_drift = evidently_default(reference, current, cfg)
        evidently_s = time.perf_counter() - started
        same = "yes" if drift == ev_drift else "NO"
        rows.append((name, score, drift, verdict_s, verdict_s + report_s, ev_score, ev_drift, evidently_s, same))

    header = ("scenario", "score", "drift", "a: verdict s", "b: +report s", "c: Evidently s", "c/a", "c/b", "same")
    print(" | ".join(header))
    for name, score, drift, a, b, ev_score, _, c, same in rows:
        print(f"{name} | {score:.3f} (Evidently {ev_score:.3f}) | {drift} | {a:.2f} | {b:.2f} | {c:.2f} | "
              f"{c / a:.1f} | {c / b:.1f} | {same}")  # fmt: skip


if __name__ == "__main__":
    main()
