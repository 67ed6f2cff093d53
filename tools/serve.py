"""Serve a web export (`python tools/export.py ... export.format=web`) on localhost, cross-origin isolated.

    python tools/serve.py outputs/.../best-web-int8                 # http://localhost:8000/
    python tools/serve.py outputs/.../best-web-int8 --port 0        # any free port

Prints the page's address and serves until Ctrl-C, with the headers that WebAssembly threads need
(Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy: require-corp).

The same as `seg-serve ...` once the package is installed (`pip install .`); the code is in
seg/commands/serve.py.
"""

from seg.commands.serve import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
