"""`lensops review`: the challenger against the champion, judged the same way, with gates.

Both versions are loaded from the registry as exported networks (exactly what serving loads),
fed the same held-out test split (the data version recorded on the challenger) through the
shared evaluation transform built from each version's own preprocessing spec. The review
measures accuracy, macro-F1, per-class precision and recall, calibration, latency and size,
finds the images on which the two disagree, applies the gates from `review.gates`, writes
`review.json` and a self-contained `review.html`, and records the verdict on the challenger's
version, where `lensops promote` reads it.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from data.prepare import load_prepared
from lensops import registry
from lensops.settings import Settings

from .datasets import load_images, split_frame
from .evaluate import _pyplot
from .lineage import dvc_hash

PROMOTE, HOLD = "promote", "hold"


class ReviewError(ValueError):
    """A usage error: an unknown model, alias or folder. The message says what exists."""


@dataclass
class Evaluated:
    role: str
    uri: str
    version: str
    classes: list[str]
    probabilities: np.ndarray  # (n, model classes)
    predicted: list[str]  # class names
    metrics: dict[str, Any]
    latency: dict[str, float]
    size_mb: float
    tags: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "version": self.version,
            **self.metrics,
            "latency": self.latency,
            "size_mb": self.size_mb,
        }


@dataclass
class Gate:
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str = ""


@dataclass
class Review:
    verdict: str
    gates: list[Gate]
    challenger: Evaluated
    champion: Evaluated | None
    report_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "gates": [g.__dict__ for g in self.gates],
            "challenger": self.challenger.summary(),
            "champion": self.champion.summary() if self.champion else None,
            **self.extra,
        }


# --- loading and measuring ------------------------------------------------------------------


def resolve_version(settings: Settings, ref: str | None, default_alias: str) -> tuple[str, str] | None:
    """(uri, version) of a ref, None when the default alias is not set; ReviewError for a bad ref."""
    import mlflow

    uri = registry.resolve(settings, ref, alias=default_alias)
    try:
        version = registry.version_of(settings, uri)
        name = uri.removeprefix("models:/").split("@")[0].split("/")[0]
        registry.client(settings).get_model_version(name, version)  # it must exist
        return uri, version
    except (mlflow.exceptions.MlflowException, IndexError):
        if ref is None:
            return None
        raise ReviewError(f"unknown model reference {ref!r} ({uri}): {registry.existing_refs(settings)}") from None


def _forward(network, images: np.ndarray, batch: int = 256) -> np.ndarray:
    logits = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out, _ = network(torch.from_numpy(images[start : start + batch]))
            logits.append(out.float().numpy())
    # A diverged network can emit inf/nan; it must be judged (and fail), not crash the review.
    return np.nan_to_num(np.concatenate(logits), nan=0.0, posinf=1e4, neginf=-1e4)


def _latency(network, images: np.ndarray, *, repeats: int, batch: int) -> dict[str, float]:
    """Median milliseconds per image at batch 1, and per image in batches of `batch`."""
    one = torch.from_numpy(images[:1])
    many = torch.from_numpy(np.resize(images, (batch, *images.shape[1:])).astype(np.float32))
    with torch.no_grad():
        for _ in range(3):  # warm-up
            network(one)
            network(many)
        single, batched = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            network(one)
            single.append(time.perf_counter() - started)
        for _ in range(max(3, repeats // 5)):
            started = time.perf_counter()
            network(many)
            batched.append((time.perf_counter() - started) / batch)
    return {
        "batch1_ms": 1000 * float(np.median(single)),
        f"batch{batch}_ms_per_image": 1000 * float(np.median(batched)),
    }


def calibration(probabilities: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, pd.DataFrame]:
    """Expected calibration error and the reliability table (confidence against accuracy per bin)."""
    confidence = probabilities.max(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append(
                {
                    "bin": b,
                    "low": edges[b],
                    "high": edges[b + 1],
                    "count": int(mask.sum()),
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    table = pd.DataFrame(rows, columns=["bin", "low", "high", "count", "confidence", "accuracy"])
    ece = float((table["count"] * (table["confidence"] - table["accuracy"]).abs()).sum() / max(len(confidence), 1))
    return ece, table


def evaluate_version(
    settings: Settings, role: str, uri: str, version: str, frame: pd.DataFrame, raw: Path, labels: list[str]
) -> tuple[Evaluated, pd.DataFrame]:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    files = registry.download(settings, uri)
    network = registry.load_network(files.folder)
    images = load_images(frame, raw, files.spec)  # the version's own preprocessing, via the shared transform
    logits = _forward(network, images)
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    predicted = [files.classes[i] for i in probabilities.argmax(axis=1)]
    names = sorted(set(labels) | set(files.classes))
    precision, recall, _, support = precision_recall_fscore_support(labels, predicted, labels=names, zero_division=0)
    correct = np.array([p == t for p, t in zip(predicted, labels, strict=True)])
    ece, reliability = calibration(probabilities, correct, settings.review.calibration_bins)
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=sorted(set(labels)), average="macro", zero_division=0)),
        "ece": ece,
        "per_class": {
            n: {"precision": float(p), "recall": float(r), "support": int(s)}
            for n, p, r, s in zip(names, precision, recall, support, strict=True)
            if s or n in files.classes
        },
        "n_images": len(labels),
    }
    size = sum(f.stat().st_size for f in (files.folder / "data").rglob("*") if f.is_file()) / 2**20
    latency = _latency(network, images, repeats=settings.review.latency_repeats, batch=settings.review.latency_batch)
    tags = registry.client(settings).get_model_version(settings.registry.model_name, version).tags
    return Evaluated(
        role, uri, version, files.classes, probabilities, predicted, metrics, latency, round(size, 3), dict(tags)
    ), reliability


# --- gates ------------------------------------------------------------------------------------


def apply_gates(settings: Settings, challenger: Evaluated, champion: Evaluated | None) -> list[Gate]:
    g = settings.review.gates
    gates: list[Gate] = []
    c = challenger.metrics
    if g.min_accuracy is not None:
        gates.append(Gate("min_accuracy", c["accuracy"], g.min_accuracy, c["accuracy"] >= g.min_accuracy))
    if g.max_ece is not None:
        gates.append(Gate("max_ece", c["ece"], g.max_ece, c["ece"] <= g.max_ece))
    if champion is None:
        return gates
    p = champion.metrics
    if g.max_accuracy_drop is not None:
        drop = p["accuracy"] - c["accuracy"]
        gates.append(Gate("max_accuracy_drop", drop, g.max_accuracy_drop, drop <= g.max_accuracy_drop + 1e-12))
    if g.max_class_recall_drop is not None:
        drops = {
            k: p["per_class"][k]["recall"] - c["per_class"].get(k, {"recall": 0.0})["recall"]
            for k in p["per_class"]
            if p["per_class"][k]["support"]
        }
        worst = max(drops, key=drops.get) if drops else ""
        value = drops.get(worst, 0.0)
        gates.append(
            Gate(
                "max_class_recall_drop",
                value,
                g.max_class_recall_drop,
                value <= g.max_class_recall_drop + 1e-12,
                f"class {worst}" if worst else "",
            )
        )
    if g.max_latency_ratio is not None:
        key = f"batch{settings.review.latency_batch}_ms_per_image"
        ratio = challenger.latency[key] / max(champion.latency[key], 1e-9)
        gates.append(
            Gate("max_latency_ratio", ratio, g.max_latency_ratio, ratio <= g.max_latency_ratio, "batched, per image")
        )
    return gates


# --- the review -------------------------------------------------------------------------------


def review(
    settings: Settings,
    *,
    challenger_ref: str | None = None,
    champion_ref: str | None = None,
    report_dir: Path | None = None,
    extra_dir: Path | None = None,
) -> Review:
    found = resolve_version(settings, challenger_ref, registry.CHALLENGER)
    if found is None:
        raise ReviewError(
            f"nothing to review: no @{registry.CHALLENGER} alias "
            f"({registry.existing_refs(settings)}); run `lensops train`"
        )
    challenger_uri, challenger_version = found
    champion = resolve_version(settings, champion_ref, registry.CHAMPION)
    if champion and champion[1] == challenger_version:
        raise ReviewError(f"the challenger and the champion are the same version ({challenger_version})")
    if extra_dir is not None and not extra_dir.is_dir():
        raise ReviewError(f"--extra {extra_dir}: not a folder of <label>/<image> files")

    prepared = settings.path(settings.data.prepared)
    if not (prepared / "manifest.parquet").is_file():
        raise ReviewError(f"{prepared} has no prepared dataset; run `lensops data prepare` first")
    client = registry.client(settings)
    name = settings.registry.model_name
    trained_on = client.get_model_version(name, challenger_version).tags.get("lensops.data_hash")
    current = dvc_hash(prepared)
    if trained_on and trained_on != current:
        raise ReviewError(
            f"the challenger (v{challenger_version}) was trained on data {trained_on}, but {prepared} is {current}; "
            "check out that data version (`git checkout <commit> -- dvc.lock && dvc checkout`) to review it"
        )
    manifest, _, raw = load_prepared(prepared)
    test = split_frame(manifest, "test").merge(manifest[["path", "label"]], on="path")
    labels = test["label"].astype(str).tolist()

    challenger, challenger_reliability = evaluate_version(
        settings, "challenger", challenger_uri, challenger_version, test, raw, labels
    )
    champ, champion_reliability = (None, None)
    if champion:
        champ, champion_reliability = evaluate_version(settings, "champion", *champion, test, raw, labels)
    gates = apply_gates(settings, challenger, champ)
    verdict = PROMOTE if all(g.passed for g in gates) else HOLD

    out = report_dir or settings.path(settings.review.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = Review(
        verdict,
        gates,
        challenger,
        champ,
        out,
        {"data_hash": current, "reviewed_at": _now(), "reviewed_by": registry.who()},
    )
    if extra_dir is not None:
        result.extra["extra"] = _extra_sample(settings, extra_dir, challenger, champ)
    disagreements = [
        i
        for i, (a, b) in enumerate(
            zip(challenger.predicted, champ.predicted if champ else challenger.predicted, strict=True)
        )
        if a != b
    ]
    result.extra["disagreements"] = len(disagreements)
    plots = _plots(settings, result, test, raw, labels, disagreements, challenger_reliability, champion_reliability)
    (out / "review.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (out / "review.html").write_text(_html(result, plots))
    _record(settings, result)
    return result


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _extra_sample(
    settings: Settings, folder: Path, challenger: Evaluated, champion: Evaluated | None
) -> dict[str, Any]:
    """Accuracy on a labelled production sample: `<folder>/<label>/<image>`."""
    rows = [
        {"path": str(p.relative_to(folder)), "label": p.parent.name} for p in sorted(folder.glob("*/*")) if p.is_file()
    ]
    if not rows:
        raise ReviewError(f"--extra {folder}: no images in <label>/ subfolders")
    frame = pd.DataFrame(rows).assign(label_index=0)  # the loader wants an index; names are compared below
    result = {"n_images": len(frame), "folder": str(folder)}
    for model in filter(None, (challenger, champion)):
        files = registry.download(settings, model.uri)
        logits = _forward(registry.load_network(files.folder), load_images(frame, folder, files.spec))
        predicted = [files.classes[i] for i in logits.argmax(axis=1)]
        result[f"{model.role}_accuracy"] = float(
            np.mean([p == t for p, t in zip(predicted, frame["label"], strict=True)])
        )
    return result


# --- reporting --------------------------------------------------------------------------------


def _plots(
    settings, result: Review, test, raw, labels, disagreements, challenger_reliability, champion_reliability
) -> dict[str, Path]:
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    out = result.report_dir
    models = [m for m in (result.challenger, result.champion) if m is not None]
    names = sorted(set(labels))
    paths: dict[str, Path] = {}

    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.2), dpi=110, squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        matrix = confusion_matrix(labels, model.predicted, labels=names)
        ax.imshow(matrix, cmap="Blues")
        ax.set(
            title=f"{model.role} v{model.version}: accuracy {model.metrics['accuracy']:.3f}",
            xlabel="predicted",
            ylabel="actual",
        )
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > matrix.max() / 2 else "black",
                )
    fig.tight_layout()
    paths["confusion"] = out / "confusion_matrices.png"
    fig.savefig(paths["confusion"])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for model, table in ((result.challenger, challenger_reliability), (result.champion, champion_reliability)):
        if model is not None and table is not None and len(table):
            ax.plot(
                table["confidence"],
                table["accuracy"],
                "o-",
                label=f"{model.role} v{model.version} (ECE {model.metrics['ece']:.3f})",
            )
    ax.set(xlabel="confidence", ylabel="accuracy", title="reliability", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["reliability"] = out / "reliability.png"
    fig.savefig(paths["reliability"])
    plt.close(fig)

    if result.champion is not None and disagreements:
        from PIL import Image

        shown = disagreements[: settings.review.max_disagreements_shown]
        cols = min(8, len(shown))
        rows = int(np.ceil(len(shown) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), dpi=110, squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, i in zip(axes.ravel(), shown, strict=False):
            with Image.open(raw / test["path"].iloc[i]) as image:
                ax.imshow(image.convert("RGB"))
            ax.set_title(
                f"true {labels[i]}\nnew {result.challenger.predicted[i]} / old {result.champion.predicted[i]}",
                fontsize=6,
            )
        fig.suptitle(
            f"{len(disagreements)} test images where the two disagree"
            + (f" (first {len(shown)})" if len(shown) < len(disagreements) else ""),
            fontsize=9,
        )
        fig.tight_layout()
        paths["disagreements"] = out / "disagreements.png"
        fig.savefig(paths["disagreements"])
        plt.close(fig)
    return paths


def _embed(title: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"


def _gate_row(g: Gate) -> str:
    colour, word = ("#1a7f37", "pass") if g.passed else ("#cf222e", "FAIL")
    cells = [
        html.escape(g.name),
        f"{g.value:.4f}",
        f"{g.threshold:g}",
        f"<span style='color:{colour}'>{word}</span>",
        html.escape(g.detail),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _class_cell(model: Evaluated, name: str) -> str:
    m = model.metrics["per_class"].get(name)
    return f"<td>{m['precision']:.3f} / {m['recall']:.3f}</td>" if m else "<td>-</td>"


def _html(result: Review, plots: dict[str, Path]) -> str:
    """One self-contained page: every plot embedded as base64, no external assets."""
    e = html.escape
    colour = "#1a7f37" if result.verdict == PROMOTE else "#b35900"
    models = [m for m in (result.challenger, result.champion) if m is not None]
    gate_rows = "".join(_gate_row(g) for g in result.gates) or "<tr><td colspan=5>no gates configured</td></tr>"
    head = "".join(f"<th>{e(m.role)} v{e(m.version)}</th>" for m in models)
    keys = [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("ece", "expected calibration error")]
    metric_rows = "".join(
        f"<tr><td>{label}</td>" + "".join(f"<td>{m.metrics[k]:.4f}</td>" for m in models) + "</tr>" for k, label in keys
    )
    for key in result.challenger.latency:
        metric_rows += (
            f"<tr><td>latency {e(key)}</td>" + "".join(f"<td>{m.latency[key]:.3f}</td>" for m in models) + "</tr>"
        )
    metric_rows += "<tr><td>model size (MB)</td>" + "".join(f"<td>{m.size_mb:.2f}</td>" for m in models) + "</tr>"
    classes = sorted(result.challenger.metrics["per_class"])
    class_rows = "".join(f"<tr><td>{e(c)}</td>" + "".join(_class_cell(m, c) for m in models) + "</tr>" for c in classes)
    titles = {"confusion": "confusion matrices", "reliability": "reliability", "disagreements": "disagreements"}
    images = "".join(_embed(title, plots[key]) for key, title in titles.items() if key in plots)
    champion_note = "" if result.champion else "<p>No champion yet: only the absolute gates apply.</p>"
    against = f"{e(result.champion.uri)} (v{e(result.champion.version)})" if result.champion else "no champion"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lensops review: v{e(result.challenger.version)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Review of {e(result.challenger.uri)} (v{e(result.challenger.version)})</h1>
<p style="font-size:1.4em">verdict: <b style="color:{colour}">{e(result.verdict)}</b></p>
<p>against {against}; {result.challenger.metrics["n_images"]} test images of data version
{e(str(result.extra.get("data_hash", "")))}; reviewed {e(result.extra.get("reviewed_at", ""))}
by {e(result.extra.get("reviewed_by", ""))}.</p>
{champion_note}
<h2>gates</h2><table><tr><th>gate</th><th>value</th><th>threshold</th><th>result</th><th>detail</th></tr>{gate_rows}</table>
<h2>metrics</h2><table><tr><th></th>{head}</tr>{metric_rows}</table>
<h2>per class: precision / recall</h2><table><tr><th>class</th>{head}</tr>{class_rows}</table>
{images}
</body></html>
"""


def _record(settings: Settings, result: Review) -> None:
    """The verdict as tags on the challenger's version, the report as artifacts of its run."""
    client = registry.client(settings)
    name, version = settings.registry.model_name, result.challenger.version
    tags = {
        "lensops.review.verdict": result.verdict,
        "lensops.review.at": result.extra["reviewed_at"],
        "lensops.review.by": result.extra["reviewed_by"],
        "lensops.review.champion": result.champion.version if result.champion else "",
        "lensops.review.failed_gates": ",".join(g.name for g in result.gates if not g.passed),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    run_id = result.challenger.tags.get("lensops.run_id")
    if run_id:
        folder = f"review/{result.extra['reviewed_at'].replace(':', '')}"
        for file in ("review.json", "review.html"):
            client.log_artifact(run_id, str(result.report_dir / file), folder)
        client.set_model_version_tag(name, version, "lensops.review.report", f"runs:/{run_id}/{folder}/review.html")
