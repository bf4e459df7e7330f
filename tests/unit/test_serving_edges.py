"""The server's edges that need no running server: the warning for an open address without a key, ports,
stop signals, the heavy lane's share."""

from __future__ import annotations

import pytest

from serving.server import warn_if_open


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [
        ("0.0.0.0", None, True),
        ("192.168.1.20", None, True),
        ("lensops.example", None, True),  # a name may resolve to anything
        ("0.0.0.0", "s3cret", False),
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
    ],
)
def test_an_open_address_without_a_key_is_warned_about(host, key, warned, monkeypatch, capsys):
    monkeypatch.delenv("LENSOPS_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("LENSOPS_API_KEY", key)
    assert warn_if_open(host) is warned
    assert ("without an API key" in capsys.readouterr().err) is warned


@pytest.mark.parametrize(
    ("environment", "direct"),
    [
        ({}, True),  # lensops' default: Ray Serve's direct ingress, on exactly the port asked for
        ({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}, False),  # through the proxy, which takes the port
        ({"RAY_ADDRESS": "10.0.0.5:6379"}, False),  # a cluster started elsewhere keeps its own ports
    ],
)
def test_a_ray_started_for_serving_hands_the_ingress_exactly_its_port(environment, direct, monkeypatch):
    import os

    from serving.server import DIRECT_PORTS, listen_directly_on

    for name in (*DIRECT_PORTS, "RAY_ADDRESS", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
        monkeypatch.setenv(name, "")  # recorded, so what the test sets is undone after it
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    listen_directly_on(8123)
    assert [os.environ.get(name) for name in DIRECT_PORTS] == (["8123", "8124"] if direct else [None, None])


def test_an_address_nothing_can_listen_on_is_named_before_ray_starts():
    import socket

    from serving.server import ServeError, check_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=rf"127\.0\.0\.1:{port} is in use"):
            check_port("127.0.0.1", port)
    check_port("127.0.0.1", port)  # free again
    with pytest.raises(ServeError, match=r"cannot listen on 192\.0\.2\.250"):  # an address this machine lacks
        check_port("192.0.2.250", port)


@pytest.mark.parametrize("moment", ["while Ray starts", "once the application answers"])
def test_a_stop_signal_at_any_moment_of_start_up_stops_the_server_cleanly(moment, monkeypatch):
    # ray.init installs a SIGTERM handler that exits with status 15 as it begins. The application
    # answers before `start` returns, so a client can be done and stop the server inside `start`.
    import os
    import signal
    import sys

    from serving import server

    seen = []

    def start(settings, model_ref=None, *, host=None, port=None, on_ray=lambda: None):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as ray.init does
        if moment == "while Ray starts":
            os.kill(os.getpid(), signal.SIGTERM)
        on_ray()
        os.kill(os.getpid(), signal.SIGTERM)  # the application answers; the client stops the server
        return "http://127.0.0.1:8000", True

    monkeypatch.setattr(server, "start", start)
    monkeypatch.setattr(server, "stop", lambda started_ray: seen.append(("stopped", started_ray)))
    before = signal.getsignal(signal.SIGTERM)
    server.run_foreground(None, on_ready=lambda url: seen.append(("ready", url)))  # returns: exit status 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert seen == ([] if moment == "while Ray starts" else [("ready", "http://127.0.0.1:8000"), ("stopped", True)])


@pytest.mark.parametrize("normal_traffic", [True, False])
def test_the_heavy_lane_answers_at_once_and_rests_only_while_normal_traffic_flows(normal_traffic):
    """With `serve.heavy_share` 0.25, an upload over 4 MP is answered as soon as it is decoded. While
    the light lane is decoding images, the next one waits out a rest three times that long, so the
    lane takes at most a quarter of a core; with no normal traffic to protect, it goes on at once."""
    import asyncio
    import time

    from lensops.core.settings import PreprocessingSpec
    from serving.preprocess import Preprocess
    from tests.hostile import flat_png

    limits = {"formats": ["PNG"], "max_bytes": 10**7, "max_pixels": 10**8, "max_frames": 10, "max_scans": 100}
    decode = {"workers": 1, "timeout_s": 30, "memory_mb": 512, "heavy_share": 0.25}
    lane, body, spec = Preprocess.func_or_class(limits, decode), flat_png(2100, 2000), PreprocessingSpec(size=16)

    async def two_uploads():
        if normal_traffic:
            assert (await lane._prepare(flat_png(64, 64), spec))["pixels"].shape == (16, 16, 3)  # the light lane
        started = time.monotonic()
        first = await lane._heavy(body, spec)
        answered = time.monotonic() - started  # its decode, without the rest
        await asyncio.sleep(0.05)
        resting = lane.heavy_turn.locked()
        second = await lane._heavy(body, spec)
        return first, second, answered, resting, time.monotonic() - started

    try:
        first, second, answered, resting, both = asyncio.run(two_uploads())
    finally:
        lane.pool.close()
        lane.heavy.close()
    assert first["pixels"].shape == second["pixels"].shape == (16, 16, 3)
    assert resting is normal_traffic
    if normal_traffic:
        # The first decode, its rest of three times as long, then the second decode; had the rest
        # delayed the first answer instead, both would take about twice the first.
        assert both >= 3 * answered, (answered, both)
