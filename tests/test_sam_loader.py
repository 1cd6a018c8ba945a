"""SAM model loading: configs, save/load round trip, one-line errors, weights_only."""

import pickle

import pytest
import torch

from fiftyone_ssa.models.masks.sam_loader import (
    SAM_ARCHITECTURES,
    build_sam,
    load_sam,
    load_sam_dir,
    resolve_sam_config,
    save_sam,
)

_SIDE_EFFECTS: list[str] = []


def _record_side_effect():
    _SIDE_EFFECTS.append("code in the checkpoint ran")
    return {}


class _Payload:
    """Unpickling this calls a function: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (_record_side_effect, ())


def _assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert len(message) < 400
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_architectures_match_segment_anything(name):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours = build_sam(name).state_dict()
        theirs = sam_model_registry[name]().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert (
        resolve_sam_config(f"sam-{name.replace('_', '-')}")["encoder_embed_dim"]
        == (SAM_ARCHITECTURES[name]["encoder_embed_dim"])
    )


def test_save_and_load_dir_round_trip(tmp_path, tiny_sam_config):
    model = build_sam(tiny_sam_config)
    save_sam(model, tmp_path / "sam", tiny_sam_config)
    assert {p.name for p in (tmp_path / "sam").iterdir()} == {"sam_config.json", "model.pt"}

    loaded = load_sam_dir(tmp_path / "sam", device="cpu")
    assert not loaded.training
    assert loaded.image_encoder.img_size == 1024
    assert loaded.prompt_encoder.embed_dim == tiny_sam_config["prompt_embed_dim"]
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key

    image = torch.rand(1, 3, 1024, 1024)
    with torch.no_grad():
        assert torch.equal(loaded.image_encoder(image), model.image_encoder(image))


def test_tiny_sam_dir_fixture_loads(tiny_sam_dir, tiny_sam_config):
    model = load_sam_dir(tiny_sam_dir)
    assert len(model.image_encoder.blocks) == tiny_sam_config["encoder_depth"]
    assert next(model.parameters()).device.type == "cpu"


def test_load_plain_state_dict_like_official_checkpoints(tmp_path, tiny_sam_config):
    model = build_sam(tiny_sam_config)
    torch.save(model.state_dict(), tmp_path / "sam_tiny.pth")
    loaded = load_sam(tmp_path / "sam_tiny.pth", tiny_sam_config)
    assert torch.equal(loaded.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)
    # Training checkpoints wrap the state dict under "model".
    torch.save({"model": model.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "wrapped.pth")
    wrapped = load_sam(tmp_path / "wrapped.pth", tiny_sam_config)
    assert torch.equal(
        wrapped.prompt_encoder.no_mask_embed.weight, model.prompt_encoder.no_mask_embed.weight
    )


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(FileNotFoundError) as err:
        load_sam(path, "vit_b")
    _assert_one_line(err, str(path), "fiftyone-ssa models download sam-vit-b", "local path")


def test_missing_directory_files(tmp_path, tiny_sam_config):
    with pytest.raises(FileNotFoundError) as err:
        load_sam_dir(tmp_path)
    _assert_one_line(err, "sam_config.json")
    save_sam(build_sam(tiny_sam_config), tmp_path, tiny_sam_config)
    (tmp_path / "model.pt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_sam_dir(tmp_path)
    _assert_one_line(err, "model.pt")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "EOFError"),
        (b"not a checkpoint at all", "not a PyTorch checkpoint file"),
        (b"PK\x03\x04" + b"\x00" * 64, "failed reading zip archive"),
    ],
    ids=["empty", "garbage", "truncated-zip"],
)
def test_corrupt_checkpoint_is_one_clear_line(tmp_path, content, reason):
    path = tmp_path / "sam.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_sam(path, "vit_b")
    _assert_one_line(err, f"cannot read SAM checkpoint {path}: ", reason)


def test_truncated_real_checkpoint(tmp_path, tiny_sam_config):
    path = tmp_path / "sam.pth"
    torch.save(build_sam(tiny_sam_config).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as err:
        load_sam(path, tiny_sam_config)
    _assert_one_line(err, "cannot read SAM checkpoint")


def test_wrong_architecture_is_one_short_line(tmp_path, tiny_sam_config):
    path = tmp_path / "tiny.pth"
    torch.save(build_sam(tiny_sam_config).state_dict(), path)
    with pytest.raises(ValueError) as err:
        load_sam(path, "vit_b")
    message = _assert_one_line(
        err, f"checkpoint {path} does not match SAM architecture vit_b", "shape mismatches"
    )
    assert "missing keys" in message  # vit_b has 12 blocks, the tiny one 1

    state = build_sam(tiny_sam_config).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["mask_decoder.iou_token.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_sam(path, tiny_sam_config)
    message = _assert_one_line(err, "unexpected keys 1 (extra.weight)", "missing keys 1")
    assert "shape mismatches" not in message


def test_checkpoints_are_loaded_with_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"image_encoder.pos_embed": _Payload()}, f)
    torch_saved = tmp_path / "evil_torch.pth"
    torch.save({"image_encoder.pos_embed": _Payload()}, torch_saved)
    _SIDE_EFFECTS.clear()
    for candidate in (path, torch_saved):
        with pytest.raises(ValueError) as err:
            load_sam(candidate, "vit_b")
        _assert_one_line(err, "cannot read SAM checkpoint", "weights_only=True")
    assert _SIDE_EFFECTS == []


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError) as err:
        load_sam(path, "vit_b")
    _assert_one_line(err, "not a state dict of tensors")


def test_config_errors(tiny_sam_config):
    with pytest.raises(ValueError, match="vit_b, vit_l, vit_h"):
        resolve_sam_config("vit_xl")
    with pytest.raises(ValueError, match="encoder_depth"):
        resolve_sam_config({"encoder_embed_dim": 32})
    with pytest.raises(ValueError, match="unknown \\['encoder_width'\\]"):
        resolve_sam_config({**tiny_sam_config, "encoder_width": 3})
    with pytest.raises(ValueError):
        resolve_sam_config(3)
    full = resolve_sam_config(tiny_sam_config)
    assert full["image_size"] == 1024 and full["prompt_embed_dim"] == 128
    assert resolve_sam_config("vit_h")["prompt_embed_dim"] == 256


@pytest.mark.parametrize("wrapped", [False, True])
def test_checkpoint_of_another_model_says_it_is_not_sam(tmp_path, wrapped):
    """A state dict without SAM's image encoder (a SAM 2 file, a semantic model's .pth) as a
    mask branch: the message asked for model_type=vit_b|vit_l|vit_h, which cannot help."""
    from fiftyone_ssa import create_branch

    state = {"backbone.conv.weight": torch.zeros(4, 3, 3, 3), "head.bias": torch.zeros(4)}
    path = tmp_path / "sam2_hiera_large.pt"
    torch.save({"model": state} if wrapped else state, path)
    with pytest.raises(ValueError, match="is not a segment-anything SAM checkpoint") as err:
        create_branch(str(path), kind="mask", device="cpu")
    assert "model_type" not in str(err.value)
