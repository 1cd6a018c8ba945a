"""Benchmark settings: which models, image sizes and mask counts each preset uses.

``tiny``: shrunken versions of the real architectures (same families, same loaders), for the
smoke test and quick checks. ``small``: the real architectures of the light models at a small
image size, for CPUs. ``original``: the original SSA's settings (1500x2250 images, SAM ViT-H at
64 points per side with one crop layer, Segformer-B5, the default SSA-engine models), for GPUs.
Every model has random weights (``fiftyone_ssa.testing.random_init``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fiftyone_ssa.models.engine.models import DEFAULT_ENGINE_MODELS, LIGHT_ENGINE_MODELS
from fiftyone_ssa.models.masks.branches import SSA_MASK_GENERATOR_DEFAULTS

# Overrides that shrink each family while keeping its structure (see random_init).
_TINY_SWIN = {
    "image_size": 64,
    "embed_dim": 16,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 1, 1],
    "window_size": 2,
}
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
_TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}

TINY_OVERRIDES: dict[str, dict] = {
    "segformer": {
        "model": {
            "depths": [1, 1, 1, 1],
            "hidden_sizes": [8, 16, 24, 32],
            "decoder_hidden_size": 16,
        },
        "processor": {"size": {"height": 64, "width": 64}},
    },
    "oneformer": {
        "model": {
            "backbone_config": _TINY_SWIN,
            "num_queries": 20,
            "hidden_dim": 32,
            "conv_dim": 32,
            "mask_dim": 32,
            "encoder_feedforward_dim": 32,
            "dim_feedforward": 32,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "num_attention_heads": 2,
            "text_encoder_width": 32,
            "text_encoder_num_layers": 1,
            "text_encoder_proj_layers": 1,
            "text_encoder_n_ctx": 2,
            "query_dec_layers": 1,
        },
        "processor": {
            "image_processor": {"size": {"shortest_edge": 64, "longest_edge": 128}, "num_text": 18}
        },
    },
    # SAM 3: the processor's 1008 frame, 14-pixel patches, 24-patch windows and 288 x 288 masks
    # kept; widths, depths and queries shrunk in the detector and the tracker.
    "sam3": {
        "model": {
            "detector_config": {
                "vision_config": {
                    "backbone_config": {
                        "hidden_size": 16,
                        "intermediate_size": 32,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 1,
                        "global_attn_indexes": [1],
                    },
                    "fpn_hidden_size": 32,
                },
                "text_config": {
                    "hidden_size": 16,
                    "intermediate_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "projection_dim": 16,
                },
                "geometry_encoder_config": {
                    "hidden_size": 32,
                    "num_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                },
                "detr_encoder_config": {
                    "hidden_size": 32,
                    "num_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                },
                "detr_decoder_config": {
                    "hidden_size": 32,
                    "num_layers": 1,
                    "num_queries": 8,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                },
                "mask_decoder_config": {"hidden_size": 32, "num_attention_heads": 2},
            },
            "tracker_config": {
                "vision_config": {
                    "backbone_config": {
                        "hidden_size": 16,
                        "intermediate_size": 32,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 1,
                        "global_attn_indexes": [1],
                    },
                    "fpn_hidden_size": 32,
                },
                "prompt_encoder_config": {"hidden_size": 32},
                "mask_decoder_config": {
                    "hidden_size": 32,
                    "mlp_dim": 64,
                    "num_attention_heads": 2,
                    "iou_head_hidden_dim": 32,
                },
                "memory_attention_hidden_size": 32,
                "memory_attention_num_layers": 1,
                "memory_attention_feed_forward_hidden_size": 64,
                "memory_encoder_hidden_size": 32,
                "memory_encoder_output_channels": 16,
                "mask_downsampler_embed_dim": 32,
                "memory_fuser_embed_dim": 32,
                "memory_fuser_intermediate_dim": 64,
            },
        },
    },
    "clipseg": {
        "model": {
            "text_config": {**_TINY_TEXT, "num_attention_heads": 2},
            "vision_config": {**_TINY_VISION, "num_attention_heads": 2, "patch_size": 16},
            "projection_dim": 32,
            "extract_layers": [0, 1],
            "reduce_dim": 16,
            "decoder_num_attention_heads": 2,
            "decoder_intermediate_size": 32,
        },
        "processor": {"size": {"height": 64, "width": 64}},
    },
    "blip": {
        "model": {
            "text_config": {**_TINY_TEXT, "num_attention_heads": 2, "encoder_hidden_size": 32},
            "vision_config": {**_TINY_VISION, "num_attention_heads": 2, "image_size": 64},
            "projection_dim": 32,
        },
        "processor": {"size": {"height": 64, "width": 64}},
    },
    "open_clip": {
        "model": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 32},
            "text_cfg": {"width": 32, "heads": 2, "layers": 1},
        },
    },
    "sam": {
        "model": {
            "encoder_embed_dim": 32,
            "encoder_depth": 1,
            "encoder_num_heads": 2,
            "encoder_global_attn_indexes": [0],
            "decoder_depth": 1,
            "decoder_mlp_dim": 64,
        }
    },
}


@dataclass(frozen=True)
class BenchPreset:
    """What one benchmark preset runs.

    Attributes:
        name: ``tiny``, ``small`` or ``original``.
        height: image height.
        width: image width.
        tiny_models: shrink every model with :data:`TINY_OVERRIDES`.
        sam: SAM preset (random weights).
        sam_options: mask generator settings.
        semantic: semantic branch preset (close-set SSA).
        engine: SSA-engine model presets (``ade``, ``coco``, ``captioner``, ``clip``,
            ``clipseg``).
        engine_masks: synthetic masks per image fed to SSA-engine.
        max_new_tokens: BLIP's caption length limit.
        voting_size: (H, W) of the voting benchmark's images.
        voting_masks: masks per image of the voting benchmark.
    """

    name: str
    height: int
    width: int
    tiny_models: bool
    sam: str
    sam_options: dict
    semantic: str
    engine: dict
    engine_masks: int
    max_new_tokens: int
    voting_size: tuple[int, int]
    voting_masks: int


# The project's own settings (the original's), so the benchmark measures what users run.
LIGHT_ENGINE = dict(LIGHT_ENGINE_MODELS)
DEFAULT_ENGINE = dict(DEFAULT_ENGINE_MODELS)
ORIGINAL_SAM_OPTIONS = dict(SSA_MASK_GENERATOR_DEFAULTS)

BENCH_PRESETS: dict[str, BenchPreset] = {
    "tiny": BenchPreset(
        "tiny",
        96,
        128,
        True,
        "sam-vit-b",
        {"points_per_side": 4, "crop_n_layers": 0, "pred_iou_thresh": 0.0},
        "segformer-b0-ade20k",
        LIGHT_ENGINE,
        3,
        4,
        (96, 128),
        5,
    ),
    "small": BenchPreset(
        "small",
        480,
        720,
        False,
        "sam-vit-b",
        {**ORIGINAL_SAM_OPTIONS, "points_per_side": 16, "crop_n_layers": 0},
        "segformer-b0-ade20k",
        LIGHT_ENGINE,
        8,
        20,
        (1500, 2250),
        100,
    ),
    "original": BenchPreset(
        "original",
        1500,
        2250,
        False,
        "sam-vit-h",
        ORIGINAL_SAM_OPTIONS,
        "segformer-b5-ade20k",
        DEFAULT_ENGINE,
        100,
        20,
        (1500, 2250),
        100,
    ),
}
