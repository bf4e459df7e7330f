"""Drift: is production sending images from regions the served version has not learnt?

`run_drift` reads the production log (`lensops.core.log_reader`) for one model version and
compares it with that version's registered baseline: the embeddings of its training images and
of its held-out validation images.

- **The verdict** (`drift.verdict: novelty`, the default) is one-sided. Each production record's
  novelty is its distance to the nearest training embeddings over the distance that all but
  `1 - drift.novelty_quantile` of the held-out validation images stay within (`data.novelty`);
  a record whose brightness or contrast (`drift.novelty_stats`) lies outside the whole range of
  the baseline's images (widened by 10 %) is novel too. Drift is a share of novel records above
  `drift.novelty_share`. Production that is a subset of
  what the version learnt is not drift, however its mix differs; after a retrain on labelled
  production images the same traffic settles; a shift no training data covers still alarms.
- **The shift** is Evidently's two-sample embeddings test (`drift.method`, `drift.threshold`)
  against the validation images: whether production differs from them at all. It is a detail,
  or the verdict with `drift.verdict: shift`.
- **Details**: the predicted-label distribution and the image stats, by Evidently's column tests
  (`monitoring.checks`); files in the log folder that could not be read, with why.

The verdict does not wait for plots: `drift.json` is written once, as soon as the verdict and its
MLflow run exist, before Evidently's HTML report is rendered from a subsample. Outcomes: drift
(exit 4), no drift (exit 0), too few records to judge (exit 5; never a verdict on a handful).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.novelty import NoveltyReference
from lensops.core import tags as T
from lensops.core.errors import UsageError
from lensops.core.log_reader import maintain, scan_log
from lensops.core.registry import Registry, who
from lensops.core.settings import DriftSettings, Settings

from .breakdown import breakdown
from .checks import column_checks, render_report, shift_test
from .grids import breakdown_html, insert_section, write_grids

NO_DRIFT, DRIFT, TOO_FEW = "no_drift", "drift", "too_few_records"
EXIT_CODES = {NO_DRIFT: 0, DRIFT: 4, TOO_FEW: 5}


class DriftError(UsageError):
    """The drift job cannot run: unknown model, a version without a baseline, mismatched embeddings."""


@dataclass
class DriftResult:
    verdict: str  # no_drift | drift | too_few_records
    drift: bool
    method: str  # novelty, or Evidently's method when the shift test decides
    score: float | None
    threshold: float
    n_reference: int
    n_current: int
    min_records: int
    model: dict[str, str]
    window: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    seconds_to_verdict: float = 0.0
    report_html: str | None = None
    run_id: str | None = None
    grids: list[str] = field(default_factory=list)
    groups: Any = field(default=None, repr=False)  # the breakdown's cluster ids, for the grids; not written

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "groups"}


def load_baseline(registry: Registry, ref: str | None) -> tuple[dict[str, str], pd.DataFrame]:
    """The version a ref points at now, and its registered baseline (the network is not downloaded)."""
    with registry.open(ref) as version:
        try:
            baseline = version.baseline()
        except FileNotFoundError:
            raise DriftError(f"{version.uri} carries no baseline embeddings; retrain it with this lensops") from None
    return {"name": version.name, "version": version.version, "uri": registry.reference(ref).uri}, baseline


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
    """Judge a version's production log against its baseline; write drift.json (+ HTML); log to MLflow."""
    _check_window(last, since)
    registry = Registry.of(settings)
    report_dir = settings.path(report_dir or settings.drift.report_dir)
    info, baseline = load_baseline(registry, model)
    log_dir = settings.path(settings.monitoring.log_dir)
    mon = settings.monitoring
    maintain(log_dir, retention_days=mon.retention_days, target_records=mon.compact_records)
    scan = scan_log(log_dir, model_version=info["version"], since=since, last=last)
    window = {"since": since, "last": last, "log_dir": str(log_dir)}
    result = judge(baseline, scan.frame, settings.drift, model=info, window=window)
    result.skipped_files = scan.skipped
    report_dir.mkdir(parents=True, exist_ok=True)
    render = html and result.verdict != TOO_FEW
    result.report_html = str(report_dir / "drift.html") if render else None
    json_path = report_dir / "drift.json"
    run = start_monitoring_run(registry, settings, result) if track else None
    write_json(json_path, result)
    explain(settings, result, baseline, scan.frame, report_dir)
    if render:
        render_report(validation(baseline), scan.frame, settings.drift, Path(result.report_html))
        if "breakdown" in result.details:
            insert_section(Path(result.report_html), breakdown_html(result.details["breakdown"]))
    if run is not None:
        finish_monitoring_run(registry, run, result, json_path)
    return result


def explain(settings: Settings, result: DriftResult, baseline: pd.DataFrame, log: pd.DataFrame, folder: Path) -> None:
    """The breakdown's image grids (earlier grids removed), then drift.json again with their paths."""
    for old in (folder / "grids").glob("*.png"):
        old.unlink()
    summary = result.details.get("breakdown")
    if summary is None or result.groups is None:
        return
    result.grids = [str(p) for p in write_grids(settings, baseline, log, summary, result.groups, folder)]
    write_json(folder / "drift.json", result)


def validation(baseline: pd.DataFrame) -> pd.DataFrame:
    """The held-out validation rows of a baseline: the two-sample tests' reference."""
    return baseline[baseline["split"] != "train"] if "split" in baseline else baseline


def judge(baseline: pd.DataFrame, log: pd.DataFrame, cfg: DriftSettings, *, model: dict, window: dict) -> DriftResult:
    """The verdict on production records against the baseline: drift, no drift, or too few to judge."""
    import evidently  # noqa: F401  (loaded before the clock starts: seconds_to_verdict is the computation)

    started = time.perf_counter()
    result = DriftResult(
        verdict=TOO_FEW,
        drift=False,
        method="novelty" if cfg.verdict == "novelty" else cfg.method,
        score=None,
        threshold=cfg.novelty_share if cfg.verdict == "novelty" else cfg.threshold,
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
        _decide(result, baseline, log, cfg)
    result.seconds_to_verdict = round(time.perf_counter() - started, 3)
    return result


def _decide(result: DriftResult, baseline: pd.DataFrame, log: pd.DataFrame, cfg: DriftSettings) -> None:
    reference, current = np.stack(baseline["embedding"].to_numpy()), np.stack(log["embedding"].to_numpy())
    if reference.shape[1] != current.shape[1]:
        raise DriftError(
            f"the production log holds {current.shape[1]}-wide embeddings for version {result.model['version']}, "
            f"its baseline {reference.shape[1]}-wide: the log was not written by this version"
        )
    novelty, novel = novelty_check(baseline, current, cfg, log, per_record=True)
    held_out = validation(baseline)
    shift_score, shifted = shift_test(np.stack(held_out["embedding"].to_numpy()), current, cfg)
    shift = {"method": cfg.method, "score": shift_score, "threshold": cfg.threshold, "drift": shifted}
    if cfg.verdict == "novelty":
        result.score, result.drift = novelty["share"], novelty["drift"]
    else:
        result.score, result.drift = shift_score, shifted
    result.verdict = DRIFT if result.drift else NO_DRIFT
    result.details = {"novelty": novelty, "embedding_shift": shift, **column_checks(held_out, log, cfg)}
    result.details["bootstrap"] = cfg.bootstrap
    result.details["breakdown"], result.groups = breakdown(
        baseline, log, novel, cfg, expected_novel=1 - cfg.novelty_quantile
    )
    if cfg.pca_components:
        result.details["pca_components"] = cfg.pca_components


def novelty_check(
    baseline: pd.DataFrame,
    current: np.ndarray,
    cfg: DriftSettings,
    log: pd.DataFrame | None = None,
    *,
    per_record: bool = False,
):
    """The share of production records the version has not learnt: further from the training
    embeddings than held-out images go, or with an image stat (`drift.novelty_stats`) outside the
    whole range of the baseline's images. The second catches a shift the network maps onto
    familiar features (inverted digits land among ordinary ones: 19 % accuracy, few embedding
    outliers), which no image it trained on could have taught it. With `per_record`, also each
    record's verdict (novel or not)."""
    reference = NoveltyReference.from_settings(baseline, cfg)
    scores = reference.novelty(current)
    by_embedding = scores > 1.0
    by_stats = outside_range(baseline, log, cfg.novelty_stats) if log is not None else np.zeros_like(by_embedding)
    novel = by_embedding | by_stats
    share = float(novel.mean())
    summary = {
        "method": f"novelty share (k={reference.k}, q={cfg.novelty_quantile}; stats {', '.join(cfg.novelty_stats)})",
        "score": share,
        "share": share,
        "threshold": cfg.novelty_share,
        "drift": share > cfg.novelty_share,
        "n_novel": int(novel.sum()),
        "n_novel_embedding": int(by_embedding.sum()),
        "n_outside_stats": int(by_stats.sum()),
        "median_novelty": float(np.median(scores)),
        **reference.summary(),
    }
    return (summary, novel) if per_record else summary


def outside_range(baseline: pd.DataFrame, log: pd.DataFrame, columns: list[str], margin: float = 0.1) -> np.ndarray:
    """Per record: whether any of `columns` is outside the baseline images' [min, max], widened by
    `margin` of its width on each side (a held-out image lands just past a sample's extremes often
    enough to matter; a shift the version never saw lands far past them)."""
    outside = np.zeros(len(log), dtype=bool)
    for column in columns:
        if column in baseline and column in log and baseline[column].notna().any():
            low, high = baseline[column].min(), baseline[column].max()
            low, high = low - margin * (high - low), high + margin * (high - low)
            values = pd.to_numeric(log[column], errors="coerce").to_numpy(dtype=float)
            outside |= (values < low) | (values > high)  # a missing value (NaN) is never outside
    return outside


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
    experiment = monitoring_experiment(registry, settings)
    run_id = client.create_run(experiment, run_name=f"drift v{result.model['version']}", tags=tags).info.run_id
    result.run_id = run_id
    params = {"method": result.method, "threshold": result.threshold, "min_records": result.min_records}
    params.update({k: v for k, v in result.window.items() if v is not None and k != "log_dir"})
    metrics = {"n_reference": result.n_reference, "n_current": result.n_current, "drift": float(result.drift)}
    metrics.update(seconds_to_verdict=result.seconds_to_verdict, skipped_files=len(result.skipped_files))
    if result.score is not None:
        metrics["score"] = result.score
    for name, check in result.details.items():
        if isinstance(check, dict) and "drift" in check:
            metrics[f"{name}_score"] = check["score"]
    if "breakdown" in result.details:
        metrics["flagged_classes"] = len(result.details["breakdown"]["flagged_classes"])
        metrics["flagged_clusters"] = len(result.details["breakdown"]["flagged_clusters"])
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
    for grid in result.grids:
        client.log_artifact(run_id, grid, artifact_path="grids")
    if result.report_html and Path(result.report_html).is_file():
        client.log_artifact(run_id, result.report_html)
    client.set_terminated(run_id)
