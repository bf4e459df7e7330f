"""The server's edges that need no running server: the warning for an open address without a key."""

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
