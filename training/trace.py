"""`lensops trace REQUEST_ID`: from one served answer back to the version, run, code, data and images behind it.

The production log record names the version that answered and holds the request's embedding.
From the version: its training run (params, metrics), its lineage tags (git commit, the DVC hashes
of the prepared and raw data, the params and code hashes), its review and each move of an alias
onto it (who, when, why). From the embedding: the k training images nearest to what the request
looked like to that version, with their labels and where they came from (original data, or a
labelled production image: batch, who labelled it). That answers "why did it say 7?": which
training images it was most like.

The nearest images are searched in the training split of the prepared dataset, embedded by the
version's own network (kept in `reports/trace/cache/`, one file per version and data hash), when
the prepared data is still the version's (same DVC hash). When it is not (the data moved on since),
they come from the version's own validation images, whose embeddings it carries (its baseline),
and the trace says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data import provenance
from lensops.core import tags as T
from lensops.core.errors import UsageError
from lensops.core.fingerprint import dvc_hash
from lensops.core.log_reader import find_record
from lensops.core.registry import Registry
from lensops.core.settings import Settings

ALIASES = ("champion", "previous", "challenger")


@dataclass
class Trace:
    request: dict
    version: dict
    run: dict
    review: dict | None
    moves: list[dict]
    neighbours: list[dict]
    neighbours_from: str
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def trace(settings: Settings, request_id: str, *, k: int = 8, out: Path | None = None) -> Trace:
    """The trace of one answer; writes `trace.json` and `neighbours.png` under `out` (default reports/trace/<id>)."""
    log_dir = settings.path(settings.monitoring.log_dir)
    record = find_record(log_dir, request_id)
    if record is None:
        raise UsageError(f"no answer with request id {request_id!r} in the production log {log_dir}")
    registry = Registry.of(settings)
    with registry.open(f"{record['model_name']}/{record['model_version']}") as version:
        about = _version(version)
        run = _run(registry, version.run_id)
        embedding = np.asarray(record["embedding"], dtype=np.float32)
        neighbours, source = _neighbours(settings, version, embedding, k)
    result = Trace(
        request=_request(settings, record),
        version=about,
        run=run,
        review=_review(about["tags"]),
        moves=alias_moves(about["tags"]),
        neighbours=neighbours,
        neighbours_from=source,
    )
    folder = (out or settings.path("reports/trace") / _safe(request_id)).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    result.files["grid"] = str(_grid(result, settings, folder / "neighbours.png"))
    result.files["json"] = str(folder / "trace.json")
    (folder / "trace.json").write_text(json.dumps(result.as_dict(), indent=2, default=str))
    return result


def _request(settings: Settings, record: dict) -> dict:
    keys = ("request_id", "time", "model_name", "model_version", "label", "score", "width", "height", "sha256")
    request = {key: record.get(key) for key in keys}
    request["time"] = str(pd.Timestamp(record["time"]))
    request["score"] = float(record["score"])
    image = None
    if record.get("captured") and record.get("sha256"):
        stored = settings.path(settings.monitoring.capture.dir) / record["sha256"][:2] / record["sha256"]
        image = str(stored) if stored.is_file() else None
    request["image"] = image  # the uploaded bytes, when the capture store kept them
    return request


def _version(version) -> dict:
    tags = version.tags
    return {
        "name": version.name,
        "version": version.version,
        "aliases": version.aliases,
        "run_id": version.run_id,
        "git_commit": tags.get(T.GIT_COMMIT, ""),
        "data_hash": tags.get(T.DATA_HASH, ""),
        "raw_hash": tags.get(T.RAW_HASH, ""),
        "params_hash": tags.get(T.PARAMS_HASH, ""),
        "code_hash": tags.get(T.CODE_HASH, ""),
        "test_accuracy": tags.get(T.TEST_ACCURACY, ""),
        "tags": tags,
    }


def _run(registry: Registry, run_id: str | None) -> dict:
    if not run_id:
        return {}
    import mlflow

    try:
        run = registry.client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return {"run_id": run_id, "missing": True}
    return {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "started": str(pd.Timestamp(run.info.start_time, unit="ms", tz="UTC")),
        "params": dict(run.data.params),
        "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
    }


def _review(tags: dict[str, str]) -> dict | None:
    if T.REVIEW_VERDICT not in tags:
        return None
    failed = tags.get(T.REVIEW_FAILED_GATES, "")
    return {
        "verdict": tags[T.REVIEW_VERDICT],
        "champion": tags.get(T.REVIEW_CHAMPION, ""),
        "failed_gates": [g for g in failed.split(",") if g],
        "by": tags.get(T.REVIEW_BY, ""),
        "at": tags.get(T.REVIEW_AT, ""),
        "report": tags.get(T.REVIEW_REPORT, ""),
    }


def alias_moves(tags: dict[str, str]) -> list[dict]:
    """The latest move of each alias onto this version (who, when, why), oldest first."""
    moves = []
    for alias in ALIASES:
        record = {
            f: tags.get(T.alias_tag(alias, f)) for f in (*T.ALIAS_FIELDS, T.PROMOTION_VERDICT, T.PROMOTION_FORCED)
        }
        if record["set_at"]:
            moves.append({"alias": alias, **{k: v for k, v in record.items() if v}})
    return sorted(moves, key=lambda m: m["set_at"])


def _neighbours(settings: Settings, version, embedding: np.ndarray, k: int) -> tuple[list[dict], str]:
    prepared = settings.path(settings.data.prepared)
    raw = settings.path(settings.data.raw)
    recorded = version.lineage.get("data_hash", "")
    current = dvc_hash(prepared) if (prepared / "manifest.parquet").is_file() else ""
    if recorded and recorded == current:
        frame = pd.read_parquet(prepared / "manifest.parquet")
        frame = frame[frame["split"] == "train"].reset_index(drop=True)
        embeddings = _train_embeddings(settings, version, frame, raw, recorded)
        source = f"the training split of {prepared} (data {recorded}), embedded by v{version.version}"
        labels = frame["label"].astype(str).tolist() if "label" in frame else [None] * len(frame)
        paths = frame["path"].astype(str).tolist()
    else:
        baseline = version.baseline()
        embeddings = np.stack(baseline["embedding"].to_numpy()).astype(np.float32)
        labels, paths = baseline["label"].astype(str).tolist(), baseline["path"].astype(str).tolist()
        source = (f"v{version.version}'s validation images (its baseline): the prepared data is "
                  f"{current or 'missing'}, not the version's {recorded or 'unrecorded'} data")  # fmt: skip
    distances = _cosine_distances(embeddings, embedding)
    origin = provenance.read(raw, settings.label.provenance_dir).set_index("path")
    rows = []
    for i in np.argsort(distances, kind="stable")[:k]:
        known = origin.loc[paths[i]].to_dict() if paths[i] in origin.index else {}
        rows.append({"path": paths[i], "label": labels[i], "distance": round(float(distances[i]), 4),
                     "source": known.get("source", provenance.ORIGINAL), "batch": known.get("batch", ""),
                     "labelled_by": known.get("labelled_by", ""), "file": str(raw / paths[i])})  # fmt: skip
    return rows, source


def _train_embeddings(settings: Settings, version, frame: pd.DataFrame, raw: Path, data_hash: str) -> np.ndarray:
    """The version's embeddings of the training images, computed once per version and data version."""
    from training.datasets import load_images
    from training.evaluate import predict

    cache = settings.path("reports/trace/cache") / f"{_safe(version.name)}-v{version.version}-{_safe(data_hash)}.npy"
    if cache.is_file():
        cached = np.load(cache)
        if len(cached) == len(frame):
            return cached
    _, embeddings = predict(version.network(), load_images(frame, raw, version.spec))
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".tmp.npy")
    np.save(partial, embeddings.astype(np.float32))
    partial.replace(cache)  # a trace cut short never leaves half a cache
    return embeddings


def _cosine_distances(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1) * max(float(np.linalg.norm(vector)), 1e-12)
    return 1.0 - (matrix @ vector) / np.maximum(norms, 1e-12)


def _grid(result: Trace, settings: Settings, path: Path) -> Path:
    from data.figures import Tile, image_grid

    request = result.request
    tiles = []
    if request["image"]:
        tiles.append(Tile(request["image"], f"request: {request['label']} ({request['score']:.2f})"))
    for n in result.neighbours:
        if Path(n["file"]).is_file():
            tiles.append(Tile(n["file"], f"{n['label']} · d={n['distance']:.4f}\n{n['source']}"))
    said = f"v{request['model_version']} said {request['label']} ({request['score']:.2f})"
    title = f"request {request['request_id'][:12]}…: {said}; nearest training images, cosine distance d"
    return image_grid(tiles, path, title=title, columns=min(9, max(len(tiles), 1)))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]
