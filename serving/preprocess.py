"""The preprocessing deployment: untrusted bytes -> a checked, decoded image -> the evaluation tensor.

Each upload's image work (`data.upload.prepare_upload`: the shared decoder, upright RGB, the
spec's resize, the image stats) runs in a `data.decoder_pool.DecoderPool` worker process under
`serve.decode_timeout_s` and `serve.decoder_memory_mb`: a TIFF of thousands of pages, a JPEG of
thousands of scans or a decoder crash costs one worker, which is killed and replaced, and the
upload gets a 422; the replica keeps answering. The replica is async, so while one decode runs
long the others go on in the other workers. An upload whose header alone promises a long decode
(over 4 MP, 16 frames or 12 JPEG scans: `data.images.light_enough`, headers only) is decoded by a
separate worker at the lowest CPU priority instead, so normal traffic never queues behind it. That
lane decodes one upload at a time. While the light lane is serving images, it rests after each, so
it takes at most `serve.heavy_share` of one core: on this project's 2-core machine a decoder
running flat out at the lowest priority still cost normal traffic 12-35% of its throughput. With
no light traffic to protect it runs flat out. What the lane cannot finish in time gets the
ingress's JSON 408. Only the resized image comes back; the replica
normalises it with the spec (the same `data.pixels.normalize` evaluation uses). A batch arrives
in chunks, spread over the replicas.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ray import serve

from lensops.core.settings import PreprocessingSpec

from .model import spec_key

# What each decoding worker imports once, through the forkserver (not the replica's `__main__`).
WORKER_PRELOAD = ["data.upload"]
# The light lane's limits: above any of them an upload is decoded in the heavy lane.
LIGHT_PIXELS = 4_000_000
LIGHT_FRAMES = 16
LIGHT_SCANS = 12
# Uploads of one /predict/batch decoded per task: one round trip to a worker for several small images.
GROUP = 8
# The heavy lane rests after a decode when the light lane decoded an image this recently (seconds).
LIGHT_RECENT_S = 1.0


@serve.deployment
class Preprocess:
    def __init__(self, limits: dict[str, Any], decode: dict[str, Any]):
        from data.decoder_pool import DecoderPool
        from data.images import ImageLimits

        self.limits = ImageLimits.of(**limits)
        self.pool = DecoderPool(
            workers=decode["workers"],
            timeout_s=decode["timeout_s"],
            memory_mb=decode["memory_mb"],
            max_tasks=decode.get("max_tasks", 10_000),
            preload=WORKER_PRELOAD,
        )
        # Uploads whose header promises a long decode (many pixels, frames or JPEG scans) go to a
        # separate worker at the lowest CPU priority, so the small images of normal traffic never
        # queue behind them; what its queue cannot finish in time is answered by the ingress's 408.
        self.light = ImageLimits.of(max_pixels=LIGHT_PIXELS, max_frames=LIGHT_FRAMES, max_scans=LIGHT_SCANS)
        self.heavy = DecoderPool(
            workers=1,
            timeout_s=decode["timeout_s"],
            memory_mb=decode["memory_mb"],
            max_tasks=decode.get("max_tasks", 10_000),
            preload=WORKER_PRELOAD,
            nice=19,
        )
        # The heavy lane decodes one upload at a time and, while normal traffic flows, then rests, so
        # that it takes at most `heavy_share` of one core: even at the lowest priority, a decoder
        # running flat out cost normal traffic 12-15% of its throughput here (35% when it streams
        # memory, as a large decode does). "Normal traffic" is an image the light lane decoded: an
        # upload refused there, or sent on to the heavy lane, leaves the heavy lane at full speed.
        self.heavy_turn, self.heavy_rest = asyncio.Lock(), 1 / decode.get("heavy_share", 1.0) - 1
        self.light_at = float("-inf")  # when the light lane last decoded an image
        self._specs: dict[str, tuple[PreprocessingSpec, str]] = {}  # the spec as sent -> parsed, key

    async def __call__(self, bodies: list[bytes], spec: dict[str, Any]) -> list[dict[str, Any]]:
        """One result per body: the tensor and image stats, or the client error it deserves."""

        cache = json.dumps(spec, sort_keys=True)
        if cache not in self._specs:
            parsed = PreprocessingSpec.model_validate(spec)
            self._specs[cache] = (parsed, spec_key(parsed))
        parsed, key = self._specs[cache]
        groups = [bodies[i : i + GROUP] for i in range(0, len(bodies), GROUP)]
        outcomes = await asyncio.gather(*(self._prepare_group(group, parsed) for group in groups))
        return [self._result(outcome, parsed, key) for part in outcomes for outcome in part]

    async def _prepare_group(self, bodies: list[bytes], spec: PreprocessingSpec) -> list:
        """Several uploads (of one /predict/batch) in one decoding task. When the task as a whole
        fails (a decoder overran its deadline, crashed or ran out of memory on one of them), each
        upload is decoded again alone, so only the one at fault gets the 422."""
        from data.upload import TooHeavy, prepare_uploads

        if len(bodies) == 1:
            return await asyncio.gather(self._prepare(bodies[0], spec), return_exceptions=True)
        try:
            task = self.pool.submit(prepare_uploads, bodies, self.limits, spec, self.light)
            outcomes = await asyncio.wrap_future(task)
        except Exception:
            return await asyncio.gather(*(self._prepare(body, spec) for body in bodies), return_exceptions=True)
        if any(isinstance(outcome, dict) for outcome in outcomes):
            self.light_at = time.monotonic()
        heavy = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, TooHeavy)]  # headers read once
        again = await asyncio.gather(*(self._heavy(bodies[i], spec) for i in heavy), return_exceptions=True)
        for i, outcome in zip(heavy, again, strict=True):
            outcomes[i] = outcome
        return outcomes

    async def _prepare(self, body: bytes, spec: PreprocessingSpec) -> dict[str, Any]:
        from data.upload import TooHeavy, prepare_upload

        try:
            prepared = await asyncio.wrap_future(self.pool.submit(prepare_upload, body, self.limits, spec, self.light))
        except TooHeavy:
            return await self._heavy(body, spec)
        self.light_at = time.monotonic()
        return prepared

    async def _heavy(self, body: bytes, spec: PreprocessingSpec) -> dict[str, Any]:
        """An upload whose header promised a long decode, in the low-priority lane, in its turn."""
        from data.upload import prepare_upload

        await self.heavy_turn.acquire()
        started = time.monotonic()
        try:
            return await asyncio.wrap_future(self.heavy.submit(prepare_upload, body, self.limits, spec))
        finally:  # answered at once; the next heavy upload waits out the rest (past its timeout: the ingress's 408)
            busy = self.light_at > started - LIGHT_RECENT_S  # normal traffic during the decode, or just before
            rest = (time.monotonic() - started) * self.heavy_rest if busy else 0.0
            asyncio.get_running_loop().call_later(rest, self.heavy_turn.release)

    def healthy(self) -> bool:
        return True

    @staticmethod
    def _result(outcome: dict[str, Any] | BaseException, spec: PreprocessingSpec, key: str) -> dict[str, Any]:
        from data.images import ImageRejected
        from data.pixels import normalize

        if isinstance(outcome, ImageRejected):
            return {"error": {"status": outcome.status, "code": outcome.code, "detail": outcome.detail}}
        if isinstance(outcome, BaseException):  # the pool's own failure: still this upload's, never a 500
            detail = f"the image could not be decoded: {type(outcome).__name__}: {outcome}"
            return {"error": {"status": 422, "code": "undecodable", "detail": detail}}
        stats = {k: v for k, v in outcome.items() if k != "pixels"}
        return {"tensor": normalize(outcome["pixels"], spec), "key": key, **stats}

    def __del__(self):
        for name in ("pool", "heavy"):
            pool = getattr(self, name, None)
            if pool is not None:
                pool.close()
