"""PromptBatchDecoder gives segment-anything's MaskDecoder outputs for point prompts."""

import pytest
import torch

from fiftyone_ssa.models.masks.prompt_decoder import PromptBatchDecoder
from fiftyone_ssa.models.masks.sam_loader import build_sam
from fiftyone_ssa.testing.tiny_sam import TINY_SAM_CONFIG
from tests.fixtures.sam import module_decode

# Every published SAM has this decoder (prompt dim 256, 2 layers, 8 heads, MLP 2048).
REAL_DECODER = {
    "prompt_embed_dim": 256,
    "decoder_depth": 2,
    "decoder_mlp_dim": 2048,
    "decoder_num_heads": 8,
    "iou_head_hidden_dim": 256,
}
DECODERS = {
    "tiny (1 layer)": {},
    "real size (2 layers)": REAL_DECODER,
    "3 layers": {**REAL_DECODER, "decoder_depth": 3, "prompt_embed_dim": 128},
}


def random_sam(overrides: dict, seed: int = 0):
    """A SAM with a tiny encoder; decoder weights drawn wide so attention is far from uniform."""
    torch.manual_seed(seed)
    model = build_sam({**TINY_SAM_CONFIG, **overrides})
    with torch.no_grad():
        for p in [*model.mask_decoder.parameters(), *model.prompt_encoder.parameters()]:
            p.normal_(0.0, 0.2)
    return model


def inputs(model, n_points: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    dim = model.prompt_encoder.embed_dim
    embedding = torch.randn(1, dim, *model.prompt_encoder.image_embedding_size, generator=generator)
    points = torch.rand(n_points, 2, generator=generator) * model.image_encoder.img_size
    return embedding, points


@pytest.mark.parametrize("overrides", list(DECODERS.values()), ids=list(DECODERS))
@torch.inference_mode()
def test_same_outputs_as_the_module(overrides):
    model = random_sam(overrides)
    embedding, points = inputs(model, 12)
    ref_masks, ref_iou = module_decode(model, embedding, points)
    assert ref_masks.std(0).mean() > 0.1, "the prompts should give different masks"

    decoder = PromptBatchDecoder(model)
    masks, iou, keep = decoder.decode(decoder.prepare(embedding), points)

    assert keep.shape == (36,) and keep.all()
    scale = ref_masks.abs().max()
    torch.testing.assert_close(masks, ref_masks, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_iou_filter_keeps_the_modules_masks_in_order():
    model = random_sam(REAL_DECODER, seed=3)
    with torch.no_grad():  # positive IoUs: a threshold <= 0 turns the filter off
        model.mask_decoder.iou_prediction_head.layers[-1].bias += 100.0
    embedding, points = inputs(model, 10, seed=4)
    ref_masks, ref_iou = module_decode(model, embedding, points)
    ordered = ref_iou.sort().values
    threshold = float((ordered[14] + ordered[15]) / 2)  # between two values: no ties
    expected = ref_iou > threshold

    decoder = PromptBatchDecoder(model)
    masks, iou, keep = decoder.decode(decoder.prepare(embedding), points, threshold)

    assert torch.equal(keep, expected)
    assert len(masks) == len(iou) == int(expected.sum()) == 15
    torch.testing.assert_close(
        masks, ref_masks[expected], atol=1e-5 * ref_masks.abs().max(), rtol=0
    )
    torch.testing.assert_close(iou, ref_iou[expected], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_nothing_kept_gives_empty_outputs():
    model = random_sam({})
    embedding, points = inputs(model, 5)
    decoder = PromptBatchDecoder(model)
    masks, iou, keep = decoder.decode(decoder.prepare(embedding), points, iou_threshold=1e9)
    side = 4 * embedding.shape[-1]
    assert masks.shape == (0, side, side) and iou.shape == (0,)
    assert keep.shape == (15,) and not keep.any()


@torch.inference_mode()
def test_no_prompts_give_empty_outputs():
    model = random_sam({})
    embedding, _ = inputs(model, 1)
    decoder = PromptBatchDecoder(model)
    masks, iou, keep = decoder.decode(decoder.prepare(embedding), torch.zeros(0, 2), 0.5)
    assert masks.shape == (0, 256, 256) and iou.shape == (0,) and keep.shape == (0,)


@torch.inference_mode()
def test_bfloat16_autocast_is_as_close_to_float32_as_the_module():
    model = random_sam(REAL_DECODER, seed=5)
    embedding, points = inputs(model, 8, seed=6)
    ref_masks, ref_iou = module_decode(model, embedding, points)
    decoder = PromptBatchDecoder(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module_masks, _ = module_decode(model, embedding, points)
        masks, iou, _ = decoder.decode(decoder.prepare(embedding), points)
    module_error = (module_masks.float() - ref_masks).abs().mean()
    error = (masks.float() - ref_masks).abs().mean()
    assert error < 2 * module_error
    torch.testing.assert_close(iou.float(), ref_iou, atol=0.05, rtol=0.05)


def test_bad_inputs_raise_value_error():
    model = random_sam({})
    decoder = PromptBatchDecoder(model)
    with pytest.raises(ValueError, match=r"\(1, C, h, w\) = \(1, 128, 64, 64\)"):
        decoder.prepare(torch.zeros(2, 128, 64, 64))
    with pytest.raises(ValueError, match=r"but got shape \(1, 128, 32, 32\)"):
        decoder.prepare(torch.zeros(1, 128, 32, 32))
    with pytest.raises(ValueError, match="at least one transformer layer"):
        PromptBatchDecoder(random_sam({"decoder_depth": 0}))

    class OtherDecoder(type(model.mask_decoder)):
        pass

    model.mask_decoder.__class__ = OtherDecoder
    with pytest.raises(ValueError, match="MaskDecoder with a TwoWayTransformer, but got Other"):
        PromptBatchDecoder(model)


@pytest.mark.gpu
@torch.inference_mode()
def test_same_outputs_as_the_module_on_cuda():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = random_sam(REAL_DECODER).cuda()
    embedding, points = inputs(model, 256)
    embedding, points = embedding.cuda(), points.cuda()
    ref_masks, ref_iou = module_decode(model, embedding, points)

    decoder = PromptBatchDecoder(model)
    masks, iou, keep = decoder.decode(decoder.prepare(embedding), points)

    assert keep.all()
    torch.testing.assert_close(masks, ref_masks, atol=1e-4 * ref_masks.abs().max(), rtol=0)
    torch.testing.assert_close(iou, ref_iou, atol=1e-4, rtol=1e-4)
