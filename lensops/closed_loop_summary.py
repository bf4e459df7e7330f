"""What the closed loop measured: `reports/demo_summary.json` and the table printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .closed_loop import ClosedLoop, Step

console = Console()
DRIFT_KEYS = ("drift", "verdict", "method", "score", "threshold", "n_reference", "n_current", "run_id")
WINDOWS = {"clean": "clean", "shifted": "shifted", "after": "after", "uncovered": "uncovered"}


def summarize(loop: ClosedLoop, steps: list[Step], seconds: float) -> dict:
    results: dict = {
        "ok": all(s.ok for s in steps),
        "seconds": round(seconds, 1),
        "steps": [s.as_dict() for s in steps],
    }
    evaluation = loop.json("metrics/eval.json")
    if evaluation:  # what the last train stage measured on its test split
        results["test_accuracy"], results["test_macro_f1"] = evaluation["accuracy"], evaluation["macro_f1"]
    if first := loop.results.get("first_eval"):
        results["first_model"] = first
    review = loop.json("reports/review/review.json")
    if review:
        results["review_verdict"], results["reviewed_version"] = review["verdict"], review["challenger"]["version"]
        results["slices"] = _slices(review)
    for key in WINDOWS:
        if drift := loop.json(f"reports/drift/{key}/drift.json"):
            results[f"drift_{'uncovered' if key == 'uncovered' else key}"] = {
                **{k: drift[k] for k in DRIFT_KEYS},
                "model_version": drift["model"]["version"],
                "breakdown": _breakdown(drift),
            }
    retrained = loop.json("reports/retrain/retrain.json")
    results["retrained"] = bool(retrained and retrained.get("outcome") in ("promoted", "trained", "held"))
    results["retrain"] = retrained
    results["promoted_version"] = retrained.get("version") if retrained and retrained["outcome"] == "promoted" else None
    results.update(_traffic(loop.results.get("traffic", {})))
    results.update(_data_loop(loop))
    results.update(_data_quality(loop))
    results["served"] = loop.results.get("served")
    if traced := loop.json("reports/demo_trace/trace.json"):
        results["trace"] = {
            "request": traced["request"], "version": {k: v for k, v in traced["version"].items() if k != "tags"},
            "neighbours": traced["neighbours"], "grid": traced["files"]["grid"], "sent": loop.results.get("traced"),
        }  # fmt: skip
    if (card := loop.root / "reports" / "demo_card" / "card.html").is_file():
        results["card"] = {"html": str(card), "markdown": str(card.with_suffix(".md"))}
    summary = loop.root / "reports" / "demo_summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _breakdown(drift: dict) -> dict:
    """The flagged classes and clusters of a drift report, and its image grids."""
    breakdown = drift.get("details", {}).get("breakdown")
    if not breakdown:
        return {}
    classes = {c["label"]: c["novel_share"] for c in breakdown["classes"] if c["flagged"]}
    clusters = {
        str(c["cluster"]): {"production_share": c["production_share"], "baseline_share": c["baseline_share"],
                            "labels": c["dominant_labels"]}
        for c in breakdown["clusters"] if c["flagged"]
    }  # fmt: skip
    return {"classes": classes, "clusters": clusters, "grids": drift.get("grids", [])}


def _slices(review: dict) -> dict:
    """Accuracy per slice of the reviewed challenger and of the champion it was compared with."""
    return {
        role: {name: s["accuracy"] for name, s in (review[role] or {}).get("slices", {}).items()}
        for role in ("challenger", "champion")
        if review.get(role)
    }


def _traffic(traffic: dict) -> dict:
    before, after = traffic.get("shifted:shifted_holdout"), traffic.get("after:shifted_holdout")
    return {
        "accuracy_on_shifted_before": before["accuracy"] if before else None,
        "accuracy_on_shifted_after": after["accuracy"] if after else None,
        "accuracy_on_clean": traffic.get("clean:clean", {}).get("accuracy"),
        "accuracy_on_uncovered": traffic.get("uncovered:inverted", {}).get("accuracy"),
        "traffic": traffic,
    }


def _data_loop(loop: ClosedLoop) -> dict:
    """Images captured, exported and imported, and the data version the import made."""
    root = loop.root
    capture = root / "reports" / "capture"
    raw_dvc = root / "data" / "raw.dvc"
    provenance = list((root / "data" / "raw" / ".provenance").glob("*.jsonl"))
    data_version = None
    if raw_dvc.is_file():
        import yaml

        data_version = yaml.safe_load(raw_dvc.read_text())["outs"][0]["md5"]
    return {
        "images_captured": sum(1 for p in capture.glob("??/*") if p.is_file()) if capture.is_dir() else 0,
        "images_exported": loop.results.get("exported", 0),
        "images_imported": sum(len(p.read_text().splitlines()) for p in provenance),
        "data_version": data_version,
    }


def _data_quality(loop: ClosedLoop) -> dict:
    """What validation found among the digits (near-duplicate groups, each kept in one split by
    prepare) and what the audit found (cleanlab on out-of-sample predictions)."""
    out: dict = {}
    if validation := loop.json("reports/data_validation.json"):
        groups = validation.get("near_duplicates", [])
        out["near_duplicates"] = {"groups": len(groups), "images": sum(len(g) for g in groups)}
    if audit := loop.json("reports/audit/audit.json"):
        keep = ("n_images", "issues", "flagged", "top", "folds", "epochs", "out_of_sample_accuracy", "seconds")
        out["audit"] = {k: audit.get(k) for k in keep}
    return out


def print_table(steps: list[Step], summary: dict) -> None:
    table = Table(title="lensops demo: the production data loop", title_justify="left")
    for column in ("step", "seconds", "result"):
        table.add_column(column)
    for step in steps:
        if step.returncode is None:
            result = "[dim]not run[/]"
        elif step.ok:
            result = "[green]ok[/]" + (f" (exit {step.returncode})" if step.returncode else "")
        else:
            result = f"[red]failed (exit {step.returncode})[/]"
        table.add_row(step.name, f"{step.seconds:.1f}" if step.returncode is not None else "", result)
    console.print(table)
    for line in _lines(summary):
        console.print(line)


def _lines(summary: dict) -> list[str]:
    lines = []
    for key, what in (("clean", "clean"), ("shifted", "shifted"), ("after", "the same shifted"),
                      ("uncovered", "inverted")):  # fmt: skip
        if d := summary.get(f"drift_{key}"):
            lines.append(f"drift on {what} traffic (v{d['model_version']}): {d['verdict']}, novel share {d['score']}")
            if (b := d.get("breakdown")) and (b.get("classes") or b.get("clusters")):
                lines.append("  " + _explained(b))
    before, after = summary.get("accuracy_on_shifted_before"), summary.get("accuracy_on_shifted_after")
    if before is not None:
        after_text = f", {after:.4f} after (v{summary['promoted_version']})" if after is not None else ""
        lines.append(f"accuracy on the shifted hold-out: {before:.4f} before retraining{after_text}")
    lines.append(
        f"images captured {summary['images_captured']}, exported {summary['images_exported']}, "
        f"imported {summary['images_imported']}; data version {summary['data_version']}"
    )
    if (traced := summary.get("trace")) and traced.get("sent"):
        nearest = ", ".join(n["label"] for n in traced["neighbours"])
        lines.append(
            f"traced a shifted {traced['sent']['label']} that v{traced['version']['version']} answered "
            f"{traced['request']['label']}: its nearest training images are labelled {nearest} "
            f"(commit {traced['version']['git_commit'][:12]}, data {traced['version']['data_hash']}; {traced['grid']})"
        )
    if card := summary.get("card"):
        lines.append(f"the champion's model card: {card['html']}")
    if near := summary.get("near_duplicates"):
        lines.append(
            f"near-duplicate groups in the digits: {near['groups']} ({near['images']} images), "
            "each kept in one split; listed in reports/data_validation.json"
        )
    if audit := summary.get("audit"):
        issues = ", ".join(f"{k} {v}" for k, v in audit["issues"].items())
        lines.append(
            f"audit: {audit['flagged']} of {audit['n_images']} images flagged ({issues}); out-of-sample accuracy "
            f"{audit['out_of_sample_accuracy']:.4f}; top {audit['top']} in reports/audit/suspects.png"
        )
    for role, slices in summary.get("slices", {}).items():
        lines.append(f"{role} accuracy by slice: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(slices.items())))
    lines.append(f"{summary['seconds'] / 60:.1f} minutes; summary in reports/demo_summary.json")
    return lines


def _explained(breakdown: dict) -> str:
    classes = ", ".join(f"{k} ({v:.0%} novel)" for k, v in breakdown["classes"].items()) or "none"
    clusters = (
        ", ".join(
            f"{k} ({c['production_share']:.0%} of production, {c['baseline_share']:.0%} of baseline; "
            f"said {', '.join(c['labels'])})"
            for k, c in breakdown["clusters"].items()
        )
        or "none"
    )
    grids = f"; {len(breakdown['grids'])} image grids in reports/drift/*/grids" if breakdown["grids"] else ""
    return f"classes flagged: {classes}; clusters: {clusters}{grids}"


def demo_summary(root: Path) -> dict | None:
    path = root / "reports" / "demo_summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
