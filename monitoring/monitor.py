"""`lensops monitor`: drift (and retraining) on a schedule, in the foreground, telling people what changed.

Each iteration runs the drift job on the champion (`monitoring.drift`), and with
`monitor.retrain` the retraining pipeline when it finds drift. Then it compares what it found
with the state it last posted (`<state_dir>/state.json`: the verdict, the champion, whether
iterations fail, the labelling batch waiting) and posts each change once to every webhook
(`monitoring.webhooks`): drift found, drift cleared, retraining started, promoted, held, a
labelling batch waiting, a rollback, iterations failing. The first iteration after start posts
the state it finds. An unchanged state posts nothing.

- **Never two at once**: an iteration holds `<state_dir>/monitor.lock` (a `filelock`, released by
  the kernel if the process dies); a second monitor, or a slow iteration's successor, skips and
  says so. Iterations start every `monitor.every` from the previous start; one that overruns is
  followed by the next at once, never by a burst to catch up.
- **A failing iteration** (the registry unreachable, no champion, a corrupt log) is logged,
  recorded in `<state_dir>/history.jsonl` and posted once; the next iteration runs as planned.
- **SIGTERM or Ctrl-C** ends the wait at once; an iteration in progress finishes first (its
  retraining, if any, is bounded by `retrain.timeout_seconds`). The exit status is 0.
- **In MLflow** the monitor has a run of its own in the monitoring experiment, with the drift
  score, the verdict and the share of novel records per iteration as a time series (step =
  iteration), beside one drift run per iteration.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lensops.core import tags as T
from lensops.core.registry import CHAMPION, Registry, who
from lensops.core.sections import parse_duration
from lensops.core.settings import Settings

from .drift import DRIFT, NO_DRIFT, DriftResult, monitoring_experiment, run_drift
from .webhooks import post

log = logging.getLogger("lensops.monitor")

# What a retraining's outcome is called when it is posted (outcomes not listed post nothing).
OUTCOME_EVENTS = {"promoted": "promoted", "held": "held", "failed": "retrain_failed"}

# retrain(result, on_start) -> (its RetrainResult, the labelling batch folder it exported or None)
Retrain = Callable[[DriftResult, Callable[[], Any]], tuple[Any, Path | None]]


class Monitor:
    def __init__(
        self,
        settings: Settings,
        *,
        retrain: Retrain | None = None,
        echo: Callable[[str], Any] = print,
        html: bool = True,
    ):
        self.settings, self.retrain, self.echo, self.html = settings, retrain, echo, html
        self.every = parse_duration(settings.monitor.every)
        self.folder = settings.path(settings.monitor.state_dir)
        self.stop = threading.Event()
        self.iterations = 0
        self.run_id: str | None = None

    # --- the loop ---------------------------------------------------------------------------

    def run(self, iterations: int | None = None) -> int:
        """Iterate until stopped (or `iterations` have run); 0 on a clean stop."""
        handlers = self._handle_signals()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run_id = self._start_run()
        self.echo(f"monitoring every {self.settings.monitor.every}; state in {self.folder}")
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                self.iteration()
                if iterations is not None and self.iterations >= iterations:
                    break
                self.stop.wait(max(0.0, started + self.every - time.monotonic()))
        finally:
            self._end_run()
            for number, handler in handlers.items():
                signal.signal(number, handler)
        self.echo(f"stopped after {self.iterations} iterations")
        return 0

    def _handle_signals(self) -> dict:
        """SIGTERM and SIGINT end the wait; the handlers they replace, to put back."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {number: signal.signal(number, lambda *_: self.stop.set()) for number in (signal.SIGTERM, signal.SIGINT)}

    def iteration(self) -> dict[str, Any]:
        """One iteration under the lock; its history entry (outcome skipped when another holds the lock)."""
        import filelock

        self.folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.folder / "monitor.lock"), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            entry = {"outcome": "skipped", "detail": "another iteration holds the monitor lock"}
            self.echo("skipped: another iteration is running")
            return self._record(entry)
        try:
            first = self.iterations == 0
            self.iterations += 1
            try:
                entry = self._iterate(first)
            except Exception as e:  # a retraining callback or a full disk: the loop goes on regardless
                log.exception("monitoring iteration failed")
                entry = {"outcome": "failed", "detail": f"{type(e).__name__}: {e}", "events": []}
            return self._record(entry)
        finally:
            lock.release()

    # --- one iteration ----------------------------------------------------------------------

    def _iterate(self, first: bool) -> dict[str, Any]:
        previous = self._load_state()
        try:
            result = run_drift(self.settings, html=self.html)
        except Exception as e:  # recorded and posted once; the next iteration runs as planned
            log.exception("monitoring iteration failed")
            detail = f"{type(e).__name__}: {e}"
            self.echo(f"iteration failed: {detail}")
            events = [] if previous.get("failing") and not first else [self._event("iteration_failed", detail=detail)]
            self._save_state({**previous, "failing": True})
            self._metrics({"failed": 1.0})
            return {"outcome": "failed", "detail": detail, "events": self._deliver(events)}
        state = {**previous, "verdict": result.verdict, "champion": result.model["version"], "failing": False}
        events = self._transitions(previous, state, first, result)
        self.echo(f"drift: {result.verdict} (score {result.score}) on v{result.model['version']}")
        delivered = self._deliver(events)
        if self.retrain is not None and result.verdict == DRIFT:
            delivered += self._retrain(result, state)
        self._save_state(state)
        self._metrics({"failed": 0.0, "drift": float(result.drift), "n_current": float(result.n_current)}, result)
        return {"outcome": result.verdict, "score": result.score, "run_id": result.run_id, "events": delivered}

    def _transitions(self, previous: dict, state: dict, first: bool, result: DriftResult) -> list[dict[str, Any]]:
        verdict = result.verdict
        name = {DRIFT: "drift_found", NO_DRIFT: "no_drift"}.get(verdict, "too_few_records")
        if first and (self.settings.monitor.post_on_start or not previous):
            return [self._event(name, result, first=True)]
        events = []
        if previous.get("champion") not in (None, state["champion"]):
            events.append(self._event(self._champion_move(state["champion"]), result))
        if verdict != previous.get("verdict"):
            if verdict == NO_DRIFT and previous.get("verdict") == DRIFT:
                name = "drift_cleared"
            events.append(self._event(name, result))
        return events

    def _champion_move(self, version: str) -> str:
        """promoted, or rollback when the champion's alias tags say it was rolled back to."""
        try:
            with Registry.of(self.settings).open(version) as handle:
                tags = handle.tags
        except Exception:  # the event still goes out, as a promotion
            return "promoted"
        return "rollback" if tags.get(T.alias_tag(CHAMPION, T.PROMOTION_VERDICT)) == "rollback" else "promoted"

    def _retrain(self, result: DriftResult, state: dict) -> list[dict[str, Any]]:
        delivered: list[dict[str, Any]] = []
        start = lambda: delivered.extend(self._deliver([self._event("retraining_started", result)]))  # noqa: E731
        outcome, batch = self.retrain(result, start)
        self.echo(f"retrain: {outcome.outcome}: {outcome.reason}")
        events = []
        if outcome.outcome in OUTCOME_EVENTS:
            event = self._event(OUTCOME_EVENTS[outcome.outcome], result, detail=outcome.reason)
            event["retrain"] = {"outcome": outcome.outcome, "version": outcome.version, "run_id": outcome.run_id}
            events.append(event)
            if outcome.outcome == "promoted" and outcome.version:
                state["champion"] = str(outcome.version)  # posted now: the next iteration must not post it again
        if batch is not None and str(batch) != state.get("labels_waiting"):
            events.append(self._event("labels_waiting", result, detail=f"label the images in {batch}"))
            state["labels_waiting"] = str(batch)
        return delivered + self._deliver(events)

    # --- events, state, history -------------------------------------------------------------

    def _event(self, name: str, result: DriftResult | None = None, *, first: bool = False, detail: str = ""):
        event: dict[str, Any] = {
            "event": name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "first": first,
            "host": socket.gethostname(),
            "iteration": self.iterations,
            "detail": detail,
        }
        if result is not None:
            breakdown = result.details.get("breakdown", {})
            event.update(
                model={"name": result.model["name"], "version": result.model["version"]},
                score=result.score,
                verdict=result.verdict,
                report=result.report_html or str(self.settings.path(self.settings.drift.report_dir) / "drift.json"),
                run_id=result.run_id,
                flagged_classes=breakdown.get("flagged_classes", []),
            )
        return event

    def _deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        delivered = []
        for event in events:
            deliveries = post(event, self.settings.monitor)
            sent = "".join(f"; {d.url}: {'ok' if d.ok else 'failed'}" for d in deliveries)
            self.echo(f"event {event['event']}{sent}")
            delivered.append({"event": event["event"], "deliveries": [d.__dict__ for d in deliveries]})
        return delivered

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        temporary = self.folder / ".state.json.tmp"
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(self.folder / "state.json")

    def _record(self, entry: dict[str, Any]) -> dict[str, Any]:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        entry = {"time": stamp, "iteration": self.iterations, **entry}
        try:
            with open(self.folder / "history.jsonl", "a") as history:
                history.write(json.dumps(entry, default=str) + "\n")
        except OSError:
            log.exception("could not append to the monitor's history")
        return entry

    # --- the MLflow time series -------------------------------------------------------------

    def _start_run(self) -> str | None:
        try:
            registry = Registry.of(self.settings)
            experiment = monitoring_experiment(registry, self.settings)
            tags = {T.STAGE: "monitor", T.ACTOR: who()}
            run = registry.client().create_run(experiment, run_name=f"monitor on {socket.gethostname()}", tags=tags)
            return run.info.run_id
        except Exception:  # monitoring goes on without its time series; each drift run still logs)
            log.exception("could not start the monitor's MLflow run")
            return None

    def _metrics(self, values: dict[str, float], result: DriftResult | None = None) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        if result is not None and result.score is not None:
            values = {**values, "score": float(result.score)}
        now = int(time.time() * 1000)
        try:
            metrics = [Metric(k, float(v), now, self.iterations) for k, v in values.items()]
            Registry.of(self.settings).client().log_batch(self.run_id, metrics=metrics)
        except Exception:
            log.exception("could not log the iteration's metrics")

    def _end_run(self) -> None:
        if self.run_id is not None:
            try:
                Registry.of(self.settings).client().set_terminated(self.run_id)
            except Exception:
                log.exception("could not end the monitor's MLflow run")
