"""`lensops serve`: the application in the foreground, shut down cleanly on SIGINT or SIGTERM."""

from __future__ import annotations

import os
import signal
import threading

from lensops.core.compute import ensure_ray
from lensops.core.errors import UsageError
from lensops.core.ports import free_port
from lensops.core.registry import Registry
from lensops.core.settings import Settings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DIRECT_PORTS = ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT")


class ServeError(UsageError):
    """The server cannot start as asked (an unknown model, a GPU that is not there)."""


def check_model(settings: Settings, model_ref: str | None) -> str:
    """The version the ref points at now; UnknownModelError naming what exists."""
    return Registry.of(settings).resolve(model_ref or settings.serve.model)


def start(
    settings: Settings,
    model_ref: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ray=lambda: None,
) -> tuple[str, bool]:
    """Start Serve and the application; returns (base URL, whether Ray was started here).

    `on_ray` runs as soon as Ray is up, before the application starts (and can answer)."""
    import ray
    from ray import serve

    from .app import build_app, model_gpus

    check_model(settings, model_ref)
    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    check_port(host, port)  # Ray would only say "failed to update the deployments ['Ingress']"
    if not ray.is_initialized():
        listen_directly_on(port)
    started_ray = ensure_ray()
    on_ray()
    try:
        model_gpus(settings.serve)  # serve.use_gpu against the GPUs Ray sees, before anything starts
    except ValueError as e:
        if started_ray:
            import ray

            ray.shutdown()
        raise ServeError(str(e)) from None
    warn_if_open(host)
    # With direct ingress the ingress replica takes `port` and Ray Serve's proxy (which still
    # starts, and would answer the same application more slowly) another, free one.
    proxy_port = free_port(host) if os.environ.get(DIRECT_PORTS[0]) == str(port) else port
    serve.start(http_options={"host": host, "port": proxy_port})
    serve.run(build_app(settings, model_ref), name="lensops", route_prefix="/", blocking=False)
    return ingress_url(host, port), started_ray


def listen_directly_on(port: int) -> None:
    """Before this process starts Ray: in Ray Serve's direct-ingress mode (lensops' default,
    `lensops.core.compute.RAY_ENVIRONMENT`), the ingress replica listens on exactly `port`. Ray
    hands ingress replicas ports from a range fixed when it starts; this range holds one port."""
    from lensops.core.compute import ray_environment

    ray_environment()
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1":
        return  # a cluster started elsewhere keeps its own settings; without direct ingress the proxy has `port`
    os.environ[DIRECT_PORTS[0]], os.environ[DIRECT_PORTS[1]] = str(port), str(port + 1)


def ingress_url(host: str, port: int, app: str = "lensops", wait_s: float = 10) -> str:
    """Where the application answers: its ingress replica's own port under direct ingress (which
    need not be `port` in a Ray started elsewhere), else the proxy's `port`."""
    import time

    from ray.serve.context import _get_global_client  # the controller's target groups: no public API yet

    deadline = time.monotonic() + wait_s
    while True:
        for group in _get_global_client().get_serve_details().get("target_groups", []):
            protocol = str(getattr(group.get("protocol"), "value", group.get("protocol")))
            if group.get("app_name") == app and protocol == "HTTP" and group.get("targets"):
                return f"http://{host}:{group['targets'][0]['port']}"
        if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1" or time.monotonic() > deadline:
            return f"http://{host}:{port}"
        time.sleep(0.2)


def check_port(host: str, port: int) -> None:
    """ServeError, naming the address, when nothing could listen on it now."""
    import errno
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                detail = f"{host}:{port} is in use: stop what listens there, or serve on another --port"
            else:
                detail = f"cannot listen on {host}:{port}: {e.strerror or e}"
            raise ServeError(detail) from None


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

    def take_signals() -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: stop_event.set())

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    take_signals()
    try:
        try:
            # ray.init installs its own SIGTERM handler (sys.exit(15)) as it begins: the signals
            # are taken back as soon as Ray is up, before the application can answer a request.
            url, started_ray = start(settings, model_ref, host=host, port=port, on_ray=take_signals)
        except SystemExit as e:  # a signal while Ray itself was starting: a stop like any other
            if e.code not in STOP_SIGNALS:
                raise
            import ray

            ray.shutdown()
            return
        try:
            on_ready(url)
            stop_event.wait()
        finally:
            stop(started_ray)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
