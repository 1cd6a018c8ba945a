"""Strip-wise bilinear upsampling + argmax equals PyTorch's interpolate."""

import pytest
import torch
import torch.nn.functional as F

from fiftyone_ssa.core import upsample
from fiftyone_ssa.core.upsample import bilinear_weights, upsample_argmax


@pytest.mark.parametrize("in_size, out_size", [(13, 50), (17, 17), (20, 7), (1, 5), (5, 1)])
def test_weights_match_interpolate(in_size, out_size):
    x = torch.randn(3, 1, in_size)
    ref = F.interpolate(x[None], size=(1, out_size), mode="bilinear", align_corners=False)[0]
    ours = torch.einsum("oi,cji->cjo", bilinear_weights(in_size, out_size), x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(50, 70), (13, 17), (7, 9), (101, 33)])
def test_argmax_matches_interpolate_in_strips(size, monkeypatch):
    torch.manual_seed(0)
    scores = torch.randn(6, 13, 17)
    ref = F.interpolate(scores[None], size, mode="bilinear", align_corners=False)[0].argmax(0)
    monkeypatch.setattr(upsample, "_MAX_STRIP_ELEMENTS", 6 * size[1] * 3)  # 3-row strips
    assert torch.equal(upsample_argmax(scores, size), ref)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scores"):
        upsample_argmax(torch.zeros(3, 3), (4, 4))
    with pytest.raises(ValueError, match="sizes"):
        bilinear_weights(0, 3)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    scores = torch.randn(150, 128, 128)
    cpu = upsample_argmax(scores, (1500, 2250))
    gpu = upsample_argmax(scores.cuda(), (1500, 2250)).cpu()
    assert (cpu == gpu).float().mean() > 0.9999
