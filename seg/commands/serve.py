"""Serve a web export (`seg-export ... export.format=web`) on localhost, cross-origin isolated.

    seg-serve outputs/.../best-web-int8                 # http://localhost:8000/
    seg-serve outputs/.../best-web-int8 --port 0        # any free port
    seg-serve DIR --host 0.0.0.0 --port 8080            # other machines too (see below)

From a checkout: `python tools/serve.py DIR`, the same. Prints the page's address and serves until
Ctrl-C. Every response carries the headers that make the page cross-origin isolated
(Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy: require-corp), which
WebAssembly threads need. Browsers give a camera and WebAssembly threads only to secure pages:
localhost is one; another machine needs https in front of this server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from seg.cli import one_line_errors
from seg.serve import make_server, server_url


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="the folder that export.format=web wrote (index.html, model.onnx, ...)")
    ap.add_argument("--port", type=int, default=8000, help="port (0: any free one; default 8000)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--verbose", action="store_true", help="log every request")
    args = ap.parse_args(argv)
    server = make_server(args.folder, args.host, args.port, verbose=args.verbose)
    print(f"serving {args.folder} at {server_url(server)} (cross-origin isolated; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


def run() -> None:
    """`seg-serve`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
