"""FastMaskGenerator gives segment-anything's masks: compared with SamAutomaticMaskGenerator."""

import numpy as np
import pytest
import torch

from fiftyone_ssa.core.mask_set import MaskSet
from fiftyone_ssa.models.masks.branches import SamMaskBranch
from fiftyone_ssa.models.masks.fast_generator import (
    FastMaskGenerator,
    SamMaskSet,
    _boxes_from_projections,
    _upsample_logits,
)
from fiftyone_ssa.models.masks.sam_loader import build_sam, load_sam_dir
from fiftyone_ssa.models.masks.small_regions import (
    postprocess_small_regions,
    remove_small_regions_in_box,
)
from tests.fixtures.sam import blob_scene, make_blob_segmenter

NO_THRESHOLDS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def blob_sam(blob_sam_dir):
    return load_sam_dir(blob_sam_dir)


def reference_records(model, image, **settings) -> dict:
    """segment-anything's generator output as arrays (boxes XYXY inclusive)."""
    from segment_anything import SamAutomaticMaskGenerator

    records = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **settings).generate(
        image
    )
    xywh = np.array([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4)
    crop = np.array([r["crop_box"] for r in records], dtype=np.float64).reshape(-1, 4)
    return {
        "masks": np.stack([r["segmentation"] for r in records]).astype(bool)
        if records
        else np.zeros((0, *image.shape[:2]), bool),
        "predicted_iou": np.array([r["predicted_iou"] for r in records]),
        "stability_score": np.array([r["stability_score"] for r in records]),
        "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
        "point_coords": np.array([r["point_coords"][0] for r in records]).reshape(-1, 2),
        "crop_boxes": np.concatenate([crop[:, :2], crop[:, :2] + crop[:, 2:]], 1),
        "area": np.array([r["area"] for r in records]),
    }


def match_masks(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference mask, the best-IoU output mask and that IoU (empty vs empty = 1)."""
    a = torch.as_tensor(ref).flatten(1).float()
    b = torch.as_tensor(out).flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    best, index = iou.max(1)
    return index.numpy(), best.numpy()


def assert_same_as_segment_anything(
    ref: dict, out: SamMaskSet, same_order: bool, atol: float = 1e-5
):
    assert isinstance(out, MaskSet)
    n = len(ref["masks"])
    assert len(out) == n
    if n == 0:
        return
    index, best = match_masks(ref["masks"], out.masks.cpu().numpy())
    assert np.all(best >= 0.99), f"unmatched masks: IoUs {np.sort(best)[:5]}"
    assert len(set(index.tolist())) == n, "the match is not one to one"
    if same_order:
        np.testing.assert_array_equal(index, np.arange(n))
    np.testing.assert_allclose(
        out.predicted_iou.cpu().numpy()[index], ref["predicted_iou"], atol=atol
    )
    np.testing.assert_allclose(
        out.stability_score.cpu().numpy()[index], ref["stability_score"], atol=atol, equal_nan=True
    )
    np.testing.assert_allclose(
        out.point_coords.cpu().numpy()[index], ref["point_coords"], atol=1e-3
    )
    np.testing.assert_array_equal(out.crop_boxes.cpu().numpy()[index], ref["crop_boxes"])
    box_error = np.abs(out.boxes.cpu().numpy()[index] - ref["boxes"])
    if same_order:  # same device: the same boxes
        assert box_error.max() == 0
    else:  # rounding may move a boundary pixel
        assert np.mean(box_error == 0) > 0.95 and box_error.max() <= 2
    np.testing.assert_allclose(out.areas.cpu().numpy()[index], ref["area"], rtol=0.01)


CASES = {
    # (image (height, width, seed), settings, least number of masks segment-anything returns)
    "wide-no-thresholds": ((96, 128, 1), {"points_per_side": 6, **NO_THRESHOLDS}, 30),
    "tall-thresholds-small-regions": (
        (128, 88, 2),
        {
            "points_per_side": 6,
            "pred_iou_thresh": 0.3,
            "stability_score_thresh": 0.7,
            "min_mask_region_area": 40,
        },
        10,
    ),
    "square-crops-small-regions": (
        (100, 100, 3),
        {
            "points_per_side": 4,
            "crop_n_layers": 1,
            "crop_n_points_downscale_factor": 2,
            "min_mask_region_area": 30,
            **NO_THRESHOLDS,
        },
        20,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_masks_as_segment_anything(blob_sam, case):
    (height, width, seed), settings, minimum = CASES[case]
    image = blob_scene(height, width, seed=seed)
    ref = reference_records(blob_sam, image, **settings)
    assert len(ref["masks"]) >= minimum  # a comparison of many distinct masks
    out = FastMaskGenerator(blob_sam, points_per_batch=40, **settings).generate(image)
    assert out.masks.shape[1:] == (height, width) and out.masks.dtype == torch.bool
    assert_same_as_segment_anything(ref, out, same_order=True)
    if settings.get("crop_n_layers"):
        assert len(np.unique(ref["crop_boxes"], axis=0)) > 1  # masks from several crops kept
    if settings.get("pred_iou_thresh"):
        assert out.predicted_iou.min() > settings["pred_iou_thresh"]
        assert out.stability_score.min() >= settings["stability_score_thresh"]


def test_small_region_removal_changes_masks(blob_sam):
    image = blob_scene(100, 100, seed=3)
    plain = FastMaskGenerator(blob_sam, points_per_side=4, **NO_THRESHOLDS).generate(image)
    cleaned = FastMaskGenerator(
        blob_sam, points_per_side=4, min_mask_region_area=30, **NO_THRESHOLDS
    ).generate(image)
    index, best = match_masks(cleaned.masks.numpy(), plain.masks.numpy())
    assert (best < 1).sum() >= 3  # some masks lost islands or gained holes


def test_nothing_passes_the_filters(blob_sam):
    image = blob_scene(64, 80, seed=4)
    out = FastMaskGenerator(blob_sam, points_per_side=2, pred_iou_thresh=0.999).generate(image)
    assert len(out) == 0
    assert out.masks.shape == (0, 64, 80)
    assert out.boxes.shape == (0, 4) and out.crop_boxes.shape == (0, 4)


@pytest.mark.parametrize("size", [(1, 64), (48, 1), (1, 1)])
def test_one_pixel_high_or_wide_image_with_crop_layers(blob_sam, monkeypatch, size):
    """SSA's default crop_n_layers=1 on an image one pixel high or wide: segment-anything's
    crop grid holds crops of no pixels, on which the generator failed ("height and width must
    be > 0"). They hold no mask: the result is segment-anything's on the other crops (its own
    generator, given the same crops without the empty ones)."""
    import segment_anything.automatic_mask_generator as amg

    settings = {
        "points_per_side": 4,
        "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2,
        "min_mask_region_area": 3,
        **NO_THRESHOLDS,
    }
    image = blob_scene(*size, seed=1)
    out = FastMaskGenerator(blob_sam, points_per_batch=40, **settings).generate(image)
    assert out.masks.shape[1:] == size and len(out) > 0

    original = amg.generate_crop_boxes

    def non_empty_crops(*args):
        boxes, layers = original(*args)
        keep = [i for i, (x0, y0, x1, y1) in enumerate(boxes) if x1 > x0 and y1 > y0]
        return [boxes[i] for i in keep], [layers[i] for i in keep]

    monkeypatch.setattr(amg, "generate_crop_boxes", non_empty_crops)
    ref = reference_records(blob_sam, image, **settings)
    assert len(out) == len(ref["masks"])
    np.testing.assert_array_equal(out.masks.numpy(), ref["masks"])
    np.testing.assert_array_equal(out.crop_boxes.numpy(), ref["crop_boxes"])
    np.testing.assert_allclose(out.predicted_iou.numpy(), ref["predicted_iou"], atol=1e-5)


@pytest.mark.parametrize("size", [(1, 3000), (2500, 1)])
def test_image_too_elongated_for_sam_input_frame(blob_sam, monkeypatch, size):
    """An image whose short side SAM's resize to 1024 rounds to 0 pixels: segment-anything
    fails ("height and width must be > 0"), and so did this generator. SAM sees nothing of it:
    no masks from that crop; the smaller crops of a crop layer still give theirs, as
    segment-anything's generator does when given only those crops."""
    import segment_anything.automatic_mask_generator as amg
    from segment_anything.utils.transforms import ResizeLongestSide

    image = blob_scene(*size, seed=1)
    out = FastMaskGenerator(blob_sam, points_per_side=4, **NO_THRESHOLDS).generate(image)
    assert len(out) == 0 and out.masks.shape == (0, *size)
    assert out.boxes.shape == (0, 4) and out.point_coords.shape == (0, 2)

    settings = {"points_per_side": 4, "crop_n_layers": 1, **NO_THRESHOLDS}
    out = FastMaskGenerator(blob_sam, **settings).generate(image)
    assert len(out) > 0
    original = amg.generate_crop_boxes

    def visible_crops(*args):
        boxes, layers = original(*args)
        keep = [
            i
            for i, (x0, y0, x1, y1) in enumerate(boxes)
            if min(ResizeLongestSide.get_preprocess_shape(y1 - y0, x1 - x0, 1024)) > 0
        ]
        assert 0 < len(keep) < len(boxes)
        return [boxes[i] for i in keep], [layers[i] for i in keep]

    monkeypatch.setattr(amg, "generate_crop_boxes", visible_crops)
    ref = reference_records(blob_sam, image, **settings)
    np.testing.assert_array_equal(out.masks.numpy(), ref["masks"])
    np.testing.assert_array_equal(out.crop_boxes.numpy(), ref["crop_boxes"])
    np.testing.assert_allclose(out.predicted_iou.numpy(), ref["predicted_iou"], atol=1e-5)


def test_point_grids_and_bfloat16_autocast(blob_sam):
    from segment_anything.utils.amg import build_point_grid

    image = blob_scene(64, 96, seed=5)
    grid = [build_point_grid(4)]
    ref = FastMaskGenerator(blob_sam, points_per_side=4, **NO_THRESHOLDS).generate(image)
    out = FastMaskGenerator(blob_sam, points_per_side=None, point_grids=grid, **NO_THRESHOLDS)
    assert_same_as_segment_anything(
        {
            "masks": ref.masks.numpy(),
            "predicted_iou": ref.predicted_iou.numpy(),
            "stability_score": ref.stability_score.numpy(),
            "boxes": ref.boxes.numpy(),
            "point_coords": ref.point_coords.numpy(),
            "crop_boxes": ref.crop_boxes.numpy(),
            "area": ref.areas.numpy(),
        },
        out.generate(image),
        same_order=True,
    )
    bf16 = FastMaskGenerator(
        blob_sam, points_per_side=4, dtype=torch.bfloat16, **NO_THRESHOLDS
    ).generate(image)
    assert bf16.masks.dtype == torch.bool and bf16.predicted_iou.dtype == torch.float32
    _, best = match_masks(ref.masks.numpy(), bf16.masks.numpy())
    assert np.mean(best > 0.8) > 0.7


def test_invalid_arguments(blob_sam):
    with pytest.raises(ValueError, match="exactly one of `points_per_side` and `point_grids`"):
        FastMaskGenerator(blob_sam, points_per_side=None)
    with pytest.raises(ValueError, match="2 point grids"):
        FastMaskGenerator(
            blob_sam, points_per_side=None, point_grids=[np.zeros((1, 2))], crop_n_layers=1
        )
    with pytest.raises(ValueError, match="points_per_batch"):
        FastMaskGenerator(blob_sam, points_per_batch=0)
    # int(3 / 2**2) = 0 points per side in layer 2 (segment-anything: ZeroDivisionError).
    with pytest.raises(ValueError, match=r"at least one point per side.*3 / 2 \*\* 2"):
        FastMaskGenerator(
            blob_sam, points_per_side=3, crop_n_layers=2, crop_n_points_downscale_factor=2
        )
    with pytest.raises(ValueError, match="crop_n_points_downscale_factor"):
        FastMaskGenerator(blob_sam, points_per_side=3, crop_n_points_downscale_factor=0)
    for fast in (True, False):  # SSA's crop layer (downscale 2) with one point per side
        with pytest.raises(ValueError, match="at least one point per side"):
            SamMaskBranch(blob_sam, fast=fast, points_per_side=1)
    generator = FastMaskGenerator(blob_sam, points_per_side=2)
    with pytest.raises(ValueError, match="uint8"):
        generator.generate(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        generator.generate(np.zeros((8, 8), np.uint8))


def test_segment_anything_path_default_batch_and_bad_images(blob_sam):
    """SamMaskBranch(fast=False): points_per_batch=None (accepted as "the default") failed in
    segment-anything with a TypeError, and an RGBA image with an AssertionError."""
    image = blob_scene(64, 80, seed=4)
    settings = {
        "points_per_side": 3,
        "crop_n_layers": 0,
        "min_mask_region_area": 0,
        **NO_THRESHOLDS,
    }
    branch = SamMaskBranch(blob_sam, fast=False, points_per_batch=None, **settings)
    ref = reference_records(blob_sam, image, **settings)
    out = branch.generate(image)
    np.testing.assert_array_equal(out.masks.numpy(), ref["masks"])
    for fast in (True, False):
        branch = SamMaskBranch(blob_sam, fast=fast, **settings)
        with pytest.raises(
            ValueError, match=r"\(H, W, 3\) uint8 array, but got ndarray \(8, 8, 4\)"
        ):
            branch.generate(np.zeros((8, 8, 4), np.uint8))


@pytest.mark.parametrize(
    ("input_size", "size"),
    [((768, 1024), (96, 128)), ((1024, 683), (1500, 1000)), ((1024, 1024), (50, 50))],
)
def test_upsampling_equals_sam_postprocess(blob_sam, input_size, size):
    low_res = torch.randn(3, 256, 256, generator=torch.Generator().manual_seed(1))
    expected = blob_sam.postprocess_masks(low_res[None], input_size, size)[0]
    assert torch.equal(_upsample_logits(low_res, input_size, size, 1024), expected)


def test_boxes_equal_segment_anything():
    from segment_anything.utils.amg import batched_mask_to_box

    rng = np.random.default_rng(0)
    masks = torch.as_tensor(rng.random((50, 23, 31)) < rng.random((50, 1, 1)) ** 4)
    masks[:4] = False  # empty masks give zeros
    masks[3, 5, 7] = True
    expected = batched_mask_to_box(masks)
    got = _boxes_from_projections(masks.any(-1), masks.any(-2))
    assert torch.equal(got, expected)
    assert got[3].tolist() == [7, 5, 7, 5] and got[:3].abs().sum() == 0


def _random_mask(rng, height, width):
    kind = rng.integers(4)
    mask = rng.random((height, width)) < rng.uniform(0.05, 0.9)
    if kind == 1:  # clumps with holes
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:, 1:] |= mask[:, :-1]
        mask = grown & (rng.random((height, width)) < 0.9)
    elif kind >= 2:  # a speckled rectangle somewhere, often touching a border
        mask = np.zeros((height, width), bool)
        y, x = rng.integers(0, height), rng.integers(0, width)
        mask[y : y + rng.integers(1, 12), x : x + rng.integers(1, 12)] = True
        mask &= rng.random((height, width)) < 0.85
        if kind == 3:
            mask[rng.integers(0, height), :] |= rng.random(width) < 0.5
    return mask


def test_small_regions_on_the_box_equal_segment_anything():
    from segment_anything.utils.amg import remove_small_regions

    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(600):
        height, width = (int(v) for v in rng.integers(2, 36, size=2))
        mask = _random_mask(rng, height, width)
        area = int(rng.integers(1, 40))
        expected, holes = remove_small_regions(mask, area, "holes")
        expected, islands = remove_small_regions(expected, area, "islands")
        (y0, x0, region), edited = remove_small_regions_in_box(mask, area)
        got = mask.copy()
        got[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
        np.testing.assert_array_equal(got, expected)
        assert edited == (holes or islands)
        changed += edited
    assert 100 < changed < 600


def test_postprocess_small_regions_equals_segment_anything():
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import (
        MaskData,
        batched_mask_to_box,
        mask_to_rle_pytorch,
        rle_to_mask,
    )

    rng = np.random.default_rng(1)
    height, width = 60, 90
    masks = np.stack([_random_mask(rng, height, width) for _ in range(80)])
    masks[5] = False  # an empty mask
    masks[6] = masks[7]  # duplicates: NMS keeps one
    masks[8, :, :] = True  # touches every border
    torch_masks = torch.as_tensor(masks)
    boxes = batched_mask_to_box(torch_masks)
    data = MaskData(
        rles=mask_to_rle_pytorch(torch_masks),
        boxes=boxes.numpy().copy(),  # segment-anything edits it in place
        index=np.arange(len(masks)),
    )
    expected = SamAutomaticMaskGenerator.postprocess_small_regions(data, 12, 0.7)
    expected_masks = np.stack([rle_to_mask(rle) for rle in expected["rles"]])

    got_masks, got_boxes, keep = postprocess_small_regions(torch_masks, boxes, 12, 0.7, 3)
    np.testing.assert_array_equal(keep.numpy(), expected["index"])
    np.testing.assert_array_equal(got_masks.numpy(), expected_masks)
    np.testing.assert_array_equal(got_boxes.numpy(), expected["boxes"])
    assert len(keep) < len(masks)


def test_small_regions_work_on_the_box_only():
    mask = np.zeros((400, 500), bool)
    mask[100:140, 200:260] = True
    mask[110:113, 210:213] = False  # a 9-pixel hole
    mask[150, 300] = True  # a 1-pixel island, outside the first box
    (y0, x0, region), edited = remove_small_regions_in_box(mask, 20)
    assert edited
    assert region.shape[0] < 60 and region.shape[1] < 110  # not the whole image
    assert region[110 - y0 : 113 - y0, 210 - x0 : 213 - x0].all()  # hole filled
    assert not region[150 - y0, 300 - x0]  # island removed


def test_random_tiny_sam_runs(tiny_sam_dir):
    model = load_sam_dir(tiny_sam_dir)
    image = blob_scene(40, 56, seed=6)
    out = FastMaskGenerator(model, points_per_side=2, **NO_THRESHOLDS).generate(image)
    assert len(out) >= 1 and out.masks.shape[1:] == (40, 56)


def test_make_blob_segmenter_needs_a_wide_decoder():
    model = build_sam(
        {
            "encoder_embed_dim": 32,
            "encoder_depth": 1,
            "encoder_num_heads": 2,
            "encoder_global_attn_indexes": [0],
            "prompt_embed_dim": 64,
            "decoder_num_heads": 2,
        }
    )
    with pytest.raises(ValueError):
        make_blob_segmenter(model)


@pytest.mark.gpu
def test_same_masks_as_segment_anything_on_cuda_vit_b():
    torch.manual_seed(0)
    model = make_blob_segmenter(build_sam("vit_b"), content=0.5).to("cuda")
    image = blob_scene(300, 420, seed=7)
    settings = {
        "points_per_side": 16,
        "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2,
        "min_mask_region_area": 100,
        **NO_THRESHOLDS,
    }
    ref = reference_records(model, image, **settings)
    assert len(ref["masks"]) >= 50
    out = FastMaskGenerator(model, **settings).generate(image)
    assert out.masks.device.type == "cuda"
    assert_same_as_segment_anything(ref, out, same_order=False, atol=1e-3)
    compiled = FastMaskGenerator(model, compile=True, **settings).generate(image)
    assert_same_as_segment_anything(ref, compiled, same_order=False, atol=1e-3)
