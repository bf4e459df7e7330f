"""Retraining: only on something new, one at a time, not too often, deciding from its own version.

`retrain` runs the retraining pipeline (`retrain.command`, by default `dvc repro`: validate,
prepare, train and review on the current data version), then promotes the version that its own
run produced when that version's review passed, or holds it and says why. A team points
`retrain.command` at a Ray job on its cluster; the contract is that the command registers a
version (whose training run carries `LENSOPS_TRIGGER_RUN_ID`) and reviews it.

- **Something new**: the data (`data/raw`, as DVC hashes it), the code and the training params
  are compared with what the champion was trained on (`lensops.core.fingerprint`). When none
  differs, retraining would make the same model again: the outcome is `nothing_new` (exit 7) and
  the caller exports a labelling batch instead (`lensops drift --retrain` does).
- **One at a time**: an OS file lock (`filelock`) on `retrain.lock_file`. The kernel releases it
  when its holder dies, however it dies, so a crashed run never blocks the next and no PID is
  guessed at; a note beside it says who holds it.
- **Bounded**: the pipeline runs in its own process group; past `retrain.timeout_seconds` the
  whole group (`dvc`, `lensops train`, Ray's driver) is stopped, not only the first process.
- **Not too often**: the time of the last trigger is kept in `retrain.state_file`; a trigger
  within `retrain.cooldown_seconds` of it is skipped (`--force` overrides).
- **Its own version**: the version to promote is the one whose training run names this retrain
  run. If the pipeline registered nothing (DVC found every stage up to date because an earlier
  pipeline trained on these inputs and then failed before promoting), the version trained on
  exactly the current inputs is the one to decide on, so the next run promotes what it reviewed.
- **Recorded**: the retrain is an MLflow run in the monitoring experiment, linked both ways to the
  drift run that triggered it and to the training run and version. Any failure after the pipeline
  ends that run FAILED, and `retrain.json` is written whatever happens.

Promotion is handed in by the caller (the CLI passes `training.promotion.promote`), so that
monitoring does not import training.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lensops.core import tags as T
from lensops.core.fingerprint import differences, training_inputs
from lensops.core.registry import CHAMPION, TRIGGER_ENV, Registry, UnknownModelError, who
from lensops.core.settings import Settings

from .drift import monitoring_experiment

PROMOTED, HELD, TRAINED, NO_NEW_VERSION, FAILED, SKIPPED, NOTHING_NEW = (
    "promoted",
    "held",
    "trained",
    "no_new_version",
    "failed",
    "skipped",
    "nothing_new",
)
EXIT_CODES = {PROMOTED: 0, TRAINED: 0, HELD: 3, NO_NEW_VERSION: 3, FAILED: 1, SKIPPED: 6, NOTHING_NEW: 7}


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
    changed: list[str] = field(default_factory=list)  # which inputs differ from the champion's: data, code, params

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain(
    settings: Settings,
    *,
    reason: str,
    drift_run_id: str | None = None,
    force: bool = False,
    promote: Callable[[str, str], Any] | None = None,
    echo: Callable[[str], Any] = print,
    on_start: Callable[[], Any] | None = None,
) -> RetrainResult:
    """Run the retraining pipeline once (something new, under the lock and the cooldown), then promote or hold.

    `on_start` is called once the pipeline is about to run (past the lock, the cooldown and the
    check for something new): the monitor posts "retraining started" from it.
    """
    import filelock

    cfg = settings.retrain
    lock_path = settings.path(cfg.lock_file)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return RetrainResult(
            SKIPPED, f"another retraining holds {lock_path} ({_holder(lock_path)})", drift_run_id=drift_run_id
        )
    try:
        _note_holder(lock_path, reason)
        options = {"force": force, "promote": promote, "echo": echo, "on_start": on_start}
        return _locked(settings, reason=reason, drift_run_id=drift_run_id, **options)
    finally:
        lock.release()


def _note_holder(lock_path: Path, reason: str) -> None:
    note = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "reason": reason}
    lock_path.with_name(lock_path.name + ".holder.json").write_text(json.dumps(note) + "\n")


def _holder(lock_path: Path) -> str:
    try:
        note = json.loads(lock_path.with_name(lock_path.name + ".holder.json").read_text())
    except (OSError, ValueError):
        return "holder unknown"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(note.get("started", 0)))
    return f"pid {note.get('pid')} on {note.get('host')}, started {started}: {note.get('reason', '')}"


def _locked(settings: Settings, *, reason, drift_run_id, force, promote, echo, on_start=None) -> RetrainResult:
    cfg = settings.retrain
    state_file = settings.path(cfg.state_file)
    registry = Registry.of(settings)
    inputs = training_inputs(settings)
    changed = _changed_since_champion(registry, inputs)
    if not force:
        if not changed:
            why = (
                "the champion was trained on this data, code and params: retraining would make the same model; "
                "label new production images first (`lensops label export`, then `lensops label import`)"
            )
            return RetrainResult(NOTHING_NEW, why, drift_run_id=drift_run_id)
        if waited := cooling_down(state_file, cfg.cooldown_seconds):
            return RetrainResult(SKIPPED, waited, drift_run_id=drift_run_id, changed=changed)
    # Recorded before the pipeline runs: a pipeline that keeps failing still cools down.
    record_trigger(state_file, reason=reason, drift_run_id=drift_run_id, actor=who())
    if on_start is not None:
        on_start()
    result = RetrainResult(FAILED, "", drift_run_id=drift_run_id, command=list(cfg.command), changed=changed)
    try:
        _run_pipeline(settings, registry, result, reason=reason, inputs=inputs, promote=promote, echo=echo)
    except Exception as e:  # after the pipeline: the run still ends, as FAILED, and retrain.json is still written
        result.outcome, result.reason = FAILED, f"{type(e).__name__}: {e}"
        if result.run_id:
            _close_retrain_run(registry, result)
    finally:
        report = state_file.parent / "retrain.json"  # the outcome, for pipelines and the demo
        report.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _changed_since_champion(registry: Registry, inputs: dict[str, str]) -> list[str]:
    champion = registry.find(None, default_alias=CHAMPION)
    if champion is None:
        return ["no champion yet"]
    with registry.open(champion) as version:
        return differences(version.tags, inputs)


def cooling_down(state_file: Path, cooldown_seconds: float) -> str | None:
    """Why a trigger now is too soon after the last one, or None."""
    try:
        last = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    waited = time.time() - float(last.get("time", 0))
    if waited < cooldown_seconds:
        return (
            f"cooling down: the last retraining was triggered {waited:.0f} s ago "
            f"(retrain.cooldown_seconds={cooldown_seconds:.0f}); use --force to retrain anyway"
        )
    return None


def record_trigger(state_file: Path, **info: Any) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = state_file.with_name(f".{state_file.name}.tmp")
    temporary.write_text(json.dumps({"time": time.time(), **info}, indent=2) + "\n")
    temporary.replace(state_file)


def _run_pipeline(settings: Settings, registry: Registry, result: RetrainResult, *, reason, inputs, promote, echo):
    cfg = settings.retrain
    result.run_id = _open_retrain_run(registry, settings, reason, result.drift_run_id)
    echo(f"retraining (new: {', '.join(result.changed)}): {' '.join(cfg.command)} (MLflow run {result.run_id})")
    started = time.perf_counter()
    result.returncode, result.reason = run_command(cfg.command, settings.root, cfg.timeout_seconds, result.run_id)
    result.seconds = round(time.perf_counter() - started, 1)
    if result.returncode == 0:
        _decide(settings, registry, result, inputs, reason=reason, promote=promote)
    _close_retrain_run(registry, result)


def run_command(command: list[str], cwd: Path, timeout: float | None, run_id: str) -> tuple[int | None, str]:
    """(exit code, why it failed) of the pipeline, in its own process group, stopped whole at the timeout."""
    env = {**os.environ, TRIGGER_ENV: run_id}
    try:
        process = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True)
    except FileNotFoundError:
        return None, f"retrain.command {command[0]!r} not found"
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(process)
        return None, f"retrain.command did not finish in {timeout} s; its whole process group was stopped"
    return code, "" if code == 0 else f"{' '.join(command)} exited with {code}"


def _stop_group(process: subprocess.Popen, grace: float = 10) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


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
    links = ((T.MODEL_VERSION, result.version), (T.TRAINING_RUN, result.training_run_id))
    tags.update({k: v for k, v in (*links, (T.REVIEW_VERDICT, result.review_verdict)) if v})
    for key, value in tags.items():
        client.set_tag(result.run_id, key, value)
    client.log_metric(result.run_id, "pipeline_seconds", result.seconds)
    client.log_dict(result.run_id, result.to_dict(), "retrain.json")
    client.set_terminated(result.run_id, "FAILED" if result.outcome == FAILED else "FINISHED")


def own_version(registry: Registry, run_id: str, inputs: dict[str, str]):
    """The version this retrain run produced (its training run names the run), else the newest trained on
    exactly these inputs that is not the champion: what a half-failed earlier pipeline left to decide on."""
    try:
        versions = registry.versions()
    except UnknownModelError:  # nothing registered at all
        return None
    mine = [v for v in versions if v.tags.get(T.RETRAIN_RUN) == run_id]
    if mine:
        return mine[0]
    same = [v for v in versions if not differences(v.tags, inputs) and CHAMPION not in v.aliases]
    return same[0] if same else None


def _decide(settings, registry: Registry, result: RetrainResult, inputs, *, reason: str, promote) -> None:
    """After a successful pipeline: find this run's version and its review, then promote or hold."""
    version = own_version(registry, result.run_id, inputs)
    if version is None:
        result.outcome = NO_NEW_VERSION
        result.reason = "the pipeline registered no new version, and no version was trained on the current inputs"
        return
    result.version, result.training_run_id = version.version, version.run_id
    result.review_verdict = version.tags.get(T.REVIEW_VERDICT)
    if result.review_verdict != "promote":
        failed = version.tags.get(T.REVIEW_FAILED_GATES) or "no review recorded for it"
        result.outcome = HELD
        result.reason = f"v{version.version} held: review {result.review_verdict or 'missing'} ({failed})"
        return
    if not (settings.retrain.promote and promote):
        result.outcome, result.reason = TRAINED, f"v{version.version} passed its review; promotion is off"
        return
    promote(version.version, f"retrained: {reason}")
    result.outcome, result.reason = PROMOTED, f"v{version.version} passed its review and is now @champion"
