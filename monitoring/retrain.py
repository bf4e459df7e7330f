"""Retraining when production drifts: one at a time, not too often, linked to what triggered it.

`retrain` runs the retraining pipeline (`retrain.command`, by default `dvc repro`: validate,
prepare, train and review on the current data version), then promotes the new version when its
review passed, or holds it and says why. A team points `retrain.command` at a Ray job on its
cluster instead; the contract is only that the command registers a new version and reviews it.

- **One at a time**: a lock file created atomically (`O_EXCL`) holds the pid, host and start
  time. A lock whose process is gone (same host) or that is older than
  `retrain.stale_lock_seconds` is taken over, so a crashed run does not block retraining forever.
- **Cooldown**: the time of the last trigger is kept in `retrain.state_file`; a trigger within
  `retrain.cooldown_seconds` of it is skipped (`--force` overrides).
- **Links**: the retrain is an MLflow run in the monitoring experiment, tagged with the drift
  run that triggered it; the pipeline gets `LENSOPS_TRIGGER_RUN_ID` so the training run (and the
  version it registers) names the retrain run; the retrain run is tagged with the training run,
  the version and the review verdict, and the drift run with the retrain run.

Promotion is handed in by the caller (the CLI passes `training.promotion.promote`), so that
monitoring does not import training.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lensops.core import tags as T
from lensops.core.registry import TRIGGER_ENV, Registry, who
from lensops.core.settings import Settings

from .drift import monitoring_experiment

PROMOTED, HELD, TRAINED, NO_NEW_VERSION, FAILED, SKIPPED = (
    "promoted",
    "held",
    "trained",
    "no_new_version",
    "failed",
    "skipped",
)
EXIT_CODES = {PROMOTED: 0, TRAINED: 0, HELD: 3, NO_NEW_VERSION: 3, FAILED: 1, SKIPPED: 6}


class RetrainSkipped(RuntimeError):
    """Another retraining is running, or the last trigger is too recent."""


@dataclass
class RetrainResult:
    outcome: str
    reason: str
    version: str | None = None
    review_verdict: str | None = None
    training_run_id: str | None = None
    run_id: str | None = None
    drift_run_id: str | None = None
    command: list[str] | None = None
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- one at a time -----------------------------------------------------------------------------


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RetrainLock:
    """An exclusive lock file; a stale one (dead process, or too old) is taken over."""

    def __init__(self, path: Path, *, stale_seconds: float, note: str = "") -> None:
        self.path, self.stale_seconds, self.note = path, stale_seconds, note
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treated as stale

    def stale_because(self, holder: dict[str, Any]) -> str | None:
        if not holder:
            return "the lock file is unreadable"
        age = time.time() - float(holder.get("started", 0))
        if age > self.stale_seconds:
            return f"it is {age:.0f} s old (stale after {self.stale_seconds:.0f} s)"
        if holder.get("host") == socket.gethostname() and not _process_alive(int(holder.get("pid", -1))):
            return f"its process {holder.get('pid')} is gone"
        return None

    def acquire(self) -> str | None:
        """Take the lock; returns why an earlier holder's lock was taken over, if it was."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        taken_over = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                why = self.stale_because(holder)
                if why is None:
                    raise RetrainSkipped(
                        f"another retraining holds {self.path} (pid {holder.get('pid')} on {holder.get('host')}, "
                        f"started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(holder.get('started', 0)))})"
                    ) from None
                taken_over = f"took over the lock of pid {holder.get('pid')}: {why}"
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "started": time.time(),
                        "token": self.token,
                        "note": self.note,
                    },
                    f,
                )
            return taken_over
        raise RetrainSkipped(f"could not take {self.path}: another process keeps creating it")

    def release(self) -> None:
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RetrainLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --- not too often -----------------------------------------------------------------------------


def last_trigger(state_file: Path) -> dict[str, Any] | None:
    try:
        return json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None


def check_cooldown(state_file: Path, cooldown_seconds: float) -> None:
    last = last_trigger(state_file)
    if not last:
        return
    waited = time.time() - float(last.get("time", 0))
    if waited < cooldown_seconds:
        raise RetrainSkipped(
            f"cooling down: the last retraining was triggered {waited:.0f} s ago "
            f"(retrain.cooldown_seconds={cooldown_seconds:.0f}); use --force to retrain anyway"
        )


def record_trigger(state_file: Path, **info: Any) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = state_file.with_name(f".{state_file.name}.tmp")
    temporary.write_text(json.dumps({"time": time.time(), **info}, indent=2) + "\n")
    temporary.replace(state_file)


# --- the pipeline ----------------------------------------------------------------------------


def latest_version(registry: Registry) -> str | None:
    import mlflow

    try:
        versions = registry.client().search_model_versions(f"name = '{registry.model_name}'")
    except mlflow.exceptions.MlflowException:
        return None
    return str(max(int(v.version) for v in versions)) if versions else None


def retrain(
    settings: Settings,
    *,
    reason: str,
    drift_run_id: str | None = None,
    force: bool = False,
    promote: Callable[[str, str], Any] | None = None,
    echo: Callable[[str], Any] = print,
) -> RetrainResult:
    """Run the retraining pipeline once (under the lock and the cooldown), then promote or hold."""
    cfg = settings.retrain
    lock = RetrainLock(settings.path(cfg.lock_file), stale_seconds=cfg.stale_lock_seconds, note=reason)
    try:
        taken_over = lock.acquire()
    except RetrainSkipped as e:
        return RetrainResult(SKIPPED, str(e), drift_run_id=drift_run_id)
    try:
        if taken_over:
            echo(taken_over)
        state_file = settings.path(cfg.state_file)
        if not force:
            try:
                check_cooldown(state_file, cfg.cooldown_seconds)
            except RetrainSkipped as e:
                return RetrainResult(SKIPPED, str(e), drift_run_id=drift_run_id)
        # Recorded before the pipeline runs: a pipeline that keeps failing still cools down.
        record_trigger(state_file, reason=reason, drift_run_id=drift_run_id, actor=who())
        result = _run_pipeline(settings, reason=reason, drift_run_id=drift_run_id, promote=promote, echo=echo)
        report = state_file.parent / "retrain.json"  # the outcome, for pipelines and the demo
        report.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        return result
    finally:
        lock.release()


def _run_pipeline(
    settings: Settings,
    *,
    reason: str,
    drift_run_id: str | None,
    promote: Callable[[str, str], Any] | None,
    echo: Callable[[str], Any],
) -> RetrainResult:
    cfg = settings.retrain
    registry = Registry.of(settings)
    run_id = _open_retrain_run(registry, settings, reason, drift_run_id)
    result = RetrainResult(FAILED, "", run_id=run_id, drift_run_id=drift_run_id, command=list(cfg.command))
    before = latest_version(registry)
    started = time.perf_counter()
    env = {**os.environ, TRIGGER_ENV: run_id}
    echo(f"retraining: {' '.join(cfg.command)} (MLflow run {run_id})")
    try:
        completed = subprocess.run(cfg.command, cwd=settings.root, env=env, timeout=cfg.timeout_seconds, check=False)
        result.returncode = completed.returncode
    except FileNotFoundError:
        result.reason = f"retrain.command {cfg.command[0]!r} not found"
    except subprocess.TimeoutExpired:
        result.reason = f"retrain.command did not finish in {cfg.timeout_seconds} s"
    result.seconds = round(time.perf_counter() - started, 1)
    if result.returncode is not None and result.returncode != 0:
        result.reason = f"{' '.join(cfg.command)} exited with {result.returncode}"
    if result.returncode == 0:
        _decide(settings, registry, result, before, reason=reason, promote=promote)
    _close_retrain_run(registry, result)
    return result


def _open_retrain_run(registry: Registry, settings: Settings, reason: str, drift_run_id: str | None) -> str:
    """The retrain run in the monitoring experiment, linked both ways to the drift run that triggered it."""
    client = registry.client()
    tags = {T.STAGE: "retrain", T.ACTOR: who(), T.RETRAIN_REASON: reason}
    if drift_run_id:
        tags[T.DRIFT_RUN] = drift_run_id
    run_id = client.create_run(monitoring_experiment(registry, settings), run_name="retrain", tags=tags).info.run_id
    if drift_run_id:
        client.set_tag(drift_run_id, T.RETRAIN_RUN, run_id)
    return run_id


def _close_retrain_run(registry: Registry, result: RetrainResult) -> None:
    """The outcome and its links as tags, retrain.json as an artifact; FAILED when the pipeline failed."""
    client = registry.client()
    tags = {T.RETRAIN_OUTCOME: result.outcome, T.RETRAIN_DETAIL: result.reason[:5000]}
    for key, value in (
        (T.MODEL_VERSION, result.version),
        (T.TRAINING_RUN, result.training_run_id),
        (T.REVIEW_VERDICT, result.review_verdict),
    ):
        if value:
            tags[key] = value
    for key, value in tags.items():
        client.set_tag(result.run_id, key, value)
    client.log_metric(result.run_id, "pipeline_seconds", result.seconds)
    client.log_dict(result.run_id, result.to_dict(), "retrain.json")
    client.set_terminated(result.run_id, "FAILED" if result.outcome == FAILED else "FINISHED")


def _decide(
    settings: Settings,
    registry: Registry,
    result: RetrainResult,
    before: str | None,
    *,
    reason: str,
    promote: Callable[[str, str], Any] | None,
) -> None:
    """After a successful pipeline: find the new version and its review, then promote or hold."""
    version = latest_version(registry)
    if version is None or version == before:
        result.outcome = NO_NEW_VERSION
        result.reason = (
            "the pipeline registered no new version (nothing changed since the last run?); "
            "add the new labelled data to data/raw and version it first"
        )
        return
    handle = registry.open(version)
    result.version = version
    result.training_run_id = handle.run_id
    result.review_verdict = handle.tags.get(T.REVIEW_VERDICT)
    if result.review_verdict != "promote":
        failed = handle.tags.get(T.REVIEW_FAILED_GATES) or "no review recorded for it"
        result.outcome, result.reason = HELD, f"v{version} held: review {result.review_verdict or 'missing'} ({failed})"
        return
    if not (settings.retrain.promote and promote):
        result.outcome, result.reason = TRAINED, f"v{version} passed its review; promotion is off (retrain.promote)"
        return
    promote(version, f"retrained after drift: {reason}")
    result.outcome, result.reason = PROMOTED, f"v{version} passed its review and is now @champion"
