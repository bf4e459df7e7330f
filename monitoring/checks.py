"""Evidently's checks: the two-sample embeddings shift, the column tests, and the HTML report.

Evidently is the engine for the statistics and the report. Its embeddings methods (`model`,
`mmd`, `ratio`, `distance`) answer "is production different from the validation images?"; that
is the verdict when `drift.verdict: shift`, and a detail beside the novelty verdict otherwise
(`monitoring.drift`). The predicted-label and image-stat tests explain a verdict (darker images,
more sevens) but never make it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lensops.core.settings import DriftSettings

STAT_COLUMNS = ("brightness", "contrast", "width", "height")
P_VALUE_TESTS = {"ks", "chisquare", "z", "fisher_exact", "mannw", "t_test", "cramer_von_mises", "anderson", "g_test"}


def drift_method(cfg: DriftSettings, *, dim: int | None = None, rows: int | None = None):
    """Evidently's embeddings drift method named in params, with its threshold.

    `drift.pca_components` applies only where it reduces something: embeddings wider than it,
    and a reference with more rows than it.
    """
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as methods

    pca = cfg.pca_components
    if pca and ((dim is not None and dim <= pca) or (rows is not None and rows <= pca)):
        pca = None
    kwargs: dict[str, Any] = {"threshold": cfg.threshold, "pca_components": pca}
    if cfg.method != "ratio":
        kwargs["bootstrap"] = cfg.bootstrap
    return getattr(methods, cfg.method)(**kwargs)


def embedding_frame(embeddings: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(embeddings, dtype=np.float32), columns=[f"e{i}" for i in range(embeddings.shape[1])])


def shift_test(reference: np.ndarray, current: np.ndarray, cfg: DriftSettings) -> tuple[float, bool]:
    """(score, drift) of current against reference embeddings, by Evidently's method, on every row."""
    np.random.seed(cfg.seed)  # the bootstrap variants draw from numpy's global generator
    # Evidently's methods add a column to the frames they are given: hand them their own.
    method = drift_method(cfg, dim=reference.shape[1], rows=len(reference))
    score, drifted, _ = method(embedding_frame(current), embedding_frame(reference))
    return float(score), bool(drifted)


def column_check(reference: pd.Series, current: pd.Series, kind: str, p_value: float) -> dict[str, Any]:
    """One column's drift by Evidently's default test for its type and size."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    reference, current = reference.dropna(), current.dropna()
    if reference.nunique() == 1 and current.nunique() == 1 and reference.iloc[0] == current.iloc[0]:
        return {"method": "constant", "score": 0.0, "threshold": 0.0, "drift": False}
    column_type = ColumnType.Categorical if kind == "categorical" else ColumnType.Numerical
    test = get_stattest(reference, current, column_type, None)
    # p-value tests take the configured p-value; distance tests keep Evidently's own threshold.
    threshold = p_value if test.name in P_VALUE_TESTS else None
    result = test(reference, current, column_type, threshold)
    return {
        "method": test.display_name,
        "score": float(result.drift_score),
        "threshold": float(result.actual_threshold),
        "drift": bool(result.drifted),
    }


def column_checks(baseline: pd.DataFrame, log: pd.DataFrame, cfg: DriftSettings) -> dict[str, Any]:
    """Predicted labels against the validation predictions, and each image stat."""
    checks: dict[str, Any] = {
        "predicted_label": column_check(
            baseline["predicted"].astype(str), log["label"].astype(str), "categorical", cfg.column_threshold
        )
    }
    for column in STAT_COLUMNS:
        if column not in baseline:
            checks[column] = {"skipped": f"the baseline of this version has no {column!r} (trained before it was kept)"}
            continue
        checks[column] = column_check(
            baseline[column].astype(float), log[column].astype(float), "numerical", cfg.column_threshold
        )
    share = lambda frame, col: frame[col].astype(str).value_counts(normalize=True).round(4).to_dict()  # noqa: E731
    checks["label_share"] = {"reference": share(baseline, "predicted"), "current": share(log, "label")}
    return checks


# --- the report ------------------------------------------------------------------------------


def render_report(baseline: pd.DataFrame, log: pd.DataFrame, cfg: DriftSettings, path: Path) -> Path:
    """Evidently's HTML report (embeddings, predicted labels, image stats) from a subsample of each side."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift

    def table(frame: pd.DataFrame, label: str) -> pd.DataFrame:
        n = min(len(frame), cfg.report_sample)
        frame = frame.sample(n, random_state=cfg.seed) if len(frame) > n else frame
        out = embedding_frame(np.stack(frame["embedding"].to_numpy()))
        out["predicted_label"] = frame[label].astype(str).to_numpy()
        for column in STAT_COLUMNS:
            if column in frame and column in baseline:
                out[column] = frame[column].astype(float).to_numpy()
        return out

    reference, current = table(baseline, "predicted"), table(log, "label")
    stats = [c for c in STAT_COLUMNS if c in reference]
    definition = DataDefinition(
        numerical_columns=stats,
        categorical_columns=["predicted_label"],
        embeddings={"embedding": [c for c in reference.columns if c.startswith("e") and c[1:].isdigit()]},
    )
    method = drift_method(cfg, dim=len(definition.embeddings["embedding"]), rows=len(reference))
    metrics = [EmbeddingsDrift(embeddings_name="embedding", drift_method=method)]
    metrics += [ValueDrift(column=c) for c in ["predicted_label", *stats] if reference[c].nunique() > 1]
    snapshot = Report(metrics).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path
