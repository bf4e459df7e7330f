"""Telling people: each change of the monitor's state, posted as JSON to every URL in `monitor.webhooks`.

A call is retried with exponential backoff (`tenacity`: a well-kept library for exactly this)
on a connection error, a timeout, a 429 or a 5xx; any other answer is final (a 404 will not get
better by asking again). A webhook that still fails is logged and recorded in the monitor's
history; it never stops monitoring. `monitor.payload: slack` sends a Slack incoming-webhook
message (`{"text": ...}`) instead of the event's fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests
from tenacity import RetryError, retry, retry_if_exception, stop_after_attempt, wait_exponential

from lensops.core.sections import MonitorSettings

log = logging.getLogger("lensops.monitor")

TITLES = {
    "drift_found": "Drift found",
    "drift_cleared": "Drift cleared",
    "no_drift": "No drift",
    "too_few_records": "Too few production records to judge",
    "retraining_started": "Retraining started",
    "promoted": "A new champion",
    "held": "Retrained version held by its review",
    "retrain_failed": "Retraining failed",
    "labels_waiting": "A labelling batch is waiting",
    "rollback": "Rolled back",
    "iteration_failed": "A monitoring iteration failed",
}


class Retryable(Exception):
    """An answer worth asking again for: 429 or 5xx."""


@dataclass
class Delivery:
    url: str
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None


def message(event: dict[str, Any]) -> str:
    """One line a person reads in a chat channel."""
    model = event.get("model") or {}
    parts = [f"lensops: {TITLES.get(event['event'], event['event'])}"]
    if model.get("version"):
        parts.append(f"{model.get('name', 'model')} v{model['version']}")
    if event.get("score") is not None:
        parts.append(f"score {event['score']:.3f}")
    if event.get("detail"):
        parts.append(str(event["detail"]))
    if event.get("report"):
        parts.append(f"report: {event['report']}")
    return " · ".join(parts)


def payload(event: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"text": message(event)} if kind == "slack" else event


def post(event: dict[str, Any], cfg: MonitorSettings) -> list[Delivery]:
    """Post one event to every webhook; never raises."""
    return [_post_one(url, payload(event, cfg.payload), cfg) for url in cfg.webhooks]


def _post_one(url: str, body: dict[str, Any], cfg: MonitorSettings) -> Delivery:
    attempts = 0

    @retry(
        stop=stop_after_attempt(cfg.webhook_attempts),
        wait=wait_exponential(multiplier=cfg.webhook_backoff_s, max=60),
        retry=retry_if_exception(lambda e: isinstance(e, Retryable | requests.ConnectionError | requests.Timeout)),
    )
    def send() -> requests.Response:
        nonlocal attempts
        attempts += 1
        answer = requests.post(url, json=body, timeout=cfg.webhook_timeout_s)
        if answer.status_code == 429 or answer.status_code >= 500:
            raise Retryable(f"HTTP {answer.status_code}")
        return answer

    try:
        answer = send()
    except RetryError as e:
        error = e.last_attempt.exception()
        log.warning("webhook %s failed after %d tries: %s", url, attempts, error)
        return Delivery(url, False, attempts, error=f"{type(error).__name__}: {error}")
    except requests.RequestException as e:  # an invalid URL and the like: final
        log.warning("webhook %s failed: %s", url, e)
        return Delivery(url, False, attempts, error=f"{type(e).__name__}: {e}")
    if not answer.ok:
        log.warning("webhook %s answered %d", url, answer.status_code)
    return Delivery(url, answer.ok, attempts, status=answer.status_code)
