"""Look at the built site in headless Chromium: screenshot a few pages and dump the rendered navigation.

Not part of CI (it needs Debian's `chromium` package: `apt-get install -y chromium`). Serves the site
folder with `python -m http.server` on a free local port, then runs Chromium once per page.

    .venv/bin/python docs/scripts/screenshots.py site /tmp/shots
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PAGES = ("", "getting-started/", "tutorials/custom-reward-and-dataset/", "concepts/formats/", "concepts/aqn/",
         "recipes/", "reference/quantizers/", "reference/api/qerl.registry/", "benchmarks/")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def chromium() -> str:
    """The Chromium binary, or a RuntimeError that says how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("headless Chromium is not installed: apt-get install -y chromium")
    return found


@contextlib.contextmanager
def serve(folder: Path):
    """`folder` over HTTP on a free local port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def run_chromium(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], check=False,
                              capture_output=True, text=True, timeout=timeout)


def take(site: Path, out: Path, pages=PAGES, size: str = "1280,900") -> list[Path]:
    """One PNG per page (1280x900 by default) under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with serve(site) as base:
        for page in pages:
            path = out / ((page.strip("/").replace("/", "_") or "home") + ".png")
            run_chromium([f"--screenshot={path}", f"--window-size={size}", base + page])
            if not path.is_file():
                raise RuntimeError(f"Chromium wrote no screenshot of {base + page}")
            shots.append(path)
    return shots


def rendered_nav(site: Path, page: str = "") -> str:
    """The DOM of a page after Chromium ran its scripts (to check the navigation is there)."""
    with serve(site) as base:
        return run_chromium(["--dump-dom", base + page]).stdout


if __name__ == "__main__":
    site_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "site")
    out_dir = Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="qerl-shots-"))
    for shot in take(site_dir, out_dir):
        print(shot)
    dom = rendered_nav(site_dir)
    tabs = [t for t in ("Getting started", "Tutorials", "Concepts", "Recipes", "Reference", "Benchmarks") if t in dom]
    print("navigation tabs rendered:", ", ".join(tabs))
