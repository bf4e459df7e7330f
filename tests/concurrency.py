"""One role of the everything-at-once test, run as its own process against one store.

    python -m tests.concurrency ROLE TRACKING_URI MODEL SECONDS OUT.json

Each role does what its job does to the registry, in a loop, for SECONDS:

| role | stands for | does |
| --- | --- | --- |
| poll | serving's alias follower | one read of the aliases; counts reads without champion or with both on one version |
| promote | promotion and rollback | moves champion (and previous) with `training.promotion.move_aliases` |
| drift | a drift job | a run with metrics and tags; tags the champion version with its verdict |
| retrain | a retraining | a run, a new registered version, its lineage tags |
| tune | a tune sweep | a parent run, child runs with params and metric series |

It writes what it wrote (run ids, tags, versions) and every exception to OUT, for the test to check
that nothing was lost and nothing failed.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


def main(role: str, uri: str, model: str, seconds: float, out: Path) -> None:
    from lensops.core.registry import Registry

    registry = Registry(uri, model)
    client = registry.client()
    report: dict = {"role": role, "done": 0, "errors": [], "violations": [], "runs": [], "tags": [], "versions": []}
    step = ROLES[role]
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        try:
            step(registry, client, i, report)
            report["done"] += 1
        except Exception as e:  # every failure is the finding: kept, and the loop goes on
            report["errors"].append(f"{type(e).__name__}: {e}"[:500] + traceback.format_exc(limit=3)[-800:])
        i += 1
    out.write_text(json.dumps(report))


def poll(registry, client, i: int, report: dict) -> None:
    aliases = client.get_registered_model(registry.model_name).aliases
    champion, previous = aliases.get("champion"), aliases.get("previous")
    if champion is None or champion == previous:
        report["violations"].append({"at": time.time(), **aliases})
    time.sleep(0.02)


def promote(registry, client, i: int, report: dict) -> None:
    from training.promotion import move_aliases

    champion = registry.aliases()["champion"]  # as promotion reads them: versions as strings
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{registry.model_name}'"))
    target = str(versions[i % len(versions)])
    if target == champion:
        return
    started = time.time()
    move_aliases(registry, target, champion, reason=f"race {i}", extra={}, previous_reason=f"replaced in race {i}")
    report.setdefault("moves", []).append([started, time.time(), champion, target])


def drift(registry, client, i: int, report: dict) -> None:
    experiment = registry.experiment_id(f"{registry.model_name}-drift")
    run = client.create_run(experiment, tags={"lensops.stage": "drift"}).info.run_id
    client.log_metric(run, "drift_score", i / 100, step=i)
    client.set_tag(run, "lensops.drift.verdict", "no_drift")
    champion = client.get_registered_model(registry.model_name).aliases["champion"]
    key = f"race.drift.{report['role']}.{i}"
    client.set_model_version_tag(registry.model_name, champion, key, run)
    client.set_terminated(run)
    report["runs"].append(run)
    report["tags"].append([champion, key, run])


def retrain(registry, client, i: int, report: dict) -> None:
    experiment = registry.experiment_id(registry.model_name)
    run = client.create_run(experiment, tags={"lensops.stage": "train"}).info.run_id
    client.log_param(run, "epochs", i)
    source = client.get_run(run).info.artifact_uri + "/model"
    version = client.create_model_version(registry.model_name, source, run_id=run).version
    client.set_model_version_tag(registry.model_name, version, "lensops.git_commit", f"race-{i}")
    client.set_registered_model_alias(registry.model_name, "challenger", version)
    client.set_terminated(run)
    report["runs"].append(run)
    report["versions"].append(str(version))
    report["tags"].append([str(version), "lensops.git_commit", f"race-{i}"])


def tune(registry, client, i: int, report: dict) -> None:
    from mlflow.entities import Metric, Param

    experiment = registry.experiment_id(f"{registry.model_name}-tune")
    parent = client.create_run(experiment, tags={"lensops.stage": "tune"}).info.run_id
    for trial in range(2):
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric("val_accuracy", epoch / 10, now, epoch) for epoch in range(5)]
        client.log_batch(child, metrics=metrics, params=[Param("lr", str(10 ** -(trial + 2)))])
        client.set_terminated(child)
        report["runs"].append(child)
    client.set_terminated(parent)
    report["runs"].append(parent)


ROLES = {"poll": poll, "promote": promote, "drift": drift, "retrain": retrain, "tune": tune}

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), Path(sys.argv[5]))
