"""SAM's mask decoder for many point prompts on one image, with less work per prompt.

``segment_anything.modeling.MaskDecoder`` (and transformers' SAM 2 / EdgeTAM decoders, which
have the same two-way transformer) copies the image embedding once per prompt and runs
every projection of its two-way transformer over all 64x64 image tokens of every copy, then
upsamples every prompt's embedding, whatever its masks' predicted quality. With a handful of
prompt tokens (7 for a point prompt) most of that work can be avoided without changing the
result, only the order of floating-point operations:

- The first layer's image tokens are the same for every prompt, so its image-side projections
  (token-to-image keys and values, image-to-token queries) are computed once per image.
- Later attentions never project the image tokens: scores are ``(t W) keys^T + (t W) pe^T +
  t b`` for projected prompt tokens ``t`` and the image side's projection ``(W, b)``, with
  ``pe W^T`` computed once per image; token-to-image values are ``(A keys) W_v^T + b_v``
  (attention rows sum to one); image-to-token outputs apply the output projection to the token
  values before attention, ``A (v W_out^T)``. Per prompt and attention this costs about
  ``heads x tokens x HW x C`` multiply-adds instead of ``HW x C x C / downsample_rate``.
- The upsampling network and the hypernetworks run only for prompts with at least one mask
  whose predicted IoU passes the caller's threshold (the IoU head reads the transformer's
  tokens only, so the filter can come first), and the upsampling runs in token layout (each
  stride-2 2x2 transposed convolution is a matrix product per token), with no channels-first
  copies.

:class:`PromptBatchDecoder` gives ``MaskDecoder(..., multimask_output=True)``'s logits and IoU
predictions for the masks that pass the filter (tests compare it with the module on tiny and
real-size decoders). It reads the decoder's weights through :class:`DecoderParts`, built for
segment-anything's ``Sam`` (:func:`segment_anything_parts`) and for transformers' ``Sam2Model``
/ ``EdgeTamModel`` (:func:`sam2_parts`), whose decoder differs only in names, an object-score
token before the IoU token, and high-resolution skip features added during upsampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from segment_anything.modeling import Sam


@dataclass
class ImageContext:
    """What every prompt of one image shares.

    Attributes:
        src: (HW, C) image tokens plus the dense (no-mask) prompt embedding.
        size: (h, w) of the image-embedding grid.
        first_keys: (heads, HW, d) first token-to-image attention keys.
        first_values: (heads, HW, d) first token-to-image attention values.
        first_image_queries: (heads, HW, d) first image-to-token attention queries.
        pe_keys: per layer after the first, then the final attention, (heads, HW, d) the
            positional encoding through the token-to-image key weights (no bias).
        pe_image_queries: per layer after the first, (heads, HW, d) the positional encoding
            through the image-to-token query weights (no bias).
        skips: SAM 2's high-resolution features in token layout, added during upsampling:
            (HW, 2, 2, C/4) after the first transposed convolution and (HW, 2, 2, 2, 2, C/8)
            after the second; None for SAM.
    """

    src: torch.Tensor
    size: tuple[int, int]
    first_keys: torch.Tensor
    first_values: torch.Tensor
    first_image_queries: torch.Tensor
    pe_keys: list[torch.Tensor]
    pe_image_queries: list[torch.Tensor]
    skips: tuple[torch.Tensor, torch.Tensor] | None = None


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., L, heads*d) -> (..., heads, L, d)."""
    *lead, length, channels = x.shape
    return x.reshape(*lead, length, num_heads, channels // num_heads).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads*d)."""
    b, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * d)


def _weight_heads(linear: torch.nn.Linear, num_heads: int) -> torch.Tensor:
    """(heads, d, C) rows of a projection ``C -> heads*d``, split by head."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.reshape(num_heads, out_dim // num_heads, in_dim)


def _scores_against_image(
    token_proj: torch.nn.Linear,
    image_proj: torch.nn.Linear,
    num_heads: int,
    tokens: torch.Tensor,
    keys: torch.Tensor,
    pe_image: torch.Tensor,
) -> torch.Tensor:
    """Scaled attention scores between prompt tokens and per-prompt image tokens.

    ``token_proj(tokens) . image_proj(keys + pe)`` per head, without projecting the image tokens:
    ``(t W_image) keys^T + t pe_image^T + t b_image`` with ``t`` the projected tokens.

    Args:
        token_proj: the projection of the prompt tokens (queries or keys of the attention).
        image_proj: the projection of the image tokens.
        num_heads: the attention's heads.
        tokens: (B, T, C) prompt tokens (with their positional encoding).
        keys: (B, HW, C) image tokens.
        pe_image: (heads, HW, d) their positional encoding through ``image_proj``'s weights.

    Returns:
        (B, heads, T, HW) scores divided by sqrt(d).
    """
    t = _heads(token_proj(tokens), num_heads)  # (B, heads, T, d)
    b, heads, n, d = t.shape
    t = t / math.sqrt(d)
    t_image = torch.einsum("bhtd,hdc->bhtc", t, _weight_heads(image_proj, heads))
    bias = torch.einsum("bhtd,hd->bht", t, image_proj.bias.reshape(heads, d))
    shared = _shared_image_scores(t, pe_image) + bias[..., None]  # (B, heads, T, HW)
    scores = torch.baddbmm(
        shared.reshape(b, heads * n, -1), t_image.reshape(b, heads * n, -1), keys.transpose(1, 2)
    )
    return scores.reshape(b, heads, n, -1)


def _tokens_to_image(
    attn: AttentionParts, queries: torch.Tensor, keys: torch.Tensor, pe_keys: torch.Tensor
) -> torch.Tensor:
    """``attn(q=queries, k=keys + pe, v=keys)`` with per-prompt image tokens, never projected.

    Args:
        attn: the attention's projections (C -> internal dim, ``num_heads`` heads).
        queries: (B, T, C) prompt tokens (with their positional encoding).
        keys: (B, HW, C) image tokens.
        pe_keys: (heads, HW, d) their positional encoding through the key weights.

    Returns:
        (B, T, C) the attention output.
    """
    heads = attn.num_heads
    scores = _scores_against_image(attn.q_proj, attn.k_proj, heads, queries, keys, pe_keys)
    b, _, t, hw = scores.shape
    weights = torch.softmax(scores, dim=-1).reshape(b, heads * t, hw)
    pooled = (weights @ keys).reshape(b, heads, t, -1)  # (B, heads, T, C)
    values = torch.einsum("bhtc,hdc->bhtd", pooled, _weight_heads(attn.v_proj, heads))
    values = values + attn.v_proj.bias.reshape(heads, 1, -1)
    return attn.out_proj(_merge_heads(values))


def _shared_image_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, HW) products of per-prompt token vectors with shared image vectors.

    Args:
        queries: (B, heads, T, d) token-side projections (already scaled).
        keys: (heads, HW, d) image-side projections, the same for every prompt.
    """
    b, heads, t, d = queries.shape
    by_head = queries.transpose(0, 1).reshape(heads, b * t, d)
    scores = by_head @ keys.transpose(1, 2)  # (heads, B*T, HW)
    return scores.reshape(heads, b, t, keys.shape[1]).transpose(0, 1)


def _tokens_to_shared_image(
    attn: AttentionParts, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """``attn`` from prompt tokens to image tokens whose keys/values every prompt shares.

    Args:
        attn: the attention's projections.
        queries: (B, T, C) prompt tokens (with their positional encoding).
        keys: (heads, HW, d) projected keys.
        values: (heads, HW, d) projected values.

    Returns:
        (B, T, C) the attention output.
    """
    q = _heads(attn.q_proj(queries), attn.num_heads)  # (B, heads, T, d)
    b, heads, t, d = q.shape
    weights = torch.softmax(_shared_image_scores(q / math.sqrt(d), keys), dim=-1)
    pooled = weights.transpose(0, 1).reshape(heads, b * t, -1) @ values  # (heads, B*T, d)
    return attn.out_proj(_merge_heads(pooled.reshape(heads, b, t, d).transpose(0, 1)))


def _image_to_tokens(
    attn: AttentionParts, scores: torch.Tensor, tokens: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``residual`` plus an image-to-token attention's output, from its scaled scores.

    Args:
        attn: the attention's projections.
        scores: (B, heads, T, HW) scaled image-query . token-key products.
        tokens: (B, T, C) prompt tokens (the attention's values, before projection).
        residual: (B, HW, C) or (HW, C) image tokens the output is added to.

    Returns:
        (B, HW, C) ``residual + A (v W_out^T) + b_out``; the bias is spread over the value rows
        (each head's attention weights sum to one), so the sum takes one pass.
    """
    b, heads, t, hw = scores.shape
    v = _heads(attn.v_proj(tokens), heads)  # (B, heads, T, d)
    out_weight = attn.out_proj.weight.reshape(-1, heads, v.shape[-1])  # (C, heads, d)
    v_out = torch.einsum("bhtd,chd->bhtc", v, out_weight) + attn.out_proj.bias / heads
    weights = torch.softmax(scores, dim=2).reshape(b, heads * t, hw)
    return torch.baddbmm(residual, weights.transpose(1, 2), v_out.reshape(b, heads * t, -1))


def _upscaled_masks(
    upscaling: Upscaling,
    keys: torch.Tensor,
    hyper: torch.Tensor,
    size: tuple[int, int],
    skips: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``hyper @ upscaling(keys)`` computed in token layout.

    SAM's upscaling is ConvTranspose2d(k=2, s=2), LayerNorm2d, activation, ConvTranspose2d(k=2,
    s=2), activation (SAM 2 adds a high-resolution feature map after each transposed
    convolution). A stride-2, 2x2 transposed convolution maps each input pixel to its own 2x2
    output block, so every step is per token: a matrix product to (2, 2, channels) per token, a
    layer norm over the last axis, and so on; the pixels are put in place once, on the masks.
    This skips the channels-first copies and the five passes of LayerNorm2d.

    Args:
        upscaling: the decoder's upscaling layers.
        keys: (B, h*w, C) image tokens after the transformer.
        hyper: (B, M, c') hypernetwork outputs, one per mask.
        size: (h, w).
        skips: :attr:`ImageContext.skips`, or None.

    Returns:
        (B, M, 4h, 4w) mask logits.
    """
    b = keys.shape[0]
    h, w = size

    def per_token(conv: torch.nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
        """(..., C_in) -> (..., 2, 2, C_out): the 2x2 block each token becomes."""
        c_in, c_out = conv.weight.shape[:2]
        weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
        out = torch.addmm(conv.bias.repeat(4), x.reshape(-1, c_in), weight)
        return out.reshape(*x.shape[:-1], 2, 2, c_out)

    norm = upscaling.norm
    x = per_token(upscaling.up1, keys)  # (B, HW, 2, 2, C/4)
    if skips is not None:
        x = x + skips[0]
    x = upscaling.act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = per_token(upscaling.up2, x)  # (B, HW, 2, 2, 2, 2, C/8)
    if skips is not None:
        x = x + skips[1]
    x = upscaling.act2(x)
    masks = x.reshape(b, h * w * 16, x.shape[-1]) @ hyper.transpose(1, 2)  # (B, HW*16, M)
    # token (i, j), first block (a, b), second block (a2, b2) -> pixel (4i+2a+a2, 4j+2b+b2)
    m = hyper.shape[1]
    masks = masks.reshape(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, m, 4 * h, 4 * w)


def _skip_tokens(feat_s1: torch.Tensor, feat_s0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's high-resolution features in the token layout of :func:`_upscaled_masks`.

    Args:
        feat_s1: (1, C/4, 2h, 2w), added after the first transposed convolution.
        feat_s0: (1, C/8, 4h, 4w), added after the second.

    Returns:
        (h*w, 2, 2, C/4) and (h*w, 2, 2, 2, 2, C/8): pixel (2i+a, 2j+b) of ``feat_s1`` at
        [i*w+j, a, b], pixel (4i+2a+a2, 4j+2b+b2) of ``feat_s0`` at [i*w+j, a, b, a2, b2].
    """
    c1, h2, w2 = feat_s1.shape[1:]
    h, w = h2 // 2, w2 // 2
    s1 = feat_s1[0].reshape(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w, 2, 2, c1)
    c0 = feat_s0.shape[1]
    s0 = feat_s0[0].reshape(c0, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)
    return s1, s0.reshape(h * w, 2, 2, 2, 2, c0)


def _attend(attn: AttentionParts, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Plain multi-head attention with ``attn``'s projections: (B, T, C) inputs -> (B, T, C)."""
    q, k, v = (_heads(proj(x), attn.num_heads) for proj, x in zip(attn.projections, (q, k, v)))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attn.out_proj(_merge_heads(weights @ v))


@dataclass(frozen=True)
class AttentionParts:
    """One attention of a two-way transformer: ``C -> heads*d`` projections and the output."""

    q_proj: torch.nn.Linear
    k_proj: torch.nn.Linear
    v_proj: torch.nn.Linear
    out_proj: torch.nn.Linear
    num_heads: int

    @property
    def projections(self) -> tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj

    @classmethod
    def of(cls, module: torch.nn.Module) -> AttentionParts:
        """segment-anything's ``Attention`` or transformers' ``Sam2Attention``."""
        out = getattr(module, "out_proj", None) or module.o_proj
        heads = getattr(module, "num_heads", None) or module.num_attention_heads
        return cls(module.q_proj, module.k_proj, module.v_proj, out, int(heads))


@dataclass(frozen=True)
class LayerParts:
    """One two-way attention block."""

    self_attn: AttentionParts
    token_to_image: AttentionParts
    image_to_token: AttentionParts
    norms: tuple[torch.nn.LayerNorm, ...]  # after self-attention, cross, MLP, image update
    mlp: torch.nn.Module
    skip_first_layer_pe: bool


@dataclass(frozen=True)
class Upscaling:
    """Transposed convolution, layer norm, activation, transposed convolution, activation."""

    up1: torch.nn.ConvTranspose2d
    norm: torch.nn.Module  # has weight, bias, eps over the channels
    act1: torch.nn.Module
    up2: torch.nn.ConvTranspose2d
    act2: torch.nn.Module


@dataclass(frozen=True)
class DecoderParts:
    """What :class:`PromptBatchDecoder` reads of a SAM-family mask decoder.

    Attributes:
        layers: the two-way transformer's blocks.
        final_attn: the final token-to-image attention; ``final_norm`` its layer norm.
        output_tokens: (T0, C) the learned tokens put before the prompt tokens.
        iou_index: the IoU token's position among them.
        mask_index: the first mask token's position (the single-mask one; the multimask
            tokens follow it).
        num_mask_tokens: 1 + the number of multimask outputs.
        iou_head: (B, C) -> (B, num_mask_tokens) predicted IoU.
        hypernetworks: per mask token, (B, C) -> (B, C/8).
        upscaling: the upsampling layers.
        embed_points: (B, 2) XY foreground points -> (B, T, C) sparse prompt embeddings.
        no_mask: (C,) the dense embedding of "no mask prompt".
        dense_pe: () -> (1, C, h, w) the image-wide positional encoding.
        embedding_size: (h, w) of the image-embedding grid.
    """

    layers: list[LayerParts]
    final_attn: AttentionParts
    final_norm: torch.nn.LayerNorm
    output_tokens: torch.Tensor
    iou_index: int
    mask_index: int
    num_mask_tokens: int
    iou_head: torch.nn.Module
    hypernetworks: list[torch.nn.Module]
    upscaling: Upscaling
    embed_points: Callable[[torch.Tensor], torch.Tensor]
    no_mask: torch.Tensor
    dense_pe: Callable[[], torch.Tensor]
    embedding_size: tuple[int, int]


def segment_anything_parts(model: Sam) -> DecoderParts:
    """The decoder of a ``segment_anything.modeling.Sam``.

    Raises:
        ValueError: the decoder is not segment-anything's own ``MaskDecoder`` (variants such as
            HQ-SAM compute other things) with a ``TwoWayTransformer``.
    """
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    decoder, encoder = model.mask_decoder, model.prompt_encoder
    transformer = getattr(decoder, "transformer", None)
    if type(decoder) is not MaskDecoder or type(transformer) is not TwoWayTransformer:
        raise ValueError(
            "Expected segment-anything's MaskDecoder with a TwoWayTransformer, but got "
            f"{type(decoder).__name__} with {type(transformer).__name__}"
        )

    def embed_points(points: torch.Tensor) -> torch.Tensor:
        labels = torch.ones((len(points), 1), dtype=torch.int, device=points.device)
        sparse, _ = encoder(points=(points[:, None], labels), boxes=None, masks=None)
        return sparse

    up1, norm, act1, up2, act2 = decoder.output_upscaling
    return DecoderParts(
        layers=[
            LayerParts(
                AttentionParts.of(layer.self_attn),
                AttentionParts.of(layer.cross_attn_token_to_image),
                AttentionParts.of(layer.cross_attn_image_to_token),
                (layer.norm1, layer.norm2, layer.norm3, layer.norm4),
                layer.mlp,
                layer.skip_first_layer_pe,
            )
            for layer in transformer.layers
        ],
        final_attn=AttentionParts.of(transformer.final_attn_token_to_image),
        final_norm=transformer.norm_final_attn,
        output_tokens=torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]),
        iou_index=0,
        mask_index=1,
        num_mask_tokens=decoder.num_mask_tokens,
        iou_head=decoder.iou_prediction_head,
        hypernetworks=list(decoder.output_hypernetworks_mlps),
        upscaling=Upscaling(up1, norm, act1, up2, act2),
        embed_points=embed_points,
        no_mask=encoder.no_mask_embed.weight[0],
        dense_pe=encoder.get_dense_pe,
        embedding_size=tuple(encoder.image_embedding_size),
    )


# transformers' models whose mask decoder is SAM 2's (same modules, same forward).
SAM2_DECODER_MODELS = ("Sam2Model", "EdgeTamModel", "Sam3TrackerModel")


def sam2_parts(model) -> DecoderParts:
    """The decoder of a transformers ``Sam2Model``, ``EdgeTamModel`` or ``Sam3TrackerModel``.

    Raises:
        ValueError: another model class.
    """
    if type(model).__name__ not in SAM2_DECODER_MODELS:
        raise ValueError(
            f"Expected one of {', '.join(SAM2_DECODER_MODELS)}, but got {type(model).__name__}"
        )
    decoder, encoder = model.mask_decoder, model.prompt_encoder
    transformer = decoder.transformer

    def embed_points(points: torch.Tensor) -> torch.Tensor:
        labels = torch.ones((1, len(points), 1), dtype=torch.int64, device=points.device)
        sparse, _ = encoder(
            input_points=points[None, :, None, :],
            input_labels=labels,
            input_boxes=None,
            input_masks=None,
        )
        return sparse[0]

    return DecoderParts(
        layers=[
            LayerParts(
                AttentionParts.of(layer.self_attn),
                AttentionParts.of(layer.cross_attn_token_to_image),
                AttentionParts.of(layer.cross_attn_image_to_token),
                (layer.layer_norm1, layer.layer_norm2, layer.layer_norm3, layer.layer_norm4),
                layer.mlp,
                layer.skip_first_layer_pe,
            )
            for layer in transformer.layers
        ],
        final_attn=AttentionParts.of(transformer.final_attn_token_to_image),
        final_norm=transformer.layer_norm_final_attn,
        output_tokens=torch.cat(
            [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight]
        ),
        iou_index=1,
        mask_index=2,
        num_mask_tokens=decoder.num_mask_tokens,
        iou_head=decoder.iou_prediction_head,
        hypernetworks=list(decoder.output_hypernetworks_mlps),
        upscaling=Upscaling(
            decoder.upscale_conv1,
            decoder.upscale_layer_norm,
            decoder.activation,
            decoder.upscale_conv2,
            decoder.activation,
        ),
        embed_points=embed_points,
        no_mask=encoder.no_mask_embed.weight[0],
        dense_pe=model.get_image_wide_positional_embeddings,
        embedding_size=tuple(encoder.image_embedding_size),
    )


class PromptBatchDecoder:
    """A SAM-family mask decoder, run for batches of point prompts on one image.

    Args:
        model: a ``segment_anything.modeling.Sam`` whose decoder is segment-anything's own
            ``MaskDecoder``, or a transformers model of :data:`SAM2_DECODER_MODELS`; its
            decoder needs at least one two-way transformer layer (every published one has two).

    Raises:
        ValueError: for another decoder class or one without transformer layers.
    """

    def __init__(self, model) -> None:
        if type(model).__name__ in SAM2_DECODER_MODELS:
            self.parts = sam2_parts(model)
        else:
            self.parts = segment_anything_parts(model)
        if len(self.parts.layers) == 0:
            raise ValueError("Expected a mask decoder with at least one transformer layer")

    def prepare(self, features: torch.Tensor | list[torch.Tensor]) -> ImageContext:
        """The per-image part.

        Args:
            features: SAM: (1, C, h, w) the image encoder's output, of the size the prompt
                encoder was built for; SAM 2: ``get_image_embeddings``' list (high-resolution
                (1, C/8, 4h, 4w) and (1, C/4, 2h, 2w) maps, then the (1, C, h, w) embedding).

        Returns:
            What :meth:`decode` needs for every batch of this image; call :meth:`decode` under
            the same autocast setting.

        Raises:
            ValueError: for an embedding of another shape.
        """
        parts = self.parts
        skips = None
        if isinstance(features, (list, tuple)):
            *high_res, image_embedding = features
            if len(high_res) != 2:
                raise ValueError(
                    f"Expected 2 high-resolution feature maps and the image embedding, but got "
                    f"{len(features)} maps"
                )
            skips = _skip_tokens(high_res[1], high_res[0])
        else:
            image_embedding = features
        expected = (1, parts.no_mask.shape[0], *parts.embedding_size)
        if tuple(image_embedding.shape) != expected:
            raise ValueError(
                f"Expected `image_embedding` to be (1, C, h, w) = {expected}, but got shape "
                f"{tuple(image_embedding.shape)}"
            )
        if skips is not None and skips[0].shape[0] != expected[2] * expected[3]:
            raise ValueError(
                "Expected high-resolution maps 2x and 4x the image embedding's size, but got "
                f"{tuple(features[1].shape)} and {tuple(features[0].shape)}"
            )
        size = tuple(image_embedding.shape[-2:])
        src = (image_embedding + parts.no_mask.reshape(1, -1, 1, 1)).flatten(2)[0].T  # (HW, C)
        pe = parts.dense_pe().flatten(2)[0].T.to(src.dtype)
        first = parts.layers[0]
        t2i, i2t = first.token_to_image, first.image_to_token
        later_t2i = [layer.token_to_image for layer in parts.layers[1:]] + [parts.final_attn]
        return ImageContext(
            src=src,
            size=size,
            first_keys=_heads(t2i.k_proj(src + pe), t2i.num_heads),
            first_values=_heads(t2i.v_proj(src), t2i.num_heads),
            first_image_queries=_heads(i2t.q_proj(src + pe), i2t.num_heads),
            pe_keys=[_heads(pe @ a.k_proj.weight.T, a.num_heads) for a in later_t2i],
            pe_image_queries=[
                _heads(pe @ layer.image_to_token.q_proj.weight.T, layer.image_to_token.num_heads)
                for layer in parts.layers[1:]
            ],
            skips=skips,
        )

    def decode(
        self, context: ImageContext, point_coords: torch.Tensor, iou_threshold: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The multimask outputs of B single-point prompts, those with predicted IoU kept.

        Args:
            context: from :meth:`prepare`.
            point_coords: (B, 2) XY in the model's input frame (foreground points).
            iou_threshold: keep masks whose predicted IoU is above this; <= 0 keeps all (as
                ``SamAutomaticMaskGenerator``'s ``pred_iou_thresh``).

        Returns:
            low_res: (K, 4h, 4w) logits of the kept masks, prompt-major (prompt 0's kept masks
                first), as the module's ``masks[:, 1:]`` (multimask output) flattened and
                filtered.
            iou: (K,) their predicted IoU.
            keep: (B*M,) bool, which of the B*M masks were kept (M = 3 multimask outputs for
                every published SAM).
        """
        parts = self.parts
        if len(point_coords) == 0:
            side = (4 * context.size[0], 4 * context.size[1])
            empty = context.src.new_zeros((0, *side))
            return empty, empty.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=empty.device)
        sparse = parts.embed_points(point_coords)
        output_tokens = parts.output_tokens.expand(len(sparse), -1, -1)
        tokens = torch.cat([output_tokens, sparse.to(output_tokens.dtype)], dim=1)  # (B, T, C)
        queries, keys = self._transformer(context, tokens)

        iou = parts.iou_head(queries[:, parts.iou_index])[:, 1:]  # (B, M)
        first = parts.mask_index + 1  # the multimask tokens
        mask_tokens = queries[:, first : parts.mask_index + parts.num_mask_tokens]  # (B, M, C)
        if iou_threshold <= 0.0:  # no filter: no indexing, no host synchronisation
            keep = torch.ones(iou.numel(), dtype=torch.bool, device=iou.device)
            masks = self._masks(context, keys, mask_tokens)
            return masks.flatten(0, 1), iou.flatten(), keep
        passing = iou > iou_threshold  # (B, M)
        prompts = passing.any(1).nonzero()[:, 0]
        if len(prompts) < len(passing):  # upsample only prompts with a passing mask
            keys, mask_tokens = keys[prompts], mask_tokens[prompts]
            iou, passing_kept = iou[prompts], passing[prompts]
        else:
            passing_kept = passing
        masks = self._masks(context, keys, mask_tokens)
        return masks[passing_kept], iou[passing_kept], passing.flatten()

    def _masks(
        self, context: ImageContext, keys: torch.Tensor, mask_tokens: torch.Tensor
    ) -> torch.Tensor:
        """(B, M, 4h, 4w) logits from (B, HW, C) image tokens and (B, M, C) mask tokens."""
        hypernetworks = self.parts.hypernetworks[1:]
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(hypernetworks)], dim=1
        )  # (B, M, C/8)
        return _upscaled_masks(self.parts.upscaling, keys, hyper, context.size, context.skips)

    def _transformer(
        self, context: ImageContext, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``TwoWayTransformer.forward``: (B, T, C) tokens and (B, HW, C) image tokens."""
        queries, keys = tokens, None  # None: the shared first-layer image tokens
        for index, layer in enumerate(self.parts.layers):
            norm1, norm2, norm3, norm4 = layer.norms
            if layer.skip_first_layer_pe:
                queries = _attend(layer.self_attn, queries, queries, queries)
            else:
                q = queries + tokens
                queries = queries + _attend(layer.self_attn, q, q, queries)
            queries = norm1(queries)

            q = queries + tokens
            t2i = layer.token_to_image
            if keys is None:
                attn_out = _tokens_to_shared_image(t2i, q, context.first_keys, context.first_values)
            else:
                attn_out = _tokens_to_image(t2i, q, keys, context.pe_keys[index - 1])
            queries = norm2(queries + attn_out)
            queries = norm3(queries + layer.mlp(queries))

            q = queries + tokens
            i2t = layer.image_to_token
            if keys is None:
                k = _heads(i2t.k_proj(q), i2t.num_heads)  # (B, heads, T, d)
                scores = _shared_image_scores(
                    k / math.sqrt(k.shape[-1]), context.first_image_queries
                )
                keys = context.src
            else:
                pe_queries = context.pe_image_queries[index - 1]
                scores = _scores_against_image(
                    i2t.k_proj, i2t.q_proj, i2t.num_heads, q, keys, pe_queries
                )
            keys = norm4(_image_to_tokens(i2t, scores, queries, keys))
            if torch.is_autocast_enabled(keys.device.type):
                # CUDA autocast runs layer_norm in float32, and every later use of the image
                # tokens (matrix products only) would cast all of them again: cast once.
                keys = keys.to(torch.get_autocast_dtype(keys.device.type))

        attn_out = _tokens_to_image(
            self.parts.final_attn, queries + tokens, keys, context.pe_keys[-1]
        )
        return self.parts.final_norm(queries + attn_out), keys
