"""The presets' kept configs: real sizes, and random-weight models that load through the real
loaders (shrunken through overrides here to keep the test fast)."""

import numpy as np
import pytest
import torch

from benchmarks.presets import TINY_OVERRIDES
from fiftyone_ssa.models import weights
from fiftyone_ssa.testing import random_init

# Unique parameters of the real models (model cards; BLIP's count its tied LM head once).
PUBLISHED_PARAMETERS = {
    "segformer-b0-ade20k": 3.75e6,
    "segformer-b5-ade20k": 84.7e6,
    "oneformer-ade20k-swin-tiny": 50.7e6,
    "oneformer-ade20k-swin-large": 219e6,
    "oneformer-coco-swin-large": 219e6,
    "clipseg-rd64-refined": 150.7e6,
    "blip-base": 247.4e6 - 30524 * 768,
    "blip-large": 469.7e6 - 30524 * 768,
    "sam-vit-b": 93.7e6,
    "sam-vit-l": 312.3e6,
    "sam-vit-h": 641.1e6,
}


def test_every_model_preset_has_a_config():
    kept = set(random_init.random_model_presets())
    for name, preset in weights.PRESETS.items():
        if name.startswith("segformer-") and name not in PUBLISHED_PARAMETERS:
            continue  # other Segformer sizes: not kept yet
        if preset.kind == "hf" and "cityscapes" in name:
            continue
        assert name in kept, name


@pytest.mark.parametrize("name", random_init.list_model_configs())
def test_kept_configs_build_at_their_real_size(name):
    config = random_init.load_model_config(name)
    assert config["preset"] == name and name in weights.PRESETS
    with torch.device("meta"):
        model = random_init.build_random_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == config["parameters"]
    if name in PUBLISHED_PARAMETERS:
        assert count == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.02)
    labels = config["model"].get("id2label")
    if labels is not None:
        assert len(labels) == config["model"]["num_labels"]


@pytest.mark.parametrize("name", ["blip-base", "blip-large"])
def test_random_blip_sees_the_image(name):
    """Different crops embed differently (BLIP's vision default would draw weights at 1e-10)."""
    model = random_init.build_random_model(name, TINY_OVERRIDES["blip"])
    size = model.config.vision_config.image_size
    with torch.no_grad():
        embeds = model.vision_model(pixel_values=torch.randn(2, 3, size, size)).pooler_output
    assert (embeds[0] - embeds[1]).abs().max() > 0.1 * embeds.abs().max()


@pytest.mark.parametrize("name", ["sam-vit-b", "sam-vit-l", "sam-vit-h"])
def test_sam_sizes(name):
    with torch.device("meta"):
        model = random_init.build_random_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.01)


def test_clip_tokenizer_is_open_clips(tmp_path):
    import open_clip

    tokenizer = random_init.write_clip_tokenizer(tmp_path)
    reference = open_clip.get_tokenizer("ViT-B-32")
    for text in ["a photo of a chest of drawers", "traffic light", "wall-other-merged"]:
        ours = tokenizer(text)["input_ids"]
        theirs = reference([text])[0]
        theirs = theirs[: int((theirs != 0).sum())].tolist()
        assert ours == theirs


def test_bert_vocabulary_has_the_real_size_and_special_ids(tmp_path):
    tokenizer = random_init.write_bert_tokenizer(tmp_path)
    assert len((tmp_path / "vocab.txt").read_text().splitlines()) == 30522
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    assert ids == [0, 100, 101, 102, 103]
    assert tokenizer.decode(tokenizer("a dog on the grass")["input_ids"][1:-1]) == (
        "a dog on the grass"
    )


def test_unknown_names():
    with pytest.raises(ValueError, match="kept config"):
        random_init.load_model_config("segformer-b9")
    with pytest.raises(ValueError, match="preset among"):
        random_init.save_random_model("nope", "/tmp/unused")


def test_random_models_load_through_the_real_loaders(tmp_path):
    """Each family saved with small overrides and loaded by the project's own loaders."""
    from fiftyone_ssa.models.engine.captioner import BlipCaptioner
    from fiftyone_ssa.models.engine.clip_filter import ClipFilter
    from fiftyone_ssa.models.engine.clipseg_decider import ClipSegDecider
    from fiftyone_ssa.models.masks.branches import load_sam_branch
    from fiftyone_ssa.models.registry import create_branch

    def save(name):
        family = random_init.resolve_model_config(name)["family"]
        return random_init.save_random_model(name, tmp_path / name, 0, TINY_OVERRIDES[family])

    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    # The real Segformer-B0 is small enough to save at full size.
    segformer = create_branch(
        str(random_init.save_random_model("segformer-b0-ade20k", tmp_path / "b0")),
        device="cpu",
    )
    assert len(segformer.classes) == 150 and segformer.classes[2] == "sky"
    (class_map,) = segformer.predict([image])
    assert class_map.shape == (48, 64)
    oneformer = create_branch(str(save("oneformer-coco-swin-large")), device="cpu")
    assert len(oneformer.classes) == 133
    assert oneformer.predict([image])[0].shape == (48, 64)

    tensor = torch.from_numpy(image).permute(2, 0, 1)
    boxes = [torch.tensor([[0, 0, 32, 32], [10, 5, 64, 48]])]
    captioner = BlipCaptioner(save("blip-base"), device="cpu", max_new_tokens=4)
    captions = captioner.caption([tensor], boxes)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    clip = ClipFilter(str(save("clip-vit-b-32")), device="cpu")
    names, _ = clip.top_k([tensor], boxes, [["dog", "cat"], ["sky"]], 1)
    assert [len(n) for n in names] == [1, 1]
    decider = ClipSegDecider(save("clipseg-rd64-refined"), device="cpu")
    masks = [torch.zeros((2, 48, 64), dtype=torch.bool)]
    masks[0][:, 10:30, 10:30] = True
    decisions = decider.decide([tensor], boxes, masks, [["dog", "cat"], ["sky", "tree"]])
    assert all(d.name in pair for d, pair in zip(decisions, [["dog", "cat"], ["sky", "tree"]]))
    long_name = " ".join(["tree"] * decider.model.config.text_config.max_position_embeddings)
    open_vocabulary = create_branch(str(decider.path), classes=["sky", long_name], device="cpu")
    assert open_vocabulary.predict([image])[0].shape == (48, 64)
    sam = load_sam_branch(save("sam-vit-b"), device="cpu", points_per_side=4, crop_n_layers=0)
    assert sam.generate(image).masks.shape[1:] == (48, 64)
