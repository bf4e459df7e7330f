"""`lensops serve`: the application in the foreground, shut down cleanly on SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading

from lensops.core.compute import ensure_ray
from lensops.core.errors import UsageError
from lensops.core.registry import Registry
from lensops.core.settings import Settings


class ServeError(UsageError):
    """The server cannot start as asked (an unknown model, a GPU that is not there)."""


def check_model(settings: Settings, model_ref: str | None) -> str:
    """The version the ref points at now; UnknownModelError naming what exists."""
    return Registry.of(settings).resolve(model_ref or settings.serve.model)


def start(
    settings: Settings, model_ref: str | None = None, *, host: str | None = None, port: int | None = None
) -> tuple[str, bool]:
    """Start Serve and the application; returns (base URL, whether Ray was started here)."""
    from ray import serve

    from .app import build_app, model_gpus

    check_model(settings, model_ref)
    started_ray = ensure_ray()
    try:
        model_gpus(settings.serve)  # serve.use_gpu against the GPUs Ray sees, before anything starts
    except ValueError as e:
        if started_ray:
            import ray

            ray.shutdown()
        raise ServeError(str(e)) from None
    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    warn_if_open(host)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings, model_ref), name="lensops", route_prefix="/", blocking=False)
    return f"http://{host}:{port}", started_ray


def warn_if_open(host: str) -> bool:
    """A warning on stderr when the server listens beyond this machine without an API key."""
    import ipaddress
    import os
    import sys

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback or os.environ.get("LENSOPS_API_KEY"):
        return False
    print(
        f"warning: serving on {host} without an API key: anyone who can reach this address can use "
        "the model. Set LENSOPS_API_KEY, or bind to 127.0.0.1.",
        file=sys.stderr,
    )
    return True


def stop(started_ray: bool) -> None:
    """Replicas get a graceful shutdown (the production log flushes), then Ray stops if we started it."""
    import ray
    from ray import serve

    serve.shutdown()
    if started_ray:
        ray.shutdown()


def run_foreground(
    settings: Settings,
    model_ref: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ready=print,
) -> None:
    stop_event = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop_event.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    url, started_ray = start(settings, model_ref, host=host, port=port)
    # Starting Ray installs its own SIGTERM handler (it aborts the process): take the signals back.
    for sig in previous:
        signal.signal(sig, lambda *_: stop_event.set())
    try:
        on_ready(url)
        stop_event.wait()
    finally:
        stop(started_ray)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
