"""COCO RLE in ``fiftyone_ssa.core.rle`` against pycocotools, the reference."""

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fiftyone_ssa.core import rle as R
from tests.fixtures.sa1b import random_masks
from tests.scenes import masks_of_kinds


def coco_encode(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def naive_runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, zeros first, one pixel at a time."""
    runs, current, value = [], 0, False
    for pixel in mask.T.ravel().astype(bool):
        if pixel != value:
            runs.append(current)
            current, value = 0, pixel
        current += 1
    runs.append(current)
    return runs


def check_against_pycocotools(mask: np.ndarray) -> None:
    ref = coco_encode(mask)
    ours = R.mask_to_rle(mask)
    assert ours == {"size": list(mask.shape), "counts": ref["counts"].decode("ascii")}
    np.testing.assert_array_equal(R.rle_to_mask(ref), mask.astype(bool))
    np.testing.assert_array_equal(R.rle_to_mask(ours), mask_utils.decode(ref).astype(bool))
    assert R.rle_area(ours) == int(mask_utils.area(ref))
    assert R.rle_to_bbox(ours) == mask_utils.toBbox(ref).tolist()


def special_masks():
    rng = np.random.default_rng(0)
    yield "empty", np.zeros((7, 5), bool)
    yield "full", np.ones((7, 5), bool)
    yield "one pixel first", np.pad(np.ones((1, 1), bool), ((0, 6), (0, 4)))
    yield "one pixel last", np.pad(np.ones((1, 1), bool), ((6, 0), (4, 0)))
    yield "one row", rng.random((1, 40)) < 0.5
    yield "one column", rng.random((40, 1)) < 0.5
    yield "zero height", np.zeros((0, 4), bool)
    yield "zero width", np.zeros((4, 0), bool)
    yield "checkerboard", (np.indices((9, 11)).sum(0) % 2).astype(bool)
    wide = np.zeros((300, 400), bool)
    wide[20:280, 30:390] = True  # long runs: multi-character values and large deltas
    yield "large", wide


@pytest.mark.parametrize(
    "name,mask", list(special_masks()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_special_masks_match_pycocotools(name, mask):
    check_against_pycocotools(mask)
    assert R.encode_counts(mask).tolist() == naive_runs(mask) or mask.size == 0


def test_random_masks_match_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = rng.integers(1, 30, 2)
        mask = rng.random((h, w)) < rng.random()
        check_against_pycocotools(mask)
        assert R.encode_counts(mask).tolist() == naive_runs(mask)
    for mask in random_masks(rng, 8, 60, 90):
        check_against_pycocotools(mask)


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(0, 24), st.integers(0, 24))))
def test_property_encode_decode_match_pycocotools(mask):
    check_against_pycocotools(mask)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 600), min_size=1, max_size=40), st.data())
def test_property_counts_string_round_trip(runs, data):
    """Any run list (zero-length runs included) compresses like pycocotools and decodes back;
    area and box agree with pycocotools for any image height dividing the total."""
    total = sum(runs)
    divisors = [d for d in range(1, total + 1) if total % d == 0] or [1]
    h = data.draw(st.sampled_from(divisors))
    w = total // h
    rle = {"size": [h, w], "counts": runs}
    ref = mask_utils.frPyObjects(rle, h, w)
    assert R.compress_counts(runs) == ref["counts"].decode("ascii")
    assert R.decompress_counts(ref["counts"]).tolist() == runs
    assert R.rle_to_bbox(rle) == mask_utils.toBbox(ref).tolist()
    assert R.rle_area(rle) == int(mask_utils.area(ref))


def test_uncompressed_rle_is_decoded():
    rng = np.random.default_rng(2)
    mask = rng.random((13, 17)) < 0.4
    rle = R.mask_to_rle(mask, compressed=False)
    assert rle["counts"] == naive_runs(mask)
    np.testing.assert_array_equal(R.rle_to_mask(rle), mask)


def test_bbox_quirk_of_runs_wrapping_columns():
    # A run of ones from the bottom of column 0 to the top of column 1: pycocotools spans the
    # full height although the mask covers only two rows.
    mask = np.zeros((6, 3), bool)
    mask[5, 0] = mask[0, 1] = True
    assert R.rle_to_bbox(R.mask_to_rle(mask)) == mask_utils.toBbox(coco_encode(mask)).tolist()
    assert R.rle_to_bbox(R.mask_to_rle(mask)) == [0.0, 0.0, 2.0, 6.0]


def test_decode_window_equals_crop_of_full_decode():
    rng = np.random.default_rng(3)
    for mask in random_masks(rng, 6, 40, 50):
        rle = R.mask_to_rle(mask)
        for _ in range(5):
            x0, x1 = sorted(rng.integers(0, 51, 2))
            y0, y1 = sorted(rng.integers(0, 41, 2))
            window = R.rle_to_mask(rle, box=(x0, y0, x1, y1))
            np.testing.assert_array_equal(window, mask[y0:y1, x0:x1])


@pytest.mark.parametrize(
    "rle,match",
    [
        ({"size": [2, 2], "counts": [1, 2]}, "sum to"),
        ({"size": [2, 2], "counts": "0"}, "sum to"),
        ({"size": [2, 2], "counts": "0\x7f"}, "characters"),
        ({"size": [2, 2], "counts": "4o"}, "truncated"),
        ({"size": [2], "counts": [4]}, "size"),
        ({"counts": [4]}, "'size'"),
    ],
)
def test_invalid_rles_raise_value_error(rle, match):
    with pytest.raises(ValueError, match=match):
        R.rle_to_mask(rle)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Expected `mask`"):
        R.mask_to_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="Expected `masks`"):
        R.masks_to_rles(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="Expected `box`"):
        R.rle_to_mask(R.mask_to_rle(np.zeros((3, 3), bool)), box=(0, 0, 4, 3))
    with pytest.raises(ValueError, match="Expected all RLEs"):
        R.rles_to_masks([R.mask_to_rle(np.zeros((3, 3))), R.mask_to_rle(np.zeros((3, 4)))])


def test_batch_encoder_matches_pycocotools():
    rng = np.random.default_rng(4)
    masks = random_masks(rng, 12, 37, 53)
    masks[0] = False
    masks[1] = True
    masks[2] = rng.random((37, 53)) < 0.5
    rles = R.masks_to_rles(torch.from_numpy(masks))
    for mask, rle in zip(masks, rles):
        assert rle == {"size": [37, 53], "counts": coco_encode(mask)["counts"].decode("ascii")}


def test_batch_encoder_chunks_give_the_same_result():
    rng = np.random.default_rng(5)
    masks = torch.from_numpy(rng.random((9, 20, 30)) < 0.3)
    assert R.masks_to_rles(masks, max_pixels=700) == R.masks_to_rles(masks)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 5), st.integers(0, 12), st.integers(0, 12))))
def test_property_batch_round_trip(masks):
    rles = R.masks_to_rles(torch.from_numpy(masks))
    for mask, rle in zip(masks, rles):
        assert rle["counts"] == coco_encode(mask)["counts"].decode("ascii")
    decoded = R.rles_to_masks(rles)
    assert decoded.shape == masks.shape and decoded.dtype == torch.bool
    np.testing.assert_array_equal(decoded.numpy(), masks)


def test_batch_decoder_accepts_pycocotools_rles_and_device():
    rng = np.random.default_rng(6)
    masks = random_masks(rng, 5, 31, 29)
    refs = [coco_encode(m) for m in masks]
    decoded = R.rles_to_masks(refs, device="cpu")
    assert decoded.device.type == "cpu"
    np.testing.assert_array_equal(decoded.numpy(), masks)
    assert R.rles_to_masks([]).shape == (0, 0, 0)
    assert R.masks_to_rles(torch.zeros((0, 4, 4), dtype=torch.bool)) == []


@pytest.mark.gpu
def test_batch_round_trip_on_cuda():
    rng = np.random.default_rng(7)
    masks = random_masks(rng, 16, 150, 220)
    on_device = torch.from_numpy(masks).cuda()
    rles = R.masks_to_rles(on_device)
    assert [r["counts"] for r in rles] == [coco_encode(m)["counts"].decode() for m in masks]
    decoded = R.rles_to_masks(rles, device="cuda")
    assert decoded.is_cuda
    assert torch.equal(decoded, on_device)


def test_core_rle_does_not_import_pycocotools():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(R))
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("pycocotools" in (n or "") or "fiftyone" in (n or "") for n in names)


# --------------------------------------------------------------- properties (issue 10)


@st.composite
def mask_batches(draw):
    """(N, H, W) bool stacks of random shapes with empty, full, overlapping and duplicate masks."""
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    kinds = draw(
        st.lists(st.sampled_from(["rect", "noise", "empty", "full", "dup"]), min_size=1, max_size=6)
    )
    return masks_of_kinds(rng, h, w, kinds)


@settings(max_examples=150, deadline=None)
@given(mask_batches())
def test_property_batch_encoder_equals_pycocotools_on_every_mask(masks):
    rles = R.masks_to_rles(torch.from_numpy(masks))
    assert len(rles) == len(masks)
    for mask, rle in zip(masks, rles):
        ref = coco_encode(mask)
        assert rle["size"] == list(mask.shape)
        assert rle["counts"] == ref["counts"].decode("ascii")
        assert R.rle_area(rle) == int(mask.sum()) == int(mask_utils.area(ref))
        assert R.rle_to_bbox(rle) == mask_utils.toBbox(ref).tolist()
    back = R.rles_to_masks(rles)
    np.testing.assert_array_equal(back.numpy(), masks)


@settings(max_examples=100, deadline=None)
@given(mask_batches(), st.data())
def test_property_window_decode_is_a_crop(masks, data):
    h, w = masks.shape[1:]
    x0 = data.draw(st.integers(0, w - 1))
    y0 = data.draw(st.integers(0, h - 1))
    x1 = data.draw(st.integers(x0, w))
    y1 = data.draw(st.integers(y0, h))
    for mask in masks:
        rle = R.mask_to_rle(mask)
        np.testing.assert_array_equal(R.rle_to_mask(rle, box=(x0, y0, x1, y1)), mask[y0:y1, x0:x1])
