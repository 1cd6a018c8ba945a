"""The walkthrough notebook: committed without outputs, and runnable end to end.

The run uses the tiny random-weight models (``SSA_NOTEBOOK_TINY=1``, as where no real weights
exist) and never opens the App (``SSA_NOTEBOOK_HEADLESS=1``). The kernel is this interpreter,
so it shares the test run's private database (``FIFTYONE_DATABASE_NAME`` in the environment).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install -e '.[dev]')")

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "walkthrough.ipynb"
OUTPUT_FIELDS = ["ground_truth", "ssa", "ssa_masks", "ssa_branch", "ssa_engine"]


def _cells_with_outputs(nb) -> list[int]:
    """Indices of the code cells that carry outputs or an execution count."""
    return [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert [cell for cell in nb.cells if cell.cell_type == "code"], "no code cells"
    dirty = _cells_with_outputs(nb)
    assert not dirty, (
        f"cells {dirty} have outputs or execution counts: strip them before committing"
    )
    assert not [i for i, cell in enumerate(nb.cells) if cell.get("attachments")]
    assert "widgets" not in nb.metadata
    assert nb.metadata.kernelspec.name == "python3"


def _kernel_env(work_dir: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        # The "python3" kernel runs the first python on PATH: make it this environment's.
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "FIFTYONE_DATABASE_NAME": os.environ["FIFTYONE_DATABASE_NAME"],
        "SSA_NOTEBOOK_TINY": "1",
        "SSA_NOTEBOOK_HEADLESS": "1",
        "SSA_NOTEBOOK_DIR": str(work_dir),
        "FIFTYONE_SSA_MODELS_DIR": str(work_dir / "no-models"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
    }


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_walkthrough_runs_end_to_end_with_tiny_models(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install -e '.[dev]')")
    pytest.importorskip("ipykernel", reason="needs ipykernel (pip install -e '.[dev]')")
    import fiftyone as fo

    for key, value in _kernel_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    fo.list_datasets()  # connect first, so the kernel's exit leaves the dataset in place

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    assert len(_cells_with_outputs(nb)) == len([c for c in nb.cells if c.cell_type == "code"])
    text = _text_outputs(nb)
    assert text.count("TINY RANDOM-WEIGHT MODELS") == 2
    assert "Headless run: not opening the App" in text
    assert "SSA mIoU:" in text

    dataset = fo.load_dataset("ssa-walkthrough")
    assert len(dataset) == 4
    for field in OUTPUT_FIELDS:
        assert dataset.count(f"{field}") == 4, field
    assert dataset.count("ssa_masks.detections") > 4  # the blob SAM cuts several masks each
    assert dataset.count("ssa_engine.detections") > 4
    assert {"eval_ssa", "cmp_ssa", "cmp_ssa_branch"} <= set(dataset.list_evaluations())
    assert set(dataset.mask_targets["ssa"].values()) <= {"wall", "floor", "sky", "tree", "person"}
    miou = dataset.get_evaluation_info("eval_ssa")
    assert miou is not None
    assert all(v is None or 0.0 <= v <= 1.0 for v in dataset.values("cmp_ssa_miou"))
