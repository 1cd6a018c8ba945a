"""SSA-engine: crops, candidates, caption nouns, the batched models, and runs into FiftyOne.

The models are tiny random-initialised OneFormer, BLIP, open_clip and CLIPSeg saved to disk and
loaded through the real loaders (tests/fixtures/engine.py); spaCy pipelines are built here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.presets import TINY_OVERRIDES
from fiftyone_ssa.core.crops import (
    centre_square_boxes,
    chunk_boxes,
    crop_resize_images,
    crop_resize_masks,
    mask_boxes_xywh,
    scale_boxes,
)
from fiftyone_ssa.core.vocabulary import (
    build_candidates,
    check_vocabulary,
    dedupe_names,
    refine_coco_name,
)
from tests.fixtures.engine import (
    CAPTION_WORDS,
    TINY_COCO_CLASSES,
    build_tiny_spacy,
    load_tiny_engine_models,
    register_tiny_clip_architecture,
)
from tests.fixtures.models import TINY_CLASSES

# Tiny models run several times faster on one thread.
pytestmark = pytest.mark.usefixtures("one_thread")

REFINED_COCO = {refine_coco_name(c) for c in TINY_COCO_CLASSES}


def smooth_image(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 gradients: resampling differences stay at rounding level."""
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    base = (xx / max(width - 1, 1) + yy / max(height - 1, 1)) * 127.0
    return np.stack([base, 255 - base, 127 + 100 * np.sin(base / 40)], -1).astype(np.uint8)


def random_scene(rng: np.random.Generator, height: int, width: int, n: int):
    """A noisy image and n masks (rectangles and discs, some overlapping)."""
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    masks = torch.zeros((n, height, width), dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for i in range(n):
        y0, x0 = int(rng.integers(0, height - 3)), int(rng.integers(0, width - 3))
        if i % 2:
            r = int(rng.integers(2, max(3, min(height, width) // 3)))
            masks[i] = (yy - y0) ** 2 + (xx - x0) ** 2 < r * r
        else:
            h, w = int(rng.integers(2, height - y0 + 1)), int(rng.integers(2, width - x0 + 1))
            masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return image, masks


@pytest.fixture
def scenes():
    rng = np.random.default_rng(7)
    return [random_scene(rng, 48, 64, 6), random_scene(rng, 40, 40, 4)]


# --------------------------------------------------------------------------- crops


def test_mask_boxes_match_numpy():
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((6, 20, 30)) > 0.97)
    masks[0] = False
    boxes = mask_boxes_xywh(masks)
    for mask, box in zip(masks.numpy(), boxes.tolist()):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            assert box == [0, 0, 0, 0]
            continue
        assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_scale_boxes_about_centre_and_clipped():
    rng = np.random.default_rng(1)
    height, width = 50, 70
    x = rng.integers(0, width - 1, 200)
    y = rng.integers(0, height - 1, 200)
    w = np.minimum(rng.integers(1, 40, 200), width - x)
    h = np.minimum(rng.integers(1, 40, 200), height - y)
    boxes = torch.tensor(np.stack([x, y, w, h], 1), dtype=torch.float32)
    assert scale_boxes(boxes, 1.0, (height, width)).tolist() == [
        [a, b, a + c, b + d] for a, b, c, d in boxes.long().tolist()
    ]
    for factor in (1.2, 1.6, 3.0):
        scaled = scale_boxes(boxes, factor, (height, width))
        for (bx, by, bw, bh), (x0, y0, x1, y1) in zip(boxes.tolist(), scaled.tolist()):
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            # contains the original box
            assert x0 <= bx and y0 <= by and x1 >= bx + bw and y1 >= by + bh
            # the unclipped extent is factor * size, rounded outwards by < 1 px per side
            cx = bx + bw / 2
            lo, hi = cx - factor * bw / 2, cx + factor * bw / 2
            assert x0 == max(0, math.floor(lo + 1e-6)) and x1 == min(width, math.ceil(hi - 1e-6))
    with pytest.raises(ValueError, match="factor"):
        scale_boxes(boxes, 0.0, (height, width))


def test_centre_square_boxes():
    boxes = torch.tensor([[0, 0, 10, 4], [5, 5, 8, 20], [2, 3, 9, 10]])
    assert centre_square_boxes(boxes).tolist() == [[3, 0, 7, 4], [5, 11, 8, 14], [2, 3, 9, 10]]


def test_crop_resize_masks_matches_interpolate_nearest_exact():
    rng = np.random.default_rng(2)
    masks = torch.from_numpy(rng.random((5, 40, 60)) > 0.5)
    boxes = torch.tensor(
        [[0, 0, 60, 40], [10, 5, 13, 9], [7, 3, 50, 39], [0, 20, 60, 21], [30, 0, 31, 40]]
    )
    for size in ((16, 16), (32, 24), (7, 90)):
        out = crop_resize_masks(masks, boxes, size)
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            crop = masks[i, y0:y1, x0:x1].float()[None, None]
            expected = F.interpolate(crop, size=size, mode="nearest-exact")[0, 0] > 0.5
            assert torch.equal(out[i], expected)


def test_crop_resize_images_rejects_boxes_outside():
    image = torch.zeros((3, 10, 10), dtype=torch.uint8)
    with pytest.raises(ValueError, match="inside"):
        crop_resize_images(image, torch.tensor([[0, 0, 11, 5]]), (4, 4))


def test_chunk_boxes_covers_every_box_in_order():
    boxes = [torch.arange(n * 4).view(n, 4) + 1000 * i for i, n in enumerate([5, 0, 3, 9])]
    for size in (1, 2, 4, 17):
        chunks = list(chunk_boxes(boxes, size))
        got = torch.cat([torch.cat([boxes[i][s] for i, s in zip(*c)]) for c in chunks])
        assert torch.equal(got, torch.cat(boxes))
        lengths = [sum(s.stop - s.start for s in c[1]) for c in chunks]
        assert all(n == size for n in lengths[:-1]) and 0 < lengths[-1] <= size


def test_crop_transforms_match_the_processors():
    """Device-side crops match BLIP/CLIPSeg processors and open_clip's PIL preprocessing."""
    import open_clip
    from PIL import Image
    from transformers import BlipImageProcessor, ViTImageProcessor

    from fiftyone_ssa.models.engine.captioner import crop_transform_from_processor
    from fiftyone_ssa.models.engine.clip_filter import crop_transform_from_open_clip
    from tests.fixtures.engine import TINY_CLIP_CONFIG

    image = smooth_image(90, 120)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    boxes = torch.tensor([[10, 5, 70, 60], [0, 0, 120, 90], [50, 40, 57, 46], [3, 7, 100, 20]])
    crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes.tolist()]
    for processor in (
        BlipImageProcessor(size={"height": 48, "width": 48}),
        ViTImageProcessor(size={"height": 40, "width": 40}),
    ):
        mine = crop_transform_from_processor(processor)(tensor, boxes)
        theirs = torch.cat(
            [
                processor(images=[c], return_tensors="pt", input_data_format="channels_last")[
                    "pixel_values"
                ]
                for c in crops
            ]
        )
        assert (mine - theirs).abs().max() < 0.03
    model = open_clip.model.CLIP(**TINY_CLIP_CONFIG)
    transform = crop_transform_from_open_clip(model)
    assert transform.centre_square and transform.mode == "bicubic"
    reference = open_clip.image_transform(TINY_CLIP_CONFIG["vision_cfg"]["image_size"], False)
    theirs = torch.stack([reference(Image.fromarray(c)) for c in crops])
    difference = (transform(tensor, boxes) - theirs).abs()
    assert difference.max() < 0.1 and difference.mean() < 0.02


# --------------------------------------------------------------------------- vocabulary


def test_refine_coco_names():
    assert refine_coco_name("wall-other-merged") == "wall"
    assert refine_coco_name("sky-other-merged") == "sky"
    assert refine_coco_name("door-stuff") == "door"
    assert refine_coco_name("tree-merged") == "tree"
    assert refine_coco_name("floor-wood") == "floor-wood"
    assert refine_coco_name("person") == "person"


def test_candidates_deduplicated_in_order():
    assert dedupe_names(["Dog", " dog ", "a  cat", "", "cat", "DOG."]) == ["Dog", "a cat", "cat"]
    # One name in two Unicode compositions (a vocabulary file saved on macOS is often NFD):
    # they were two candidates that look the same and score the same.
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert dedupe_names([composed, decomposed, "CAF\u00c9"]) == [composed]
    assert dedupe_names([decomposed, composed]) == [decomposed]
    assert build_candidates(["wall", "wall"], ["red car", "Wall"], ["car"]) == [
        "wall",
        "red car",
        "car",
    ]
    # The user's spelling wins: a mask whose ADE20K name is "person" and one found only through
    # the vocabulary were labelled "person" and "Person", two classes.
    assert build_candidates(["person", "sky"], ["red car"], ["Person", "Red Car"]) == [
        "Person",
        "sky",
        "Red Car",
    ]
    assert build_candidates(["wall", "sky"], ["car"], ["zebra", "sky"], "restrict") == [
        "zebra",
        "sky",
    ]
    with pytest.raises(ValueError, match="restrict"):
        check_vocabulary([], "restrict")
    with pytest.raises(ValueError, match="vocabulary_mode"):
        check_vocabulary(["a"], "only")
    with pytest.raises(ValueError, match="list"):
        check_vocabulary("dog", "add")


# --------------------------------------------------------------------------- nouns

TEXTS = ["a big red dog on the grass", "it", "the car of the house with a small tree", ""]


@pytest.mark.parametrize(
    "kind, strategy",
    [("parser", "noun_chunks"), ("tagger", "pos"), ("blank", "words")],
)
def test_noun_phrases_with_and_without_parser(kind, strategy):
    from fiftyone_ssa.models.engine.nouns import NounExtractor

    extractor = NounExtractor(build_tiny_spacy(kind))
    assert extractor.strategy == strategy
    assert extractor.extract(TEXTS) == [
        ["big red dog", "grass"],
        [],  # a lone pronoun is no candidate
        ["car", "house", "small tree"],
        [],
    ]


def test_tag_fallback_cuts_runs_after_their_last_noun():
    from fiftyone_ssa.models.engine.nouns import NounExtractor

    assert NounExtractor(build_tiny_spacy("tagger")).extract(["red dog grass big"]) == [
        ["red dog grass"]
    ]


def test_spacy_pipeline_from_a_path(tiny_engine_dirs):
    from fiftyone_ssa.models.engine.nouns import NounExtractor

    extractor = NounExtractor(str(tiny_engine_dirs["spacy"]))
    assert extractor.strategy == "noun_chunks"
    assert extractor.extract(TEXTS[:1]) == [["big red dog", "grass"]]


def test_missing_spacy_model_says_how_to_install(tmp_path):
    from fiftyone_ssa.models.engine.nouns import load_spacy

    with pytest.raises(ImportError, match="python -m spacy download en_core_web_nothere") as err:
        load_spacy("en_core_web_nothere")
    assert "\n" not in str(err.value)
    with pytest.raises(ImportError, match="not a spaCy pipeline"):
        load_spacy(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- CLIP filter


def test_clip_loaders_agree(tiny_engine_dirs, tmp_path):
    from fiftyone_ssa.models import weights
    from fiftyone_ssa.models.engine.clip_filter import ClipFilter

    from_dir = ClipFilter(str(tiny_engine_dirs["clip"]), device="cpu")
    architecture = register_tiny_clip_architecture(tmp_path / "configs")
    checkpoint = tiny_engine_dirs["clip"] / "open_clip_pytorch_model.bin"
    from_file = ClipFilter(str(checkpoint), architecture=architecture, device="cpu")
    names = ["dog", "red car"]
    assert torch.allclose(from_dir.text_embeddings(names), from_file.text_embeddings(names))
    with pytest.raises(ValueError, match="architecture"):
        ClipFilter(str(checkpoint), device="cpu")
    with pytest.raises(ValueError, match="unknown CLIP model"):
        ClipFilter("no-such-clip", device="cpu")
    weights.set_models_dir(tmp_path / "empty")
    try:
        with pytest.raises(FileNotFoundError, match="models download clip-vit-b-32"):
            ClipFilter("clip-vit-b-32", device="cpu")
    finally:
        weights.set_models_dir(None)


def _crop_inputs(scenes, scale):
    images = [torch.from_numpy(image).permute(2, 0, 1) for image, _ in scenes]
    boxes = [scale_boxes(mask_boxes_xywh(masks), scale, masks.shape[1:]) for _, masks in scenes]
    return images, boxes


def test_clip_top_k_matches_a_per_mask_reference(tiny_engine_models, scenes):
    clip = tiny_engine_models.clip
    images, boxes = _crop_inputs(scenes, 1.2)
    pool = ["dog", "sky", "red car", "grass", "tree", "wall"]
    candidates = [pool[: 1 + i % len(pool)] for i in range(sum(len(b) for b in boxes))]
    names, probs = clip.top_k(images, boxes, candidates, top_k=3)
    flat = [(img, box) for img, b in zip(images, boxes) for box in b]
    with torch.no_grad():
        for (image, box), cands, got, got_probs in zip(flat, candidates, names, probs):
            pixels = clip.transform(image, box[None])
            image_emb = F.normalize(clip.model.encode_image(pixels), dim=-1)
            text_emb = F.normalize(clip.model.encode_text(clip.tokenizer(cands)), dim=-1)
            p = (clip.model.logit_scale.exp() * image_emb @ text_emb.T)[0].softmax(0)
            order = sorted(range(len(cands)), key=lambda j: -float(p[j]))[:3]
            assert got == [cands[j] for j in order]
            assert np.allclose(got_probs, [float(p[j]) for j in order], atol=1e-5)
    assert names[0] == ["dog"] and probs[0] == [pytest.approx(1.0)]  # a single candidate


def test_clip_text_embeddings_cached_per_distinct_string(tiny_engine_models, monkeypatch):
    clip = tiny_engine_models.clip
    encoded: list[int] = []
    real = clip.model.encode_text

    def counting(tokens, *args, **kwargs):
        encoded.append(tokens.shape[0])
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(clip.model, "encode_text", counting)
    clip._text_cache.clear()
    clip.text_embeddings(["zebra", "lamp", "zebra"])
    clip.text_embeddings(["lamp", "zebra", "kite"])
    assert sum(encoded) == 3


# --------------------------------------------------------------------------- CLIPSeg


def test_clipseg_shared_encoder_equals_full_forward(tiny_engine_models, scenes):
    decider = tiny_engine_models.clipseg
    images, boxes = _crop_inputs(scenes, 1.6)
    pixels = decider.pixels(images[0], boxes[0][:3])
    crop_index = torch.tensor([0, 0, 1, 2, 2, 2])
    embeds = decider.text_embeddings(["dog", "sky", "dog", "car", "grass", "tree"])
    mine = decider.prompt_logits(decider.vision_activations(pixels), crop_index, embeds)
    with torch.no_grad():
        full = decider.model(pixel_values=pixels[crop_index], conditional_embeddings=embeds).logits
    assert torch.allclose(mine, full, atol=1e-5)


def test_clipseg_cuts_names_longer_than_its_text_positions(tiny_engine_models):
    decider = tiny_engine_models.clipseg
    limit = decider.model.config.text_config.max_position_embeddings
    long_name = " ".join(["dog"] * limit)
    embeds = decider.text_embeddings([long_name, long_name + " sky", "dog"])
    assert embeds.shape[0] == 3 and bool(torch.isfinite(embeds).all())
    # Cut at the limit, as CLIP's tokenizers do: names differing only beyond it embed alike.
    assert torch.allclose(embeds[0], embeds[1])
    assert not torch.allclose(embeds[0], embeds[2])


def test_clipseg_encoder_stops_at_the_deepest_layer_the_decoder_reads(tmp_path, scenes):
    from fiftyone_ssa.models.engine.clipseg_decider import ClipSegDecider
    from fiftyone_ssa.testing import random_init

    # The benchmarks' shrunken CLIPSeg, with more vision layers than the decoder reads.
    tiny = TINY_OVERRIDES["clipseg"]
    vision = {**tiny["model"]["vision_config"], "num_hidden_layers": 5}
    model = {**tiny["model"], "vision_config": vision, "extract_layers": [0, 2]}
    overrides = {**tiny, "model": model}
    path = random_init.save_random_model("clipseg-rd16", tmp_path / "clipseg", 0, overrides)
    decider = ClipSegDecider(path, device="cpu", input_size=(128, 128))
    images, boxes = _crop_inputs(scenes, 1.6)
    pixels = decider.pixels(images[0], boxes[0][:2])
    assert pixels.shape == (2, 3, 128, 128)
    activations = decider.vision_activations(pixels)
    with torch.no_grad():
        full = decider.model.clip.vision_model(pixel_values=pixels, output_hidden_states=True)
        logits = decider.model(
            pixel_values=pixels, conditional_embeddings=decider.text_embeddings(["dog", "sky"])
        ).logits
    assert len(full.hidden_states) == 6 and len(activations) == 2
    for mine, theirs in zip(activations, [full.hidden_states[1], full.hidden_states[3]]):
        assert torch.equal(mine, theirs)
    crop_index = torch.tensor([0, 1])
    mine = decider.prompt_logits(activations, crop_index, decider.text_embeddings(["dog", "sky"]))
    assert mine.shape == (2, 128, 128) and torch.allclose(mine, logits, atol=1e-5)
    with pytest.raises(ValueError, match="square"):
        ClipSegDecider(path, device="cpu", input_size=(96, 128))


def test_clipseg_decisions_match_a_per_mask_reference(tiny_engine_models, scenes):
    decider = tiny_engine_models.clipseg
    images, boxes = _crop_inputs(scenes, 1.6)
    masks = [m for _, m in scenes]
    pool = ["dog", "sky", "red car", "grass"]
    proposals = [pool[i % 3 : i % 3 + 2 + i % 2] for i in range(sum(len(b) for b in boxes))]
    decisions = decider.decide(images, boxes, masks, proposals)
    flat = [(img, box, m) for img, b, ms in zip(images, boxes, masks) for box, m in zip(b, ms)]
    tokenizer = decider.processor.tokenizer
    for (image, box, mask), names, decision in zip(flat, proposals, decisions):
        pixels = decider.pixels(image, box[None]).expand(len(names), -1, -1, -1)
        tokens = tokenizer(names, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = decider.model(pixel_values=pixels, **tokens).logits
        logits = logits.reshape(len(names), *logits.shape[-2:])
        x0, y0, x1, y1 = box.tolist()
        crop = mask[y0:y1, x0:x1].float()[None, None]
        small = F.interpolate(crop, size=logits.shape[-2:], mode="nearest-exact")[0, 0] > 0.5
        votes = torch.bincount(logits.argmax(0)[small], minlength=len(names))
        assert decision.name == names[int(votes.argmax())]
        # F.interpolate's float32 source coordinates may round a pixel centre lying exactly on
        # a boundary the other way than the decider's float64 ones: a few pixels of 512x512.
        assert decision.share == pytest.approx(float(votes.max() / small.sum()), abs=1e-3)


def test_clipseg_needs_no_model_for_single_proposals(tiny_engine_models, scenes, monkeypatch):
    decider = tiny_engine_models.clipseg
    calls = []
    real = decider.vision_activations
    monkeypatch.setattr(decider, "vision_activations", lambda p: calls.append(1) or real(p))
    images, boxes = _crop_inputs(scenes, 1.6)
    n = sum(len(b) for b in boxes)
    decisions = decider.decide(images, boxes, [m for _, m in scenes], [["kite"]] * n)
    assert [d.name for d in decisions] == ["kite"] * n and not calls


def test_clipseg_thin_mask_still_votes(tiny_engine_models):
    from fiftyone_ssa.models.engine.clipseg_decider import ClipSegDecider

    # A crop much larger than the model's input (here 32x32 rather than 512x512).
    decider = ClipSegDecider(tiny_engine_models.clipseg.path, device="cpu", input_size=(32, 32))
    image = torch.from_numpy(smooth_image(200, 200)).permute(2, 0, 1)
    mask = torch.zeros((1, 200, 200), dtype=torch.bool)
    index = torch.arange(10, 190)
    mask[0, index + 1, index] = True  # a thin diagonal nearest sampling to 32x32 misses
    box = scale_boxes(mask_boxes_xywh(mask), 1.6, (200, 200))
    assert not crop_resize_masks(mask, box, decider.input_size).any()
    decision = decider.decide([image], [box], [mask], [["dog", "sky"]])[0]
    assert decision.name in ("dog", "sky") and decision.share > 0


# --------------------------------------------------------------------------- BLIP


def test_blip_sdpa_attention_matches_eager(tiny_engine_dirs, scenes):
    from transformers import BlipForConditionalGeneration

    from fiftyone_ssa.models.engine.captioner import BlipCaptioner, use_sdpa_attention

    eager = BlipForConditionalGeneration.from_pretrained(tiny_engine_dirs["blip"]).eval()
    captioner = BlipCaptioner(tiny_engine_dirs["blip"], device="cpu", max_new_tokens=8)
    images, boxes = _crop_inputs(scenes, 1.6)
    pixels = torch.cat([captioner.transform(i, b) for i, b in zip(images, boxes)])
    with torch.no_grad():
        theirs = eager.vision_model(pixel_values=pixels).last_hidden_state
        ours = captioner.model.vision_model(pixel_values=pixels).last_hidden_state
    assert (theirs - ours).abs().max() > 0  # a different computation of ...
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)  # ... the same attention
    tokens = eager.generate(pixel_values=pixels, max_new_tokens=8, num_beams=1, do_sample=False)
    assert captioner.caption_pixels(pixels) == [
        " ".join(t.split()) for t in captioner.processor.batch_decode(tokens, True)
    ]
    assert use_sdpa_attention(captioner.model.vision_model) == 0  # already switched


def test_captions_batched_equal_one_by_one(tiny_engine_models, scenes):
    captioner = tiny_engine_models.captioner
    images, boxes = _crop_inputs(scenes, 1.6)
    captions = captioner.caption(images, boxes)
    single = [
        captioner.caption_pixels(captioner.transform(img, box[None]))[0]
        for img, b in zip(images, boxes)
        for box in b
    ]
    assert captions == single
    assert len(set(captions)) > 1  # the tiny captioner looks at its crops
    assert all(w in CAPTION_WORDS for c in captions for w in c.split())


# --------------------------------------------------------------------------- label_masks


def _check_labels(labels, masks, top_k, vocabulary=(), mode="add"):
    assert len(labels.class_names) == masks.shape[0]
    for i, name in enumerate(labels.class_names):
        proposals, candidates = labels.class_proposals[i], labels.candidates[i]
        assert isinstance(proposals, list) and 1 <= len(proposals) <= top_k
        assert len(proposals) == min(top_k, len(candidates))
        assert name in proposals and set(proposals) <= set(candidates)
        assert labels.proposal_scores[i] == sorted(labels.proposal_scores[i], reverse=True)
        assert 0 <= labels.confidence[i] <= 1
        assert labels.ade_names[i] in TINY_CLASSES
        assert labels.coco_names[i] in REFINED_COCO
        if mode == "restrict":
            assert set(candidates) == set(vocabulary)
        else:
            assert labels.ade_names[i] in candidates and labels.coco_names[i] in candidates
            assert set(vocabulary) <= set(candidates)


@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_every_mask_gets_a_class_among_its_proposals(tiny_engine_models, scenes, top_k):
    from fiftyone_ssa.labelling.engine import label_masks

    results = label_masks(
        tiny_engine_models,
        [s[0] for s in scenes],
        [s[1] for s in scenes],
        top_k=top_k,
        vocabulary=["zebra"],
    )
    for labels, (_, masks) in zip(results, scenes):
        _check_labels(labels, masks, top_k, ["zebra"])
    # the caption nouns reach the candidates
    labels = results[0]
    assert any(
        set(c) - {a, b, "zebra"}
        for c, a, b in zip(labels.candidates, labels.ade_names, labels.coco_names)
    )


def test_single_candidate(tiny_engine_models, scenes):
    from fiftyone_ssa.labelling.engine import label_masks

    results = label_masks(
        tiny_engine_models,
        [s[0] for s in scenes],
        [s[1] for s in scenes],
        vocabulary=["zebra"],
        vocabulary_mode="restrict",
    )
    for labels, (_, masks) in zip(results, scenes):
        _check_labels(labels, masks, 3, ["zebra"], "restrict")
        assert labels.class_names == ["zebra"] * masks.shape[0]
        assert labels.class_proposals == [["zebra"]] * masks.shape[0]


def test_vocabulary_restriction_is_obeyed(tiny_engine_models, scenes):
    from fiftyone_ssa.labelling.engine import label_masks

    vocabulary = ["dog", "road", "sky", "kite"]
    results = label_masks(
        tiny_engine_models,
        [s[0] for s in scenes],
        [s[1] for s in scenes],
        top_k=2,
        vocabulary=vocabulary,
        vocabulary_mode="restrict",
    )
    for labels, (_, masks) in zip(results, scenes):
        _check_labels(labels, masks, 2, vocabulary, "restrict")
        assert set(labels.class_names) <= set(vocabulary)


def test_batched_equals_one_mask_at_a_time(tiny_engine_models, scenes):
    from fiftyone_ssa.labelling.engine import label_masks

    images, masks = [s[0] for s in scenes], [s[1] for s in scenes]
    batched = label_masks(tiny_engine_models, images, masks, top_k=3, vocabulary=["kite"])
    # Every mask of the second image, three of the first (each single call reruns OneFormer).
    for image, image_masks, labels, count in zip(images, masks, batched, (3, 4)):
        for j in range(count):
            one = label_masks(
                tiny_engine_models, [image], [image_masks[j : j + 1]], top_k=3, vocabulary=["kite"]
            )[0]
            assert one.captions == labels.captions[j : j + 1]
            assert one.ade_names == labels.ade_names[j : j + 1]
            assert one.coco_names == labels.coco_names[j : j + 1]
            assert one.candidates == labels.candidates[j : j + 1]
            assert one.class_proposals == labels.class_proposals[j : j + 1]
            assert one.class_names == labels.class_names[j : j + 1]
            assert np.allclose(one.proposal_scores[0], labels.proposal_scores[j], atol=1e-5)
            assert one.confidence[0] == pytest.approx(labels.confidence[j], abs=1e-6)


def test_images_without_masks(tiny_engine_models, scenes):
    from fiftyone_ssa.labelling.engine import label_masks

    (image, masks), (other, other_masks) = scenes
    empty = masks[:0]
    results = label_masks(tiny_engine_models, [image, other], [empty, other_masks])
    assert results[0].class_names == [] and results[0].class_proposals == []
    _check_labels(results[1], other_masks, 3)
    assert label_masks(tiny_engine_models, [image], [empty])[0].captions == []


def test_model_calls_do_not_grow_with_masks(tiny_engine_models, monkeypatch):
    from fiftyone_ssa.labelling.engine import label_masks

    models = tiny_engine_models
    calls = {"blip": 0, "clip": 0, "clipseg": 0}

    def count(obj, attr, key):
        real = getattr(obj, attr)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(obj, attr, wrapper)

    count(models.captioner.model, "generate", "blip")
    count(models.clip.model, "encode_image", "clip")
    count(models.clipseg, "vision_activations", "clipseg")
    for name in ("captioner", "clip", "clipseg"):
        monkeypatch.setattr(getattr(models, name), "batch_size", 64)
    rng = np.random.default_rng(3)
    for n in (2, 40):
        for key in calls:
            calls[key] = 0
        image, masks = random_scene(rng, 48, 48, n)
        label_masks(models, [image, image], [masks, masks.flip(0)], vocabulary=["kite", "lamp"])
        batches = math.ceil(2 * n / 64)  # one call per 64 crops, not one per mask
        assert calls == {"blip": batches, "clip": batches, "clipseg": batches}


# --------------------------------------------------------------------------- FiftyOne runs


@pytest.fixture
def engine_dataset(make_dataset, tmp_path):
    """Three images with instance masks in a ``gt`` Detections field."""
    import fiftyone as fo
    from PIL import Image

    from fiftyone_ssa.labels import build_detections

    dataset = make_dataset()
    rng = np.random.default_rng(11)
    samples = []
    for i in range(3):
        image, masks = random_scene(rng, 40 + 8 * i, 56, 3 + i)
        path = tmp_path / f"image_{i}.png"
        Image.fromarray(image).save(path)
        gt = build_detections(masks, ["thing"] * len(masks), [{} for _ in masks])
        samples.append(fo.Sample(filepath=str(path), gt=gt))
    dataset.add_samples(samples)
    return dataset


def _full_masks(detections, height, width):
    from fiftyone_ssa.labels import detections_to_mask_set

    return detections_to_mask_set(detections, (height, width), torch.device("cpu")).masks


def test_overwrite_without_segmentation_clears_the_old_map(engine_dataset, tiny_engine_models):
    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    common = {"mask_branch": "field:gt", "models": tiny_engine_models}
    apply_ssa_engine(engine_dataset[:2], write_segmentation=True, **common)
    assert engine_dataset.count("ssa_engine_seg") == 2
    summary = apply_ssa_engine(engine_dataset[1:], top_k=1, overwrite=True, **common)
    assert summary.num_labelled == 2
    # The relabelled samples lose the other run's painted map; the untouched one keeps it
    assert engine_dataset.exists("ssa_engine_seg").values("id") == [engine_dataset.first().id]


def test_apply_ssa_engine_writes_detections_and_segmentation(engine_dataset, tiny_engine_models):
    import fiftyone as fo
    from PIL import Image

    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    summary = apply_ssa_engine(
        engine_dataset,
        mask_branch="field:gt",
        top_k=2,
        models=tiny_engine_models,
        write_segmentation=True,
    )
    assert summary.num_labelled == 3 and not summary.failures
    targets = engine_dataset.mask_targets["ssa_engine_seg"]
    ids = {name: int(i) for i, name in targets.items()}
    schema = engine_dataset.get_field_schema(flat=True)
    for attribute in ("class_proposals", "caption", "ade_name", "coco_name", "area"):
        assert f"ssa_engine.detections.{attribute}" in schema
    for sample in engine_dataset:
        with Image.open(sample.filepath) as image:
            width, height = image.size
        detections = sample["ssa_engine"].detections
        assert len(detections) == len(sample.gt.detections)
        masks = _full_masks(sample["ssa_engine"], height, width)
        assert torch.equal(masks, _full_masks(sample.gt, height, width))
        painted = np.zeros((height, width), np.int64)
        for det in detections:
            assert det.label in det.class_proposals and len(det.class_proposals) <= 2
            assert isinstance(det.caption, str)
            assert det.ade_name in TINY_CLASSES and det.coco_name in REFINED_COCO
            assert det.area > 0 and det.predicted_iou is None and 0 <= det.confidence <= 1
        for j in sorted(range(len(detections)), key=lambda j: -int(masks[j].sum())):
            painted[masks[j].numpy()] = ids[detections[j].label]
        seg = sample["ssa_engine_seg"]
        assert isinstance(seg, fo.Segmentation)
        assert np.array_equal(seg.mask.astype(np.int64), painted)
        assert not sample.has_field("ssa_engine_error") or sample["ssa_engine_error"] is None


def test_apply_ssa_engine_existing_fields_and_failures(
    engine_dataset, tiny_engine_models, tmp_path
):
    import fiftyone as fo

    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    apply_ssa_engine(
        engine_dataset,
        mask_branch="field:gt",
        models=tiny_engine_models,
        vocabulary=["kite"],
        vocabulary_mode="restrict",
    )
    assert engine_dataset.distinct("ssa_engine.detections.label") == ["kite"]
    with pytest.raises(ValueError, match="already exists"):
        apply_ssa_engine(engine_dataset, mask_branch="field:gt", models=tiny_engine_models)
    missing = fo.Sample(filepath=str(tmp_path / "missing.png"), gt=engine_dataset.first().gt)
    engine_dataset.add_sample(missing)
    summary = apply_ssa_engine(
        engine_dataset, mask_branch="field:gt", skip_existing=True, models=tiny_engine_models
    )
    assert summary.skipped_existing == 3 and len(summary.failures) == 1
    assert "not found" in engine_dataset[missing.id]["ssa_engine_error"]
    summary = apply_ssa_engine(
        engine_dataset.exists("ssa_engine"),
        mask_branch="field:gt",
        overwrite=True,
        models=tiny_engine_models,
        top_k=1,
    )
    assert summary.num_labelled == 3
    for sample in engine_dataset.exists("ssa_engine"):
        assert all(len(d.class_proposals) == 1 for d in sample["ssa_engine"].detections)
        assert sample["ssa_engine"].run_key == summary.run_key
    # The same call again finds nothing left to do (resumed by run key)
    again = apply_ssa_engine(
        engine_dataset.exists("ssa_engine"),
        mask_branch="field:gt",
        overwrite=True,
        models=tiny_engine_models,
        top_k=1,
    )
    assert again.num_labelled == 0 and again.skipped_existing == 3
    with pytest.raises(ValueError, match="does not exist"):
        apply_ssa_engine(
            engine_dataset, label_field="other", mask_branch="field:nope", models=tiny_engine_models
        )


def test_apply_ssa_engine_with_tiny_sam(engine_dataset, tiny_engine_models, blob_sam_dir):
    from fiftyone_ssa.labelling.engine import apply_ssa_engine, engine_mask_generator_defaults
    from fiftyone_ssa.models.registry import create_branch

    for light, points in ((False, 32), (True, 16)):
        options = create_branch(
            blob_sam_dir, kind="mask", device="cpu", **engine_mask_generator_defaults(light)
        ).options
        assert options["points_per_side"] == points and options["crop_n_layers"] == 0
        assert options["pred_iou_thresh"] == 0.86 and options["stability_score_thresh"] == 0.92
    view = engine_dataset.limit(1)
    summary = apply_ssa_engine(
        view,
        mask_branch=blob_sam_dir,
        models=tiny_engine_models,
        device="cpu",
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        min_mask_region_area=0,
    )
    assert summary.num_labelled == 1 and not summary.failures
    detections = view.first()["ssa_engine"].detections
    assert detections
    for det in detections:
        assert det.label in det.class_proposals
        assert isinstance(det.predicted_iou, float) and isinstance(det.stability_score, float)


def test_cli_engine(engine_dataset, tiny_engine_dirs, tmp_path, capsys):
    from fiftyone_ssa.cli import main

    vocabulary_file = tmp_path / "classes.txt"
    vocabulary_file.write_text("# my classes\nroad\nred car  # a comment\n\n")
    models = [
        "--ade-model",
        str(tiny_engine_dirs["ade"]),
        "--coco-model",
        str(tiny_engine_dirs["coco"]),
        "--captioner",
        str(tiny_engine_dirs["blip"]),
        "--clip-model",
        str(tiny_engine_dirs["clip"]),
        "--clipseg-model",
        str(tiny_engine_dirs["clipseg"]),
        "--spacy-model",
        str(tiny_engine_dirs["spacy"]),
    ]
    base = [
        "engine",
        engine_dataset.name,
        "--mask-branch",
        "field:gt",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--limit",
        "2",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                *base,
                *models,
                "--vocabulary",
                "dog",
                str(vocabulary_file),
                "--restrict-vocabulary",
                "--top-k",
                "2",
                "--label-field",
                "eng",
            ]
        )
    assert exit_info.value.code == 0
    labels = set(engine_dataset.distinct("eng.detections.label"))
    assert labels and labels <= {"dog", "road", "red car"}
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *models, "--restrict-vocabulary"])
    assert exit_info.value.code == 1
    assert "--restrict-vocabulary needs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *models[:-2], "--spacy-model", "en_core_web_nothere"])
    assert exit_info.value.code == 1
    assert "python -m spacy download en_core_web_nothere" in capsys.readouterr().err


@pytest.mark.gpu
def test_label_masks_on_cuda_in_half_precision(tiny_engine_dirs, scenes):
    from fiftyone_ssa.labelling.engine import label_masks

    models = load_tiny_engine_models(tiny_engine_dirs, device="cuda", half=True)
    assert models.captioner.dtype == models.clipseg.dtype == torch.float16 and models.clip.half
    results = label_masks(
        models, [s[0] for s in scenes], [s[1] for s in scenes], top_k=3, vocabulary=["kite"]
    )
    for labels, (_, masks) in zip(results, scenes):
        _check_labels(labels, masks, 3, ["kite"])


def test_loading_clip_leaves_the_root_logger_alone(tiny_engine_dirs, monkeypatch):
    import logging

    from fiftyone_ssa.models.engine.clip_filter import ClipFilter

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (pytest adds its own)
    ClipFilter(str(tiny_engine_dirs["clip"]), device="cpu")
    # A handler here would print every INFO record (FiftyOne's progress bars) a second time
    assert root.handlers == []


def test_read_vocabulary_tells_names_from_files(tmp_path, monkeypatch):
    from fiftyone_ssa.cli.engine import read_vocabulary

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tree").mkdir()
    names = tmp_path / "names.txt"
    names.write_text("road\n")
    # A bare word naming a directory here and a name with a slash stay names
    assert read_vocabulary(["cup/mug", "tree", str(names)]) == ["cup/mug", "tree", "road"]
    with pytest.raises(ValueError, match="'missing.txt': no such file"):
        read_vocabulary(["missing.txt"])
    with pytest.raises(ValueError, match="a directory, expected a file of names"):
        read_vocabulary([str(tmp_path / "tree")])
    # A file saved by Windows Notepad starts with a byte-order mark and ends lines with CRLF:
    # its first name must not carry an invisible "\ufeff" into the labels.
    bom = tmp_path / "bom.txt"
    bom.write_bytes("zebra\r\ncafé\r\n".encode("utf-8-sig"))
    assert read_vocabulary([str(bom)]) == ["zebra", "café"]


def test_a_review_of_engine_masks_repaints_its_map_and_survives_a_rerun(
    engine_dataset, tiny_engine_models
):
    from fiftyone_ssa.labelling.apply_review import apply_review
    from fiftyone_ssa.labelling.engine import apply_ssa_engine
    from tests.app_patch import AppClient, delete, relabel
    from tests.test_apply_review import raw, reference_repaint

    common = {"mask_branch": "field:gt", "models": tiny_engine_models, "write_segmentation": True}
    apply_ssa_engine(engine_dataset, **common)
    sample = engine_dataset.last()  # the one with the most masks
    unchanged = raw(engine_dataset, engine_dataset.first().id)
    AppClient().patch_sample(sample, [relabel("ssa_engine", 0, "unicorn"), delete("ssa_engine", 1)])
    summary = apply_review(engine_dataset, "ssa_engine")
    assert (summary.samples_reviewed, summary.relabelled, summary.deleted) == (1, 1, 1)
    assert summary.segmentation_field == "ssa_engine_seg"
    sample.reload()
    ids = {name: int(i) for i, name in engine_dataset.mask_targets["ssa_engine_seg"].items()}
    assert ids["unicorn"] == max(ids.values())
    base = np.zeros_like(sample.ssa_engine_seg.mask)  # the engine paints on zeros
    expected = reference_repaint(base, sample.ssa_engine.detections, ids)
    np.testing.assert_array_equal(sample.ssa_engine_seg.mask, expected)
    assert sample.ssa_engine.detections[0].label_before_review != "unicorn"
    assert raw(engine_dataset, engine_dataset.first().id) == unchanged
    reviewed = raw(engine_dataset, sample.id)
    summary = apply_ssa_engine(engine_dataset, resume=False, **common)
    assert (summary.num_labelled, summary.kept_reviewed) == (2, 1)
    after = raw(engine_dataset, sample.id)
    assert after["ssa_engine"] == reviewed["ssa_engine"]
    assert after["ssa_engine_seg"] == reviewed["ssa_engine_seg"]
