"""`lensops card VERSION`: a model card for one registered version, in Markdown and self-contained HTML.

In the manner of Hugging Face model cards: YAML front matter (name, version, metrics, data version)
and then, from what the registry and MLflow already hold, nothing re-measured:

- what it is for: `--intended-use`, the classes, the network and input size of its run;
- data: the DVC hashes of the prepared and raw data; images per class in each split (from the
  prepared manifest while it is the version's data, else the test split's support);
- evaluation: per-class precision, recall, F1 and support on the held-out test split, accuracy,
  macro F1 and the expected calibration error, with a chart;
- review: verdict, the champion it was compared with, failed gates, who, when, accuracy per slice;
- promotion: each move of an alias onto it (who, when, why);
- drift: every drift run of this version in production (when, verdict, score, records);
- lineage: git commit, training run, params and code hashes, the command that reproduces it and its last result.

Written to `reports/cards/<name>-v<version>/` (`card.md`, `card.html`, `per_class.png`) and logged
to the version's training run under `card/`.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lensops.core import tags as T
from lensops.core.fingerprint import dvc_hash
from lensops.core.registry import Registry
from lensops.core.settings import Settings
from training.trace import alias_moves  # the same reading of alias moves as a trace

DEFAULT_USE = "Classifies one image into one of the classes below. Not for images unlike its training data."


@dataclass
class Card:
    markdown: str
    html: Path
    md: Path
    run_id: str | None


def card(settings: Settings, reference: str | None = None, *, intended_use: str = DEFAULT_USE, out=None) -> Card:
    """Write the card of `reference` (default @champion) and log it to the version's run."""
    registry = Registry.of(settings)
    with registry.open(reference or "@champion") as version:
        facts = _facts(settings, registry, version)
    folder = Path(out or settings.path("reports/cards") / f"{facts['name']}-v{facts['version']}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    chart = _chart(facts["per_class"], folder / "per_class.png")
    text = _markdown(facts, intended_use, chart.name)
    (folder / "card.md").write_text(text)
    (folder / "card.html").write_text(_html(text, facts, chart))
    if facts["run_id"]:
        for name in ("card.md", "card.html", "per_class.png"):
            registry.client().log_artifact(facts["run_id"], str(folder / name), "card")
    return Card(text, folder / "card.html", folder / "card.md", facts["run_id"])


def _facts(settings: Settings, registry: Registry, version) -> dict:
    tags, metrics = version.tags, version.metrics
    run = registry.client().get_run(version.run_id) if version.run_id else None
    test = metrics.get("test", {})
    return {
        "name": version.name,
        "version": version.version,
        "aliases": version.aliases,
        "run_id": version.run_id,
        "classes": version.classes,
        "size": version.spec.size,
        "params": dict(run.data.params) if run else {},
        "tags": tags,
        "test": {k: test.get(k) for k in ("accuracy", "macro_f1", "ece", "n_images")},
        "per_class": test.get("per_class", {}),
        "counts": _counts(settings, version.lineage.get("data_hash", ""), test.get("per_class", {})),
        "review": _review_json(registry, tags),
        "moves": alias_moves(tags),
        "drift": _drift_history(settings, registry, version.name, version.version),
    }


def _counts(settings: Settings, data_hash: str, per_class: dict) -> pd.DataFrame:
    """Images per class and split: the prepared manifest when it is the version's data, else the test support."""
    prepared = settings.path(settings.data.prepared)
    if data_hash and (prepared / "manifest.parquet").is_file() and dvc_hash(prepared) == data_hash:
        manifest = pd.read_parquet(prepared / "manifest.parquet", columns=["label", "split"])
        return manifest.groupby(["label", "split"]).size().unstack(fill_value=0)
    return pd.DataFrame({"test": {c: m.get("support", 0) for c, m in per_class.items()}})


def _review_json(registry: Registry, tags: dict[str, str]) -> dict | None:
    """The latest review of the version, from the `review.json` beside the report its tag points at."""
    report = tags.get(T.REVIEW_REPORT, "")
    if not report.startswith("runs:/"):
        return None
    run_id, _, path = report.removeprefix("runs:/").partition("/")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = registry.client().download_artifacts(run_id, path.rsplit("/", 1)[0] + "/review.json", tmp)
            return json.loads(Path(local).read_text())
    except Exception:  # a review whose files are gone: the tags still tell the verdict
        return None


def _drift_history(settings: Settings, registry: Registry, name: str, number: str) -> list[dict]:
    client = registry.client()
    experiment = client.get_experiment_by_name(settings.drift.experiment)
    if experiment is None:
        return []
    query = f"tags.`{T.MODEL_NAME}` = '{name}' and tags.`{T.MODEL_VERSION}` = '{number}'"
    query += f" and tags.`{T.STAGE}` = 'drift'"
    runs = client.search_runs(
        [experiment.experiment_id], query, order_by=["attributes.start_time ASC"], max_results=500
    )
    return [
        {
            "at": str(pd.Timestamp(r.info.start_time, unit="ms", tz="UTC").floor("s")),
            "verdict": r.data.tags.get(T.DRIFT_VERDICT, ""),
            "score": r.data.metrics.get("score"),
            "records": int(r.data.metrics.get("n_current", 0)),
            "run_id": r.info.run_id,
        }
        for r in runs
    ]


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    """One table cell: numbers rounded; text with no markup of its own (names and reasons are user input)."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value if value is not None else "")).replace("|", "\\|").replace("\n", " ")


def _markdown(facts: dict, intended_use: str, chart: str) -> str:
    tags, test, params = facts["tags"], facts["test"], facts["params"]
    metrics = [{"name": k, "value": round(v, 4)} for k, v in test.items() if isinstance(v, float)]
    front = {"model_name": facts["name"], "version": facts["version"], "library_name": "pytorch",
             "pipeline_tag": "image-classification", "tags": ["lensops", "image-classification"],
             "datasets": [tags.get(T.DATA_HASH, "")], "metrics": metrics}  # fmt: skip
    parts = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---", ""]
    parts += [f"# {facts['name']} v{facts['version']}", "", f"Aliases: {', '.join(facts['aliases']) or 'none'}.", ""]
    parts += ["## What it is for", "", _cell(intended_use), "",
              f"Classes ({len(facts['classes'])}): {', '.join(facts['classes'])}. Network: "
              f"`{params.get('train.model', 'unknown')}`, input {facts['size']}×{facts['size']}.", ""]  # fmt: skip
    counts = facts["counts"]
    rows = [[label, *row] for label, row in zip(counts.index, counts.to_numpy().tolist(), strict=True)]
    parts += ["## Data", "", f"Prepared data `{tags.get(T.DATA_HASH, '')}`, raw data `{tags.get(T.RAW_HASH, '')}` "
              "(DVC hashes). Images per class:", "", _table(["class", *counts.columns], rows), ""]  # fmt: skip
    per_class = [[c, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
                 for c, m in facts["per_class"].items()]  # fmt: skip
    parts += ["## Evaluation (held-out test split)", "",
              f"Accuracy {_cell(test['accuracy'])}, macro F1 {_cell(test['macro_f1'])}, expected calibration "
              f"error {_cell(test['ece'])} (0 is perfectly calibrated), on {test['n_images']} images.", "",
              _table(["class", "precision", "recall", "F1", "images"], per_class), "",
              f"![per class]({chart})", ""]  # fmt: skip
    parts += _review_section(facts) + _history_sections(facts)
    return "\n".join(parts) + "\n"


def _review_section(facts: dict) -> list[str]:
    tags, review = facts["tags"], facts["review"]
    if T.REVIEW_VERDICT not in tags:
        return ["## Review", "", "Not reviewed.", ""]
    failed = tags.get(T.REVIEW_FAILED_GATES) or "none"
    lines = ["## Review", "", f"Verdict **{tags[T.REVIEW_VERDICT]}** against v{tags.get(T.REVIEW_CHAMPION) or '-'}, "
             f"by {tags.get(T.REVIEW_BY, '')} at {tags.get(T.REVIEW_AT, '')}; failed gates: {failed}.", ""]  # fmt: skip
    slices = ((review or {}).get("challenger") or {}).get("slices", {})
    if slices:
        lines += ["Accuracy per slice:", "", _table(["slice", "images", "accuracy"],
                  [[name, s.get("n"), s.get("accuracy")] for name, s in slices.items()]), ""]  # fmt: skip
    return lines


def _history_sections(facts: dict) -> list[str]:
    tags = facts["tags"]
    moves = [[m["alias"], m["set_at"], m.get("set_by", ""), m.get("reason", "")] for m in facts["moves"]]
    drift = [[d["at"], d["verdict"], d["score"], d["records"]] for d in facts["drift"]]
    judged = _table(["when", "verdict", "score", "records"], drift) if drift else "No drift run judged this version."
    commit = tags.get(T.GIT_COMMIT, "unknown")
    return [
        "## Promotion history", "", _table(["alias", "when", "by", "why"], moves) if moves else "Never moved.", "",
        "## Drift in production", "",
        judged, "",
        "## Lineage", "", f"- git commit `{commit}`", f"- training run `{facts['run_id']}`",
        f"- params hash `{tags.get(T.PARAMS_HASH, '')}`, code hash `{tags.get(T.CODE_HASH, '')}`", "",
        "## Reproduce", "", "```bash",
        f"lensops reproduce models:/{facts['name']}/{facts['version']} --check"
        + (" --allow-dirty" if commit.endswith("-dirty") else ""), "```", "",
        f"It checks out commit `{commit.removesuffix('-dirty')}` in a git worktree, pulls data version "
        f"`{tags.get(T.RAW_HASH, '')}` from the DVC remote, trains with every setting of MLflow run "
        f"`{facts['run_id']}` (params hash `{tags.get(T.PARAMS_HASH, '')}`) and compares the two versions on "
        "the test split.", "",
        *(["The version was trained on a tree with uncommitted changes: the commit alone does not hold its code.", ""]
          if commit.endswith("-dirty") else []),
        *([f"Last reproduction: **{tags['lensops.reproduce.verdict']}** ({tags.get('lensops.reproduce.at', '')}, "
           f"MLflow run `{tags.get('lensops.reproduce.run', '')}`).", ""] if tags.get("lensops.reproduce.verdict")
          else []),
    ]  # fmt: skip


def _chart(per_class: dict, path: Path) -> Path:
    from data.figures import pyplot, save

    plt = pyplot()
    classes = list(per_class)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(classes) + 2), 2.8), dpi=110)
    width = 0.4
    for offset, key in ((-width / 2, "precision"), (width / 2, "recall")):
        ax.bar([i + offset for i in range(len(classes))], [per_class[c][key] for c in classes], width, label=key)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(0, 1.05)
    ax.set_title("test split: precision and recall per class", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path)


def _html(text: str, facts: dict, chart: Path) -> str:
    import markdown

    body = text.split("---", 2)[2] if text.startswith("---") else text
    inline = "data:image/png;base64," + base64.b64encode(chart.read_bytes()).decode()
    page = markdown.markdown(body.replace(f"]({chart.name})", f"]({inline})"), extensions=["tables", "fenced_code"])
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "pre{background:#f4f4f4;padding:.8em;overflow-x:auto}img{max-width:100%}")  # fmt: skip
    title = html.escape(f"{facts['name']} v{facts['version']}: model card")
    head = f"<meta charset='utf-8'><title>{title}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{page}</body></html>\n"
