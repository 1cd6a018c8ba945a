"""Test environment: a private FiftyOne database per run, no telemetry, shared tiny-model fixtures."""

import os
import sys
import uuid

# Must be set before fiftyone is imported anywhere.
os.environ["FIFTYONE_DATABASE_NAME"] = f"fiftyone_ssa_test_{uuid.uuid4().hex[:8]}"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.datasets",
    "tests.fixtures.sam",
    "tests.fixtures.sa1b",
    "tests.fixtures.engine",
    "tests.fixtures.network",
    "tests.fixtures.fake_hub",
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _private_database():
    """Drop this run's database when the session ends."""
    yield
    if "fiftyone" not in sys.modules:  # nothing touched the database
        return
    import fiftyone as fo
    import fiftyone.core.odm as foo

    fo.delete_non_persistent_datasets()
    try:
        foo.get_db_client().drop_database(os.environ["FIFTYONE_DATABASE_NAME"])
    except Exception:  # the database may already be gone
        pass


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_models_dir():
    """The CLI's ``--models-dir`` sets a process-wide override; undo it after each test."""
    yield
    from fiftyone_ssa.models import weights

    weights.set_models_dir(None)
