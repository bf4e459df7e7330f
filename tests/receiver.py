"""A real local HTTP receiver for webhook tests: records every POST, can fail the first few."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any


class Receiver:
    """Binds 127.0.0.1 on a free port; answers `fail_first` POSTs with `fail_status`, then 200."""

    def __init__(self, *, fail_first: int = 0, fail_status: int = 500):
        self.calls: list[dict[str, Any]] = []  # every POST, failed ones included: {"status", "body"}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = fail_status if len(receiver.calls) < fail_first else 200
                receiver.calls.append({"status": status, "body": json.loads(body or b"null")})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies that were answered 200, in order."""
        return [call["body"] for call in self.calls if call["status"] == 200]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
