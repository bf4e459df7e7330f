"""The canary on the request path: which requests the candidate answers, and when it is stopped.

With `serve.canary.enabled`, a `Canary` deployment (a `Model`) follows the `canary` alias that
`lensops canary start` sets (`lensops.core.canary`); while the alias exists, the ingress sends
that version's fraction of requests to it. A request carrying `serve.canary.client_header` goes
where its key's hash falls, so one client always meets the same version; the others are drawn at
random. Every answer names the version that produced it.

A canary that fails on a request is counted as an error of its version and the request is
answered by the champion, so no client sees the candidate's failure. `Watch` keeps the latest
`serve.canary.window` answers of each side; once the canary has `min_requests` of them, it is
stopped (the alias removed, the decision and its reason recorded on the version) when its error
rate exceeds the champion's by more than `max_error_rate_increase`, or its p95 latency is more
than `max_p95_ratio` times the champion's. Requests already on their way to the canary finish
there: the canary's replica keeps its version until it is replaced.

`/metrics` carries, per version, the answers by outcome (`lensops_version_answers_total`) and
their latency (`lensops_version_seconds`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from typing import Any

import numpy as np

log = logging.getLogger("lensops.serving")
STATE_SECONDS = 1.0  # how stale the ingress's view of the canary may be


def bucket(key: str) -> float:
    """A client key's place in [0, 1): the same on every replica and every restart."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


class Watch:
    """The latest answers of the champion and the canary, and whether the canary does worse by the margins."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.sides: dict[str, deque] = {}
        self.reset()

    def reset(self) -> None:
        self.sides = {side: deque(maxlen=self.cfg.window) for side in ("champion", "canary")}

    def record(self, side: str, ok: bool, seconds: float) -> None:
        self.sides[side].append((ok, seconds))

    def verdict(self) -> str | None:
        """Why the canary must stop, or None."""
        cfg, canary, champion = self.cfg, self.sides["canary"], self.sides["champion"]
        if len(canary) < cfg.min_requests:
            return None
        errors = {side: sum(not ok for ok, _ in d) / len(d) if d else 0.0 for side, d in self.sides.items()}
        increase = errors["canary"] - errors["champion"]
        if cfg.max_error_rate_increase is not None and increase > cfg.max_error_rate_increase:
            return (
                f"error rate {errors['canary']:.3f} over the last {len(canary)} answers, the champion's "
                f"{errors['champion']:.3f}: more than {cfg.max_error_rate_increase:g} above"
            )
        p95 = {side: _p95(d) for side, d in self.sides.items()}
        if cfg.max_p95_ratio is None or len(champion) < cfg.min_requests or None in p95.values():
            return None
        if p95["canary"] > cfg.max_p95_ratio * p95["champion"]:
            return (
                f"p95 latency {1000 * p95['canary']:.1f} ms, the champion's {1000 * p95['champion']:.1f} ms: "
                f"more than {cfg.max_p95_ratio:g} times"
            )
        return None


def _p95(answers: deque) -> float | None:
    times = [seconds for ok, seconds in answers if ok]
    return float(np.percentile(times, 95)) if times else None


class Canary:
    """The ingress's side of the canary: its state (cached), the choice per request, the watch, the stop."""

    def __init__(self, model, cfg, metrics):
        from prometheus_client import Counter, Histogram

        self.model, self.cfg = model, cfg
        self.watch = Watch(cfg)
        self.random = random.Random()
        self._state: dict[str, Any] | None = None
        self._state_at = 0.0
        self.version: str | None = None  # the canary version the watch is about
        self.stopped: set[str] = set()  # versions this ingress stopped: not chosen again while the alias stays
        self.tasks: set[asyncio.Task] = set()
        self.answers = Counter(
            "lensops_version_answers", "answers per model version", ["version", "side", "outcome"], registry=metrics
        )
        self.seconds = Histogram("lensops_version_seconds", "answer latency per model version", ["version"],
                                 registry=metrics)  # fmt: skip

    async def info(self, refresh: bool = False) -> dict[str, Any] | None:
        """The canary deployment's info while a canary runs, else None; at most `STATE_SECONDS` old."""
        if refresh or time.monotonic() - self._state_at > STATE_SECONDS:
            self._state_at = time.monotonic()  # requests arriving meanwhile use the state held, not a query each
            try:
                info = await asyncio.wait_for(self.model.info.remote(), timeout=STATE_SECONDS)
            except Exception:  # no version loaded, or a replica that does not answer: no canary
                info = None
            if info is None or not info.get("active"):
                self.stopped.clear()  # the alias is gone: a version started again later is followed again
            running = info is not None and info.get("active") and info["version"] not in self.stopped
            self._state = info if running and info.get("fraction", 0) > 0 else None
            self._state_at = time.monotonic()
            if self._state is not None and self._state["version"] != self.version:
                self.version = self._state["version"]
                self.watch.reset()
        return self._state

    async def choose(self, headers) -> dict[str, Any] | None:
        """The canary's info if this request goes to the canary, else None."""
        state = await self.info()
        if state is None:
            return None
        key = headers.get(self.cfg.client_header)
        share = bucket(key) if key else self.random.random()
        return state if share < state["fraction"] else None

    def observe(self, version: str, side: str, ok: bool, seconds: float) -> None:
        """One answer (or one failure of the canary), counted per version and watched."""
        self.answers.labels(version, side, "ok" if ok else "error").inc()
        if ok:
            self.seconds.labels(version).observe(seconds)
        if side == "champion" or version == self.version:
            self.watch.record(side, ok, seconds)
        if side == "canary" and (reason := self.watch.verdict()) is not None and version not in self.stopped:
            self.stopped.add(version)
            self._state = None
            log.warning("canary v%s stopped: %s", version, reason)
            task = asyncio.get_running_loop().create_task(self._stop(version, reason))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _stop(self, version: str, reason: str) -> None:
        try:
            await self.model.stop.remote(version, reason)
        except Exception as e:  # the ingress no longer routes to it; the alias stays for a person to remove
            log.warning("could not record the stop of canary v%s: %s", version, e)
