"""SAM 2.1, EdgeTAM and SAM-HQ mask branches (transformers): the same masks and scores as
transformers' own automatic mask generation, and every preset offline end to end.

Models are random-weight, saved in their hub repositories' layouts
(``tests/fixtures/hub``, ``SOURCE.md`` there) and loaded by the code that loads real weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_ssa.models import weights
from fiftyone_ssa.models.masks.branches import TransformersSamMaskBranch, load_mask_branch
from fiftyone_ssa.models.masks.transformers_sam import (
    TransformersSamGenerator,
    load_transformers_sam,
)
from tests.fixtures.hub_models import preset_of, save_hub_layout_model

SAM2 = "facebook/sam2.1-hiera-tiny"
EDGETAM = "yonigozlan/EdgeTAM-hf"
SAM_HQ = "syscv-community/sam-hq-vit-base"
PRESET_REPOS = [
    "facebook/sam2.1-hiera-tiny",
    "facebook/sam2.1-hiera-small",
    "facebook/sam2.1-hiera-base-plus",
    "facebook/sam2.1-hiera-large",
    EDGETAM,
    "syscv-community/sam-hq-vit-base",
    "syscv-community/sam-hq-vit-huge",
]
# Per matched mask, the IoU of ours and the reference's (the reference thresholds logits that
# went through the same float32 ops in another batch shape: a boundary pixel may flip).
MIN_MASK_IOU = 0.99
SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def hub_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-sam")
    return {
        repo: save_hub_layout_model(repo, root / preset_of(repo))
        for repo in [SAM2, EDGETAM, SAM_HQ]
    }


@pytest.fixture(scope="module")
def loaded(hub_models):
    return {repo: load_transformers_sam(d, torch.device("cpu")) for repo, d in hub_models.items()}


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Flat regions with noise: random models give masks that differ from point to point."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (200, 180, 40)
    image[:, (2 * width) // 3 :] = (30, 60, 220)
    image[height // 3 : (3 * height) // 4, width // 4 : width // 2] = (250, 250, 250)
    return image + rng.integers(0, 25, image.shape, dtype=np.uint8)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) IoU of (N, H, W) and (M, H, W) bool masks (empty vs empty = 1)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def assert_same_masks(ours, ref_masks: torch.Tensor, ref_scores: torch.Tensor) -> None:
    """The same number of masks, the same scores, and every mask of each side has one of the
    other side with IoU >= MIN_MASK_IOU and the same score (random models give many duplicate
    masks, so the match is many-to-many)."""
    assert len(ours) == len(ref_masks) > 0
    torch.testing.assert_close(
        ours.predicted_iou.sort().values, ref_scores.sort().values, atol=SCORE_ATOL, rtol=0
    )
    same_score = (ours.predicted_iou[:, None] - ref_scores[None]).abs() <= SCORE_ATOL
    ok = (pairwise_iou(ours.masks, ref_masks) >= MIN_MASK_IOU) & same_score
    assert ok.any(1).all() and ok.any(0).all(), (ok.any(1).sum(), ok.any(0).sum(), len(ok))
    distinct = len({m.numpy().tobytes() for m in ref_masks})
    assert distinct > 1  # the comparison is not between copies of one mask


def pipeline_reference(model, image_processor, image: np.ndarray, **settings):
    from transformers import pipeline

    generator = pipeline("mask-generation", model=model, image_processor=image_processor)
    out = generator(Image.fromarray(image), **settings)
    masks = torch.stack([torch.as_tensor(np.asarray(m)) for m in out["masks"]]).bool()
    return masks, torch.as_tensor(out["scores"]).float()


@pytest.mark.parametrize("repo", [SAM2, EDGETAM, SAM_HQ])
@pytest.mark.parametrize("filtered", [False, True], ids=["all-masks", "filtered"])
def test_same_masks_and_scores_as_the_transformers_pipeline(repo, filtered, loaded):
    """On a square image transformers' pipeline places the grid as the model's processor does;
    with one crop layer and no small-region step the algorithms coincide. Unfiltered, with an
    NMS that keeps every distinct box, all 3 x 64 masks are compared; filtered, the thresholds
    sit inside the random model's score ranges (SAM 2's IoU scores are all near 0.5, SAM-HQ's near 0; an NMS at 0.7
    would leave one of its near-identical masks)."""
    model, image_processor = loaded[repo]
    image = scene(96, 96)

    def ours(**settings):
        generator = TransformersSamGenerator(
            model, image_processor, points_per_side=8, points_per_batch=16, **settings
        )  # other batches than the reference's
        return generator.generate(image)

    everything = ours(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    settings = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "nms": 1.0}
    if filtered:
        settings = {
            "pred_iou_thresh": everything.predicted_iou.quantile(0.75).item(),
            "stability_score_thresh": everything.stability_score.quantile(0.3).item(),
            "nms": 1.0,
        }
    ref_masks, ref_scores = pipeline_reference(
        model,
        image_processor,
        image,
        points_per_crop=8,
        points_per_batch=24,
        crops_n_layers=0,
        pred_iou_thresh=settings["pred_iou_thresh"],
        stability_score_thresh=settings["stability_score_thresh"],
        crops_nms_thresh=settings["nms"],
    )
    out = everything
    if filtered:
        assert settings["pred_iou_thresh"] > 0  # <= 0 turns the filter off
        out = ours(
            pred_iou_thresh=settings["pred_iou_thresh"],
            stability_score_thresh=settings["stability_score_thresh"],
            box_nms_thresh=settings["nms"],
        )
        assert (out.predicted_iou > settings["pred_iou_thresh"]).all()
        assert 0 < len(out) < len(everything)
    else:
        assert len(out) == 3 * 64
    assert_same_masks(out, ref_masks, ref_scores)


def processor_reference(model, processor_dir: Path, image: np.ndarray, points_per_side: int):
    """transformers' automatic generation with the points normalised by ``Sam2Processor``
    (the model's processor) and its image processor's post-processing, all masks kept."""
    from transformers import Sam2Processor
    from transformers.models.sam2.image_processing_sam2 import _build_point_grid

    processor = Sam2Processor.from_pretrained(processor_dir, local_files_only=True)
    h, w = image.shape[:2]
    points = _build_point_grid(points_per_side) * torch.tensor([w, h])
    inputs = processor(
        images=image,
        input_points=[[[p.tolist()] for p in points]],
        input_labels=[[[1] for _ in points]],
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    ip = processor.image_processor
    logits = ip.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)
    masks, scores, boxes = ip.filter_masks(
        logits[0], out.iou_scores[0], (h, w), torch.tensor([0, 0, w, h]), 0.0, 0.0
    )
    masks, scores, _, _ = ip.post_process_for_mask_generation(masks, scores, boxes, 1.0)
    return torch.stack(masks).bool(), scores.float()


def test_sam2_points_follow_the_processor_on_a_non_square_image(loaded, hub_models):
    model, image_processor = loaded[SAM2]
    image = scene(60, 100)
    ref_masks, ref_scores = processor_reference(model, hub_models[SAM2], image, 6)
    generator = TransformersSamGenerator(
        model,
        image_processor,
        points_per_side=6,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    out = generator.generate(image)
    assert_same_masks(out, ref_masks, ref_scores)


def test_crop_layers_and_small_regions_run_and_keep_masks_inside_the_image(loaded):
    model, image_processor = loaded[SAM2]
    image = scene(64, 80)
    generator = TransformersSamGenerator(
        model,
        image_processor,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=20,
    )
    out = generator.generate(image)
    assert out.masks.shape[1:] == (64, 80) and len(out) > 0
    assert (out.crop_boxes[:, 2] > out.crop_boxes[:, 0]).all()
    assert {tuple(b) for b in out.crop_boxes.tolist()} >= {(0.0, 0.0, 80.0, 64.0)}


def test_other_models_and_segment_anything_options_are_refused(loaded, hub_models):
    model, image_processor = loaded[SAM2]
    with pytest.raises(ValueError, match="Sam2Model"):
        TransformersSamGenerator(torch.nn.Linear(2, 2), image_processor)
    with pytest.raises(ValueError, match="`fast` is for segment-anything"):
        load_mask_branch(hub_models[SAM2], device="cpu", fast=False)
    with pytest.raises(ValueError, match="points_per_side"):
        TransformersSamMaskBranch(model, image_processor, points_per_side=0)


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "models"
    monkeypatch.setenv("FIFTYONE_SSA_MODELS_DIR", str(directory))
    return directory


@pytest.mark.parametrize("repo", PRESET_REPOS)
def test_mask_preset_in_hub_layout_runs_ssa_offline(repo, models_dir, no_network, scene_dataset):
    from fiftyone_ssa import apply_ssa
    from fiftyone_ssa.models.registry import create_branch

    preset = preset_of(repo)
    save_hub_layout_model(repo, models_dir / preset)
    assert weights.missing_preset_files(preset) == []
    branch = create_branch(preset, kind="mask", device="cpu", points_per_side=4)
    assert isinstance(branch, TransformersSamMaskBranch) and branch.name == preset
    dataset = scene_dataset(n=1)
    summary = apply_ssa(
        dataset,
        semantic_branch="field:coarse",
        mask_branch=preset,
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
    assert not no_network  # nothing was fetched
