"""Semantic branches side by side: s/image of real-size random-weight models on one image.

Each preset's real architecture (``fiftyone_ssa/testing/configs``) is saved with random weights
and loaded through ``create_branch``, as real weights are; the branches then label the same
image in turn (``--repeats`` rounds, one warm-up each first), so that every model meets the
same machine state.

Usage: ``python -m benchmarks.bench_semantic [--models eomt-large-ade20k,oneformer-ade20k-swin-large,
segformer-b5-ade20k] [--size 512x683] [--repeats 2] [--device cpu] [--cache DIR]
[--markdown out.md]`` (fp32 on the CPU; bfloat16 autocast on CUDA, as the branches run there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import Results
from benchmarks.presets import TINY_OVERRIDES
from fiftyone_ssa.testing import random_init

DEFAULT_MODELS = ("eomt-large-ade20k", "oneformer-ade20k-swin-large", "segformer-b5-ade20k")

# Shrunken Mask2Former and EoMT for the smoke test (processor sizes kept: EoMT's position
# embeddings are sized for its processor's windows).
SMALL_OVERRIDES = {
    **TINY_OVERRIDES,
    "mask2former": {
        "model": {
            "backbone_config": {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
            "num_queries": 4,
            "hidden_dim": 32,
            "feature_size": 32,
            "mask_feature_size": 32,
            "encoder_feedforward_dim": 16,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "dim_feedforward": 16,
            "num_attention_heads": 2,
        }
    },
    "eomt": {
        "model": {
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_blocks": 1,
            "num_queries": 4,
        }
    },
}


def saved_model(name: str, root: Path, tiny: bool) -> Path:
    """``name``'s random-weight model saved under ``root`` (reused while its config is the same)."""
    family = random_init.resolve_model_config(name)["family"]
    overrides = SMALL_OVERRIDES[family] if tiny else None
    config = random_init.resolve_model_config(name, overrides)
    stamp = hashlib.sha256(
        Path(random_init.__file__).read_bytes() + json.dumps(config, sort_keys=True).encode()
    ).hexdigest()
    directory = root / (name + ("-tiny" if tiny else ""))
    marker = directory / ".complete"
    if not marker.is_file() or marker.read_text() != stamp:
        print(f"saving random {name} to {directory}", file=sys.stderr, flush=True)
        shutil.rmtree(directory, ignore_errors=True)
        random_init.save_random_model(name, directory, seed=0, overrides=overrides)
        marker.write_text(stamp)
    return directory


def run(
    models: tuple[str, ...] = DEFAULT_MODELS,
    size: tuple[int, int] = (512, 683),
    repeats: int = 2,
    device: str | None = None,
    cache: str | Path | None = None,
    tiny: bool = False,
) -> Results:
    """Times each model's ``predict`` on one (H, W) image, ``repeats`` rounds, in turn.

    Args:
        models: presets with a kept config (``random_init.list_model_configs``).
        size: the image's (H, W).
        repeats: timed rounds; each model runs once per round.
        device: torch device; CUDA when available by default.
        cache: where the random models are saved (a temporary directory by default).
        tiny: shrunken architectures (the smoke test).

    Returns:
        One row per model and round; notes with each model's mean s/image and ratios.
    """
    from fiftyone_ssa.models.registry import create_branch

    unknown = [m for m in models if m not in random_init.list_model_configs()]
    if not models or unknown:
        raise ValueError(
            f"Expected presets with a kept config, e.g. {', '.join(DEFAULT_MODELS)}, but got "
            f"{list(models)!r}"
        )
    if repeats < 1 or min(size) < 1:
        raise ValueError(f"Expected repeats >= 1 and a positive size, but got {repeats}, {size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    root = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="bench-semantic-"))
    branches = {}
    for name in models:
        branches[name] = create_branch(str(saved_model(name, root, tiny)), device=device)
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    results = Results(
        f"semantic branches on one {size[0]}x{size[1]} image",
        device,
        f"real-size architectures{' (shrunken)' if tiny else ''} with random weights, loaded "
        f"by create_branch; {repeats} rounds, the models in turn, after one warm-up each",
    )
    with torch.inference_mode():
        for branch in branches.values():
            branch.predict([image])  # warm-up
        for repeat in range(repeats):
            for name, branch in branches.items():
                with results.stage(f"{name}, run {repeat + 1}", 1):
                    (class_map,) = branch.predict([image])
                if tuple(class_map.shape) != size:
                    raise RuntimeError(f"{name} gave a {tuple(class_map.shape)} map for {size}")
    means = {
        name: sum(r.seconds for r in results.rows if r.stage.startswith(name + ",")) / repeats
        for name in models
    }
    fastest = min(means.values())
    for name, branch in branches.items():
        count = sum(p.numel() for p in branch.model.parameters())
        results.notes.append(
            f"{name} ({type(branch).__name__}, {count / 1e6:.1f} M parameters): "
            f"{means[name]:.3f} s/image, {means[name] / fastest:.2f}x the fastest"
        )
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", default="512x683", help="HxW of the image")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache", default=None, help="where random models are saved and reused")
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    results = run(
        tuple(m for m in args.models.split(",") if m),
        (height, width),
        args.repeats,
        args.device,
        args.cache,
    )
    results.report(args.markdown)


if __name__ == "__main__":
    main()
