"""`lensops review --live`: the challenger judged on production traffic, from its shadow's answers.

With `serve.shadow` set, every shadowed request has two records with one `request_id`: the
champion's in the production log (`monitoring.log_dir`) and the shadow's in
`monitoring.shadow_log_dir`. `live_evidence` joins them, for the requests the champion answered
and the challenger shadowed since a time, and measures:

- agreement, overall and per class (by the champion's label), and the champion-by-challenger
  matrix of labels;
- the requests on which they disagree, with the captured image where serving kept it (the grid
  in the report);
- where people have since labelled the request's image (`lensops label import`, matched by the
  image's sha256 in the provenance records), both versions' live accuracy.

The live gates (`min_live_records`, `min_live_agreement`, `max_live_class_disagreement`,
`max_live_accuracy_drop` in `review.gates`) read this evidence; `live_section` renders it for
`review.html`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.figures import Tile, image_grid
from lensops.core.capture import CaptureStore
from lensops.core.errors import UsageError
from lensops.core.log_reader import scan_log
from lensops.core.settings import Settings

from .plots import plot_confusion


def live_evidence(
    settings: Settings, champion: str, challenger: str, since: str | None, classes: list[str] | None = None
) -> dict[str, Any]:
    """The shadowed requests since `since` (every one kept, if None), champion against challenger.

    `classes` (both versions' classes, in order) give the matrix a row and a column for every
    class, those no request was answered with included: a class production never sent shows."""
    try:
        since_at = pd.Timestamp(since) if since else None
    except ValueError as e:
        raise UsageError(f"--since {since!r}: not a time ({e}); e.g. 2026-12-01 or 2026-12-01T08:00") from None
    monitoring = settings.monitoring
    shadow = scan_log(settings.path(monitoring.shadow_log_dir), model_version=challenger, since=since_at).frame
    answered = scan_log(settings.path(monitoring.log_dir), model_version=champion, since=since_at).frame
    pairs = answered[["request_id", "time", "label", "score", "sha256", "captured"]].merge(
        shadow[["request_id", "label", "score"]], on="request_id", suffixes=("", "_challenger")
    )
    pairs = pairs.rename(columns={"label": "champion", "label_challenger": "challenger"})
    evidence: dict[str, Any] = {
        "champion_version": champion,
        "challenger_version": challenger,
        "since": str(since_at) if since_at is not None else None,
        "n": len(pairs),
        "shadow_records": len(shadow),
        "classes": list(classes or []),
    }
    if pairs.empty:
        return {**evidence, "agreement": None, "per_class": {}, "matrix": {}, "disagreements": [], "labelled": {"n": 0}}
    pairs["agree"] = pairs["champion"] == pairs["challenger"]
    per_class = pairs.groupby("champion")["agree"].agg(["size", "mean"])
    disagreeing = pairs[~pairs["agree"]].sort_values("time")
    return {
        **evidence,
        "first": str(pairs["time"].min()),
        "last": str(pairs["time"].max()),
        "agreement": float(pairs["agree"].mean()),
        "per_class": {
            str(k): {"n": int(r["size"]), "agreement": float(r["mean"]), "disagreement": 1 - float(r["mean"])}
            for k, r in per_class.iterrows()
        },
        "matrix": {
            str(a): {str(b): int(n) for b, n in row.items() if n}
            for a, row in pd.crosstab(pairs["champion"], pairs["challenger"]).iterrows()
        },
        "disagreements": [
            {
                "request_id": r.request_id,
                "sha256": r.sha256,
                "captured": bool(r.captured),
                "champion": r.champion,
                "challenger": r.challenger,
            }
            for r in disagreeing.itertuples()
        ],
        "labelled": _live_accuracy(settings, pairs),
    }


def _live_accuracy(settings: Settings, pairs: pd.DataFrame) -> dict[str, Any]:
    """Both versions' accuracy on the shadowed requests whose image has a label (by sha256), if any."""
    from data.provenance import read

    records = read(settings.path(settings.data.raw), settings.label.provenance_dir)
    if records.empty or "label" not in records or "sha256" not in records:
        return {"n": 0}
    labels = records.dropna(subset=["sha256", "label"]).drop_duplicates("sha256", keep="last")
    known = pairs.merge(labels[["sha256", "label"]], on="sha256")
    if known.empty:
        return {"n": 0}
    return {
        "n": len(known),
        "champion_accuracy": float((known["champion"] == known["label"]).mean()),
        "challenger_accuracy": float((known["challenger"] == known["label"]).mean()),
    }


def live_matrix(live: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """The champion-by-challenger counts over every class: the versions' classes in their order,
    then any other label the answers used."""
    seen = {*live["matrix"], *(k for row in live["matrix"].values() for k in row)}
    known = list(live.get("classes") or [])
    names = known + sorted(seen - set(known))
    return names, np.array([[live["matrix"].get(a, {}).get(b, 0) for b in names] for a in names])


def live_charts(settings: Settings, live: dict[str, Any], out: Path, *, max_shown: int) -> dict[str, Path]:
    """The champion-by-challenger matrix, and a grid of the captured images they disagree on."""
    charts: dict[str, Path] = {}
    if not live["n"]:
        return charts
    names, matrix = live_matrix(live)
    axes = (f"challenger v{live['challenger_version']}", f"champion v{live['champion_version']}")
    title = f"{live['n']} shadowed requests, agreement {live['agreement']:.3f}"
    charts["live_matrix"] = plot_confusion(matrix, names, out / "live_matrix.png", title, axes)
    capture = settings.monitoring.capture
    store = CaptureStore(settings.path(capture.dir), max_bytes=capture.max_bytes)
    tiles = []
    for d in live["disagreements"]:
        path = store.get(d["sha256"]) if d["captured"] and d["sha256"] else None
        if path is not None and len(tiles) < max_shown:
            tiles.append(Tile(path, f"champion {d['champion']}\nchallenger {d['challenger']}"))
    if tiles:
        title = f"{len(live['disagreements'])} shadowed requests they disagree on; {len(tiles)} captured images shown"
        charts["live_disagreements"] = image_grid(tiles, out / "live_disagreements.png", title=title)
    return charts


def live_section(live: dict[str, Any] | None, charts: dict[str, Path], embed) -> str:
    """The live part of review.html (`embed(title, path)` renders a chart)."""
    if live is None:
        return ""
    e = html.escape
    if not live["n"]:
        return (
            f"<h2>live: shadowed traffic</h2><p>No request answered by v{e(live['champion_version'])} was "
            f"shadowed by v{e(live['challenger_version'])}{' since ' + e(live['since']) if live['since'] else ''} "
            f"({live['shadow_records']} shadow records). Serve with <code>--shadow</code> to collect them.</p>"
        )
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{c['n']}</td><td>{c['agreement']:.3f}</td></tr>"
        for k, c in sorted(live["per_class"].items())
    )
    labelled = live["labelled"]
    accuracy = (
        f"<p>{labelled['n']} of them labelled since: live accuracy champion {labelled['champion_accuracy']:.3f}, "
        f"challenger {labelled['challenger_accuracy']:.3f}.</p>"
        if labelled["n"]
        else "<p>None of them has been labelled yet (<code>lensops label export</code> / <code>import</code>).</p>"
    )
    titles = {"live_matrix": "live: champion's label against challenger's", "live_disagreements": "live: disagreements"}
    images = "".join(embed(title, charts[key]) for key, title in titles.items() if key in charts)
    return f"""<h2>live: shadowed traffic</h2>
<p>{live["n"]} requests answered by v{e(live["champion_version"])} and shadowed by
v{e(live["challenger_version"])}, {e(live["first"])} to {e(live["last"])}: agreement
<b>{live["agreement"]:.3f}</b>, {len(live["disagreements"])} disagreements.</p>{accuracy}
<table><tr><th>champion's label</th><th>requests</th><th>agreement</th></tr>{rows}</table>
{images}"""
