"""A real Label Studio server in a subprocess on loopback, from ``.venv-label-studio``
(``scripts/setup_label_studio.sh``): its own virtual environment, a temporary data directory,
an admin user with a known legacy API token."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from tests.e2e.app_server import ADDRESS, _stop, _wait_until_serving, free_port

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-label-studio"
EXECUTABLE = VENV / "bin" / "label-studio"
PYTHON = VENV / "bin" / "python"
ENABLE_LEGACY_TOKENS = REPO / "scripts" / "label_studio_legacy_tokens.py"


def missing_reason() -> str | None:
    """Why the server cannot be run here, or None."""
    if not EXECUTABLE.exists():
        return f"Label Studio is not installed ({EXECUTABLE}; run scripts/setup_label_studio.sh)"
    try:
        import label_studio_sdk  # noqa: F401
    except ImportError:
        return (
            "label-studio-sdk is not installed in this environment (scripts/setup_label_studio.sh)"
        )
    return None


class LabelStudio(NamedTuple):
    """A running server: its URL, the admin's legacy API key, and the environment its
    commands need (``LABEL_STUDIO_BASE_DATA_DIR``...)."""

    url: str
    api_key: str
    env: dict

    def enable_legacy_tokens(self) -> None:
        """Runs ``scripts/label_studio_legacy_tokens.py`` on the server's data directory."""
        subprocess.run(
            [str(PYTHON), str(ENABLE_LEGACY_TOKENS)],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )


@contextmanager
def label_studio_server(data_dir: Path, timeout: float = 180.0) -> Iterator[LabelStudio]:
    """Runs ``label-studio start`` on a free loopback port, with legacy API tokens on.

    Raises:
        RuntimeError: the server did not start (its log is in ``data_dir/server.log``).
    """
    port = free_port()
    url = f"http://{ADDRESS}:{port}"
    token = secrets.token_hex(20)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FIFTYONE_", "PYTHON", "VIRTUAL"))
    }
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME="reviewer@example.com",
        LABEL_STUDIO_PASSWORD=secrets.token_hex(8),
        LABEL_STUDIO_USER_TOKEN=token,
        LATEST_VERSION_CHECK="false",  # no call to the package index at start
        COLLECT_ANALYTICS="false",
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "server.log", "wb") as log:
        process = subprocess.Popen(
            [
                str(EXECUTABLE),
                "start",
                "--no-browser",
                "--internal-host",
                ADDRESS,
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
        try:
            _wait_until_serving(url + "/health", process, timeout)
            server = LabelStudio(url, token, env)
            server.enable_legacy_tokens()
            yield server
        finally:
            _stop(process)
