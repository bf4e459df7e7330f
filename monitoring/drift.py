"""Drift: what production sends, against what the served version was validated on.

`run_drift` reads the production log (`lensops.core.production_log`) for one model version and
compares it with that version's baseline, registered with the model (the validation set's
embeddings, predictions and image stats):

- **embeddings**: Evidently's embeddings drift method (`model`, `mmd`, `ratio` or `distance`,
  with the threshold from `params.yaml`), on every record. This is the verdict.
- **predicted labels** against the validation predictions, and **image stats** (brightness,
  contrast, width, height), with Evidently's column drift tests. Reported in `details`; they
  explain a verdict but do not make it, so a shift in class mix alone is not called drift of
  the inputs.

The verdict does not wait for plots. Evidently's embeddings report spends almost all of its
time in a t-SNE projection drawn for the HTML; here the decision is taken first, with the same
Evidently method called directly, `drift.json` is written, and only then is the HTML report
rendered from a subsample (`drift.report_sample` rows per side). `benchmarks/drift_speed.py`
measures the difference.

Outcomes: drift (exit 4), no drift (exit 0), too few records to judge (exit 5; never a verdict
on a handful of requests).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lensops.core import tags as T
from lensops.core.errors import UsageError
from lensops.core.production_log import read_log
from lensops.core.registry import Registry, who
from lensops.core.settings import DriftSettings, Settings

NO_DRIFT, DRIFT, TOO_FEW = "no_drift", "drift", "too_few_records"
EXIT_CODES = {NO_DRIFT: 0, DRIFT: 4, TOO_FEW: 5}
STAT_COLUMNS = ("brightness", "contrast", "width", "height")
P_VALUE_TESTS = {"ks", "chisquare", "z", "fisher_exact", "mannw", "t_test", "cramer_von_mises", "anderson", "g_test"}


class DriftError(UsageError):
    """The drift job cannot run: unknown model, a version without a baseline, mismatched embeddings."""


@dataclass
class DriftResult:
    verdict: str  # no_drift | drift | too_few_records
    drift: bool
    method: str
    score: float | None
    threshold: float
    n_reference: int
    n_current: int
    min_records: int
    model: dict[str, str]
    window: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    seconds_to_verdict: float = 0.0
    report_html: str | None = None
    run_id: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the decision ------------------------------------------------------------------------------


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


def embeddings_verdict(reference: np.ndarray, current: np.ndarray, cfg: DriftSettings) -> tuple[float, bool]:
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


# --- the job ---------------------------------------------------------------------------------


def load_baseline(registry: Registry, ref: str | None) -> tuple[dict[str, str], pd.DataFrame]:
    """The version a ref points at now, and its registered baseline (the network is not downloaded)."""
    with registry.open(ref) as version:
        try:
            baseline = version.baseline()
        except FileNotFoundError:
            raise DriftError(f"{version.uri} carries no baseline embeddings; retrain it with this lensops") from None
    uri = registry.reference(ref).uri
    return {"name": version.name, "version": version.version, "uri": uri}, baseline


def _check_window(last: int | None, since: str | None) -> None:
    if last is not None and last < 1:
        raise DriftError(f"--last {last}: give a positive number of records")
    if since is not None:
        try:
            pd.Timestamp(since)
        except ValueError:
            raise DriftError(f"--since {since!r}: not a time (use ISO 8601, e.g. 2026-11-25T10:00:00Z)") from None


def run_drift(
    settings: Settings,
    *,
    model: str | None = None,
    last: int | None = None,
    since: str | None = None,
    report_dir: Path | None = None,
    track: bool = True,
    html: bool = True,
) -> DriftResult:
    """Compare the production log of a version with its baseline; write drift.json (+ HTML); log to MLflow.

    The verdict comes first: `drift.json` is written once, as soon as the verdict and its MLflow
    run exist, before any chart is drawn.
    """
    _check_window(last, since)
    registry = Registry.of(settings)
    report_dir = settings.path(report_dir or settings.drift.report_dir)
    info, baseline = load_baseline(registry, model)
    log_dir = settings.path(settings.monitoring.log_dir)
    log = read_log(log_dir, model_version=info["version"], since=since, last=last)
    result = judge(
        baseline, log, settings.drift, model=info, window={"since": since, "last": last, "log_dir": str(log_dir)}
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    render = html and result.verdict != TOO_FEW
    if render:
        result.report_html = str(report_dir / "drift.html")
    json_path = report_dir / "drift.json"
    run = start_monitoring_run(registry, settings, result) if track else None
    write_json(json_path, result)
    if render:
        render_report(baseline, log, settings.drift, Path(result.report_html))
    if run is not None:
        finish_monitoring_run(registry, run, result, json_path)
    return result


def judge(baseline: pd.DataFrame, log: pd.DataFrame, cfg: DriftSettings, *, model: dict, window: dict) -> DriftResult:
    """The verdict on production records against the baseline: drift, no drift, or too few to judge."""
    import evidently  # noqa: F401  (loaded before the clock starts: seconds_to_verdict is the computation)

    started = time.perf_counter()
    result = DriftResult(
        verdict=TOO_FEW,
        drift=False,
        method=cfg.method,
        score=None,
        threshold=cfg.threshold,
        n_reference=len(baseline),
        n_current=len(log),
        min_records=cfg.min_records,
        model=model,
        window=window,
    )
    if len(log) < cfg.min_records:
        result.details = {
            "reason": f"{len(log)} production records for version {model['version']}, need {cfg.min_records}"
        }
    else:
        reference, current = np.stack(baseline["embedding"].to_numpy()), np.stack(log["embedding"].to_numpy())
        if reference.shape[1] != current.shape[1]:
            raise DriftError(
                f"the production log holds {current.shape[1]}-wide embeddings for version {model['version']}, "
                f"its baseline {reference.shape[1]}-wide: the log was not written by this version"
            )
        result.score, result.drift = embeddings_verdict(reference, current, cfg)
        result.verdict = DRIFT if result.drift else NO_DRIFT
        result.details = {**column_checks(baseline, log, cfg), "bootstrap": cfg.bootstrap}
        if cfg.pca_components:
            result.details["pca_components"] = cfg.pca_components
    result.seconds_to_verdict = round(time.perf_counter() - started, 3)
    return result


def write_json(path: Path, result: DriftResult) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    temporary.replace(path)


def monitoring_experiment(registry: Registry, settings: Settings) -> str:
    """The MLflow experiment of drift and retrain runs (created beside the training experiment)."""
    return registry.experiment_id(settings.drift.experiment)


def start_monitoring_run(registry: Registry, settings: Settings, result: DriftResult) -> str:
    """A monitoring run tagged with the model version, holding the verdict's params and metrics."""
    from mlflow.entities import Metric, Param

    tags = {
        T.STAGE: "drift",
        T.ACTOR: who(),
        T.MODEL_NAME: result.model["name"],
        T.MODEL_VERSION: result.model["version"],
        T.DRIFT_VERDICT: result.verdict,
    }
    client = registry.client()
    run_id = client.create_run(
        monitoring_experiment(registry, settings), run_name=f"drift v{result.model['version']}", tags=tags
    ).info.run_id
    result.run_id = run_id
    params = {"method": result.method, "threshold": result.threshold, "min_records": result.min_records}
    params.update({k: v for k, v in result.window.items() if v is not None and k != "log_dir"})
    metrics = {"n_reference": result.n_reference, "n_current": result.n_current, "drift": float(result.drift)}
    metrics["seconds_to_verdict"] = result.seconds_to_verdict
    if result.score is not None:
        metrics["score"] = result.score
    for name, check in result.details.items():
        if isinstance(check, dict) and "drift" in check:
            metrics[f"{name}_score"] = check["score"]
    now_ms = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    return run_id


def finish_monitoring_run(registry: Registry, run_id: str, result: DriftResult, json_path: Path) -> None:
    """drift.json and the HTML report as the run's artifacts; the run ends."""
    client = registry.client()
    client.log_artifact(run_id, str(json_path))
    if result.report_html and Path(result.report_html).is_file():
        client.log_artifact(run_id, result.report_html)
    client.set_terminated(run_id)
