"""Every preset loads the files its real source ships, offline, from the models directory.

The model directories are laid out as the hub's repositories are (``tests/fixtures/hub``:
verbatim small files, legacy processor configs, OneFormer's class-info file from another
repository, the real weight file names), with random weights, and loaded through the same code
that loads real weights while a socket guard makes the network unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fiftyone_ssa.models import weights
from tests.fixtures.hub_models import (
    add_class_info_file,
    fixture_dir,
    preset_of,
    save_hub_layout_model,
)

SEGFORMER = [
    "nvidia/segformer-b0-finetuned-ade-512-512",
    "nvidia/segformer-b1-finetuned-ade-512-512",
    "nvidia/segformer-b4-finetuned-ade-512-512",
    "nvidia/segformer-b5-finetuned-ade-640-640",
    "nvidia/segformer-b0-finetuned-cityscapes-1024-1024",
    "nvidia/segformer-b1-finetuned-cityscapes-1024-1024",
    "nvidia/segformer-b5-finetuned-cityscapes-1024-1024",
]
ONEFORMER = [
    "shi-labs/oneformer_ade20k_swin_large",
    "shi-labs/oneformer_ade20k_swin_tiny",
    "shi-labs/oneformer_coco_swin_large",
    "shi-labs/oneformer_cityscapes_swin_large",
]
CLIPSEG = ["CIDAS/clipseg-rd64-refined", "CIDAS/clipseg-rd16"]
BLIP = ["Salesforce/blip-image-captioning-base", "Salesforce/blip-image-captioning-large"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """An empty models directory, the one every loader reads in this test."""
    directory = tmp_path / "models"
    monkeypatch.setenv("FIFTYONE_SSA_MODELS_DIR", str(directory))
    return directory


def install(repo: str, models_dir: Path) -> str:
    """Writes ``repo``'s hub layout (with the class-info file a download adds) as its preset."""
    preset = preset_of(repo)
    dest = save_hub_layout_model(repo, models_dir / preset)
    if "oneformer" in repo:
        add_class_info_file(dest)
    return preset


def real_processor_config(repo: str) -> dict:
    directory = fixture_dir(repo)
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        path = directory / "inferred" / "preprocessor_config.json"
    return json.loads(path.read_text())


def assert_processor_as_shipped(image_processor, shipped: dict) -> None:
    """The loaded image processor does what the shipped config says."""
    for key in ("image_mean", "image_std", "do_normalize", "do_resize", "rescale_factor"):
        if key in shipped:
            np.testing.assert_allclose(
                np.asarray(getattr(image_processor, key), dtype=float),
                np.asarray(shipped[key], dtype=float),
                err_msg=key,
            )
    if "resample" in shipped:
        assert int(image_processor.resample) == shipped["resample"]
    size = shipped.get("size")
    if isinstance(size, int):  # the legacy square size
        assert (image_processor.size.height, image_processor.size.width) == (size, size)
    elif isinstance(size, dict):
        for key, value in size.items():
            assert getattr(image_processor.size, key) == value, key
    if "reduce_labels" in shipped:  # the legacy key acts as today's do_reduce_labels
        assert image_processor.do_reduce_labels == shipped["reduce_labels"]


@pytest.mark.parametrize("repo", SEGFORMER + ONEFORMER + CLIPSEG)
def test_semantic_preset_in_hub_layout_labels_an_image_offline(
    repo, models_dir, no_network, scene_dataset
):
    from fiftyone_ssa import apply_ssa
    from fiftyone_ssa.models.registry import create_branch

    preset = install(repo, models_dir)
    assert weights.missing_preset_files(preset) == []
    options = {"classes": ["road", "window", "sky"]} if "clipseg" in repo else {}
    branch = create_branch(preset, device="cpu", **options)
    image_processor = getattr(branch.processor, "image_processor", branch.processor)
    assert_processor_as_shipped(image_processor, real_processor_config(repo))
    if "oneformer" in repo:  # class names read from the class-info file beside the model
        info = json.loads((models_dir / preset / image_processor.class_info_file).read_text())
        assert image_processor.metadata["class_names"] == [v["name"] for v in info.values()]

    dataset = scene_dataset(n=1)
    summary = apply_ssa(
        dataset,
        label_field="ssa",
        semantic_branch=branch,
        mask_branch="field:instances",
        device="cpu",
        progress=False,
    )
    assert summary.num_labelled == 1, summary
    sample = dataset.first()
    assert sample.ssa.mask.shape == sample.coarse.mask.shape
    names = set(dataset.mask_targets["ssa"].values())
    assert {d.label for d in sample.ssa_masks.detections} <= names
    assert names <= set(branch.classes.values())


def test_a_shipped_ade20k_quirk_is_kept(models_dir, no_network):
    """ADE20K's class-info file spells id 8 "window " (a trailing space): read as shipped."""
    from fiftyone_ssa.models.registry import create_branch

    preset = install("shi-labs/oneformer_ade20k_swin_tiny", models_dir)
    names = create_branch(preset, device="cpu").processor.image_processor.metadata
    assert names["8"] == "window "


@pytest.fixture(scope="module")
def clip_b32_checkpoint(tmp_path_factory) -> Path:
    """A real-size ViT-B/32 (the preset's architecture) with random weights, in open_clip's
    own state-dict format, under the file name of timm/vit_base_patch32_clip_224.openai."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return path


def install_clip(models_dir: Path, checkpoint: Path) -> str:
    repo = "timm/vit_base_patch32_clip_224.openai"
    preset = preset_of(repo)
    dest = models_dir / preset
    dest.mkdir(parents=True)
    for name in ("config.json", "open_clip_config.json"):
        (dest / name).write_bytes((fixture_dir(repo) / name).read_bytes())
    (dest / checkpoint.name).symlink_to(checkpoint)
    return preset


def test_clip_preset_and_hub_directory_load_offline(models_dir, no_network, clip_b32_checkpoint):
    """The preset (the checkpoint) and the repository directory (its open_clip_config.json)
    both build OpenAI's QuickGELU model and give the same embeddings."""
    from fiftyone_ssa.models.engine.clip_filter import load_open_clip

    preset = install_clip(models_dir, clip_b32_checkpoint)
    by_preset, tokenizer, _ = load_open_clip(preset)
    by_directory, _, _ = load_open_clip(models_dir / preset)
    shipped = json.loads((models_dir / preset / "open_clip_config.json").read_text())
    assert shipped["model_cfg"]["quick_gelu"] is True
    for model in (by_preset, by_directory):
        assert any(type(m).__name__ == "QuickGELU" for m in model.modules())
    text = tokenizer(["a photo of a cat"])
    with torch.no_grad():
        torch.testing.assert_close(by_preset.encode_text(text), by_directory.encode_text(text))


def test_engine_presets_in_hub_layouts_label_an_image_offline(
    models_dir, no_network, scene_dataset, clip_b32_checkpoint
):
    from fiftyone_ssa import apply_ssa_engine
    from fiftyone_ssa.testing.tiny import build_tiny_spacy

    chosen = {
        "ade": install("shi-labs/oneformer_ade20k_swin_large", models_dir),
        "coco": install("shi-labs/oneformer_coco_swin_large", models_dir),
        "captioner": install("Salesforce/blip-image-captioning-base", models_dir),
        "clipseg": install("CIDAS/clipseg-rd64-refined", models_dir),
        "clip": install_clip(models_dir, clip_b32_checkpoint),
    }
    assert chosen == weights.DEFAULT_ENGINE_MODELS | {
        "captioner": "blip-base",
        "clip": "clip-vit-b-32",
    }
    dataset = scene_dataset(n=1)
    summary = apply_ssa_engine(
        dataset,
        mask_branch="field:instances",
        models=chosen,
        spacy_model=build_tiny_spacy("parser"),
        device="cpu",
        progress=False,
    )
    assert summary.num_labelled == 1, summary
    detections = dataset.first().ssa_engine.detections
    assert detections and all(d.label in d.class_proposals for d in detections)


@pytest.mark.parametrize("repo", BLIP)
def test_blip_presets_caption_offline(repo, models_dir, no_network):
    from fiftyone_ssa.models.engine.captioner import BlipCaptioner

    preset = install(repo, models_dir)
    captioner = BlipCaptioner(weights.resolve(preset), device="cpu")
    assert_processor_as_shipped(captioner.processor.image_processor, real_processor_config(repo))
    captioner.max_new_tokens = 4
    image = torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8)
    captions = captioner.caption([image], [torch.tensor([[0, 0, 30, 40], [10, 5, 70, 50]])])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_sam_preset_official_checkpoint_runs_ssa_offline(models_dir, no_network, scene_dataset):
    """sam-vit-b as segment-anything ships it: a bare state dict named sam_vit_b_01ec64.pth."""
    from segment_anything import sam_model_registry

    from fiftyone_ssa import apply_ssa

    torch.manual_seed(0)
    directory = models_dir / "sam-vit-b"
    directory.mkdir(parents=True)
    torch.save(sam_model_registry["vit_b"]().state_dict(), directory / "sam_vit_b_01ec64.pth")
    segformer = install("nvidia/segformer-b0-finetuned-ade-512-512", models_dir)
    dataset = scene_dataset(n=1)
    summary = apply_ssa(
        dataset,
        semantic_branch=segformer,
        mask_branch="sam-vit-b",
        device="cpu",
        progress=False,
        points_per_side=2,
        crop_n_layers=0,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    assert summary.num_labelled == 1, summary
    assert dataset.first().ssa.mask.shape == dataset.first().coarse.mask.shape


# ---------------------------------------------------------------------------------------------
# What `models list` reports, and what a failed load says


ONEFORMER_NEEDS = [
    "config.json",
    "pytorch_model.bin",
    "preprocessor_config.json",
    "ade20k_panoptic.json",
    "vocab.json",
]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fiftyone_ssa", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def preset_row(listing: str, preset: str) -> str:
    return next(line for line in listing.splitlines() if line.startswith(preset + " "))


@pytest.mark.parametrize("removed", ONEFORMER_NEEDS)
def test_models_list_names_the_missing_file(removed, models_dir):
    preset = install("shi-labs/oneformer_ade20k_swin_large", models_dir)
    listing = run_cli("models", "list").stdout
    assert " yes " in preset_row(listing, preset)
    (models_dir / preset / removed).unlink()
    row = preset_row(run_cli("models", "list").stdout, preset)
    assert " no: lacks " in row and removed in row
    assert not weights.is_present(preset)


@pytest.mark.parametrize("removed", ONEFORMER_NEEDS)
def test_a_load_with_a_file_missing_names_preset_directory_and_file(removed, models_dir):
    from fiftyone_ssa.models.registry import create_branch

    preset = install("shi-labs/oneformer_ade20k_swin_large", models_dir)
    (models_dir / preset / removed).unlink()
    with pytest.raises(FileNotFoundError) as err:
        create_branch(preset, device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert repr(preset) in message and str(models_dir / preset) in message
    assert removed in message


def test_a_class_info_file_missing_from_a_directory_is_one_line(tmp_path, no_network):
    """A OneFormer directory passed by path (not a preset) names the file and where it is from."""
    from fiftyone_ssa.models.registry import create_branch

    directory = save_hub_layout_model("shi-labs/oneformer_coco_swin_large", tmp_path / "coco")
    with pytest.raises(ValueError) as err:
        create_branch(str(directory), device="cpu")
    message = str(err.value)
    assert "\n" not in message and str(directory) in message
    assert "coco_panoptic.json" in message and "shi-labs/oneformer_demo" in message
    assert not no_network  # read locally, never fetched


def test_an_unreadable_config_is_named(models_dir):
    preset = install("nvidia/segformer-b0-finetuned-ade-512-512", models_dir)
    (models_dir / preset / "config.json").write_text("{not json")
    assert weights.missing_preset_files(preset) == ["config.json (unreadable)"]


# ---------------------------------------------------------------------------------------------
# `models download` against a hub stand-in on the loopback interface


def test_download_fetches_the_class_info_file_and_one_set_of_weights(
    tmp_path, fake_hub, models_dir
):
    repo = "shi-labs/oneformer_ade20k_swin_large"
    served = save_hub_layout_model(repo, tmp_path / "served")
    torch.save({}, served / "150_16_swin_l_oneformer_ade20k_160k.pth")  # detectron2's original
    (served / "model.safetensors").write_bytes((served / "pytorch_model.bin").read_bytes())
    fake_hub.add(repo, served)
    fake_hub.add("shi-labs/oneformer_demo", fixture_dir("shi-labs/oneformer_demo"), "dataset")
    env = {
        "HF_ENDPOINT": fake_hub.url,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
    }
    preset = preset_of(repo)
    result = run_cli("models", "download", preset, env=env)
    assert result.returncode == 0, result.stderr
    downloaded = models_dir / preset
    assert (downloaded / "ade20k_panoptic.json").read_bytes() == (
        fixture_dir("shi-labs/oneformer_demo") / "ade20k_panoptic.json"
    ).read_bytes()
    assert any(
        path.startswith("/datasets/shi-labs/oneformer_demo/")
        and path.endswith("ade20k_panoptic.json")
        for method, path in fake_hub.requests
        if method == "GET"
    )
    assert not fake_hub.asked_for("150_16_swin_l_oneformer_ade20k_160k.pth")
    assert not fake_hub.asked_for("pytorch_model.bin")  # safetensors are there: one set only
    assert " yes " in preset_row(run_cli("models", "list").stdout, preset)
    assert weights.missing_preset_files(preset) == []


# ---------------------------------------------------------------------------------------------
# The presets added after the first round (SAM 2.1, EdgeTAM, SAM-HQ, Mask2Former, EoMT):
# `models list` and `models download` know them as they know the others.

NEW_FAMILIES = ("sam2", "edgetam", "samhq", "mask2former", "eomt")
NEW_PRESET_REPOS = sorted(
    p.source
    for p in weights.PRESETS.values()
    if fixture_dir(p.source).is_dir()
    and any(f in p.source.lower().replace("-", "") for f in NEW_FAMILIES)
)


def test_every_hub_preset_has_a_real_layout_fixture():
    """A preset whose weights come from the hub has its repository's files under fixtures."""
    hub_presets = [p for p in weights.PRESETS.values() if "://" not in p.source]
    lacking = [p.name for p in hub_presets if not fixture_dir(p.source).is_dir()]
    assert not lacking, f"presets without tests/fixtures/hub/<org>--<name>: {lacking}"
    assert len(NEW_PRESET_REPOS) >= 16  # 4 SAM 2.1, EdgeTAM, 2 SAM-HQ, 5 Mask2Former, 4 EoMT


def test_models_list_shows_each_new_preset_present_then_lacking_its_config(models_dir):
    presets = [install(repo, models_dir) for repo in NEW_PRESET_REPOS]
    listing = run_cli("models", "list").stdout
    assert [p for p in presets if " yes " not in preset_row(listing, p)] == []
    for preset in presets:
        (models_dir / preset / "config.json").unlink()
    listing = run_cli("models", "list").stdout
    rows = {p: preset_row(listing, p) for p in presets}
    assert [p for p, row in rows.items() if " no: lacks config.json" not in row] == []


@pytest.mark.parametrize(
    "repo",
    [
        "facebook/sam2.1-hiera-tiny",
        "yonigozlan/EdgeTAM-hf",
        "syscv-community/sam-hq-vit-base",
        "facebook/mask2former-swin-tiny-ade-semantic",
        "tue-mps/coco_panoptic_eomt_small_640_2x",
    ],
)
def test_download_of_a_new_preset_takes_one_weight_set_and_loads_offline(
    repo, tmp_path, fake_hub, models_dir
):
    from fiftyone_ssa.models.registry import create_branch

    served = save_hub_layout_model(repo, tmp_path / "served")
    weight_file = next(served.glob("*.safetensors"), None) or served / "pytorch_model.bin"
    original = "sam2.1_hiera_tiny.pt" if "sam2" in repo else "original_checkpoint.pth"
    (served / original).write_bytes(b"an original-framework checkpoint")
    if weight_file.suffix == ".safetensors":  # both sets on the hub: one is fetched
        (served / "pytorch_model.bin").write_bytes(b"the same weights, pickled")
    fake_hub.add(repo, served)
    env = {
        "HF_ENDPOINT": fake_hub.url,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
    }
    preset = preset_of(repo)
    result = run_cli("models", "download", preset, env=env)
    assert result.returncode == 0, result.stderr
    downloaded = models_dir / preset
    assert (downloaded / weight_file.name).read_bytes() == weight_file.read_bytes()
    assert not fake_hub.asked_for(original)
    if weight_file.suffix == ".safetensors":
        assert not fake_hub.asked_for("pytorch_model.bin")
    assert " yes " in preset_row(run_cli("models", "list").stdout, preset)
    kind = weights.PRESETS[preset].task
    assert create_branch(preset, kind=kind, device="cpu") is not None  # loads what was fetched
