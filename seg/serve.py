"""The local server of a web export (`python tools/serve.py DIR`, seg/export/web.py writes the folder):
static files with the headers that make the page cross-origin isolated, which WebAssembly threads
need (SharedArrayBuffer), and the MIME types the page loads (.mjs, .wasm). Standard library only, so
the command starts at once."""

from __future__ import annotations

import contextlib
import os
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

from seg.errors import SegError

# The headers a cross-origin isolated page needs (SharedArrayBuffer, hence WebAssembly threads).
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class ServeError(SegError):
    """The folder is not a web export, or the address cannot be served."""


class IsolatedHandler(SimpleHTTPRequestHandler):
    """Static files with the cross-origin isolation headers, the MIME types the page needs, no
    caching (a re-export shows at once), and no request log unless `verbose`."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
        ".onnx": "application/octet-stream",
        ".css": "text/css",
        ".html": "text/html; charset=utf-8",
    }
    verbose = False

    def end_headers(self) -> None:
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.verbose:
            super().log_message(format, *args)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        if code == HTTPStatus.NOT_FOUND and self.path.split("?")[0] in ("/favicon.ico",):
            self.send_response(HTTPStatus.NO_CONTENT)  # no icon: not an error worth a console line
            self.end_headers()
            return
        super().send_error(code, message, explain)


def make_server(
    folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False, app: bool = True
):
    """A threading HTTP server for `folder` (port 0: any free port); `server_url(server)` is its
    address. `app`: the folder must be a web export (index.html at its top). ServeError otherwise,
    or when the address is taken."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ServeError(f"{folder} is not a folder: give the folder that tools/export.py export.format=web wrote")
    if app and not (folder / "index.html").is_file():
        raise ServeError(f"{folder} has no index.html: give the folder that tools/export.py export.format=web wrote")
    handler = type("Handler", (IsolatedHandler,), {"verbose": verbose})
    try:
        server = ThreadingHTTPServer((host, port), partial(handler, directory=str(folder)))
    except OSError as exc:
        raise ServeError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose another --port)") from None
    server.daemon_threads = True
    return server


def server_url(server) -> str:
    host, port = server.server_address[:2]
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "::1") else host
    return f"http://{shown}:{port}/"


@contextlib.contextmanager
def serving(folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, app: bool = True) -> Iterator[str]:
    """`folder` served in a background thread for the duration; yields its URL (tests, benchmarks).
    `app=False`: any folder (e.g. one holding several exports)."""
    server = make_server(folder, host, port, app=app)
    thread = threading.Thread(target=server.serve_forever, name="seg-web-server", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
