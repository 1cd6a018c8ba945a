"""SSA and SSA-engine, stage by stage, against the original's per-mask pipeline in one run.

Times image decoding, SAM (image encoder; mask decoding and post-processing), the semantic
branch, voting and painting (the original's per-mask loop from RLE, ours from RLE in run space,
ours on dense masks on the device), SSA-engine (ours, batched, per model; the original's
per-mask pipeline at batch size 1 in fp32, per model, on the same models and masks) and writing
the labels to the FiftyOne database. Every model has the real architecture of its preset with
random weights (``fiftyone_ssa.testing.random_init``); no weights are needed to measure speed.

Usage::

    python -m benchmarks.run --preset small --device cpu [--markdown out.md]
    python -m benchmarks.run --preset original --device cuda   # the original's settings

Presets are in :mod:`benchmarks.presets`. Random models are saved once under ``--cache``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.harness import MethodTimer, Results, Row, sync
from benchmarks.presets import BENCH_PRESETS, TINY_OVERRIDES, BenchPreset
from benchmarks.reference_ssa import reference_engine, reference_vote_and_paint
from benchmarks.voting_inputs import make_voting_inputs
from fiftyone_ssa.core.rle import masks_to_rles
from fiftyone_ssa.models.engine.nouns import NounExtractor
from fiftyone_ssa.testing import random_init

ENGINE_PARTS = {
    "ade": "OneFormer ADE20K",
    "coco": "OneFormer COCO",
    "captioner": "BLIP captioner",
    "nouns": "spaCy nouns",
    "clip": "CLIP filter",
    "clipseg": "CLIPSeg decider",
}


def synthetic_photo(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8: smooth gradients, flat discs and noise (JPEG-compresses like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = np.stack(
        [(xx / width) * 200, (yy / height) * 200, ((xx + yy) / (width + height)) * 255], -1
    )
    for _ in range(12):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = rng.integers(max(2, min(height, width) // 20), max(3, min(height, width) // 4))
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def ellipse_masks(height: int, width: int, n: int, seed: int) -> torch.Tensor:
    """(n, H, W) bool ellipses of varied sizes (stand-ins for SAM's or SA-1B's masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((n, height, width), dtype=bool)
    for i in range(n):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry = rng.integers(max(2, height // 30), max(3, height // 4))
        rx = rng.integers(max(2, width // 30), max(3, width // 4))
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return torch.from_numpy(masks)


def random_spacy_pipeline():
    """spaCy's English tagger + parser (en_core_web_sm's architecture) with random weights.

    ``en_core_web_sm`` cannot be downloaded offline; the pipeline is initialised from two tiny
    annotated sentences, so it has the real model sizes (HashEmbed CNN, width 96, depth 4) but
    random predictions. Tags are mapped to parts of speech, so noun chunks work.
    """
    import spacy
    from spacy.tokens import Doc
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("tagger")
    nlp.add_pipe("parser")
    ruler = nlp.add_pipe("attribute_ruler")
    tags = ["DET", "ADJ", "NOUN", "ADP", "VERB", "PRON"]
    ruler.load_from_tag_map({t: {"POS": t} for t in tags})
    sentences = [
        (["a", "red", "car", "on", "the", "road"], ["DET", "ADJ", "NOUN", "ADP", "DET", "NOUN"]),
        (["it", "sees", "a", "dog"], ["PRON", "VERB", "DET", "NOUN"]),
    ]
    heads = [[2, 2, 2, 2, 5, 3], [1, 1, 3, 1]]
    deps = [["det", "amod", "ROOT", "prep", "det", "pobj"], ["nsubj", "ROOT", "det", "dobj"]]
    examples = []
    for (words, word_tags), h, d in zip(sentences, heads, deps):
        reference = Doc(nlp.vocab, words=words, tags=word_tags, heads=h, deps=d)
        examples.append(Example(nlp.make_doc(" ".join(words)), reference))
    nlp.initialize(lambda: examples)
    return nlp


class StandInCaptionNouns(NounExtractor):
    """The random spaCy pipeline's nouns, or ``per_caption`` stand-ins where it finds none.

    A random parser finds no noun chunks in a random BLIP's captions, so every mask's candidates
    would be its two close-set names alone (2 CLIPSeg prompts), where trained models' captions
    ("a man riding a horse on a beach") add a few nouns and give the top-k's 3 prompts. The
    pipeline still runs (its cost is measured); then each caption without nouns gets
    ``per_caption`` names drawn from ``names``, seeded by the caption's text so that ours and the
    reference draw the same names for the same caption.

    Args:
        nlp: the spaCy pipeline.
        names: the names to draw from (the ADE20K classes).
        per_caption: stand-in nouns per caption (0: none).
    """

    def __init__(self, nlp, names: list[str], per_caption: int):
        super().__init__(nlp)
        self.names = sorted(names)
        self.per_caption = min(per_caption, len(self.names))

    def extract(self, texts):
        phrases = super().extract(texts)
        return [
            found or random.Random(zlib.crc32(text.encode())).sample(self.names, self.per_caption)
            for text, found in zip(texts, phrases)
        ]


class ModelCache:
    """Random-weight models of the presets, saved once in ``root`` and reused."""

    def __init__(self, root: Path, tiny: bool):
        self.root = Path(root)
        self.tiny = tiny

    def overrides(self, name: str) -> dict | None:
        family = random_init.resolve_model_config(name)["family"]
        return TINY_OVERRIDES[family] if self.tiny else None

    def stamp(self, name: str) -> str:
        """Changes whenever the preset's config or the way random models are built changes."""
        config = random_init.resolve_model_config(name, self.overrides(name))
        source = Path(random_init.__file__).read_bytes()
        return hashlib.sha256(source + json.dumps(config, sort_keys=True).encode()).hexdigest()

    def directory(self, name: str) -> Path:
        directory = self.root / (name + ("-tiny" if self.tiny else ""))
        marker, stamp = directory / ".complete", self.stamp(name)
        if not marker.is_file() or marker.read_text() != stamp:
            print(f"saving random {name} to {directory}", file=sys.stderr, flush=True)
            shutil.rmtree(directory, ignore_errors=True)
            random_init.save_random_model(name, directory, seed=0, overrides=self.overrides(name))
            marker.write_text(stamp)
        return directory

    def sam(self, name: str, device: torch.device):
        torch.manual_seed(0)
        return random_init.build_random_model(name, self.overrides(name)).to(device)


def load_engine_models(
    preset: BenchPreset, cache: ModelCache, device, nlp, half: bool, caption_nouns: int
):
    from fiftyone_ssa.models.engine.models import EngineModels

    paths = {role: str(cache.directory(name)) for role, name in preset.engine.items()}
    models = EngineModels.load(device=device, spacy_model=nlp, half=half, **paths)
    models.captioner.max_new_tokens = preset.max_new_tokens
    names = list(models.ade.classes.values())
    return dataclasses.replace(models, nouns=StandInCaptionNouns(nlp, names, caption_nouns))


def bench_decode(results: Results, images: list[np.ndarray], workdir: Path) -> list[np.ndarray]:
    from fiftyone_ssa.core.images import read_rgb

    paths = []
    for i, image in enumerate(images):
        paths.append(workdir / f"image_{i}.jpg")
        Image.fromarray(image).save(paths[-1], quality=90)
    with results.stage("image decode (JPEG -> RGB)", len(images)):
        decoded = [read_rgb(p) for p in paths]
    return decoded


def bench_sam(results, preset, cache, images, device) -> int:
    from fiftyone_ssa.models.masks.branches import SamMaskBranch

    model = cache.sam(preset.sam, device)
    branch = SamMaskBranch(model, name=preset.sam, fast=True, **preset.sam_options)
    branch.generate(images[0][:64, :64])  # warm-up (allocations, kernels)
    timer = MethodTimer(device)
    timer.wrap(branch._generator, "_embed", "encoder")
    masks = 0
    with results.stage(f"SAM mask generation ({preset.sam}, total)", len(images)) as row:
        for image in images:
            masks += len(branch.generate(image))
    row.masks = masks
    encoder = timer.seconds.get("encoder", 0.0)
    results.rows.append(
        Row("  SAM image encoder", encoder, len(images), 0, row.host_peak_mb, row.gpu_peak_mb)
    )
    results.rows.append(
        Row(
            "  SAM mask decoding + post-processing",
            row.seconds - encoder,
            len(images),
            masks,
            row.host_peak_mb,
            row.gpu_peak_mb,
        )
    )
    del branch, model
    return masks


def bench_semantic(results, preset, cache, images, device) -> list[torch.Tensor]:
    from fiftyone_ssa.models.registry import create_branch

    branch = create_branch(str(cache.directory(preset.semantic)), device=device)
    branch.predict([images[0][:64, :64]])  # warm-up
    with results.stage(f"semantic branch ({preset.semantic})", len(images)):
        maps = [branch.predict([image])[0] for image in images]
    return maps


def bench_voting(results, preset, device, n_images: int, repeats: int = 2) -> None:
    from fiftyone_ssa.core.rle_voting import vote_and_paint_rles
    from fiftyone_ssa.core.voting import paint_masks, painting_order, vote_mask_classes

    h, w = preset.voting_size
    rng = np.random.default_rng(0)
    inputs = [make_voting_inputs(rng, h, w, preset.voting_masks, 150) for _ in range(n_images)]
    cases = [(torch.from_numpy(c).to(device), m, r) for c, m, r in inputs]
    total = n_images * preset.voting_masks * repeats

    def dense(masks, class_map):
        vote = vote_mask_classes(masks, class_map, 150)
        return paint_masks(class_map, masks, vote.labels, painting_order(vote.areas))

    outputs = {}
    with results.stage("voting+painting: reference (per mask, RLE)", n_images * repeats) as ref:
        for i, (class_map, _, rles) in enumerate(cases):
            for _ in range(repeats):
                outputs[("ref", i)] = reference_vote_and_paint(rles, class_map)
    ref.masks = total
    with results.stage("voting+painting: ours from RLE (runs)", n_images * repeats) as ours:
        for i, (class_map, _, rles) in enumerate(cases):
            for _ in range(repeats):
                outputs[("rle", i)] = vote_and_paint_rles(rles, class_map, 150)[1]
    ours.masks = total
    ours.note = f"{ref.seconds / ours.seconds:.1f}x the reference"
    device_masks = [torch.from_numpy(m).to(device) for _, m, _ in cases]
    sync(device)
    with results.stage("voting+painting: ours, masks on device", n_images * repeats) as dev:
        for i, (class_map, _, _) in enumerate(cases):
            for _ in range(repeats):
                outputs[("dense", i)] = dense(device_masks[i], class_map)
    dev.masks = total
    dev.note = f"{ref.seconds / dev.seconds:.1f}x the reference"
    for i in range(n_images):
        if not torch.equal(outputs[("rle", i)], outputs[("dense", i)]):
            raise RuntimeError("voting from RLE and on dense masks disagree")
    agree = np.mean(
        [
            float((outputs[("ref", i)] == outputs[("rle", i)]).float().mean())
            for i in range(n_images)
        ]
    )
    results.notes.append(
        f"voting: {h}x{w}, {preset.voting_masks} masks, 150 classes, {n_images} images x "
        f"{repeats} repeats; ours identical from RLE and dense; pixels equal to the reference "
        f"(whose top-1 may break ties differently): {agree:.6f}"
    )


def bench_engine(results, preset, cache, images, device, nlp, caption_nouns: int) -> list:
    from fiftyone_ssa.models.engine.models import label_masks

    half = device.type == "cuda"
    models = load_engine_models(preset, cache, device, nlp, half, caption_nouns)
    reference_models = (
        load_engine_models(preset, cache, device, nlp, False, caption_nouns) if half else models
    )
    h, w = images[0].shape[:2]
    masks = [ellipse_masks(h, w, preset.engine_masks, seed=i) for i in range(len(images))]
    n_masks = sum(int(m.shape[0]) for m in masks)
    label_masks(models, [images[0]], [masks[0][:2]])  # warm-up
    timer = MethodTimer(device)
    for role, method in [
        ("ade", "predict"),
        ("coco", "predict"),
        ("captioner", "caption"),
        ("nouns", "extract"),
        ("clip", "top_k"),
        ("clipseg", "decide"),
    ]:
        timer.wrap(getattr(models, role), method, role)
    with results.stage("SSA-engine: ours (batched)", len(images), n_masks) as ours:
        labels = [label_masks(models, [im], [m])[0] for im, m in zip(images, masks)]
    for role, name in ENGINE_PARTS.items():
        seconds = timer.seconds.get(role, 0.0)
        results.rows.append(Row(f"  ours: {name}", seconds, len(images), n_masks))
    rles = [masks_to_rles(m) for m in masks]
    reference_engine(reference_models, images[0], rles[0][:2], 3, preset.max_new_tokens)  # warm-up
    timings: dict[str, float] = {}
    reference = []
    with results.stage("SSA-engine: reference (per mask, bs 1)", len(images), n_masks) as ref:
        for image, image_rles in zip(images, rles):
            reference += reference_engine(
                reference_models, image, image_rles, 3, preset.max_new_tokens, timings
            )
    for role, name in {"decode": "RLE decode", **ENGINE_PARTS}.items():
        seconds = timings.get(role, 0.0)
        results.rows.append(Row(f"  reference: {name}", seconds, len(images), n_masks))
    per_mask = {
        role: (timings.get(role, 0.0) / max(timer.seconds.get(role, 0.0), 1e-9))
        for role in ("captioner", "clip", "clipseg")
    }
    ours.note = f"{ref.seconds / ours.seconds:.1f}x the reference's masks/s"
    # Both OneFormers run once per image; everything else once per mask (ratio grows with masks).
    ours_image = sum(timer.seconds.get(role, 0.0) for role in ("ade", "coco")) / len(images)
    ref_image = sum(timings.get(role, 0.0) for role in ("ade", "coco")) / len(images)
    ours_mask = (ours.seconds - ours_image * len(images)) / max(n_masks, 1)
    ref_mask = (ref.seconds - ref_image * len(images)) / max(n_masks, 1)
    projected = (ref_image + 100 * ref_mask) / (ours_image + 100 * ours_mask)
    results.notes.append(
        f"SSA-engine split: per image (both OneFormers) ours {ours_image:.2f} s, reference "
        f"{ref_image:.2f} s; per mask (the rest) ours {ours_mask:.3f} s, reference "
        f"{ref_mask:.3f} s ({ref_mask / ours_mask:.1f}x); projected from these at 100 masks "
        f"per image (the original's reported average, not run): {projected:.1f}x"
    )
    results.notes.append(
        f"SSA-engine: {len(images)} images {h}x{w}, {preset.engine_masks} ellipse masks each, "
        f"models {', '.join(preset.engine.values())}, spaCy tagger+parser (random; "
        f"{caption_nouns} stand-in nouns from ADE20K's names for a caption where it finds "
        f"none), BLIP "
        f"max_new_tokens={preset.max_new_tokens}; ours {'fp16/bf16' if half else 'fp32'}, "
        f"reference fp32; per-model ratios: "
        + ", ".join(f"{k} {v:.1f}x" for k, v in per_mask.items())
    )
    results.notes.append(engine_agreement(labels, reference))
    return list(zip(masks, labels))


def engine_agreement(labels: list, reference: list[dict]) -> str:
    """How often ours and the reference give the same caption, proposals and class, per mask.

    With random weights CLIPSeg's prompts split a mask's pixels about evenly, so the class flips
    with the slightest difference in the crops' pixels (PIL's resize in the reference, torch's in
    ours); captions and proposals are the meaningful figures there.

    Args:
        labels: our ``MaskLabels``, one per image.
        reference: the reference's per-mask dicts, image by image.
    """
    ours = [
        (caption, proposals, name)
        for image in labels
        for caption, proposals, name in zip(
            image.captions, image.class_proposals, image.class_names
        )
    ]
    theirs = [(r["caption"], r["class_proposals"], r["class_name"]) for r in reference]
    n = max(len(ours), 1)
    same = [sum(a[i] == b[i] for a, b in zip(ours, theirs)) / n for i in range(3)]
    prompts = sum(len(p) for _, p, _ in theirs) / n
    return (
        f"SSA-engine agreement with the reference, per mask: caption {same[0]:.2f}, proposals "
        f"{same[1]:.2f}, class {same[2]:.2f}; {prompts:.2f} proposals (CLIPSeg prompts) per mask"
    )


def bench_database(results, images, labelled, workdir: Path) -> None:
    """Writing SSA-engine's labels: FiftyOne's ``iter_samples(autosave=True)`` vs our writer.

    Both write the values the engine's run loop writes (``EngineJob.sample_values``).
    """
    import fiftyone as fo

    from fiftyone_ssa.core.mask_set import MaskSet
    from fiftyone_ssa.labelling import record
    from fiftyone_ssa.labelling.engine import EngineJob
    from fiftyone_ssa.labelling.sources import MaskSource
    from fiftyone_ssa.labelling.writer import SampleWriter

    # Only the job's sample values are used: no masks are read and no model runs.
    job = EngineJob("ssa_engine", MaskSource(), None, {}, False, str(workdir / "masks"))

    def values(sample_id, masks, labels):
        return job.sample_values(sample_id, (MaskSet.from_masks(masks), None, labels), "bench")[0]

    dataset = fo.Dataset(f"ssa-benchmark-{os.getpid()}-{time.time_ns()}")
    try:
        paths = []
        for i, image in enumerate(images):
            paths.append(str(workdir / f"db_{i}.jpg"))
            Image.fromarray(image).save(paths[-1])
        dataset.add_samples([fo.Sample(filepath=p) for p in paths])
        record.declare_output_fields(dataset, job.output_schema())
        n_masks = sum(int(m.shape[0]) for m, _ in labelled)
        with results.stage("write labels: FiftyOne autosave", len(images), n_masks) as base:
            for sample, (masks, labels) in zip(dataset.iter_samples(autosave=True), labelled):
                sample.update_fields(values(sample.id, masks, labels), expand_schema=False)
        ids = dataset.values("id")
        with results.stage("write labels: ours (SampleWriter)", len(images), n_masks) as ours:
            with SampleWriter(dataset) as writer:
                for sample_id, (masks, labels) in zip(ids, labelled):
                    writer.add(sample_id, values(sample_id, masks, labels))
        ours.note = f"{base.seconds / ours.seconds:.1f}x FiftyOne's autosave"
    finally:
        dataset.delete()


def run(
    preset: str = "small",
    device: str | None = None,
    images: int = 1,
    stages: tuple[str, ...] = ("decode", "sam", "semantic", "voting", "engine", "database"),
    cache: str | os.PathLike = "build/bench_models",
    engine_masks: int | None = None,
    caption_nouns: int = 2,
) -> Results:
    """Runs the benchmark and returns its table.

    Args:
        preset: ``tiny``, ``small`` or ``original`` (see :mod:`benchmarks.presets`).
        device: torch device (default: CUDA when available).
        images: images per stage.
        stages: which stages to run.
        cache: where the random-weight models are saved.
        engine_masks: masks per image for SSA-engine (default: the preset's).
        caption_nouns: stand-in nouns for a caption in which the random spaCy pipeline finds
            none (see :class:`StandInCaptionNouns`; 0 leaves such captions without nouns).
    """
    settings = BENCH_PRESETS[preset]
    if engine_masks is not None:
        settings = dataclasses.replace(settings, engine_masks=engine_masks)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    results = Results(
        f"preset {preset}, {images} image(s) {settings.height}x{settings.width}",
        device,
        f"SAM {settings.sam} {settings.sam_options}; semantic {settings.semantic}; engine "
        f"{settings.engine}; {'shrunken (tiny) ' if settings.tiny_models else 'real-size '}"
        "architectures with RANDOM weights stand in for the trained models",
    )
    model_cache = ModelCache(Path(cache), settings.tiny_models)
    photos = [synthetic_photo(settings.height, settings.width, seed=i) for i in range(images)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "decode" in stages:
            photos = bench_decode(results, photos, workdir)
        if "sam" in stages:
            bench_sam(results, settings, model_cache, photos, device)
        if "semantic" in stages:
            bench_semantic(results, settings, model_cache, photos, device)
        if "voting" in stages:
            bench_voting(results, settings, device, images)
        labelled = None
        if "engine" in stages:
            nlp = random_spacy_pipeline()
            labelled = bench_engine(
                results, settings, model_cache, photos, device, nlp, caption_nouns
            )
        if "database" in stages and labelled is not None:
            bench_database(results, photos, labelled, workdir)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(BENCH_PRESETS), default="small")
    parser.add_argument("--device", default=None)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument(
        "--stages",
        default="decode,sam,semantic,voting,engine,database",
        help="comma-separated subset of decode,sam,semantic,voting,engine,database",
    )
    parser.add_argument(
        "--engine-masks", type=int, default=None, help="masks per image for SSA-engine"
    )
    parser.add_argument(
        "--caption-nouns",
        type=int,
        default=2,
        help="stand-in nouns for a caption in which the random spaCy pipeline finds none, as "
        "trained models' captions would give (0: none)",
    )
    parser.add_argument("--cache", default="build/bench_models")
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    if args.engine_masks is not None and args.engine_masks < 1:
        parser.error(f"--engine-masks must be >= 1, got {args.engine_masks}")
    if args.caption_nouns < 0:
        parser.error(f"--caption-nouns must be >= 0, got {args.caption_nouns}")
    results = run(
        args.preset,
        args.device,
        args.images,
        tuple(args.stages.split(",")),
        args.cache,
        args.engine_masks,
        args.caption_nouns,
    )
    results.report(args.markdown)


if __name__ == "__main__":
    main()
