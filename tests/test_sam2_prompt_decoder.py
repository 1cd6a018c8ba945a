"""PromptBatchDecoder gives transformers' SAM 2 / EdgeTAM mask decoder outputs for point prompts.

The models are random-weight, built from their hub repositories' configs
(``tests/fixtures/hub``) with the decoder weights drawn wide so that attention is far from
uniform; the reference is the model's own forward with ``image_embeddings`` and one point per
prompt, as the transformers mask-generation pipeline calls it.
"""

from __future__ import annotations

import pytest
import torch

from fiftyone_ssa.models.masks.prompt_decoder import PromptBatchDecoder
from fiftyone_ssa.models.masks.transformers_sam import load_transformers_sam
from tests.fixtures.hub_models import save_hub_layout_model

SAM2 = "facebook/sam2.1-hiera-tiny"
EDGETAM = "yonigozlan/EdgeTAM-hf"
# The decoder of every published SAM 2.1 / EdgeTAM checkpoint (transformers' defaults).
REAL_DECODER = {"hidden_size": 256, "mlp_dim": 2048, "num_attention_heads": 8}


def random_model(repo: str, tmp_path, real_decoder: bool = False, seed: int = 0):
    """The repository's tiny model, loaded as real weights are; optionally with a real-size
    mask decoder and prompt encoder (random too)."""
    model, _ = load_transformers_sam(save_hub_layout_model(repo, tmp_path / "model"), "cpu")
    if real_decoder:
        config = model.config
        config.prompt_encoder_config.hidden_size = REAL_DECODER["hidden_size"]
        for key, value in {**REAL_DECODER, "iou_head_hidden_dim": 256}.items():
            setattr(config.mask_decoder_config, key, value)
        model = type(model)(config).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in [*model.mask_decoder.parameters(), *model.prompt_encoder.parameters()]:
            p.normal_(0.0, 0.2)
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
    return model


def features(model, seed: int = 1) -> list[torch.Tensor]:
    """Random ``get_image_embeddings`` outputs: (1, C/8, 4h, 4w), (1, C/4, 2h, 2w), (1, C, h, w)."""
    generator = torch.Generator().manual_seed(seed)
    c = model.config.mask_decoder_config.hidden_size
    h, w = model.prompt_encoder.image_embedding_size
    shapes = [(1, c // 8, 4 * h, 4 * w), (1, c // 4, 2 * h, 2 * w), (1, c, h, w)]
    return [torch.randn(*shape, generator=generator) for shape in shapes]


def points(n: int, frame: int = 1024, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * frame


def module_decode(model, feats, pts) -> tuple[torch.Tensor, torch.Tensor]:
    """(3B, 4h, 4w) logits and (3B,) IoU of the model's own forward, prompt-major."""
    labels = torch.ones((1, len(pts), 1), dtype=torch.int64)
    out = model(
        image_embeddings=feats,
        input_points=pts[None, :, None, :],
        input_labels=labels,
        multimask_output=True,
    )
    return out.pred_masks[0].flatten(0, 1), out.iou_scores[0].flatten()


@pytest.mark.parametrize("real_decoder", [False, True], ids=["tiny decoder", "real-size decoder"])
@pytest.mark.parametrize("repo", [SAM2, EDGETAM], ids=["sam2.1", "edgetam"])
@torch.inference_mode()
def test_same_outputs_as_the_model(repo, real_decoder, tmp_path):
    model = random_model(repo, tmp_path, real_decoder)
    feats, pts = features(model), points(10)
    ref_masks, ref_iou = module_decode(model, feats, pts)
    assert ref_masks.std(0).mean() > 0.1, "the prompts should give different masks"

    decoder = PromptBatchDecoder(model)
    masks, iou, keep = decoder.decode(decoder.prepare(feats), pts)

    assert keep.shape == (30,) and keep.all()
    scale = ref_masks.abs().max()
    torch.testing.assert_close(masks, ref_masks, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_the_skip_features_matter(tmp_path):
    """Without SAM 2's high-resolution features the logits differ: the test above sees them."""
    model = random_model(SAM2, tmp_path)
    feats, pts = features(model), points(4)
    ref_masks, _ = module_decode(model, feats, pts)
    decoder = PromptBatchDecoder(model)
    context = decoder.prepare(feats)
    context.skips = None
    masks, _, _ = decoder.decode(context, pts)
    assert (masks - ref_masks).abs().max() > 1e-2 * ref_masks.abs().max()


@torch.inference_mode()
def test_iou_filter_keeps_the_models_masks_in_order(tmp_path):
    model = random_model(EDGETAM, tmp_path)
    feats, pts = features(model), points(12)
    ref_masks, ref_iou = module_decode(model, feats, pts)
    threshold = float(ref_iou.median())
    decoder = PromptBatchDecoder(model)
    masks, iou, keep = decoder.decode(decoder.prepare(feats), pts, threshold)
    expected = ref_iou > threshold
    assert torch.equal(keep, expected) and 0 < int(keep.sum()) < len(keep)
    torch.testing.assert_close(iou, ref_iou[expected], atol=1e-5, rtol=1e-5)
    scale = ref_masks.abs().max()
    torch.testing.assert_close(masks, ref_masks[expected], atol=1e-5 * scale, rtol=0)


def test_wrong_feature_maps_raise_value_error(tmp_path):
    model = random_model(SAM2, tmp_path)
    decoder = PromptBatchDecoder(model)
    feats = features(model)
    with pytest.raises(ValueError, match="2 high-resolution feature maps"):
        decoder.prepare(feats[1:])
    with pytest.raises(ValueError, match="2x and 4x"):
        decoder.prepare([feats[0][..., ::2, ::2], feats[1][..., ::2, ::2], feats[2]])
