"""One image's answer from the model -> the client's JSON and its production-log record."""

from __future__ import annotations

from typing import Any

import numpy as np

from lensops.core.model_artifact import IMAGE_STATS  # what the production log keeps of an image

__all__ = ["IMAGE_STATS", "reply"]


def reply(answer: dict[str, Any], top_k: int, meta: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON a client gets for one image (its `top_k` predictions) and the record the production
    log keeps of it; `meta` is the image's request id and sha256."""
    probabilities, classes = answer["probabilities"], answer["classes"]
    order = np.argsort(-probabilities)[:top_k]
    predictions = [{"label": classes[i], "score": float(probabilities[i])} for i in order]
    record = {
        **meta,
        "model_name": answer["name"],
        "model_version": answer["version"],
        "embedding": answer["embedding"],
        "label": predictions[0]["label"],
        "score": predictions[0]["score"],
        **{stat: answer[stat] for stat in IMAGE_STATS},
    }
    client = {**meta, "model": {"name": answer["name"], "version": answer["version"]}, "predictions": predictions}
    return client, record
