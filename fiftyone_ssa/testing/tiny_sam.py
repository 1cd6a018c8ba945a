"""A tiny SAM with random weights, and one whose weights make point prompts segment blobs.

Part of :mod:`fiftyone_ssa.testing.tiny` (tests and the walkthrough where no weights exist).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from fiftyone_ssa.testing.seeding import seeded

# A 1-layer, 32-dim ViT encoder at SAM's input size with a 1-layer, 128-dim mask decoder.
TINY_SAM_CONFIG = {
    "name": "tiny",
    "encoder_embed_dim": 32,
    "encoder_depth": 1,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [0],
    "image_size": 1024,
    "prompt_embed_dim": 128,
    "decoder_depth": 1,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 4,
    "iou_head_hidden_dim": 64,
}


def save_tiny_sam(
    directory: str | os.PathLike,
    config: dict | None = None,
    blobs: bool = False,
    seed: int | None = None,
) -> Path:
    """A tiny SAM with random weights, written with ``save_sam`` (``load_sam_branch`` reads it).

    Args:
        directory: created if needed.
        config: a SAM config (default :data:`TINY_SAM_CONFIG`).
        blobs: set the weights with :func:`make_blob_segmenter` so that point prompts give
            blobs (random SAM weights give nearly one mask per image).
        seed: see the module docstring.

    Returns:
        The directory.
    """
    from fiftyone_ssa.models.masks.sam_loader import build_sam, save_sam

    config = dict(TINY_SAM_CONFIG if config is None else config)
    with seeded(seed):
        model = build_sam(config)
        if blobs:
            make_blob_segmenter(model)
    save_sam(model, directory, config)
    return Path(directory)


@torch.no_grad()
def make_blob_segmenter(
    model,
    seed: int = 0,
    frequency: float = 2.0,
    content: float = 0.05,
    levels: tuple[float, float, float] = (0.75, 0.56, 0.38),
    gain: float = 1.0,
):
    """Set a SAM's weights so that point prompts give blobs around the point (in place).

    With ``phi(x)`` n sin/cos features of the position x in SAM's input frame (n frequencies),
    the encoder outputs ``[phi(x), -phi(x)]`` (plus a little image content), every decoder token
    becomes ``LN(PE(p))`` (which holds ``phi(p)``), the upscaled embedding is ``5 + c phi(x)``
    and the hypernetworks output ``phi(p)`` with a constant channel, so that the mask logits are
    ``~ K(x - p) - level * n`` with ``K = phi(p) . phi(x)``, n at ``x = p``.

    Args:
        model: a ``Sam`` with prompt_embed_dim >= 128 and an encoder of at least 32 dims.
        seed: seeds the image-content weights.
        frequency: spatial frequency of the kernel (blob radius ~ 0.2 / frequency of the frame).
        content: weight of the (random) image content in the encoder; 0 gives exact blobs.
        levels: kernel thresholds, as fractions of the peak, of the three multimask outputs.
        gain: logit scale.

    Returns:
        The model.
    """
    generator = torch.Generator().manual_seed(seed)
    encoder, prompt, decoder = model.image_encoder, model.prompt_encoder, model.mask_decoder
    dim = prompt.embed_dim
    half = dim // 2
    n_freq = min(8, (dim // 8 - 1) // 2)  # upscaled channels: 2 n_freq features + 1 constant
    k = 2 * n_freq
    if n_freq < 4 or encoder.pos_embed.shape[-1] < 2 * k:
        raise ValueError("make_blob_segmenter needs prompt_embed_dim >= 128, encoder dims >= 32")

    # Prompt PE: n frequencies on a golden-angle spiral, the other columns zero (sin 0, cos 1).
    steps = torch.arange(n_freq, dtype=torch.float32)
    angles = steps * math.pi * (3 - math.sqrt(5))
    radii = frequency * (0.7 + 0.6 * steps / n_freq)
    gaussian = torch.zeros(2, half)
    gaussian[0, :n_freq] = radii * torch.cos(angles)
    gaussian[1, :n_freq] = radii * torch.sin(angles)
    prompt.pe_layer.positional_encoding_gaussian_matrix.copy_(gaussian)
    for embedding in [*prompt.point_embeddings, prompt.not_a_point_embed, prompt.no_mask_embed]:
        embedding.weight.zero_()
    feature_dims = torch.cat([steps.long(), half + steps.long()])  # phi inside PE(p)
    zero_dim = n_freq  # a PE dimension that is always sin(0) = 0

    # Encoder: [phi(x), -phi(x)] at each patch centre (zero mean, constant norm), plus content.
    grid = prompt.pe_layer(encoder.pos_embed.shape[1:3])  # (dim, h, w)
    phi = grid[feature_dims].permute(1, 2, 0)  # (h, w, k)
    encoder.pos_embed.zero_()
    encoder.pos_embed[0, ..., :k] = phi
    encoder.pos_embed[0, ..., k : 2 * k] = -phi
    encoder.patch_embed.proj.weight.normal_(0, content / 100, generator=generator)
    encoder.patch_embed.proj.bias.zero_()
    for block in encoder.blocks:
        for linear in (block.attn.proj, block.mlp.lin2):
            linear.weight.zero_()
            linear.bias.zero_()
    neck_in, _, neck_mid, _ = encoder.neck
    neck_in.weight.zero_()
    neck_in.weight[: 2 * k, : 2 * k, 0, 0] = torch.eye(2 * k)
    neck_mid.weight.zero_()
    neck_mid.weight[:, :, 1, 1] = torch.eye(dim)

    # Decoder transformer: every token becomes LN(mean of tokens) = LN(PE(p) / 7); the image
    # embedding passes through unchanged.
    transformer = decoder.transformer
    attentions = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        attentions += [layer.self_attn, layer.cross_attn_token_to_image]
        attentions += [layer.cross_attn_image_to_token]
        layer.mlp.lin2.weight.zero_()
        layer.mlp.lin2.bias.zero_()
    for attention in attentions:
        attention.out_proj.weight.zero_()
        attention.out_proj.bias.zero_()
    first = transformer.layers[0].self_attn
    for linear in (first.q_proj, first.k_proj):
        linear.weight.zero_()
        linear.bias.zero_()
    first.v_proj.weight.copy_(torch.eye(dim))
    first.v_proj.bias.zero_()
    first.out_proj.weight.copy_(torch.eye(dim))
    decoder.iou_token.weight.zero_()
    decoder.mask_tokens.weight.zero_()
    decoder.iou_prediction_head.layers[-1].bias.add_(0.5)  # predicted IoUs around 0.3

    # Upscaling: U(x) = [5 + c phi(x), 5, 0...] (GELU is ~ the identity near 5).
    up1, norm, _, up2, _ = decoder.output_upscaling
    eye = torch.eye(k)[..., None, None]
    up1.weight.zero_()  # (in, out, 2, 2): out = [phi, -phi, 0...]
    up1.bias.zero_()
    up1.weight[:k, :k] = eye
    up1.weight[k : 2 * k, k : 2 * k] = eye
    norm.weight.fill_(1.0)
    norm.bias.fill_(5.0)
    up2.weight.zero_()  # out_j = in_j - in_{k+j} = c phi_j; out_k = constant
    up2.weight[:k, :k] = eye
    up2.weight[k : 2 * k, :k] = -eye
    up2.bias.fill_(5.0)

    # Hypernetworks: h_j = gain * phi_j(p) / sigma (j < k), h_k = beta - sum_j h_j, so that
    # logit = sum_j h_j (5 + c phi_j(x)) + 5 h_k = gain * c * K / sigma + 5 beta.
    c = 2 * math.sqrt(dim // 4 / k)  # amplitude of phi in U after the LayerNorm
    sigma = 0.5  # about the std of the LayerNorm over PE(p)
    rows = torch.arange(k)
    for token, mlp in enumerate(decoder.output_hypernetworks_mlps):
        first_layer, middle, last = mlp.layers
        first_layer.weight.zero_()
        first_layer.bias.zero_()
        first_layer.weight[rows, feature_dims] = 1.0  # relu(phi / sigma), relu(-phi / sigma)
        first_layer.weight[rows, zero_dim] = -1.0
        first_layer.weight[k + rows, feature_dims] = -1.0
        first_layer.weight[k + rows, zero_dim] = 1.0
        middle.weight.copy_(torch.eye(dim))
        middle.bias.zero_()
        last.weight.zero_()
        last.bias.zero_()
        last.weight[rows, rows] = gain
        last.weight[rows, k + rows] = -gain
        last.weight[k] = -last.weight[:k].sum(0)
        level = levels[max(token - 1, 0)] * n_freq
        last.bias[k] = -gain * c * level / sigma / 5.0
    return model
