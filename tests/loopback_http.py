"""A loopback HTTP server for download tests: one file on 127.0.0.1, HTTP Range honoured (or
not), optionally dropping the first connection half way; it records the Range headers it got."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    """Serves `payload` at `self.url` (…/<name>) until `close()`."""

    def __init__(self, payload: bytes, honour_range: bool = True, truncate_first: bool = False,
                 name: str = "file.bin"):
        self.payload = payload
        self.honour_range = honour_range
        self.truncate_first = truncate_first  # the first response stops half way
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                body, start = server.payload, 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if server.truncate_first and len(server.ranges) == 1:
                    chunk = chunk[: len(chunk) // 2]
                    self.close_connection = True
                self.wfile.write(chunk)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
