"""The preprocessing deployment: untrusted bytes -> a checked, decoded image -> the evaluation tensor.

The tensor is built by the shared `data.transforms.eval_transform` from the served version's
preprocessing spec (the same function evaluation and monitoring use), and the image is made
upright RGB once, for both the tensor and the stats the production log keeps. A batch arrives in
chunks, spread over the replicas.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from lensops.core.settings import PreprocessingSpec

from .model import spec_key


@serve.deployment
class Preprocess:
    def __init__(self, allowed_formats: list[str], max_bytes: int, max_pixels: int):
        self.limits = {"allowed_formats": allowed_formats, "max_bytes": max_bytes, "max_pixels": max_pixels}
        self._transforms: dict[str, Any] = {}

    def __call__(self, bodies: list[bytes], spec: dict[str, Any]) -> list[dict[str, Any]]:
        """One result per body: the tensor and image stats, or the client error it deserves."""
        from data.transforms import eval_transform

        parsed = PreprocessingSpec.model_validate(spec)
        key = spec_key(parsed)
        if key not in self._transforms:
            self._transforms[key] = eval_transform(parsed)
        return [self._one(body, self._transforms[key], key) for body in bodies]

    def _one(self, body: bytes, transform, key: str) -> dict[str, Any]:
        from data.transforms import image_stats, to_rgb
        from data.upload import UploadRejected, read_upload

        try:
            upload = read_upload(body, **self.limits)
            rgb = to_rgb(upload.image)
        except UploadRejected as e:
            return {"error": {"status": e.status, "code": e.code, "detail": e.detail}}
        except Exception as e:  # anything else Pillow raises on hostile data is still the client's input
            return {"error": {"status": 422, "code": "undecodable", "detail": f"the image does not decode: {e}"}}
        return {"tensor": transform.from_rgb(rgb).numpy(), "key": key, **image_stats(rgb)}
