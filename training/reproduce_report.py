"""A reproduction compared with its original, written down: the checks, the report, the MLflow run.

Both versions are evaluated by this code on the test split the reproduction prepared (the same
split when the prepared data's hash matches, which is one of the checks):

| check | passes when |
| --- | --- |
| test accuracy | the two accuracies are within `tolerances[0]` percentage points (0.5) |
| class recall | every class's recall is within `tolerances[1]` points (2) |
| identical predictions | only for a `train.deterministic` run: the same label for every test image |
| same prepared data, params, code | the reproduction's lineage hashes equal the original's (code: not when dirty) |

Whether the weights are bit-identical is reported too, never gated: determinism holds on one kind of
machine (README: What is deterministic).

Written to `reports/reproduce/<name>-v<version>/` (`reproduction.json`, `reproduction.md`,
`recall.png`) and logged to a `reproduce` run in the original's experiment, a child of the original
training run, with the reproduction's learning curves. The version gets `lensops.reproduce.*` tags.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lensops.core import tags as T
from lensops.core.registry import Registry, download, now, who
from lensops.core.settings import Settings

from .evaluate import Evaluation, evaluate_frame
from .tracking import EPOCH_METRICS


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Reproduction:
    version: str  # the original, models:/name/N
    verdict: str  # "reproduced" | "differs"
    checks: list[Check]
    original: dict[str, Any]  # test accuracy and per-class recall, as evaluated now
    reproduced: dict[str, Any]
    facts: dict[str, Any]  # commit, data version, remote, identical weights, lineage hashes of both
    files: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    registered: str | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == "reproduced"

    def as_dict(self) -> dict:
        return asdict(self)


def _summary(evaluation: Evaluation) -> dict[str, Any]:
    metrics = evaluation.metrics
    return {
        "accuracy": metrics["accuracy"],
        "recall": {c: m["recall"] for c, m in metrics["per_class"].items()},
        "n_images": len(evaluation.labels),
    }


def compare(recorded, reproduced, tolerances: tuple[float, float]) -> Reproduction:
    """Evaluate both versions on the reproduction's test split and run the checks."""
    prepared = reproduced.project / recorded.settings["data"]["prepared"]
    manifest = pd.read_parquet(prepared / "manifest.parquet")
    test, raw = manifest[manifest.split == "test"], reproduced.project / recorded.raw
    with reproduced.registry.open(reproduced.version) as again:
        first, second = recorded.version.network(), again.network()
        ours = evaluate_frame(first, test, raw, recorded.version.spec, recorded.version.classes)
        theirs = evaluate_frame(second, test, raw, again.spec, again.classes)
        same_weights = _same_weights(first, second)
    original, repeat = _summary(ours), _summary(theirs)
    run_tags = T.lensops_tags(reproduced.registry.client().get_run(reproduced.run_id).data.tags)
    checks = _checks(recorded, original, repeat, tolerances)
    if recorded.deterministic:
        differing = int((ours.predicted_index != theirs.predicted_index).sum())
        checks.append(Check("identical predictions", differing == 0, f"{differing} of {len(test)} test images differ"))
    for key, name in ((T.DATA_HASH, "same prepared data"), (T.TRAINING_PARAMS_HASH, "same params"),
                      (T.CODE_HASH, "same code")):  # fmt: skip
        if key == T.CODE_HASH and recorded.dirty:
            continue  # a dirty tree's code differs from its commit by definition; reported below
        before, after = recorded.tags.get(key, ""), run_tags.get(key, "")
        checks.append(Check(name, before == after, f"{key}: {before or 'not recorded'} -> {after}"))
    facts = {
        "commit": recorded.commit,
        "trained_on_dirty_tree": recorded.dirty,
        "data_version": recorded.tags.get(T.RAW_HASH),
        "remote": reproduced.remote,
        "code": reproduced.code,
        "deterministic": recorded.deterministic,
        "identical_weights": same_weights,
        "same_code": recorded.tags.get(T.CODE_HASH) == run_tags.get(T.CODE_HASH),
        "original_run": recorded.run_id,
        "reproduction_store_run": reproduced.run_id,
        "original_lineage": {k.removeprefix(T.PREFIX): recorded.tags.get(k, "") for k in T.LINEAGE},
        "reproduced_lineage": {k.removeprefix(T.PREFIX): run_tags.get(k, "") for k in T.LINEAGE},
    }
    verdict = "reproduced" if all(c.passed for c in checks) else "differs"
    return Reproduction(recorded.version.uri, verdict, checks, original, repeat, facts)


def _checks(recorded, original: dict, repeat: dict, tolerances: tuple[float, float]) -> list[Check]:
    accuracy_points, recall_points = tolerances
    gap = abs(original["accuracy"] - repeat["accuracy"]) * 100
    said = f"{original['accuracy']:.4f} -> {repeat['accuracy']:.4f} ({gap:.2f} points; at most {accuracy_points})"
    checks = [Check("test accuracy", gap <= accuracy_points, said)]
    gaps = {c: abs(original["recall"][c] - repeat["recall"].get(c, 0.0)) * 100 for c in original["recall"]}
    worst = max(gaps, key=gaps.get) if gaps else "-"
    said = f"largest difference {gaps.get(worst, 0.0):.2f} points (class {worst}; at most {recall_points})"
    checks.append(Check("class recall", all(g <= recall_points for g in gaps.values()), said))
    return checks


def _same_weights(first, second) -> bool:
    import torch

    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- writing it down ---------------------------------------------------------------------------


def record(settings: Settings, registry: Registry, recorded, reproduced, result: Reproduction, *,
           register: bool, out: Path | None) -> Reproduction:  # fmt: skip
    """The report files, the `reproduce` run linked to the original, the version's tags; a new version if asked."""
    folder = Path(out or settings.path("reports/reproduce") / f"{recorded.version.name}-v{recorded.version.version}")
    folder.mkdir(parents=True, exist_ok=True)
    result.files = {
        "chart": str(_chart(result, folder / "recall.png")),
        "markdown": str(folder / "reproduction.md"),
        "json": str(folder / "reproduction.json"),
    }
    result.run_id = _log_run(registry, recorded, reproduced, result)
    if register:
        result.registered = _register(registry, recorded, reproduced, result)
    Path(result.files["markdown"]).write_text(_markdown(result))
    Path(result.files["json"]).write_text(json.dumps(result.as_dict(), indent=2, default=str))
    client = registry.client()
    for path in result.files.values():
        client.log_artifact(result.run_id, path, "reproduction")
    client.set_terminated(result.run_id, "FINISHED")
    registry.tag_version(recorded.version.version, {
        "lensops.reproduce.verdict": result.verdict, "lensops.reproduce.at": now(),
        "lensops.reproduce.by": who(), "lensops.reproduce.run": result.run_id})  # fmt: skip
    return result


def _log_run(registry: Registry, recorded, reproduced, result: Reproduction) -> str:
    """A child run of the original: its params, the reproduction's metrics and learning curves."""
    from mlflow.entities import Metric, Param, RunTag

    client = registry.client()
    tags = {T.STAGE: "reproduce", T.ACTOR: who(), "mlflow.parentRunId": recorded.run_id,
            T.TRAINING_RUN: recorded.run_id, T.MODEL_NAME: recorded.version.name,
            T.MODEL_VERSION: recorded.version.version, "lensops.reproduce.verdict": result.verdict,
            **{k: v for k, v in result.facts["reproduced_lineage"].items() if v}}  # fmt: skip
    tags = {(k if k.startswith(("mlflow.", T.PREFIX)) else T.PREFIX + k): v for k, v in tags.items()}
    run = client.create_run(recorded.experiment_id, run_name=f"reproduce-v{recorded.version.version}", tags=tags)
    params = client.get_run(recorded.run_id).data.params
    stamp = int(pd.Timestamp.now().timestamp() * 1000)
    metrics = {"test_accuracy": result.reproduced["accuracy"], "original_test_accuracy": result.original["accuracy"],
               **{f"test_recall.{c}": r for c, r in result.reproduced["recall"].items()}}  # fmt: skip
    history = [Metric(key, m.value, m.timestamp, m.step) for key in EPOCH_METRICS
               for m in reproduced.registry.client().get_metric_history(reproduced.run_id, key)]  # fmt: skip
    batch = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()] + history
    for start in range(0, max(len(batch), 1), 900):
        client.log_batch(run.info.run_id, metrics=batch[start : start + 900])
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 90):
        client.log_batch(run.info.run_id, params=items[start : start + 90])
    client.log_batch(run.info.run_id, tags=[RunTag("lensops.reproduce.checks", _failed(result) or "none failed")])
    return run.info.run_id


def _failed(result: Reproduction) -> str:
    return ", ".join(c.name for c in result.checks if not c.passed)


def _register(registry: Registry, recorded, reproduced, result: Reproduction) -> str:
    """The reproduced model's folder logged to the reproduce run and registered as a new version."""
    client = registry.client()
    with reproduced.registry.open(reproduced.version) as again, tempfile.TemporaryDirectory() as tmp:
        folder = download(reproduced.registry, again.location, Path(tmp))
        client.log_artifacts(result.run_id, str(folder), "model")
    source = f"{client.get_run(result.run_id).info.artifact_uri}/model"
    lineage = {T.PREFIX + k: v for k, v in result.facts["reproduced_lineage"].items() if v}
    tags = {**lineage, T.TRAINING_RUN: result.run_id, T.TEST_ACCURACY: str(result.reproduced["accuracy"]),
            "lensops.reproduce.of": recorded.version.version}  # fmt: skip
    created = client.create_model_version(recorded.version.name, source, run_id=result.run_id, tags=tags)
    return str(created.version)


def _markdown(result: Reproduction) -> str:
    facts = result.facts
    rows = "\n".join(f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |" for c in result.checks)
    recall = "\n".join(f"| {c} | {r:.4f} | {result.reproduced['recall'].get(c, float('nan')):.4f} |"
                       for c, r in result.original["recall"].items())  # fmt: skip
    registered = f"\nRegistered as version {result.registered}.\n" if result.registered else ""
    return f"""# Reproduction of {result.version}: {result.verdict}

- commit `{facts["commit"]}`{" (trained on uncommitted changes; reproduced from the commit)" if facts["trained_on_dirty_tree"] else ""}
- data version `{facts["data_version"]}` from the DVC remote {facts["remote"]}
- code: {"the commit" if facts["code"] == "commit" else "the installed lensops (the commit holds no lensops packages)"}; \
its hash {"matches" if facts["same_code"] else "differs from"} the original's
- deterministic run: {"yes" if facts["deterministic"] else "no"}; identical weights: {"yes" if facts["identical_weights"] else "no"}
- original training run `{facts["original_run"]}`; reproduction run `{result.run_id}` (its child in MLflow)
{registered}
| check | result | detail |
| --- | --- | --- |
{rows}

Test split of {result.reproduced["n_images"]} images, both versions evaluated now:

| class | recall (original) | recall (reproduction) |
| --- | --- | --- |
{recall}

![recall per class](recall.png)
"""  # noqa: E501


def _chart(result: Reproduction, path: Path) -> Path:
    from data.figures import pyplot, save

    plt = pyplot()
    classes = list(result.original["recall"])
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(classes) + 2), 2.8), dpi=110)
    width = 0.4
    positions = np.arange(len(classes))
    sides = {"original": result.original, "reproduction": result.reproduced}
    for offset, (label, side) in zip((-width / 2, width / 2), sides.items(), strict=True):
        ax.bar(positions + offset, [side["recall"].get(c, 0.0) for c in classes], width, label=label)
    ax.set_xticks(positions, classes)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{result.version}: test recall per class ({result.verdict})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path)
