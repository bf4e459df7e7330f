"""The canary's judgement on plain numbers: who goes where, and when it must stop."""

from __future__ import annotations

import random

from lensops.core.sections import CanarySettings
from serving.canary import Watch, bucket


def test_a_client_key_always_lands_in_the_same_place_and_keys_spread_evenly():
    keys = [f"client-{i}" for i in range(20_000)]
    assert [bucket(k) for k in keys[:50]] == [bucket(k) for k in keys[:50]]
    share = sum(bucket(k) < 0.1 for k in keys) / len(keys)
    assert 0.09 < share < 0.11


def _watch(**settings) -> Watch:
    return Watch(CanarySettings(window=100, min_requests=30, **settings))


def test_a_canary_that_errors_more_than_the_margin_is_stopped_and_one_within_it_is_not():
    rng = random.Random(0)
    within, failing = _watch(), _watch()
    for _ in range(100):
        for watch in (within, failing):
            watch.record("champion", rng.random() > 0.01, 0.010)
        within.record("canary", rng.random() > 0.03, 0.010)
        failing.record("canary", rng.random() > 0.5, 0.010)
    assert within.verdict() is None
    assert failing.verdict().startswith("error rate")


def test_latency_is_judged_at_p95_and_only_with_enough_answers():
    slow = _watch()
    for i in range(29):
        slow.record("champion", True, 0.010)
        slow.record("canary", True, 0.050 if i % 10 == 0 else 0.011)
    assert slow.verdict() is None  # 29 canary answers: not yet judged
    for _ in range(20):
        slow.record("champion", True, 0.010)
        slow.record("canary", True, 0.050)
    assert "p95 latency" in slow.verdict()
    off = _watch(max_p95_ratio=None)
    for _ in range(60):
        off.record("champion", True, 0.010)
        off.record("canary", True, 0.100)
    assert off.verdict() is None
    slow.reset()
    assert slow.verdict() is None  # a new canary version starts a new window
