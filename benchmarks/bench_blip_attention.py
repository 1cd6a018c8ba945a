"""BLIP's vision encoder: transformers' eager attention vs ours through SDPA, side by side.

``BlipCaptioner`` switches the encoder's attention modules to
``scaled_dot_product_attention`` (``fiftyone_ssa.models.engine.captioner.use_sdpa_attention``); this
times the real-size encoder (random weights) both ways on the same crops, alternating, and
reports the largest difference of the outputs.

Usage: ``python -m benchmarks.bench_blip_attention [--model blip-base|blip-large] [--device cuda]
[--crops 8] [--repeats 2] [--markdown out.md]`` (fp32 on the CPU, fp16 on CUDA as the captioner
runs there).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.harness import Results
from fiftyone_ssa.models.engine.captioner import use_sdpa_attention
from fiftyone_ssa.testing import random_init


def run(
    model: str = "blip-base",
    device: str | None = None,
    crops: int = 8,
    repeats: int = 2,
    overrides: dict | None = None,
) -> Results:
    """Times the encoder with each attention over ``crops`` crops, ``repeats`` times each.

    ``overrides`` shrink the model (``random_init.resolve_model_config``; the smoke test).
    """
    if crops < 1 or repeats < 1:
        raise ValueError(f"Expected `crops` and `repeats` >= 1, but got {crops}, {repeats}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    encoder = random_init.build_random_model(model, overrides).vision_model.to(device, dtype)
    size = encoder.config.image_size
    pixels = torch.randn(crops, 3, size, size, device=device, dtype=dtype)
    eager_class = type(encoder.encoder.layers[0].self_attn)
    use_sdpa_attention(encoder)
    sdpa_class = type(encoder.encoder.layers[0].self_attn)
    attention = [layer.self_attn for layer in encoder.encoder.layers]

    def encode(cls):
        for module in attention:
            module.__class__ = cls
        return encoder(pixel_values=pixels).last_hidden_state

    results = Results(
        f"{model} vision encoder, {crops} crops at {size}x{size}, {str(dtype)[6:]}",
        device,
        "real-size encoder with random weights; the two attentions alternate",
    )
    seconds = {"eager": 0.0, "sdpa": 0.0}
    with torch.inference_mode():
        outputs = {
            name: encode(cls) for name, cls in [("eager", eager_class), ("sdpa", sdpa_class)]
        }
        for repeat in range(repeats):
            for name, cls in [("eager", eager_class), ("sdpa", sdpa_class)]:
                label = f"{name} attention, run {repeat + 1}"
                with results.stage(label, crops):
                    encode(cls)
                seconds[name] += results.row(label).seconds
    difference = (outputs["eager"] - outputs["sdpa"]).abs().max().item()
    scale = outputs["eager"].abs().max().item()
    results.notes.append(
        f"SDPA {seconds['eager'] / seconds['sdpa']:.2f}x eager over {repeats} runs each; "
        f"largest output difference {difference:.2e} (outputs up to {scale:.1f})"
    )
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="blip-base", choices=["blip-base", "blip-large"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--crops", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    run(args.model, args.device, args.crops, args.repeats).report(args.markdown)


if __name__ == "__main__":
    main()
