"""Every voting/painting path gives the naive reference's result whatever the tensors' memory
layout: transposed, sliced, column-major and expanded class maps and masks (issue 27)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fiftyone_ssa.core.rle import mask_to_rle
from fiftyone_ssa.core.rle_voting import vote_and_paint_masks, vote_and_paint_rles
from fiftyone_ssa.core.voting import paint_masks, painting_order, vote_mask_classes
from tests.test_voting import naive_ssa, random_case


def dense_path(masks: torch.Tensor, class_map: torch.Tensor, c: int):
    """The GPU path of label_one_image (dense masks), run wherever the tensors are."""
    vote = vote_mask_classes(masks, class_map, c)
    return vote.labels, paint_masks(class_map, masks, vote.labels, painting_order(vote.areas))


def runs_path(masks: torch.Tensor, class_map: torch.Tensor, c: int):
    """The CPU path of label_one_image (dense masks through their runs)."""
    vote, painted = vote_and_paint_masks(masks, class_map, c)
    return vote.labels, painted


def rle_path(masks: torch.Tensor, class_map: torch.Tensor, c: int):
    """Masks as COCO RLEs (SA-1B, field mask branches)."""
    rles = [mask_to_rle(m.numpy()) for m in masks]
    vote, painted = vote_and_paint_rles(rles, class_map, c)
    return vote.labels, painted


PATHS = {"dense": dense_path, "runs": runs_path, "rle": rle_path}


def layouts(array: np.ndarray) -> dict[str, torch.Tensor]:
    """The same values as ``array`` in several non-contiguous memory layouts."""
    tensor = torch.from_numpy(array)
    transposed = torch.from_numpy(np.ascontiguousarray(np.swapaxes(array, -1, -2)))
    padded = torch.from_numpy(np.pad(array, [(0, 0)] * (array.ndim - 2) + [(1, 2), (3, 1)]))
    column_major = torch.from_numpy(np.asfortranarray(array))
    out = {
        "contiguous": tensor,
        "transposed": transposed.transpose(-1, -2),
        "sliced": padded[..., 1:-2, 3:-1],
        "column-major": column_major,
        "strided": torch.from_numpy(np.repeat(array, 2, axis=-1))[..., ::2],
    }
    for name, value in out.items():
        assert torch.equal(value, tensor), name
    return out


@pytest.mark.parametrize("path", PATHS)
def test_the_issue_case_transposed_class_map_is_painted(path):
    class_map = torch.tensor([[1, 1], [1, 3]]).t()
    assert not class_map.is_contiguous()
    masks = torch.ones(1, 2, 2, dtype=torch.bool)
    labels, painted = PATHS[path](masks, class_map, 4)
    assert labels.tolist() == [1]
    assert painted.tolist() == [[1, 1], [1, 1]]


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_every_layout_matches_the_naive_reference(path, seed):
    rng = np.random.default_rng(seed)
    n, h, w, c = int(rng.integers(0, 12)), int(rng.integers(1, 24)), int(rng.integers(1, 24)), 5
    masks, class_map = random_case(rng, n, h, w, c)
    ref_labels, ref_out = naive_ssa(masks, class_map, c)
    for map_name, map_layout in layouts(class_map).items():
        for mask_name, mask_layout in layouts(masks).items():
            labels, painted = PATHS[path](mask_layout, map_layout, c)
            where = f"{path}: class map {map_name}, masks {mask_name}"
            np.testing.assert_array_equal(labels.numpy(), ref_labels, err_msg=where)
            np.testing.assert_array_equal(painted.numpy(), ref_out, err_msg=where)
            assert painted.is_contiguous(), where
            # The inputs are never written to.
            np.testing.assert_array_equal(map_layout.numpy(), class_map, err_msg=where)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["transposed", "sliced", "column-major", "strided"])
def test_dense_path_on_cuda_with_non_contiguous_maps(layout):
    rng = np.random.default_rng(0)
    masks, class_map = random_case(rng, 20, 37, 29, 6)
    ref_labels, ref_out = naive_ssa(masks, class_map, 6)
    cuda_map = layouts(class_map)[layout].cuda()
    labels, painted = dense_path(torch.from_numpy(masks).cuda(), cuda_map, 6)
    np.testing.assert_array_equal(labels.cpu().numpy(), ref_labels)
    np.testing.assert_array_equal(painted.cpu().numpy(), ref_out)
