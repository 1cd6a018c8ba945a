"""SSA end to end with real model classes: tiny SAM + tiny Segformer loaded from disk."""

import fiftyone as fo
import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_ssa import apply_ssa
from fiftyone_ssa.models.masks import sam_loader
from tests.fixtures.models import TINY_CLASSES

TINY_SAM = {
    "encoder_embed_dim": 32,
    "encoder_depth": 1,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [0],
    "decoder_mlp_dim": 64,
    "iou_head_hidden_dim": 32,
}
# Random weights give low scores: keep every candidate so the run has masks to vote on.
PERMISSIVE = {
    "points_per_side": 4,
    "crop_n_layers": 0,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "min_mask_region_area": 0,
}


@pytest.fixture(scope="module")
def tiny_sam_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-sam")
    model = sam_loader.build_sam(TINY_SAM)
    sam_loader.save_sam(model, directory, TINY_SAM)
    return directory


@pytest.fixture
def photo_dataset(make_dataset, tmp_path):
    rng = np.random.default_rng(0)
    ds = make_dataset()
    for i, (h, w) in enumerate([(48, 64), (40, 30)]):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        ds.add_sample(fo.Sample(filepath=str(path)))
    return ds


def test_sam_and_segformer_end_to_end(photo_dataset, tiny_sam_checkpoint, tiny_segformer_dir):
    summary = apply_ssa(
        photo_dataset,
        semantic_branch=str(tiny_segformer_dir),
        mask_branch=str(tiny_sam_checkpoint),
        device="cpu",
        batch_size=2,
        **PERMISSIVE,
    )
    assert summary.num_labelled == 2 and not summary.failures
    assert photo_dataset.mask_targets["ssa"] == dict(enumerate(TINY_CLASSES))
    for sample in photo_dataset:
        h, w = sample.ssa_branch.mask.shape
        assert sample.ssa.mask.shape == (h, w)
        dets = sample.ssa_masks.detections
        assert len(dets) > 0
        for det in dets:
            assert det.label in TINY_CLASSES
            assert 0.0 <= det.predicted_iou and 0.0 <= det.stability_score
            assert det.class_proposals[0] == det.label
        # SSA only changes pixels that some mask covers
        covered = np.zeros((h, w), dtype=bool)
        for det in dets:
            full = det.to_segmentation(frame_size=(w, h), target=1).mask.astype(bool)
            covered |= full
        np.testing.assert_array_equal(sample.ssa.mask[~covered], sample.ssa_branch.mask[~covered])


def test_segment_anything_generator_path(photo_dataset, tiny_sam_checkpoint):
    """The mask branch can use segment-anything's own generator (fast=False)."""
    from fiftyone_ssa.models.masks.branches import load_sam_branch

    branch = load_sam_branch(tiny_sam_checkpoint, device="cpu", fast=False, **PERMISSIVE)
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    mask_set = branch.generate(image)
    assert mask_set.masks.shape[1:] == (40, 30) and len(mask_set) > 0


def test_bad_mask_option_is_refused_before_loading(photo_dataset, tiny_sam_checkpoint):
    photo_dataset.add_sample_field("x", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    with pytest.raises(ValueError, match="points_per_sid"):
        apply_ssa(
            photo_dataset,
            semantic_branch="field:x",
            mask_branch=str(tiny_sam_checkpoint),
            points_per_sid=3,
        )


def test_models_receive_upright_rgb(make_dataset, tmp_path):
    """Images reach the semantic branch as RGB (not BGR), EXIF-rotated as the App shows them."""
    red = np.zeros((20, 30, 3), dtype=np.uint8)
    red[..., 0] = 255
    rgb_path = tmp_path / "red.png"
    Image.fromarray(red).save(rgb_path)
    rotated_path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(red).save(rotated_path, exif=exif.tobytes(), quality=95)
    grey_path = tmp_path / "grey16.png"
    Image.fromarray(np.full((5, 7), 65535, dtype=np.uint16)).save(grey_path)

    seen = {}

    def recorder(image):
        seen[image.shape] = image
        return np.zeros(image.shape[:2], dtype=np.int64), {0: "thing"}

    ds = make_dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in (rgb_path, rotated_path, grey_path)])
    # No masks at all: an empty Detections field as the mask branch.
    ds.set_values("masks", [fo.Detections()] * 3)
    summary = apply_ssa(ds, semantic_branch=recorder, mask_branch="field:masks", device="cpu")
    assert summary.num_labelled == 3
    assert (20, 30, 3) in seen and (30, 20, 3) in seen
    assert seen[(20, 30, 3)][..., 0].min() == 255 and seen[(20, 30, 3)][..., 2].max() == 0
    assert seen[(30, 20, 3)][..., 0].mean() > 240  # still red after JPEG and rotation
    assert seen[(5, 7, 3)].min() == 255  # 16-bit white scaled, not clipped to 255 by accident
    assert ds.first().ssa.mask.shape == (20, 30)
