"""The review's report: `review.json`, its charts, and one self-contained `review.html`.

Every chart is embedded in the page as base64, so the file can be mailed or attached to a
ticket and still show everything.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from data.figures import Tile, image_grid

from .live_review import live_charts, live_section
from .plots import confusion_matrix, plot_confusions, plot_reliability

if TYPE_CHECKING:
    from .gates import Gate
    from .review import Contender, Review

CHARTS = {"confusion": "confusion matrices", "reliability": "reliability", "disagreements": "disagreements"}


def write(result: Review, test: pd.DataFrame, raw: Path, *, max_shown: int, settings=None) -> dict[str, Path]:
    """Charts, `review.json` and `review.html` into `result.report_dir`; returns the charts by key."""
    out = result.report_dir
    out.mkdir(parents=True, exist_ok=True)
    disagreements = _disagreements(result)
    result.extra["disagreements"] = len(disagreements)
    charts = _charts(result, test, raw, disagreements[:max_shown], len(disagreements))
    if result.challenger.live is not None and settings is not None:
        charts |= live_charts(settings, result.challenger.live, out, max_shown=max_shown)
    (out / "review.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (out / "review.html").write_text(_page(result, charts))
    return charts


def _disagreements(result: Review) -> list[int]:
    if result.champion is None:
        return []
    pairs = zip(result.challenger.predicted, result.champion.predicted, strict=True)
    return [i for i, (new, old) in enumerate(pairs) if new != old]


def _charts(result: Review, test: pd.DataFrame, raw: Path, shown: list[int], total: int) -> dict[str, Path]:
    out, labels = result.report_dir, result.challenger.evaluation.labels
    names = sorted(set(labels))
    panels = [
        (
            f"{c.role} v{c.version.version}: accuracy {c.metrics['accuracy']:.3f}",
            confusion_matrix(labels, c.predicted, names),
        )
        for c in result.contenders
    ]
    curves = [
        (f"{c.role} v{c.version.version} (ECE {c.metrics['ece']:.3f})", c.evaluation.reliability)
        for c in result.contenders
    ]
    charts = {
        "confusion": plot_confusions(panels, names, out / "confusion_matrices.png"),
        "reliability": plot_reliability(curves, out / "reliability.png"),
    }
    if result.champion is not None and shown:
        new, old = result.challenger.predicted, result.champion.predicted
        tiles = [Tile(raw / test["path"].iloc[i], f"true {labels[i]}\nnew {new[i]} / old {old[i]}") for i in shown]
        more = f" (first {len(shown)})" if len(shown) < total else ""
        charts["disagreements"] = image_grid(
            tiles, out / "disagreements.png", title=f"{total} test images where the two disagree{more}"
        )
    return charts


def _embed(title: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"


def _gate_row(g: Gate) -> str:
    colour, word = ("#1a7f37", "pass") if g.passed else ("#cf222e", "FAIL")
    value = "" if g.value is None else f"{g.value:.4f}"
    cells = [html.escape(g.name), value, f"{g.threshold:g}", f"<span style='color:{colour}'>{word}</span>"]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in [*cells, html.escape(g.detail)]) + "</tr>"


def _row(label: str, contenders: list[Contender], cell) -> str:
    return f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{cell(c)}</td>" for c in contenders) + "</tr>"


def _metric_rows(contenders: list[Contender]) -> str:
    keys = [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("ece", "expected calibration error")]
    rows = [_row(label, contenders, lambda c, k=k: f"{c.metrics[k]:.4f}") for k, label in keys]
    rows += [_row(f"latency {k}", contenders, lambda c, k=k: f"{c.latency[k]:.3f}") for k in contenders[0].latency]
    rows.append(_row("model size (MB)", contenders, lambda c: f"{c.size_mb:.2f}"))
    return "".join(rows)


def _class_rows(contenders: list[Contender]) -> str:
    def cell(c: Contender, name: str) -> str:
        m = c.metrics["per_class"].get(name)
        return f"{m['precision']:.3f} / {m['recall']:.3f}" if m else "-"

    names = sorted(contenders[0].metrics["per_class"])
    return "".join(_row(n, contenders, lambda c, n=n: cell(c, n)) for n in names)


def _slice_rows(contenders: list[Contender], kind: str = "slices") -> str:
    """Accuracy per slice (or robustness check), side by side, with the challenger's change against the champion."""
    rows = []
    for name, first in sorted(getattr(contenders[0], kind).items()):
        accuracy = [f"{getattr(c, kind).get(name, {}).get('accuracy', float('nan')):.3f}" for c in contenders]
        cells = [str(first["n"]), *accuracy]
        if len(contenders) == 2 and name in getattr(contenders[1], kind):
            change = first["accuracy"] - getattr(contenders[1], kind)[name]["accuracy"]
            colour = "#cf222e" if change < -0.005 else "#1a7f37" if change > 0.005 else "#222"
            cells.append(f"<span style='color:{colour}'>{change:+.3f}</span>")
        rows.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(rows)


def _robustness_tables(contenders: list[Contender], head: str, against: bool) -> str:
    """Accuracy under each `review.robustness` check, then each class's recall under it (one cell per version)."""
    if not contenders[0].robustness:
        return "<p>No robustness checks (<code>review.robustness</code> is empty).</p>"
    classes = sorted(contenders[0].metrics["per_class"])
    rows = []
    for name in sorted(contenders[0].robustness):
        cells = [" / ".join(f"{c.robustness.get(name, {}).get('recall', {}).get(k, float('nan')):.2f}"
                            for c in contenders) for k in classes]  # fmt: skip
        rows.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    order = " / ".join(f"{html.escape(c.role)}" for c in contenders)
    return f"""<h2>robustness: accuracy under each perturbation of the test split</h2>
<table><tr><th>check</th><th>images</th>{head}{"<th>change</th>" if against else ""}</tr>
{_slice_rows(contenders, "robustness")}</table>
<h2>robustness: recall per class ({order})</h2>
<table><tr><th>check</th>{"".join(f"<th>{html.escape(k)}</th>" for k in classes)}</tr>{"".join(rows)}</table>"""


STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}"""


def _page(result: Review, charts: dict[str, Path]) -> str:
    """One self-contained page: every chart embedded as base64, no external assets."""
    e = html.escape
    new, old = result.challenger, result.champion
    colour = "#1a7f37" if result.verdict == "promote" else "#b35900"
    gate_rows = "".join(_gate_row(g) for g in result.gates) or "<tr><td colspan=5>no gates configured</td></tr>"
    head = "".join(f"<th>{e(c.role)} v{e(c.version.version)}</th>" for c in result.contenders)
    against = f"{e(old.version.uri)} (v{e(old.version.version)})" if old else "no champion"
    note = "" if old else "<p>No champion yet: only the absolute gates apply.</p>"
    images = "".join(_embed(title, charts[key]) for key, title in CHARTS.items() if key in charts)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lensops review: v{e(new.version.version)}</title>
<style>{STYLE}</style></head><body>
<h1>Review of {e(new.version.uri)} (v{e(new.version.version)})</h1>
<p style="font-size:1.4em">verdict: <b style="color:{colour}">{e(result.verdict)}</b></p>
<p>against {against}; {new.metrics["n_images"]} test images of data version
{e(str(result.extra.get("data_hash", "")))}; reviewed {e(result.extra.get("reviewed_at", ""))}
by {e(result.extra.get("reviewed_by", ""))}.</p>
{note}
<h2>gates</h2><table><tr><th>gate</th><th>value</th><th>threshold</th><th>result</th><th>detail</th></tr>{gate_rows}</table>
<h2>metrics</h2><table><tr><th></th>{head}</tr>{_metric_rows(result.contenders)}</table>
<h2>per class: precision / recall</h2><table><tr><th>class</th>{head}</tr>{_class_rows(result.contenders)}</table>
<h2>slices: accuracy</h2><table><tr><th>slice</th><th>images</th>{head}{"<th>change</th>" if old else ""}</tr>
{_slice_rows(result.contenders)}</table>
{_robustness_tables(result.contenders, head, old is not None)}
{live_section(new.live, charts, _embed)}
{images}
</body></html>
"""
