"""The FiftyOne App server in a subprocess on loopback, as ``fiftyone app launch`` runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ADDRESS = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ADDRESS, 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the App server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise RuntimeError(f"the App server did not answer at {url} within {timeout:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # hypercorn shuts down cleanly on Ctrl+C
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@contextmanager
def app_server(env: Mapping[str, str], log_path: Path, timeout: float = 60.0) -> Iterator[str]:
    """Runs ``fiftyone.server.main`` on a free loopback port; yields its base URL.

    Args:
        env: the server's whole environment; it must name the database
            (``FIFTYONE_DATABASE_NAME``) and plugins directory (``FIFTYONE_PLUGINS_DIR``) the
            test uses, since the server is a separate process.
        log_path: where the server's stdout and stderr go.
        timeout: seconds to wait for the server to answer.
    """
    port = free_port()
    url = f"http://{ADDRESS}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fiftyone.server.main",
                "--address",
                ADDRESS,
                "--port",
                str(port),
            ],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=os.getcwd(),
        )
        try:
            _wait_until_serving(url + "/", process, timeout)
            yield url
        finally:
            _stop(process)
