"""Webhook calls against a real local HTTP receiver: retried on 5xx, final on 4xx, Slack-shaped on request."""

import pytest

from lensops.core.sections import MonitorSettings, parse_duration
from monitoring.webhooks import message, post
from tests.receiver import Receiver

EVENT = {
    "event": "drift_found",
    "model": {"name": "digits", "version": "3"},
    "score": 0.4213,
    "verdict": "drift",
    "report": "reports/drift/drift.html",
    "detail": "",
}


def settings(*urls: str, **changes) -> MonitorSettings:
    return MonitorSettings(webhooks=list(urls), webhook_backoff_s=0.01, webhook_timeout_s=5, **changes)


def test_a_receiver_that_fails_twice_gets_the_event_on_the_third_try():
    with Receiver(fail_first=2) as receiver:
        [delivery] = post(EVENT, settings(receiver.url))
    assert delivery.ok and delivery.attempts == 3 and delivery.status == 200
    assert [c["status"] for c in receiver.calls] == [500, 500, 200] and receiver.delivered() == [EVENT]


def test_a_client_error_is_not_retried_and_a_dead_receiver_gives_up_without_raising():
    with Receiver(fail_first=5, fail_status=404) as receiver:
        [delivery] = post(EVENT, settings(receiver.url))
    assert not delivery.ok and delivery.attempts == 1 and delivery.status == 404 and len(receiver.calls) == 1
    with Receiver() as gone:
        url = gone.url
    [dead] = post(EVENT, settings(url, webhook_attempts=3))  # nothing listens there any more
    assert not dead.ok and dead.attempts == 3 and "ConnectionError" in dead.error


def test_every_webhook_gets_the_event_and_slack_gets_a_message():
    with Receiver() as one, Receiver() as two:
        post(EVENT, settings(one.url, two.url, payload="slack"))
    assert one.delivered() == two.delivered() == [{"text": message(EVENT)}]
    assert "Drift found" in message(EVENT) and "digits v3" in message(EVENT) and "0.421" in message(EVENT)


def test_durations_and_urls_are_checked():
    assert parse_duration("15m") == 900 and parse_duration("90") == 90 and parse_duration("2h") == 7200
    for bad in ("soon", "-5m", "0", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError, match="not an http"):
        MonitorSettings(webhooks=["ftp://example.org/hook"])
