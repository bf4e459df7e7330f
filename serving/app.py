"""The Ray Serve application: ingress -> preprocessing -> batched model, following an alias.

Three deployments, scaled independently:

- `Ingress` (`serving.ingress`): the HTTP contract, API key, size limit, timeouts, JSON errors,
  Prometheus metrics, and the production log. Concurrent requests are batched where they arrive.
- `Preprocess` (`serving.preprocess`): untrusted bytes -> checked, decoded image -> the evaluation
  tensor, built by the shared `data.transforms.eval_transform` from the served version's spec.
- `Model` (`serving.model`): the exported network of the version an alias points at, behind
  `@serve.batch`, on a GPU when `serve.use_gpu` says so, following its alias.
- `Shadow`, with `serve.shadow` set: a second `Model` that the ingress calls after each answer
  (`serving.shadow`); `Canary`, with `serve.canary.enabled`: a `Model` following the `canary` alias,
  which answers its fraction of requests (`serving.canary`). Both share the GPU with the model.

Every replica asks for a fraction of a CPU (`serve.replica_cpus`): whole CPUs per replica make
`serve.run` wait forever on a two-core machine.
"""

from __future__ import annotations

from .ingress import Ingress
from .model import Model
from .preprocess import Preprocess

MODEL_MAX_BATCHES = 8  # ingress batches merged into one forward (several ingress replicas)


def model_gpus(serve_settings) -> float:
    """GPUs per model replica: none on CPU; otherwise the GPUs Ray sees shared by the replicas, at most 1."""
    from lensops.core.compute import available_gpus

    gpus = available_gpus()
    use = gpus > 0 if serve_settings.use_gpu == "auto" else bool(serve_settings.use_gpu)
    if use and gpus == 0:
        raise ValueError("serve.use_gpu is true but no GPU is visible; set serve.use_gpu=auto or false")
    replicas = serve_settings.model_replicas + bool(serve_settings.shadow) + serve_settings.canary.enabled
    return min(1.0, gpus / replicas) if use else 0.0


def build_app(settings, model_ref: str | None = None, *, api_key: str | None = None):
    """The bound application for `serve.run`, sized from `settings.serve`."""
    import os

    from lensops.core.registry import Registry

    s = settings.serve
    registry = Registry.of(settings)
    ref = model_ref or s.model
    registry.resolve(ref)  # an unknown reference fails here, naming what exists
    if s.shadow:
        registry.resolve(s.shadow)
    cpus = {"num_cpus": s.replica_cpus}
    gpus = model_gpus(s)
    # Enough requests in flight per replica for batches to fill (Serve's default allows 5).
    preprocess = Preprocess.options(
        num_replicas=s.preprocess_replicas, ray_actor_options=cpus, max_ongoing_requests=s.max_ongoing_requests
    ).bind(
        {
            "formats": s.allowed_formats,
            "max_bytes": s.max_body_bytes,
            "max_pixels": s.max_pixels,
            "max_frames": s.max_frames,
            "max_scans": s.max_scans,
        },
        {
            "workers": s.decode_workers,
            "timeout_s": s.decode_timeout_s,
            "memory_mb": s.decoder_memory_mb,
            "heavy_share": s.heavy_share,
        },
    )
    device, resources = "cuda" if gpus else "cpu", {**cpus, "num_gpus": gpus}
    model = Model.options(
        num_replicas=s.model_replicas, ray_actor_options=resources, max_ongoing_requests=2 * MODEL_MAX_BATCHES
    ).bind(registry, ref, MODEL_MAX_BATCHES, s.alias_poll_seconds, device, settings.drift)
    shadow = _follower(settings, registry, resources, device, "shadow") if s.shadow else None
    canary = _follower(settings, registry, resources, device, "canary") if s.canary.enabled else None
    return Ingress.options(
        ray_actor_options=cpus, max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests
    ).bind(
        preprocess,
        model,
        max_body_bytes=s.max_body_bytes,
        request_timeout_s=s.request_timeout_s,
        top_k=s.top_k,
        monitoring=settings.monitoring,
        root=str(settings.root),
        api_key=api_key if api_key is not None else os.environ.get("LENSOPS_API_KEY") or None,
        max_batch_size=s.max_batch_size,
        batch_wait_ms=s.batch_wait_ms,
        max_batch_files=s.max_batch_files,
        max_images_in_flight=s.max_images_in_flight,
        preprocess_chunk=max(4, -(-s.max_batch_size // s.preprocess_replicas)),  # a share per replica
        shadow=shadow,
        shadow_fraction=s.shadow_fraction,
        canary=canary,
        canary_settings=s.canary,
    )


def _follower(settings, registry, resources: dict, device: str, role: str):
    """The `Shadow` or `Canary` deployment: a `Model` that follows `serve.shadow` or the `canary` alias and may
    start without a version. One replica: the shadow answers no client, the canary a fraction of them."""
    from lensops.core.canary import CANARY

    s = settings.serve
    ref = s.shadow if role == "shadow" else CANARY
    return Model.options(
        name=role.capitalize(), num_replicas=1, ray_actor_options=resources, max_ongoing_requests=2 * MODEL_MAX_BATCHES
    ).bind(registry, ref, MODEL_MAX_BATCHES, s.alias_poll_seconds, device, settings.drift, role)


def app_builder(args: dict[str, str]):
    """For `serve run serving/config.yaml`: args `params` (default params.yaml) and `model`."""
    from lensops.core.settings import load_settings

    return build_app(load_settings(args.get("params", "params.yaml")), args.get("model"))
