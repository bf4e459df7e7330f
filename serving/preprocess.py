"""The preprocessing deployment: untrusted bytes -> a checked, decoded image -> the evaluation tensor.

Each upload's image work (`data.upload.prepare_upload`: the shared decoder, upright RGB, the
spec's resize, the image stats) runs in a `data.decoder_pool.DecoderPool` worker process under
`serve.decode_timeout_s` and `serve.decoder_memory_mb`: a TIFF of thousands of pages, a JPEG of
thousands of scans or a decoder crash costs one worker, which is killed and replaced, and the
upload gets a 422; the replica keeps answering. The replica is async, so while one decode runs
long the others go on in the other workers. Only the resized image comes back; the replica
normalises it with the spec (the same `data.pixels.normalize` evaluation uses). A batch arrives
in chunks, spread over the replicas.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ray import serve

from lensops.core.settings import PreprocessingSpec

from .model import spec_key

# What each decoding worker imports once, through the forkserver (not the replica's `__main__`).
WORKER_PRELOAD = ["data.upload"]


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
        self._specs: dict[str, tuple[PreprocessingSpec, str]] = {}  # the spec as sent -> parsed, key

    async def __call__(self, bodies: list[bytes], spec: dict[str, Any]) -> list[dict[str, Any]]:
        """One result per body: the tensor and image stats, or the client error it deserves."""
        from data.upload import prepare_upload

        cache = json.dumps(spec, sort_keys=True)
        if cache not in self._specs:
            parsed = PreprocessingSpec.model_validate(spec)
            self._specs[cache] = (parsed, spec_key(parsed))
        parsed, key = self._specs[cache]
        futures = [asyncio.wrap_future(self.pool.submit(prepare_upload, body, self.limits, parsed)) for body in bodies]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        return [self._result(outcome, parsed, key) for outcome in outcomes]

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
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()
