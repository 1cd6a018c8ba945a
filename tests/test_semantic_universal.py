"""Mask2Former and EoMT semantic branches (``fiftyone_ssa.models.semantic.universal``).

Every preset is laid out as its hub repository is (``tests/fixtures/hub``, random weights of
the real classes with shrunken sizes, every processor key kept), loaded by its preset name with
the network unreachable, and run end to end on the real database. The class maps are checked
against transformers' own processor, model and ``post_process_semantic_segmentation``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fiftyone_ssa.models import weights
from tests.fixtures.hub_models import fixture_dir, preset_of, save_hub_layout_model
from tests.test_hub_layouts import (
    assert_processor_as_shipped,
    install,
    preset_row,
    real_processor_config,
    run_cli,
)

MASK2FORMER = [
    "facebook/mask2former-swin-tiny-ade-semantic",
    "facebook/mask2former-swin-large-ade-semantic",
    "facebook/mask2former-swin-tiny-cityscapes-semantic",
    "facebook/mask2former-swin-large-cityscapes-semantic",
    "facebook/mask2former-swin-large-coco-panoptic",
]
EOMT = [
    "tue-mps/ade20k_semantic_eomt_large_512",
    "tue-mps/cityscapes_semantic_eomt_large_1024",
    "tue-mps/coco_panoptic_eomt_large_640",
    "tue-mps/coco_panoptic_eomt_small_640_2x",
]
# Processor keys beyond assert_processor_as_shipped's, checked where the shipped file has them.
FAMILY_KEYS = ("size_divisor", "ignore_index", "do_split_image", "do_pad")


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """An empty models directory, the one every loader reads in this test."""
    directory = tmp_path / "models"
    monkeypatch.setenv("FIFTYONE_SSA_MODELS_DIR", str(directory))
    return directory


def shipped_labels(directory: Path) -> dict[int, str]:
    config = json.loads((directory / "config.json").read_text())
    return {int(k): v for k, v in config["id2label"].items()}


def images_of(*shapes: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]


def sharpen_heads(model: torch.nn.Module, seed: int = 1) -> None:
    """Redraws the class and mask heads at unit scale, so that a tiny random model's class map
    varies over the image (at the init scale it is one class almost everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and (
                "class_predictor" in name or "mask" in name
            ):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))


def transformers_outputs(branch, images: list[np.ndarray]):
    """transformers' own processor call and model forward on ``images`` (the reference)."""
    inputs = branch.processor(images=images, return_tensors="pt", input_data_format="channels_last")
    kwargs = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
    if inputs.get("patch_offsets"):
        kwargs["patch_offsets"] = inputs["patch_offsets"]
    with torch.no_grad():
        return branch.model(**kwargs)


def test_every_new_preset_has_its_hub_fixtures():
    new = {n for n in weights.PRESETS if n.startswith(("mask2former-", "eomt-"))}
    assert new == {preset_of(repo) for repo in MASK2FORMER + EOMT}
    for repo in MASK2FORMER + EOMT:
        assert (fixture_dir(repo) / "SOURCE.md").is_file(), repo
        real_processor_config(repo)  # verbatim or inferred/, as SOURCE.md says


@pytest.mark.parametrize("repo", MASK2FORMER + EOMT)
def test_preset_in_hub_layout_labels_an_image_offline(repo, models_dir, no_network, scene_dataset):
    from transformers import EomtImageProcessor, Mask2FormerImageProcessor

    from fiftyone_ssa import apply_ssa
    from fiftyone_ssa.models.registry import create_branch
    from fiftyone_ssa.models.semantic.universal import (
        EomtSemanticBranch,
        Mask2FormerSemanticBranch,
    )

    preset = install(repo, models_dir)
    assert weights.missing_preset_files(preset) == []
    branch = create_branch(preset, device="cpu")
    expected = (
        (Mask2FormerSemanticBranch, Mask2FormerImageProcessor)
        if repo in MASK2FORMER
        else (EomtSemanticBranch, EomtImageProcessor)
    )
    assert type(branch) is expected[0] and type(branch.processor) is expected[1]
    shipped = real_processor_config(repo)
    assert_processor_as_shipped(branch.processor, shipped)
    for key in FAMILY_KEYS:
        if key in shipped:
            assert getattr(branch.processor, key) == shipped[key], key
    assert branch.name == preset
    assert branch.classes == shipped_labels(models_dir / preset)

    dataset = scene_dataset(n=1)
    summary = apply_ssa(
        dataset,
        label_field="ssa",
        semantic_branch=preset,
        mask_branch="field:instances",
        device="cpu",
        progress=False,
    )
    assert summary.num_labelled == 1, summary
    sample = dataset.first()
    assert sample.ssa.mask.shape == sample.coarse.mask.shape
    names = set(dataset.mask_targets["ssa"].values())
    assert names and names <= set(branch.classes.values())
    assert {d.label for d in sample.ssa_masks.detections} <= names


def test_legacy_processor_type_still_loads_mask2formers_processor(models_dir, no_network):
    """The tiny ADE20K file names "MaskFormerImageProcessor" (as uploaded): AutoImageProcessor
    would build MaskFormer's processor; the branch builds Mask2Former's."""
    from transformers import AutoImageProcessor, Mask2FormerImageProcessor

    from fiftyone_ssa.models.registry import create_branch

    preset = install("facebook/mask2former-swin-tiny-ade-semantic", models_dir)
    auto = AutoImageProcessor.from_pretrained(models_dir / preset, local_files_only=True)
    assert type(auto).__name__ == "MaskFormerImageProcessor"
    branch = create_branch(preset, device="cpu")
    assert type(branch.processor) is Mask2FormerImageProcessor


# ---------------------------------------------------------------------------------------------
# Class maps equal transformers' post-processing


@pytest.fixture(scope="module")
def hub_dirs(tmp_path_factory) -> dict[str, Path]:
    """One model directory per repository used below, saved once for the module."""
    root = tmp_path_factory.mktemp("universal")
    repos = [
        "facebook/mask2former-swin-tiny-ade-semantic",
        "facebook/mask2former-swin-large-coco-panoptic",
        "tue-mps/ade20k_semantic_eomt_large_512",
        "tue-mps/coco_panoptic_eomt_large_640",
    ]
    return {repo: save_hub_layout_model(repo, root / repo.replace("/", "--")) for repo in repos}


def load(directory: Path):
    from fiftyone_ssa.models.registry import create_branch

    branch = create_branch(str(directory), device="cpu")
    sharpen_heads(branch.model)
    return branch


@pytest.mark.parametrize(
    "repo",
    [
        "facebook/mask2former-swin-tiny-ade-semantic",
        "facebook/mask2former-swin-large-coco-panoptic",  # panoptic: the same class/mask scores
        "tue-mps/ade20k_semantic_eomt_large_512",  # split into overlapping windows
    ],
)
def test_class_maps_equal_transformers_post_processing(repo, hub_dirs):
    branch = load(hub_dirs[repo])
    images = images_of((50, 70), (61, 40), (37, 37))
    maps = branch.predict(images)
    reference = branch.processor.post_process_semantic_segmentation(
        transformers_outputs(branch, images), target_sizes=[i.shape[:2] for i in images]
    )
    for class_map, expected, image in zip(maps, reference, images):
        assert class_map.dtype == torch.int64 and class_map.shape == image.shape[:2]
        assert class_map.device == branch.device
        torch.testing.assert_close(class_map, expected, rtol=0, atol=0)
    assert all(len(m.unique()) > 1 for m in maps), "constant maps would compare equal anyway"


def test_padded_eomt_equals_transformers_where_nothing_is_padded(hub_dirs):
    """A square image fills the panoptic checkpoint's 640 x 640 input: no padding, and the map
    is transformers' own post-processing's."""
    branch = load(hub_dirs["tue-mps/coco_panoptic_eomt_large_640"])
    images = images_of((45, 45), (80, 80))
    reference = branch.processor.post_process_semantic_segmentation(
        transformers_outputs(branch, images), target_sizes=[i.shape[:2] for i in images]
    )
    maps = branch.predict(images)
    for class_map, expected in zip(maps, reference):
        torch.testing.assert_close(class_map, expected, rtol=0, atol=0)
    assert all(len(m.unique()) > 1 for m in maps)


def test_padded_eomt_crops_the_padding_as_transformers_unpad_image(hub_dirs):
    """Non-square images are padded to 640 x 640; the map keeps the image's region, cropped
    and resized by the processor's own ``unpad_image`` (what its panoptic post-processing
    does)."""
    branch = load(hub_dirs["tue-mps/coco_panoptic_eomt_large_640"])
    images = images_of((30, 70), (70, 30))
    sizes = [i.shape[:2] for i in images]
    outputs = transformers_outputs(branch, images)
    square = [(640, 640)] * len(images)
    scores = branch.processor.post_process_semantic_segmentation(
        outputs, target_sizes=square, return_segmentation_scores=True
    )
    stacked = torch.stack([s.segmentation_scores for s in scores])
    reference = branch.processor.unpad_image(stacked, sizes, branch.processor.size)
    maps = branch.predict(images)
    for class_map, expected in zip(maps, reference):
        torch.testing.assert_close(class_map, expected.argmax(0), rtol=0, atol=0)
    assert all(len(m.unique()) > 1 for m in maps)


def test_padded_eomt_map_lines_up_with_the_image(hub_dirs):
    """Query 0 (class 3) covers the top half of a 32 x 64 image, query 1 (class 7) the rest.
    Resized to 320 x 640 and padded to 640 x 640, the image is the top half of the model's
    input. The branch's map is class 3 on the image's top half; transformers'
    post_process_semantic_segmentation squeezes the padded square into the image and puts
    the boundary at a quarter of its height."""
    from transformers.models.eomt.modeling_eomt import EomtForUniversalSegmentationOutput

    branch = load(hub_dirs["tue-mps/coco_panoptic_eomt_large_640"])
    (image,) = images_of((32, 64))
    num_classes = len(branch.classes)
    classes = torch.full((1, 2, num_classes + 1), -20.0)
    classes[0, 0, 3] = classes[0, 1, 7] = 20.0
    masks = torch.full((1, 2, 160, 160), -20.0)  # 640 / 4: the mask grid of the input
    masks[0, 0, :40] = 20.0  # the image's top half: input rows 0-159 of 0-319
    masks[0, 1, 40:] = 20.0
    outputs = EomtForUniversalSegmentationOutput(
        class_queries_logits=classes, masks_queries_logits=masks, patch_offsets=[]
    )
    inputs = {"patch_offsets": []}
    (scores,) = branch._scores(inputs, outputs, [image])
    from fiftyone_ssa.core.upsample import upsample_argmax

    ours = upsample_argmax(scores, (32, 64))
    assert (ours[:16] == 3).all() and (ours[16:] == 7).all()
    (theirs,) = branch.processor.post_process_semantic_segmentation(outputs, [(32, 64)])
    assert (theirs[:8] == 3).all() and (theirs[8:] == 7).all()


# ---------------------------------------------------------------------------------------------
# Batches


def test_mask2former_batches_images_of_any_size_with_a_fixed_processor_size(hub_dirs):
    branch = load(hub_dirs["facebook/mask2former-swin-tiny-ade-semantic"])
    images = images_of((50, 70), (61, 40), (50, 70))
    assert branch._groups(images) == [[0, 1, 2]]  # all resized to 384 x 384, none padded
    together = branch.predict(images)
    for image, class_map in zip(images, together):
        torch.testing.assert_close(class_map, branch.predict([image])[0], rtol=0, atol=0)


def test_mask2former_runs_padded_batches_in_groups_of_one_size(hub_dirs, tmp_path):
    """A processor that keeps aspect ratios pads a batch to its largest image, which its
    post-processing would not crop: images run in groups of one size, with the maps of
    one-image runs."""
    import shutil

    directory = shutil.copytree(
        hub_dirs["facebook/mask2former-swin-tiny-ade-semantic"], tmp_path / "m2f"
    )
    config_path = directory / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config["size"] = {"shortest_edge": 64, "longest_edge": 96}
    config_path.write_text(json.dumps(config))
    branch = load(directory)
    images = images_of((50, 70), (61, 40), (50, 70))
    assert branch._groups(images) == [[0, 2], [1]]
    together = branch.predict(images)
    for image, class_map in zip(images, together):
        alone = branch.processor.post_process_semantic_segmentation(
            transformers_outputs(branch, [image]), target_sizes=[image.shape[:2]]
        )[0]
        torch.testing.assert_close(class_map, alone, rtol=0, atol=0)


def test_eomt_batches_images_of_any_size(hub_dirs):
    branch = load(hub_dirs["tue-mps/ade20k_semantic_eomt_large_512"])
    images = images_of((50, 70), (61, 40))
    assert branch._groups(images) == [[0, 1]]
    together = branch.predict(images)
    for image, class_map in zip(images, together):
        torch.testing.assert_close(class_map, branch.predict([image])[0], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Real sizes, and `models download`


# Published parameter counts: Mask2Former's paper (Swin-T 47M, Swin-L 216M); EoMT-L at 1024
# (319 M, the EoMT paper's Cityscapes model); EoMT-S (24 M, the EoMT paper).
PUBLISHED = {
    "mask2former-swin-tiny-ade20k": 47e6,
    "mask2former-swin-large-ade20k": 216e6,
    "eomt-large-cityscapes": 319e6,
    "eomt-small-coco": 24e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_kept_configs_have_the_published_size(name):
    from fiftyone_ssa.testing import random_init

    with torch.device("meta"):
        model = random_init.build_random_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED[name], rel=0.02)


def test_models_download_fetches_what_an_eomt_load_needs(tmp_path, fake_hub, models_dir):
    repo = "tue-mps/ade20k_semantic_eomt_large_512"
    served = save_hub_layout_model(repo, tmp_path / "served")
    (served / "README.md").write_text("model card\n")
    fake_hub.add(repo, served)
    env = {
        "HF_ENDPOINT": fake_hub.url,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
    }
    preset = preset_of(repo)
    assert " no " in preset_row(run_cli("models", "list").stdout, preset)
    result = run_cli("models", "download", preset, env=env)
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "preprocessor_config.json", "pytorch_model.bin"):
        assert (models_dir / preset / name).read_bytes() == (served / name).read_bytes()
    assert " yes " in preset_row(run_cli("models", "list").stdout, preset)


def test_semantic_benchmark_runs_with_shrunken_models(tmp_path):
    from benchmarks import bench_semantic

    results = bench_semantic.run(
        ("eomt-large-ade20k", "mask2former-swin-tiny-ade20k", "segformer-b0-ade20k"),
        size=(40, 60),
        repeats=1,
        device="cpu",
        cache=tmp_path,
        tiny=True,
    )
    assert [r.stage for r in results.rows] == [
        "eomt-large-ade20k, run 1",
        "mask2former-swin-tiny-ade20k, run 1",
        "segformer-b0-ade20k, run 1",
    ]
    assert all(r.seconds > 0 for r in results.rows)
    assert any("EomtSemanticBranch" in n and "x the fastest" in n for n in results.notes)
    with pytest.raises(ValueError, match="kept config"):
        bench_semantic.run(("no-such-model",), cache=tmp_path)
