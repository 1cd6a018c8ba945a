"""Semantic branches: tiny real models saved to disk and loaded through the real loaders."""

import json
import shutil

import numpy as np
import pytest
import torch

from fiftyone_ssa import create_branch, list_branches, register_branch
from fiftyone_ssa.models import weights
from fiftyone_ssa.models.semantic.branches import CallableSemanticBranch, TransformersSemanticBranch
from tests.fixtures.models import TINY_CLASSES


@pytest.fixture
def models_dir(tmp_path):
    weights.set_models_dir(tmp_path / "models")
    yield tmp_path / "models"
    weights.set_models_dir(None)


def _images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 40, 3), dtype=np.uint8),
    ]


def test_local_directory_loads_through_transformers(tiny_segformer_dir):
    branch = create_branch(str(tiny_segformer_dir), device="cpu")
    assert isinstance(branch, TransformersSemanticBranch)
    assert branch.classes == dict(enumerate(TINY_CLASSES))
    maps = branch.predict(_images())
    assert [tuple(m.shape) for m in maps] == [(37, 53), (64, 40)]
    assert all(m.dtype == torch.int64 and int(m.max()) < len(TINY_CLASSES) for m in maps)


def test_class_map_is_upsampled_logits_argmax(tiny_segformer_dir):
    """The strip-wise upsampling equals transformers' own post-processing."""
    branch = create_branch(str(tiny_segformer_dir), device="cpu")
    image = _images()[0]
    inputs = branch.processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        outputs = branch.model(**inputs)
    expected = branch.processor.post_process_semantic_segmentation(
        outputs, target_sizes=[image.shape[:2]]
    )[0]
    assert (branch.predict([image])[0] == expected).float().mean() > 0.999


def test_preset_and_hf_id_resolve_through_models_dir(tiny_segformer_dir, models_dir):
    with pytest.raises(FileNotFoundError, match="fiftyone-ssa models download segformer-b0"):
        create_branch("segformer-b0-ade20k")
    shutil.copytree(tiny_segformer_dir, models_dir / "segformer-b0-ade20k")
    branch = create_branch("segformer-b0-ade20k", device="cpu")
    assert branch.name == "segformer-b0-ade20k" and branch.classes[0] == "wall"
    with pytest.raises(FileNotFoundError, match="models download acme/street-seg"):
        create_branch("acme/street-seg")
    shutil.copytree(tiny_segformer_dir, models_dir / "hf" / "acme--street-seg")
    assert create_branch("acme/street-seg", device="cpu").num_classes == len(TINY_CLASSES)


def test_wrong_and_corrupt_checkpoints_are_one_line_errors(tiny_segformer_dir, tmp_path):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        create_branch(str(not_a_model))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_segformer_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot load a semantic segmentation model") as err:
        create_branch(str(corrupt))
    assert "\n" not in str(err.value)
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_segformer_dir, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["hidden_sizes"] = [16, 32]  # weights of another architecture
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot load"):
        create_branch(str(wrong))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="segformer-b5-ade20k"):
        create_branch("segformer-b9")
    with pytest.raises(ValueError, match="is a mask branch"):
        create_branch("sam-vit-b", kind="semantic")


def test_registry_listing_and_decorator():
    assert {
        "segformer-b0-ade20k",
        "segformer-b5-cityscapes",
        "oneformer-ade20k-swin-large",
        "oneformer-coco-swin-large",
        "oneformer-cityscapes-swin-large",
        "clipseg-rd64-refined",
    } <= set(list_branches(kind="semantic"))
    assert list_branches("sam-vit-*") == ["sam-vit-b", "sam-vit-h", "sam-vit-l"]

    def halves(image):
        class_map = np.zeros(image.shape[:2], dtype=np.int64)
        class_map[:, image.shape[1] // 2 :] = 1
        return class_map, {0: "left", 1: "right"}

    @register_branch("test-halves", description="left/right")
    def make_halves(device=None, **kwargs):
        return CallableSemanticBranch(halves, device=device, name="test-halves")

    assert "test-halves" in list_branches()
    branch = create_branch("test-halves", device="cpu")
    (class_map,) = branch.predict([np.zeros((4, 6, 3), dtype=np.uint8)])
    assert class_map.tolist() == [[0, 0, 0, 1, 1, 1]] * 4 and branch.classes == {
        0: "left",
        1: "right",
    }
    plain = create_branch(halves, device="cpu")  # a bare callable works too
    assert isinstance(plain, CallableSemanticBranch)
    with pytest.raises(ValueError, match="field:"):
        register_branch("field:x")


def test_callable_with_wrong_shape_is_rejected():
    branch = create_branch(lambda image: (np.zeros((2, 2)), {0: "a"}), device="cpu")
    with pytest.raises(ValueError, match="class map"):
        branch.predict([np.zeros((3, 3, 3), dtype=np.uint8)])


@pytest.mark.parametrize(
    "class_map",
    [np.full((3, 3), 0.7, dtype=np.float32), np.full((3, 3), -1)],
    ids=["scores", "negative"],
)
def test_callable_returning_scores_is_rejected(class_map):
    branch = create_branch(lambda image: (class_map, {0: "a"}), device="cpu")
    with pytest.raises(ValueError, match="class ids"):
        branch.predict([np.zeros((3, 3, 3), dtype=np.uint8)])


def test_callable_class_ids_of_any_integral_dtype_are_taken():
    grid = np.arange(9).reshape(3, 3)
    for ids in (grid + 300.0, (grid + 300).astype(np.uint16), grid.astype(np.uint8), grid % 2 == 1):
        branch = create_branch(lambda image, ids=ids: (ids, {0: "a"}), device="cpu")
        (class_map,) = branch.predict([np.zeros((3, 3, 3), dtype=np.uint8)])
        assert class_map.dtype == torch.int64 and class_map.tolist() == ids.astype(int).tolist()


def test_pathlib_paths_are_taken_like_strings(tiny_segformer_dir, tiny_sam_dir):
    """A pathlib.Path to a model directory or checkpoint was refused ("Expected a semantic
    branch name, but got PosixPath(...)")."""
    from pathlib import Path

    from fiftyone_ssa.models.masks.branches import SamMaskBranch

    branch = create_branch(Path(tiny_segformer_dir), device="cpu")
    assert isinstance(branch, TransformersSemanticBranch)
    assert branch.classes == dict(enumerate(TINY_CLASSES))
    sam = create_branch(Path(tiny_sam_dir), kind="mask", device="cpu", points_per_side=4)
    assert isinstance(sam, SamMaskBranch)
    checkpoint = Path(tiny_sam_dir) / "model.pt"
    with pytest.raises(ValueError, match="cannot tell the SAM architecture of .*model.pt"):
        create_branch(checkpoint, kind="mask", device="cpu")


def test_checkpoint_without_the_segmentation_head_is_refused(tiny_segformer_dir, tmp_path):
    """An encoder-only or classification checkpoint (like nvidia/mit-b0) loaded as a Segformer
    for semantic segmentation: transformers initialised the decode head at random and the
    branch silently gave random classes."""
    from transformers import SegformerConfig, SegformerForImageClassification

    classifier = tmp_path / "classifier"
    shutil.copytree(tiny_segformer_dir, classifier)
    (classifier / "model.safetensors").unlink()
    torch.manual_seed(0)
    SegformerForImageClassification(SegformerConfig.from_pretrained(classifier)).save_pretrained(
        classifier
    )
    with pytest.raises(ValueError, match=r"weights are not in the checkpoint \(e\.g\. decode_head"):
        create_branch(str(classifier), device="cpu")
