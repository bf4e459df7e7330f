"""The dataset validation suite: Great Expectations over the image manifest.

Each rule is one expectation. Row-level expectations run over the manifest and name the
files that break them; class-level ones run over a small table of images per class. The
report turns GE's unexpected rows back into file paths with a reason a person can act on.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from lensops.core.settings import Settings, ValidateSettings

from .expectations import quality_rules, row_rules
from .manifest import build_manifest, write_manifest
from .near_duplicates import near_groups
from .plots import plot_class_health, plot_quality

QUALITY_CHART = "data_quality.png"  # next to the report


@dataclass
class Expectation:
    name: str
    success: bool
    detail: str


@dataclass
class ValidationReport:
    ok: bool
    n_images: int
    n_classes: int
    bad_files: list[dict] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    near_duplicates: list[list[str]] = field(default_factory=list)  # same picture, other bytes (pHash)
    expectations: list[Expectation] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    raw: str = ""
    generated_at: str = ""
    quarantined: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)


def load_suite_library() -> None:
    """Import Great Expectations and matplotlib (over two seconds together), which the
    validator needs next; called while the manifest's workers decode, it costs no wall time."""
    import great_expectations.expectations  # noqa: F401
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # files only; a notebook keeps its own backend
        matplotlib.use("Agg")
    import matplotlib.pyplot


def _validate(frame: pd.DataFrame, name: str, expectations: list) -> list:
    """Run expectations over a dataframe in an ephemeral GE context; one result per expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(name).add_dataframe_asset(name=name)
    batch = asset.add_batch_definition_whole_dataframe(name).get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=name)
    for e in expectations:
        suite.add_expectation(e)
    return batch.validate(suite, result_format="COMPLETE").results


def _readable(manifest: pd.DataFrame) -> pd.Series:
    return manifest["error"].isna() & manifest["label"].notna()


def near_group_ids(manifest: pd.DataFrame, cfg: ValidateSettings) -> pd.Series:
    """A near-duplicate group id per row (its own id when it has no near copy, or the check is off)."""
    distance = cfg.near_duplicates.max_distance
    hashes = manifest["phash"].where(_readable(manifest)) if distance is not None else [None] * len(manifest)
    return pd.Series(near_groups(list(hashes), distance or 0), index=manifest.index, name="near_group")


def _shared_groups(manifest: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """The readable rows whose near-duplicate group has other members, with a `group` column."""
    frame = manifest.assign(group=groups)[_readable(manifest)]
    return frame[frame["group"].map(frame["group"].value_counts()) > 1]


def _near_twins(manifest: pd.DataFrame, groups: pd.Series) -> dict[str, list[str]]:
    """path -> paths of its near copies (other bytes) filed under another label."""
    twins: dict[str, list[str]] = {}
    frame = _shared_groups(manifest, groups)
    mixed = frame[frame.groupby("group")["label"].transform("nunique") > 1]
    for _, members in mixed.groupby("group"):
        for row in members.itertuples():
            others = members[(members["label"] != row.label) & (members["sha256"] != row.sha256)]
            if len(others):
                twins[row.path] = sorted(others["path"])
    return twins


def near_duplicate_groups(manifest: pd.DataFrame, groups: pd.Series) -> list[list[str]]:
    """Groups of readable images that are one picture in at least two different files."""
    frame = _shared_groups(manifest, groups)
    frame = frame[frame.groupby("group")["sha256"].transform("nunique") > 1]
    return sorted(sorted(g.tolist()) for _, g in frame.groupby("group")["path"])


def _with_derived_columns(manifest: pd.DataFrame, near: dict[str, list[str]]) -> pd.DataFrame:
    frame = manifest.copy()
    readable = _readable(frame)
    per_sha = frame[readable].groupby("sha256")["label"].nunique()
    frame["labels_with_same_content"] = frame["sha256"].map(per_sha).where(readable).astype("Int64")
    near_count = frame["path"].map(lambda p: 2 if p in near else 1)
    frame["labels_with_near_copies"] = near_count.where(readable).astype("Int64")
    # GE's pandas engine compares plain objects; nullable extension arrays become object/float.
    frame = frame.astype({c: "object" for c in frame.columns if str(frame[c].dtype) == "string"})
    return frame.astype({c: "float64" for c in frame.columns if str(frame[c].dtype) == "Float64"})


def valid_mask(manifest: pd.DataFrame, cfg: ValidateSettings) -> pd.Series:
    """Files that break no per-file rule (used for class counts and by `prepare`)."""
    m = manifest
    return (
        m["error"].isna()
        & m["label"].notna()
        & m["decoded"]
        & m["format"].isin(cfg.formats).fillna(False)
        & (m["ext_format"] == m["format"]).fillna(False)
        & (m["width"] >= cfg.min_width).fillna(False)
        & (m["height"] >= cfg.min_height).fillna(False)
    )


def _named(rules: list, extra: list) -> list:
    expectations = []
    for name, gx_exp, _ in rules:
        gx_exp.meta = {"name": name}
        expectations.append(gx_exp)
    return expectations + extra


def _row_results(report: ValidationReport, rules: list, by_name: dict, manifest: pd.DataFrame) -> dict[int, list[str]]:
    """Each row rule's verdict into the report; the reasons of each failing row."""
    reasons: dict[int, list[str]] = {}
    for name, _, why in rules:
        if name not in by_name:
            continue
        result = by_name[name]
        bad = result.result.get("unexpected_index_list") or []
        for idx in bad:
            reasons.setdefault(int(idx), []).append(why(manifest.loc[idx]))
        total = result.result.get("element_count", len(manifest))
        detail = "all files pass" if result.success else f"{len(bad)} of {total} files fail"
        report.expectations.append(Expectation(name, bool(result.success), detail))
    return reasons


def _quality_results(report: ValidationReport, rules: list, by_name: dict, manifest: pd.DataFrame) -> None:
    for name, _, what in rules:
        result = by_name[name].result
        bad = [manifest.at[int(i), "path"] for i in result.get("unexpected_index_list") or []]
        mostly = by_name[name].expectation_config.kwargs.get("mostly", 1.0)
        share = f"{len(bad)} of {result.get('element_count', 0) - result.get('missing_count', 0)} images"
        detail = f"{share} {what}; at most {1 - mostly:.1%} allowed"
        if bad:
            detail += f" (e.g. {', '.join(bad[:3])})"
        report.expectations.append(Expectation(name, bool(by_name[name].success), detail))


def _labels_result(report: ValidationReport, by_name: dict, manifest: pd.DataFrame, classes: list[str]) -> None:
    result = by_name["labels_match_params"]
    found = sorted(set(manifest["label"].dropna()))
    missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
    detail = "labels match params" if result.success else f"missing: {missing or '-'}; not expected: {extra or '-'}"
    report.expectations.append(Expectation("labels_match_params", bool(result.success), detail))


def _class_counts(report: ValidationReport, manifest: pd.DataFrame, cfg: ValidateSettings, classes) -> None:
    """Valid images per class, and the per-class minimum as an expectation over a small table."""
    import great_expectations.expectations as gxe

    good = valid_mask(manifest, cfg)
    labels = sorted(set(manifest["label"].dropna()) | set(classes or []))
    counts = manifest[good].groupby("label").size().reindex(labels, fill_value=0)
    report.class_counts = {str(k): int(v) for k, v in counts.items()}
    report.n_classes = len(labels)
    if not labels:
        return
    class_frame = pd.DataFrame({"label": labels, "n_images": counts.to_numpy()})
    minimum = cfg.min_images_per_class
    (result,) = _validate(
        class_frame, "classes", [gxe.ExpectColumnValuesToBeBetween(column="n_images", min_value=minimum)]
    )
    short = [
        f"{class_frame.label[i]!r} has {class_frame.n_images[i]}"
        for i in result.result.get("unexpected_index_list") or []
    ]
    detail = (
        f"every class has at least {minimum} valid images"
        if result.success
        else f"{'; '.join(short)} valid images (minimum {minimum})"
    )
    report.expectations.append(Expectation("min_images_per_class", bool(result.success), detail))


def validate_manifest(
    manifest: pd.DataFrame, cfg: ValidateSettings, classes: list[str] | None = None
) -> ValidationReport:
    """Run the suite. `classes`, when given, is the exact set of labels expected."""
    import great_expectations.expectations as gxe

    duplicates = cross_label_duplicates(manifest)
    twins = {p: [q for q in group if q != p] for group in duplicates for p in group}
    groups = near_group_ids(manifest, cfg)
    near = _near_twins(manifest, groups)
    rules, quality = row_rules(cfg, twins, near), quality_rules(cfg.quality)
    extra = []
    if classes:
        extra.append(
            gxe.ExpectColumnDistinctValuesToEqualSet(
                column="label", value_set=list(classes), meta={"name": "labels_match_params"}
            )
        )
    frame = _with_derived_columns(manifest, near)
    results = _validate(frame, "manifest", _named(rules + quality, extra)) if len(frame) else []
    by_name = {r.expectation_config.meta["name"]: r for r in results}

    report = ValidationReport(ok=True, n_images=len(manifest), n_classes=0)
    reasons = _row_results(report, rules, by_name, manifest)
    if len(frame):
        _quality_results(report, quality, by_name, manifest)
    if classes and "labels_match_params" in by_name:
        _labels_result(report, by_name, manifest, classes)
    if not len(manifest):
        report.expectations.append(Expectation("has_images", False, "no files found"))
    _class_counts(report, manifest, cfg, classes)
    report.bad_files = [
        {"path": manifest.at[i, "path"], "reason": "; ".join(dict.fromkeys(rs))} for i, rs in sorted(reasons.items())
    ]
    report.duplicates = duplicates
    report.near_duplicates = near_duplicate_groups(manifest, groups)
    report.ok = all(e.success for e in report.expectations)
    return report


def cross_label_duplicates(manifest: pd.DataFrame) -> list[list[str]]:
    """Groups of paths with identical bytes filed under more than one label."""
    readable = manifest[manifest["error"].isna() & manifest["label"].notna()]
    groups = readable.groupby("sha256").filter(lambda g: g["label"].nunique() > 1).groupby("sha256")["path"]
    return sorted(sorted(g.tolist()) for _, g in groups)


def quarantine(raw: Path, bad_files: list[dict], dest: Path) -> list[dict]:
    """Move bad files to `dest/<same relative path>`, never overwriting; log each move with its reason.

    The log `dest/quarantine.jsonl` is appended to, so earlier moves stay on record.
    """
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    when = datetime.now(UTC).isoformat(timespec="seconds")
    with (dest / "quarantine.jsonl").open("a") as log:
        for bad in bad_files:
            src = raw / bad["path"]
            if not src.exists():
                continue
            target = dest / bad["path"]
            n = 1
            while target.exists():
                target = target.with_name(f"{Path(bad['path']).stem}.{n}{src.suffix}")
                n += 1
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, target)
            entry = {"path": bad["path"], "moved_to": str(target), "reason": bad["reason"], "time": when}
            log.write(json.dumps(entry) + "\n")
            moved.append(entry)
    return moved


def validate_dataset(
    settings: Settings,
    *,
    raw: Path | None = None,
    report_path: Path | None = None,
    quarantine_dir: Path | None = None,
    progress: bool = True,
) -> ValidationReport:
    """The `validate` stage: manifest, suite, report (and the manifest kept for `prepare`)."""
    raw = raw or settings.path(settings.data.raw)
    cfg = settings.validate_
    manifest = build_manifest(raw, cfg=cfg, progress=progress, meanwhile=load_suite_library)
    report = validate_manifest(manifest, cfg, settings.data.classes or None)
    report.raw = str(raw)
    report.generated_at = datetime.now(UTC).isoformat(timespec="seconds")
    write_manifest(manifest, settings.path(cfg.manifest), cfg=cfg)
    report_path = report_path or settings.path(cfg.report)
    bad_labels = manifest.set_index("path").loc[[b["path"] for b in report.bad_files], "label"].dropna()
    plot_class_health(
        report.class_counts,
        bad_labels.value_counts().to_dict(),
        report_path.with_suffix(".png"),
        minimum=cfg.min_images_per_class,
    )
    plot_quality(manifest[valid_mask(manifest, cfg)], cfg.quality, report_path.with_name(QUALITY_CHART))
    if quarantine_dir is not None and report.bad_files:
        report.quarantined = quarantine(raw, report.bad_files, quarantine_dir)
    report.write(report_path)
    return report
