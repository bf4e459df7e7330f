"""The model deployment: the exported network of the version an alias points at, batched.

It receives the project's `Registry` (a small picklable value) and a model reference, opens the
version through `Registry.open` (the one way to reach a version), loads its network onto the
replica's device and closes the handle at once: the network, spec and classes are in memory, and
the downloaded files are gone. From the version's baseline it keeps the novelty reference
(`data.novelty`): each answer carries its embedding's novelty, which the ingress's capture policy
reads, and the training range of the image statistics.

Every `serve.alias_poll_seconds` it re-resolves the reference (one metadata call). When the alias
has moved, the new version is loaded beside the old one and swapped in with one assignment, so
requests never fail during a switch. A version that fails to load is not retried at every poll:
it waits out a backoff that doubles up to `MAX_BACKOFF_S`, and a move to another version is
followed at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from lensops.core.registry import Registry
from lensops.core.settings import DriftSettings, PreprocessingSpec

log = logging.getLogger("lensops.serving")
MAX_BACKOFF_S = 300.0
# Batches whose forward runs at once, each on a thread of its own. A replica's torch runs a forward
# on one core (Ray gives it a fraction of a CPU), so a second batch in flight uses a second core:
# measured on 2 cores (smallcnn, batches of 32), 2,150 images/s against 1,130 one batch at a time
# and 1,700-1,800 for one batch on two torch threads.
FORWARDS = 2


def spec_key(spec: PreprocessingSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


@dataclass
class Served:
    name: str
    version: str
    spec: PreprocessingSpec
    classes: list[str]
    network: Any
    key: str
    novelty: Any = None  # data.novelty.NoveltyReference, or None for a version without a usable baseline
    ranges: dict[str, tuple[float, float]] | None = None


def load_served(registry: Registry, version: str, device: str, drift=None, *, novelty: bool = True) -> Served:
    """A version's network on `device`, with its spec, classes and (unless not wanted) novelty reference;
    no file of it stays on disk."""
    from data.novelty import NoveltyReference, stat_ranges

    with registry.open(version) as handle:
        network = handle.network(device=device)
        served = Served(handle.name, handle.version, handle.spec, handle.classes, network, spec_key(handle.spec))
        if not novelty:  # the shadow: nobody reads its answers' novelty
            return served
        try:
            baseline = handle.baseline()
            served.novelty = NoveltyReference.from_settings(baseline, drift or DriftSettings())
            served.ranges = stat_ranges(baseline)
        except Exception as e:  # answers go on; capture then samples without the outlier rule
            log.warning("v%s: no novelty reference (%s); capture keeps low scores and samples only", version, e)
        return served


class AliasFollower:
    """Which version to serve next: the reference re-resolved, with a backoff for versions that failed to load."""

    def __init__(self, registry: Registry, ref: str):
        self.registry, self.ref = registry, ref
        self.failed: dict[str, tuple[float, float]] = {}  # version -> (retry after, backoff seconds)

    def candidate(self, current: str | None) -> str | None:
        """A version to load now, or None (unchanged, or a failed one still backing off)."""
        version = self.registry.resolve(self.ref)
        if version == current:
            return None
        retry_at, _ = self.failed.get(version, (0.0, 0.0))
        return version if time.monotonic() >= retry_at else None

    def failed_to_load(self, version: str, poll_seconds: float) -> float:
        _, backoff = self.failed.get(version, (0.0, poll_seconds))
        backoff = min(MAX_BACKOFF_S, 2 * backoff)
        self.failed[version] = (time.monotonic() + backoff, backoff)
        return backoff


@serve.deployment
class Model:
    def __init__(
        self,
        registry: Registry,
        ref: str,
        max_batches: int,
        poll_seconds: float,
        device: str = "cpu",
        drift=None,
        role: str = "champion",
    ):
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.registry, self.device = registry, device
        self.drift = drift  # the `drift` settings section: how novelty is scored
        self.follower = AliasFollower(registry, ref)
        self.role, self.served, self.fraction = role, None, 0.0
        # The shadow's work comes after the answers: one forward at a time, the other core left to the champion.
        self.forwards = asyncio.Semaphore(1 if role == "shadow" else FORWARDS)
        try:
            self.served = self._load(registry.resolve(ref))
            self._refresh()
        except Exception as e:  # the shadow and the canary start without a version and keep trying
            if role == "champion":
                raise
            log.info("%s %s: none loaded yet (%s); tried again every %g s", role, ref, e, poll_seconds)
        self.active = self.served is not None  # the canary: whether its alias exists
        # The ingress already waited for its batch to fill: take whatever batches are queued, at once.
        self.predict.set_max_batch_size(max_batches)
        self.predict.set_batch_wait_timeout_s(0)
        self._stop = threading.Event()
        self._poll_seconds = poll_seconds
        threading.Thread(target=self._follow_alias, name="follow-alias", daemon=True).start()

    def _follow_alias(self) -> None:
        """Load a moved alias's version beside the current one, then swap the reference."""
        while not self._stop.wait(self._poll_seconds):
            version = None
            try:
                version = self.follower.candidate(self.served.version if self.served else None)
                if version is not None:
                    fresh = self._load(version)
                    self.served = fresh  # one assignment: a batch sees the old or the new, never a mix
                    log.warning("now serving %s v%s as %s", fresh.name, fresh.version, self.role)
                self._refresh()
                self.active = self.served is not None
            except Exception as e:  # the registry may be briefly unreachable: keep serving what we have
                if version is not None:
                    wait = self.follower.failed_to_load(version, self._poll_seconds)
                    log.warning("could not load v%s (next try in %.0f s): %s", version, wait, e)
                elif self.role == "champion" or self.active:
                    log.warning("could not follow %s: %s", self.follower.ref, e)
                self.active = self.active and self.role == "champion"  # a canary whose alias is gone: off

    def _refresh(self) -> None:
        """The canary's fraction, read from its version's tags at every poll (`lensops canary start` may change it)."""
        if self.role == "canary" and self.served is not None:
            from lensops.core.canary import FRACTION

            tags = self.registry.client().get_model_version(self.registry.model_name, self.served.version).tags
            self.fraction = float(tags.get(FRACTION) or 0)

    def stop(self, version: str, reason: str) -> str | None:
        """The canary did worse than the champion (the ingress judged): its alias removed, the decision recorded."""
        from lensops.core import canary

        self.active = False
        return canary.stop(self.registry, reason=reason, automatic=True, version=version)

    def _load(self, version: str) -> Served:
        return load_served(self.registry, version, self.device, self.drift, novelty=self.role != "shadow")

    def info(self) -> dict[str, Any]:
        s = self._current()
        return {
            "name": s.name,
            "version": s.version,
            "classes": s.classes,
            "preprocessing": s.spec.model_dump(),
            "key": s.key,
            "device": self.device,
            "stat_ranges": s.ranges or {},
            "role": self.role,
            "active": self.active,
            "fraction": self.fraction,
        }

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0, max_concurrent_batches=FORWARDS)
    async def predict(self, items: list[tuple[np.ndarray, str]]) -> list[dict[str, Any]]:
        """Each item is one ingress batch (N, 3, H, W) and the spec key it was preprocessed with."""
        served = self._current()  # one version for the whole forward
        ok = [i for i, (_, key) in enumerate(items) if key == served.key]
        answers: list[dict[str, Any]] = [{"stale": True} for _ in items]
        if not ok:
            return answers
        batch = np.concatenate([items[i][0] for i in ok])
        async with self.forwards:
            probabilities, embedding, novelty = await asyncio.to_thread(self._forward, served, batch)
        start = 0
        for i in ok:
            end = start + len(items[i][0])
            answers[i] = {
                "name": served.name,
                "version": served.version,
                "probabilities": probabilities[start:end],
                "embedding": embedding[start:end],
                "novelty": novelty[start:end],
                "classes": served.classes,
                "batch_size": len(batch),
            }
            start = end
        return answers

    def _forward(self, served: Served, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities, embeddings and novelty of a batch; runs on a thread of its own (`FORWARDS`)."""
        import torch

        with torch.no_grad():
            logits, embedding = served.network(torch.from_numpy(batch).to(self.device))
        probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
        embedding = embedding.float().cpu().numpy()
        novelty = served.novelty.novelty(embedding) if served.novelty is not None else np.full(len(batch), np.nan)
        return probabilities, embedding, novelty

    def _current(self) -> Served:
        if self.served is None:
            raise RuntimeError(f"no version of {self.follower.ref} is loaded")
        return self.served

    def __del__(self):
        self._stop.set()
