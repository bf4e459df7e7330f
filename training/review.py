"""`lensops review`: the challenger against the champion, judged the same way, with gates.

`review()` reads as its steps: open both versions from the registry, check the prepared data is
the version the challenger was trained on, evaluate both on the same held-out test split (each
through its own preprocessing spec, with `training.evaluate`, the one evaluation) and under each
`review.robustness` perturbation (`training.robustness`), measure latency and size, apply the
gates (`training.gates`), write `review.json` and a self-contained `review.html`
(`training.report`), and record the verdict on the challenger's version, where
`lensops promote` reads it. With `live`, the challenger is judged on production traffic too:
its shadow's answers against the champion's (`training.live_review`), under the live gates.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from data.prepare import load_prepared
from lensops.core import tags as T
from lensops.core.errors import UsageError
from lensops.core.registry import CHALLENGER, CHAMPION, ModelVersion, Registry, now, who
from lensops.core.settings import Settings

from . import report
from .datasets import load_images, split_frame
from .evaluate import Evaluation, evaluate_frame, evaluate_version, latency
from .gates import Gate, apply_gates
from .lineage import dvc_hash
from .live_review import live_evidence
from .robustness import robustness
from .robustness import validate as validate_robustness

PROMOTE, HOLD = "promote", "hold"


class ReviewError(UsageError):
    """A usage error: an unknown model, alias or folder. The message says what exists."""


@dataclass
class Contender:
    """One model under review: its version, its evaluation on the test split, its cost."""

    role: str  # challenger | champion
    version: ModelVersion
    evaluation: Evaluation
    latency: dict[str, float]
    size_mb: float
    slices: dict[str, dict[str, float]] = field(default_factory=dict)  # "source=production" -> {n, accuracy}
    robustness: dict[str, dict[str, Any]] = field(default_factory=dict)  # check -> {n, accuracy, recall}
    live: dict[str, Any] | None = None  # the challenger's shadowed traffic, with --live

    @property
    def metrics(self) -> dict[str, Any]:
        return self.evaluation.metrics

    @property
    def predicted(self) -> list[str]:
        return self.evaluation.predicted

    def summary(self) -> dict[str, Any]:
        return {
            "uri": self.version.uri,
            "version": self.version.version,
            **self.metrics,
            "latency": self.latency,
            "size_mb": self.size_mb,
            "slices": self.slices,
            "robustness": self.robustness,
        }


@dataclass
class Review:
    verdict: str
    gates: list[Gate]
    challenger: Contender
    champion: Contender | None
    report_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def contenders(self) -> list[Contender]:
        return [c for c in (self.challenger, self.champion) if c is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "gates": [g.__dict__ for g in self.gates],
            "challenger": self.challenger.summary(),
            "champion": self.champion.summary() if self.champion else None,
            "live": self.challenger.live,
            **self.extra,
        }


def review(
    settings: Settings,
    *,
    challenger_ref: str | None = None,
    champion_ref: str | None = None,
    report_dir: Path | None = None,
    extra_dir: Path | None = None,
    live: bool = False,
    since: str | None = None,
) -> Review:
    registry = Registry.of(settings)
    if extra_dir is not None and not extra_dir.is_dir():
        raise ReviewError(f"--extra {extra_dir}: not a folder of <label>/<image> files")
    validate_robustness(settings.review.robustness)  # a typo fails before any evaluation
    with contextlib.ExitStack() as stack:
        new, old = (stack.enter_context(v) if v else None for v in _open_pair(registry, challenger_ref, champion_ref))
        test, raw, data_hash = _test_split(settings, new)
        challenger = _contend(settings, "challenger", new, test, raw)
        champion = _contend(settings, "champion", old, test, raw) if old else None
        for contender in filter(None, (challenger, champion)):
            contender.slices = slice_accuracy(test, contender.evaluation, settings.review.slices)
        if live:
            if old is None:
                raise ReviewError("--live compares the challenger's shadow answers with the champion's: no champion")
            classes = [*old.classes, *(c for c in new.classes if c not in old.classes)]
            challenger.live = live_evidence(settings, old.version, new.version, since, classes)
        gates = apply_gates(settings.review, challenger, champion)
        out = report_dir or settings.path(settings.review.report_dir)
        result = Review(
            PROMOTE if all(g.passed for g in gates) else HOLD,
            gates,
            challenger,
            champion,
            out,
            {"data_hash": data_hash, "reviewed_at": now(), "reviewed_by": who()},
        )
        if extra_dir is not None:
            result.extra["extra"] = _extra_sample(extra_dir, result.contenders)
        report.write(result, test, raw, max_shown=settings.review.max_disagreements_shown, settings=settings)
        _record(registry, result)
    return result


def _open_pair(registry: Registry, challenger_ref: str | None, champion_ref: str | None):
    """Handles on the challenger and the champion (None when no champion exists yet)."""
    challenger = registry.find(challenger_ref, default_alias=CHALLENGER)
    if challenger is None:
        raise ReviewError(f"nothing to review: no @{CHALLENGER} alias ({registry.describe()}); run `lensops train`")
    champion = registry.find(champion_ref, default_alias=CHAMPION)
    if champion == challenger:
        raise ReviewError(f"the challenger and the champion are the same version ({challenger})")
    return registry.open(challenger), registry.open(champion) if champion else None


def _test_split(settings: Settings, challenger: ModelVersion) -> tuple[pd.DataFrame, Path, str]:
    """The test split of the prepared data, which must be the data version the challenger was trained on."""
    prepared = settings.path(settings.data.prepared)
    if not (prepared / "manifest.parquet").is_file():
        raise ReviewError(f"{prepared} has no prepared dataset; run `lensops data prepare` first")
    trained_on, current = challenger.tags.get(T.DATA_HASH), dvc_hash(prepared)
    if trained_on and trained_on != current:
        raise ReviewError(
            f"the challenger (v{challenger.version}) was trained on data {trained_on}, but {prepared} is {current}; "
            "check out that data version (`git checkout <commit> -- dvc.lock && dvc checkout`) to review it"
        )
    manifest, _, raw = load_prepared(prepared)
    extra = [c for c in settings.review.slices if c in manifest and c not in ("path", "label_index")]
    test = split_frame(manifest, "test").merge(manifest[["path", "label", *extra]], on="path")
    return _with_provenance(test, raw, settings), raw, current


def _with_provenance(test: pd.DataFrame, raw: Path, settings: Settings) -> pd.DataFrame:
    """Slice columns the manifest lacks, taken from the provenance records (images without one: blank)."""
    from data.provenance import read

    missing = [c for c in settings.review.slices if c not in test]
    records = read(raw, settings.label.provenance_dir) if missing else None
    if records is None or records.empty:
        return test
    known = records.set_index("path")
    for column in missing:
        if column in known:
            test[column] = test["path"].map(known[column]).fillna("").astype(str)
    return test


def slice_accuracy(test: pd.DataFrame, evaluation: Evaluation, columns: list[str]) -> dict[str, dict[str, float]]:
    """Accuracy on each value of each slice column ("source=production": {n, accuracy})."""
    correct = pd.Series(
        [p == t for p, t in zip(evaluation.predicted, evaluation.labels, strict=True)], index=test.index
    )
    slices = {}
    for column in columns:
        if column not in test:
            continue
        for value, rows in test.groupby(test[column].fillna("").astype(str)).groups.items():
            slices[f"{column}={value}"] = {"n": len(rows), "accuracy": float(correct.loc[rows].mean())}
    return slices


def _contend(settings: Settings, role: str, version: ModelVersion, test: pd.DataFrame, raw: Path) -> Contender:
    cfg = settings.review
    network = version.network()
    evaluation = evaluate_frame(network, test, raw, version.spec, version.classes, bins=cfg.calibration_bins)
    images = load_images(test.head(cfg.latency_batch), raw, version.spec)
    timing = latency(network, images, repeats=cfg.latency_repeats, batch=cfg.latency_batch)
    checks = robustness(network, version.spec, version.classes, test, raw, cfg.robustness)
    return Contender(role, version, evaluation, timing, round(version.size_mb(), 3), robustness=checks)


def _extra_sample(folder: Path, contenders: list[Contender]) -> dict[str, Any]:
    """Accuracy on a labelled production sample: `<folder>/<label>/<image>`."""
    rows = [{"path": str(p.relative_to(folder)), "label": p.parent.name} for p in sorted(folder.glob("*/*"))]
    frame = pd.DataFrame([r for r in rows if (folder / r["path"]).is_file()])
    if frame.empty:
        raise ReviewError(f"--extra {folder}: no images in <label>/ subfolders")
    result: dict[str, Any] = {"n_images": len(frame), "folder": str(folder)}
    for c in contenders:
        result[f"{c.role}_accuracy"] = evaluate_version(c.version, frame, folder).metrics["accuracy"]
    return result


def _record(registry: Registry, result: Review) -> None:
    """The verdict as tags on the challenger's version, the report as artifacts of its run."""
    version = result.challenger.version
    registry.tag_version(
        version.version,
        {
            T.REVIEW_VERDICT: result.verdict,
            T.REVIEW_AT: result.extra["reviewed_at"],
            T.REVIEW_BY: result.extra["reviewed_by"],
            T.REVIEW_CHAMPION: result.champion.version.version if result.champion else "",
            T.REVIEW_FAILED_GATES: ",".join(g.name for g in result.gates if not g.passed),
            T.REVIEW_LIVE: _live_tag(result.challenger.live),
        },
    )
    if version.run_id:
        folder = f"review/{result.extra['reviewed_at'].replace(':', '')}"
        for file in ("review.json", "review.html"):
            registry.client().log_artifact(version.run_id, str(result.report_dir / file), folder)
        registry.tag_version(version.version, {T.REVIEW_REPORT: f"runs:/{version.run_id}/{folder}/review.html"})


def _live_tag(live: dict[str, Any] | None) -> str:
    """The live evidence in one line, for the version (and, at promotion, the champion alias's record)."""
    if live is None:
        return ""
    agreement = "none" if live["agreement"] is None else f"{live['agreement']:.3f}"
    return f"n={live['n']} agreement={agreement} labelled={live['labelled']['n']} since={live['since'] or 'all'}"
