"""SAM 3's tracker as a mask branch (preset ``sam3-tracker``, ``Sam3TrackerModel``) through the
transformers SAM family's generator: the same masks and scores as transformers'
``pipeline("mask-generation")``, and the preset offline end to end, reading the ``sam3``
preset's files (``facebook/sam3``'s layout, ``tests/fixtures/hub/facebook--sam3``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fiftyone_ssa.models import weights
from fiftyone_ssa.models.masks.branches import TransformersSamMaskBranch
from fiftyone_ssa.models.masks.transformers_sam import (
    TransformersSamGenerator,
    load_transformers_sam,
)
from tests.fixtures.hub_models import save_hub_layout_model
from tests.test_hub_layouts import install
from tests.test_transformers_sam import assert_same_masks, pipeline_reference, scene

REPO = "facebook/sam3"


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "models"
    monkeypatch.setenv("FIFTYONE_SSA_MODELS_DIR", str(directory))
    return directory


def test_same_masks_and_scores_as_the_transformers_pipeline(tmp_path):
    """A square image, one crop layer, no small-region step, every filter off and an NMS that
    keeps every distinct box: all 3 x 64 masks of 8 x 8 points compared."""
    model, image_processor = load_transformers_sam(
        save_hub_layout_model(REPO, tmp_path / "sam3"), torch.device("cpu")
    )
    assert type(model).__name__ == "Sam3TrackerModel"
    assert (image_processor.size.height, image_processor.size.width) == (1008, 1008)
    image = scene(96, 96)
    generator = TransformersSamGenerator(
        model,
        image_processor,
        points_per_side=8,
        points_per_batch=16,  # other batches than the reference's
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    out = generator.generate(image)
    assert len(out) == 3 * 64
    ref_masks, ref_scores = pipeline_reference(
        model,
        image_processor,
        image,
        points_per_crop=8,
        points_per_batch=24,
        crops_n_layers=0,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crops_nms_thresh=1.0,
    )
    assert_same_masks(out, ref_masks, ref_scores)


def test_preset_reads_the_sam3_files_and_runs_ssa_offline(models_dir, no_network, scene_dataset):
    from fiftyone_ssa import apply_ssa
    from fiftyone_ssa.models.registry import create_branch

    assert weights.local_dir("sam3-tracker") == weights.local_dir("sam3")
    assert weights.missing_preset_files("sam3-tracker") != []
    install(REPO, models_dir)  # the sam3 preset's directory, as `models download` fills it
    assert weights.missing_preset_files("sam3-tracker") == []
    branch = create_branch("sam3-tracker", kind="mask", device="cpu", points_per_side=4)
    assert isinstance(branch, TransformersSamMaskBranch) and branch.name == "sam3-tracker"
    dataset = scene_dataset(n=1)
    summary = apply_ssa(
        dataset,
        semantic_branch="field:coarse",
        mask_branch="sam3-tracker",
        device="cpu",
        progress=False,
        points_per_side=4,
        crop_n_layers=0,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    assert summary.num_labelled == 1, summary
    sample = dataset.first()
    assert sample.ssa.mask.shape == sample.coarse.mask.shape
    assert len(sample.ssa_masks.detections) > 0
    assert not no_network  # nothing was fetched
