"""SAM 3 with a class list as a semantic branch (``fiftyone_ssa.models.semantic.sam3_concepts``).

The preset is laid out as ``facebook/sam3`` is (``tests/fixtures/hub/facebook--sam3``: the
sam3_video config with detector and tracker, shrunk; random weights; every processor key
kept), loaded by name with the network unreachable, and run end to end on the real database.
The class map is checked against the rule applied to transformers' own processor call, model
forward and ``post_process_semantic_segmentation`` (one concept at a time, at full size).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fiftyone_ssa.models import weights
from fiftyone_ssa.models.semantic.sam3_concepts import (
    Sam3ConceptSemanticBranch,
    concept_classes,
)
from tests.fixtures.hub_models import fixture_dir, save_hub_layout_model
from tests.test_hub_layouts import assert_processor_as_shipped, install, preset_row, run_cli

REPO = "facebook/sam3"
CLASSES = ["cat", "dog", "traffic light"]


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "models"
    monkeypatch.setenv("FIFTYONE_SSA_MODELS_DIR", str(directory))
    return directory


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory) -> Path:
    return save_hub_layout_model(REPO, tmp_path_factory.mktemp("sam3") / "facebook--sam3")


def image_of(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference_map(branch, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule on transformers' own outputs: each concept through the processor (image and
    text), the model and ``post_process_semantic_segmentation`` at the image's size; then the
    highest probability above the threshold wins, else the background.

    Returns:
        ((H, W) class ids, (C, H, W) probabilities).
    """
    probabilities = []
    for name in list(branch.classes.values())[1:]:
        inputs = branch.processor(
            images=[image], text=[name], return_tensors="pt", input_data_format="channels_last"
        )
        with torch.no_grad():
            outputs = branch.model(
                pixel_values=inputs["pixel_values"],
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
            )
        (result,) = branch.processor.post_process_semantic_segmentation(
            outputs, target_sizes=[image.shape[:2]], return_segmentation_scores=True
        )
        probabilities.append(result.segmentation_scores[0])
    probabilities = torch.stack(probabilities)
    best, index = probabilities.max(dim=0)
    ids = torch.tensor(list(branch.classes))
    return torch.where(best > branch.threshold, ids[index + 1], 0), probabilities


def test_preset_in_hub_layout_labels_an_image_offline(models_dir, no_network, scene_dataset):
    from transformers import Sam3Processor

    from fiftyone_ssa import apply_ssa
    from fiftyone_ssa.models.registry import create_branch

    preset = install(REPO, models_dir)
    assert preset == "sam3" and weights.PRESETS[preset].gated
    assert weights.missing_preset_files(preset) == []
    assert not (models_dir / preset / "preprocessor_config.json").exists()
    branch = create_branch(preset, device="cpu", classes=CLASSES)
    assert type(branch) is Sam3ConceptSemanticBranch and type(branch.processor) is Sam3Processor
    shipped = json.loads((fixture_dir(REPO) / "inferred" / "processor_config.json").read_text())
    image_processor = branch.processor.image_processor
    assert_processor_as_shipped(image_processor, shipped["image_processor"])
    mask_size = image_processor.mask_size
    assert {"height": mask_size.height, "width": mask_size.width} == shipped["image_processor"][
        "mask_size"
    ]
    assert branch.processor.target_size == shipped["target_size"]
    assert branch.classes == {0: "background", 1: "cat", 2: "dog", 3: "traffic light"}
    assert branch.name == preset

    dataset = scene_dataset(n=1)
    summary = apply_ssa(
        dataset,
        label_field="ssa",
        semantic_branch=preset,
        mask_branch="field:instances",
        classes=CLASSES,
        device="cpu",
        progress=False,
    )
    assert summary.num_labelled == 1, summary
    sample = dataset.first()
    assert sample.ssa.mask.shape == sample.coarse.mask.shape
    assert sample.ssa_branch.mask.shape == sample.coarse.mask.shape
    names = set(dataset.mask_targets["ssa"].values())
    assert names <= set(branch.classes.values())
    assert {d.label for d in sample.ssa_masks.detections} <= names


def test_field_mask_targets_keep_their_ids(models_dir, no_network, scene_dataset):
    """``classes=dataset.mask_targets[field]``: the map's ids are the field's, 0 its own
    background name; so SSA's output compares with the field by id and by name."""
    from fiftyone_ssa import apply_ssa

    install(REPO, models_dir)
    dataset = scene_dataset(n=1)
    targets = dataset.mask_targets["ground_truth"]
    summary = apply_ssa(
        dataset,
        label_field="ssa",
        semantic_branch="sam3",
        mask_branch="field:instances",
        classes=targets,
        device="cpu",
        progress=False,
    )
    assert summary.num_labelled == 1, summary
    written = dataset.mask_targets["ssa"]
    assert all(targets[k] == v for k, v in written.items())
    assert set(np.unique(dataset.first().ssa_branch.mask)) <= set(targets)


def test_class_map_is_the_rule_on_the_processors_own_outputs(sam3_dir):
    branch = Sam3ConceptSemanticBranch(sam3_dir, CLASSES, device="cpu", concept_batch=2)
    image = image_of(45, 70)
    (class_map,) = branch.predict([image])
    assert class_map.dtype == torch.int64 and class_map.shape == image.shape[:2]
    expected, probabilities = reference_map(branch, image)
    # Float rounding may differ only where two scores (or a score and the threshold) tie.
    top2 = probabilities.topk(2, dim=0).values
    near_tie = ((top2[0] - top2[1]).abs() < 1e-5) | ((top2[0] - branch.threshold).abs() < 1e-5)
    differ = class_map != expected
    assert not (differ & ~near_tie).any()
    assert differ.float().mean() < 1e-3
    present = set(class_map.unique().tolist())
    assert 0 in present and len(present) >= 3, "the rule is not exercised: " + str(present)


def test_class_ids_follow_a_mapping(sam3_dir):
    """A mapping keeps its ids (not contiguous), id 0 names the background."""
    mapped = Sam3ConceptSemanticBranch(
        sam3_dir, {0: "unlabeled", 4: "cat", 9: "dog", 7: "traffic light"}, device="cpu"
    )
    listed = Sam3ConceptSemanticBranch(sam3_dir, ["cat", "traffic light", "dog"], device="cpu")
    assert list(mapped.classes.items()) == [
        (0, "unlabeled"),
        (4, "cat"),
        (7, "traffic light"),
        (9, "dog"),
    ]
    image = image_of(30, 40, seed=3)
    (by_id,) = mapped.predict([image])
    (by_list,) = listed.predict([image])
    # The same concepts: the maps are equal once ids are translated to names.
    names_by_id = np.vectorize(mapped.classes.get)(by_id.numpy())
    names_by_list = np.vectorize(listed.classes.get)(by_list.numpy())
    names_by_list[names_by_list == "background"] = "unlabeled"
    np.testing.assert_array_equal(names_by_id, names_by_list)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "at least one class"),
        (["cat", " "], "non-empty"),
        (["cat", "cat"], "'cat' repeats"),
        (["background", "cat"], "class 0"),
        ("cat,dog", "list of class names"),
        ({-1: "cat"}, ">= 0"),
    ],
)
def test_bad_class_lists_are_refused(classes, message):
    with pytest.raises(ValueError, match=message):
        concept_classes(classes)


def test_sam3_needs_classes(sam3_dir):
    from fiftyone_ssa.models.registry import create_branch

    with pytest.raises(ValueError, match="list of class names"):
        create_branch(str(sam3_dir), device="cpu")


def test_models_list_shows_the_preset_and_its_files(models_dir):
    row = preset_row(run_cli("models", "list").stdout, "sam3")
    assert "facebook/sam3" in row and " no" in row
    install(REPO, models_dir)
    row = preset_row(run_cli("models", "list").stdout, "sam3")
    assert " yes " in row
    (models_dir / "sam3" / "processor_config.json").unlink()
    row = preset_row(run_cli("models", "list").stdout, "sam3")
    assert "preprocessor_config.json" in row


def test_cli_reads_classes_from_a_list_a_file_and_a_field(tmp_path, scene_dataset):
    import argparse

    from fiftyone_ssa.cli.common import add_class_arguments, read_classes

    parser = argparse.ArgumentParser()
    add_class_arguments(parser)
    assert read_classes(parser.parse_args(["--classes", "cat", "traffic light,dog"])) == [
        "cat",
        "traffic light",
        "dog",
    ]
    path = tmp_path / "classes.txt"
    path.write_text("# street\ncar\n\n traffic light \nperson\n")
    assert read_classes(parser.parse_args(["--classes-file", str(path)])) == [
        "car",
        "traffic light",
        "person",
    ]
    dataset = scene_dataset(n=1)
    args = parser.parse_args(["--classes-from-field", "ground_truth"])
    assert read_classes(args, dataset) == dataset.mask_targets["ground_truth"]
    with pytest.raises(ValueError, match="no class name"):
        path.write_text("# nothing\n\n")
        read_classes(parser.parse_args(["--classes-file", str(path)]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--classes", "cat", "--classes-file", str(path)])


def test_models_download_fetches_what_both_sam3_presets_need(tmp_path, fake_hub, models_dir):
    """One download fills the directory sam3 and sam3-tracker share; Meta's own sam3.pt is not
    fetched; a repository the hub refuses (gated, no licence accepted) gets a message saying
    what to do."""
    env = {
        "HF_ENDPOINT": fake_hub.url,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
    }
    refused = run_cli("models", "download", "sam3", env=env)
    assert refused.returncode != 0
    assert "facebook/sam3 is gated: accept its licence at https://huggingface.co/facebook/sam3" in (
        refused.stderr
    )
    served = save_hub_layout_model(REPO, tmp_path / "served")
    (served / "sam3.pt").write_bytes(b"Meta's original checkpoint")
    fake_hub.add(REPO, served)
    result = run_cli("models", "download", "sam3-tracker", env=env)
    assert result.returncode == 0, result.stderr
    assert not fake_hub.asked_for("sam3.pt")
    assert sorted(p.name for p in (models_dir / "sam3").iterdir() if p.is_file()) == sorted(
        p.name for p in served.iterdir() if p.name != "sam3.pt"
    )
    listing = run_cli("models", "list").stdout
    assert " yes " in preset_row(listing, "sam3") and " yes " in preset_row(listing, "sam3-tracker")
