"""Ray: join the cluster named by `RAY_ADDRESS`, or start a local Ray sized to this machine."""

from __future__ import annotations

import os

# Ray settings lensops starts a local Ray with (a value already in the environment wins):
# - Ray Train's controller collects reports when it polls its workers, every 2 s by default, and
#   a worker's `report` waits for that poll: every epoch and the end of a run took at least 2 s,
#   which is most of a short run on small data. A poll costs one small call per worker.
# - Ray Serve's throughput-optimized mode: the ingress replica answers HTTP itself (direct
#   ingress, no proxy hop), deployments call each other over gRPC, and user code runs on the
#   replica's own event loop. Through the proxy, Ray Serve spent 7-15 ms of CPU per request on
#   two cores before any lensops code ran; directly, 0.3 ms (benchmarks/README.md). The ingress
#   replica then drains for 1 s on shutdown instead of 30 (a load balancer's deregistration time;
#   there is none in front of it), and a port it gives back is free again at once (Ray keeps it
#   for 150 s for a load balancer's sake): a restarted ingress listens where the old one did.
#   gRPC between replicas caps a message at 4 MB by default, below one upload under
#   `serve.max_body_bytes` (a 7 MB photo got a 500): the cap is gRPC's largest.
#   `RAY_SERVE_THROUGHPUT_OPTIMIZED=0` restores the proxy.
RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    "RAY_SERVE_PORT_QUARANTINE_S": "0",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
}


def ray_environment() -> None:
    """Put lensops' Ray settings into this process's environment, where Ray processes it starts inherit them."""
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def ensure_ray() -> bool:
    """Connect to (or start) Ray once per process. Returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    ray_environment()
    # With RAY_ADDRESS set, ray.init joins that cluster; without, it starts a local one with
    # every CPU and GPU of this machine. The dashboard process stays on (bound to 127.0.0.1): Ray's
    # state API lives there, and Ray Train uses it to release the placement group of a run whose
    # controller was stopped from outside (a Tune trial that ASHA cuts short); without it the
    # CPUs of every stopped trial stay reserved and the next trial waits forever.
    # `address` is explicit: left to None, ray.init joins whatever cluster the machine-wide file
    # /tmp/ray/ray_current_cluster names, which outlives a `ray start` or test cluster killed
    # without cleanup, and the run then waits on a dead address instead of starting its own Ray.
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        ignore_reinit_error=True,
        log_to_driver=False,  # the driver shows its own progress; worker logs stay in the Ray session folder
        configure_logging=False,
    )
    return True


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def available_gpus() -> float:
    """GPUs Ray sees once it runs (the cluster's), else this machine's CUDA devices."""
    import ray

    if ray.is_initialized():
        return cluster_gpus()
    import torch

    return float(torch.cuda.device_count())
