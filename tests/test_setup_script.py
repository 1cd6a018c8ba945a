"""scripts/setup.sh fails loudly: every exit names the step that failed and what to do."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"


def run_setup(env_overrides: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIFTYONE_DATABASE")}
    env.update(env_overrides)
    return subprocess.run(
        ["bash", str(SETUP)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def installed_venv(tmp_path: Path) -> Path:
    """A virtual-environment directory whose python is this one and whose install stamp is current.

    setup.sh then skips the package install (as on a re-run) and goes on to its checks.
    """
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + SETUP.read_bytes())
    (venv / ".ssa-install-stamp").write_text(digest.hexdigest() + "\n")
    return venv


@pytest.mark.parametrize("python", ["/nonexistent/python3", "false"])
def test_broken_python_fails_with_the_step_named(tmp_path, python):
    result = run_setup({"PYTHON": python, "SSA_VENV": str(tmp_path / "venv")})
    assert result.returncode != 0
    assert "[setup] FAILED" in result.stderr
    assert "checking the Python interpreter" in result.stderr
    assert "set PYTHON to" in result.stderr
    assert not (tmp_path / "venv").exists()  # nothing half-made


def test_failing_install_step_is_named_by_the_error_trap(tmp_path):
    result = run_setup(
        {
            "PYTHON": sys.executable,
            "SSA_VENV": str(tmp_path / "venv"),
            "SSA_TORCH_SPEC": str(tmp_path / "no-such-torch.whl"),
            "PIP_NO_INDEX": "1",
        }
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("[setup] FAILED (exit ")
    assert "while installing torch" in last
    assert "SSA_TORCH_SPEC" in last
    assert not (tmp_path / "venv" / ".ssa-install-stamp").exists()


def test_users_database_uri_is_checked_and_left_alone(tmp_path):
    venv = installed_venv(tmp_path)
    # Nothing listens on port 9 of the loopback: the user's MongoDB is down.
    uri = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1000&connectTimeoutMS=1000"
    result = run_setup({"SSA_VENV": str(venv), "FIFTYONE_DATABASE_URI": uri})
    assert result.returncode != 0
    assert "using your MongoDB at FIFTYONE_DATABASE_URI" in result.stderr
    assert "FAILED: FiftyOne cannot use the MongoDB at FIFTYONE_DATABASE_URI" in result.stderr
    assert "installing the mongod" not in result.stderr  # the embedded database is left alone


def test_rerun_with_a_working_database_changes_nothing(tmp_path):
    venv = installed_venv(tmp_path)
    (venv / ".ssa-chromium-stamp").write_text("skip\n")  # no apt-get from a test
    result = run_setup({"SSA_VENV": str(venv)})
    assert result.returncode == 0, result.stderr
    assert "installing" not in result.stderr
    assert "[setup] database: " in result.stderr
    assert "[setup] environment ready" in result.stderr
