"""SAM 3 as SSA-engine's decider (``fiftyone_ssa.models.engine.sam3_decider``), in place of
CLIPSeg: a random-weight SAM 3 in ``facebook/sam3``'s layout, its decisions checked against the
rule applied to transformers' own processor, model and post-processing at full size, and an
SSA-engine run on the real database selecting it per run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fiftyone_ssa.models.engine.sam3_decider import Sam3Decider
from tests.fixtures.engine import load_tiny_engine_models
from tests.fixtures.hub_models import save_hub_layout_model
from tests.test_engine import random_scene

NAMES = ["cat", "dog", "traffic light", "tree", "sky"]


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory) -> Path:
    return save_hub_layout_model("facebook/sam3", tmp_path_factory.mktemp("sam3") / "sam3")


@pytest.fixture(scope="module")
def decider(sam3_dir) -> Sam3Decider:
    return Sam3Decider(sam3_dir, device="cpu", concept_batch=2)


def full_size_probabilities(decider: Sam3Decider, image: np.ndarray, name: str) -> torch.Tensor:
    """One concept through transformers' processor (image and text), the model and
    ``post_process_semantic_segmentation`` at the image's size: (H, W)."""
    inputs = decider.processor(
        images=[image], text=[name], return_tensors="pt", input_data_format="channels_last"
    )
    with torch.no_grad():
        outputs = decider.model(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
        )
    (result,) = decider.processor.post_process_semantic_segmentation(
        outputs, target_sizes=[image.shape[:2]], return_segmentation_scores=True
    )
    return result.segmentation_scores[0]


def scene(seed: int, height: int = 44, width: int = 60, n: int = 6):
    rng = np.random.default_rng(seed)
    image, masks = random_scene(rng, height, width, n)
    proposals = [list(rng.permutation(NAMES)[: 2 + i % 3]) for i in range(n)]
    return image, masks, proposals


def test_decisions_are_the_rule_on_the_processors_own_outputs(decider):
    image, masks, proposals = scene(seed=5)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    decisions = decider.decide([tensor], [torch.zeros(len(masks), 4)], [masks], proposals)
    probabilities = {n: full_size_probabilities(decider, image, n) for n in NAMES}
    winners_not_first = 0
    for mask, names, decision in zip(masks, proposals, decisions):
        area = int(mask.sum())
        covered = [int(((probabilities[n] > decider.threshold) & mask).sum()) for n in names]
        best = int(np.argmax(covered))  # the first maximum: the better CLIP rank
        # Float rounding may move a pixel lying on the threshold: allow one pixel of slack.
        if sorted(covered)[-1] - sorted(covered)[-2] > 1:
            assert decision.name == names[best], (covered, names, decision)
        assert decision.share == pytest.approx(covered[best] / area, abs=1.5 / area)
        winners_not_first += decision.name != names[0]
    assert winners_not_first, "every mask kept CLIP's first proposal: the rule is not exercised"


def test_single_proposals_need_no_model_and_images_batch(decider, monkeypatch):
    image_a, masks_a, proposals_a = scene(seed=1)
    image_b, masks_b, proposals_b = scene(seed=2, height=36, width=52, n=4)
    tensors = [torch.from_numpy(i).permute(2, 0, 1) for i in (image_a, image_b)]
    together = decider.decide(tensors, [None, None], [masks_a, masks_b], proposals_a + proposals_b)
    alone = decider.decide(tensors[1:], [None], [masks_b], proposals_b)
    assert together[len(masks_a) :] == alone

    calls = []
    monkeypatch.setattr(decider.concepts, "encode_image", lambda *a: calls.append(a))
    singles = decider.decide(tensors[:1], [None], [masks_a], [[p[0]] for p in proposals_a])
    assert [d.name for d in singles] == [p[0] for p in proposals_a] and not calls
    with pytest.raises(ValueError, match="one proposal list per mask"):
        decider.decide(tensors[:1], [None], [masks_a], proposals_a[:-1])


def test_engine_run_selects_the_sam3_decider(tiny_engine_dirs, sam3_dir, make_dataset, tmp_path):
    import fiftyone as fo
    from PIL import Image

    from fiftyone_ssa.labelling.engine import apply_ssa_engine
    from fiftyone_ssa.labels import build_detections

    dataset = make_dataset()
    rng = np.random.default_rng(3)
    for i in range(2):
        image, masks = random_scene(rng, 40, 56, 3)
        path = tmp_path / f"image_{i}.png"
        Image.fromarray(image).save(path)
        gt = build_detections(masks, ["thing"] * len(masks), [{} for _ in masks])
        dataset.add_sample(fo.Sample(filepath=str(path), gt=gt))
    models = load_tiny_engine_models(
        tiny_engine_dirs, device="cpu", decider="sam3", sam3=str(sam3_dir)
    )
    assert isinstance(models.decider, Sam3Decider)
    models.captioner.max_new_tokens = 8
    summary = apply_ssa_engine(
        dataset, mask_branch="field:gt", top_k=3, models=models, decider="sam3", progress=False
    )
    assert summary.num_labelled == 2 and not summary.failures
    dataset.reload()
    assert dataset.info["fiftyone_ssa_runs"]["ssa_engine"]["config"]["decider"] == "sam3"
    for sample in dataset:
        for detection in sample.ssa_engine.detections:
            assert detection.label in detection.class_proposals
            assert 0.0 <= detection.confidence <= 1.0
    with pytest.raises(ValueError, match="decider"):
        apply_ssa_engine(dataset, mask_branch="field:gt", decider="clip", label_field="other")


def test_the_default_decider_stays_out_of_the_run_key(tiny_engine_models, make_dataset, tmp_path):
    """``decider`` enters a run's configuration (and key) only when it is not CLIPSeg: runs
    from before the choice existed keep their keys (resume, skip)."""
    import fiftyone as fo
    from PIL import Image

    from fiftyone_ssa.labelling.engine import apply_ssa_engine
    from fiftyone_ssa.labels import build_detections

    dataset = make_dataset()
    image, masks = random_scene(np.random.default_rng(4), 32, 40, 2)
    Image.fromarray(image).save(tmp_path / "a.png")
    gt = build_detections(masks, ["thing"] * len(masks), [{} for _ in masks])
    dataset.add_sample(fo.Sample(filepath=str(tmp_path / "a.png"), gt=gt))
    apply_ssa_engine(dataset, mask_branch="field:gt", models=tiny_engine_models, progress=False)
    dataset.reload()
    assert "decider" not in dataset.info["fiftyone_ssa_runs"]["ssa_engine"]["config"]


def test_cli_engine_takes_the_decider():
    import argparse

    from fiftyone_ssa.cli import engine

    parser = argparse.ArgumentParser()
    engine.add_parser(parser.add_subparsers())
    args = parser.parse_args(["engine", "ds", "--decider", "sam3", "--sam3-model", "/m/sam3"])
    assert (args.decider, args.sam3_model) == ("sam3", "/m/sam3")
    assert parser.parse_args(["engine", "ds"]).decider == "clipseg"
    with pytest.raises(SystemExit):
        parser.parse_args(["engine", "ds", "--decider", "clip"])
