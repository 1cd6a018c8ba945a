"""Per-sample faults: the sample is skipped, the reason recorded, and the run goes on.

Every fault (missing file, unreadable or truncated image, a field mask whose size disagrees with
the image, an unreadable instance mask, a model that raises on one image) must leave the other
samples labelled, the faulty sample untouched except for ``<label_field>_error``, and the reason
in the run summary; ``skip_failures=False`` (the CLI's ``--fail-fast``) raises instead.
"""

from __future__ import annotations

import dataclasses

import fiftyone as fo
import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_ssa import apply_ssa
from fiftyone_ssa.labels import build_detections
from fiftyone_ssa.models.semantic.branches import CallableSemanticBranch
from tests.fixtures.sam import blob_scene

# Images of this size make the "model" below raise.
POISON_SIZE = (21, 29)
CLASSES = {0: "ground", 1: "thing", 2: "sky"}


class ModelFailure(RuntimeError):
    """What the semantic branch raises on a poisoned image."""


def striped_branch(image: np.ndarray):
    """A deterministic 'model': class = row band; raises on images of ``POISON_SIZE``."""
    if image.shape[:2] == POISON_SIZE:
        raise ModelFailure("out of cheese on this image")
    rows = np.arange(image.shape[0])[:, None] * 3 // image.shape[0]
    return np.broadcast_to(rows, image.shape[:2]).copy(), CLASSES


def _masks(height: int, width: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    masks = torch.zeros((3, height, width), dtype=torch.bool)
    for i in range(3):
        y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        masks[i, y0 : y0 + height // 2, x0 : x0 + width // 2] = True
    return masks


def _good_sample(directory, name: str, size=(24, 32), seed: int = 0) -> fo.Sample:
    path = directory / f"{name}.png"
    Image.fromarray(blob_scene(*size, seed=seed)).save(path)
    masks = _masks(*size, seed)
    return fo.Sample(
        filepath=str(path),
        masks=build_detections(masks, ["object"] * 3, [{} for _ in range(3)]),
        coarse=fo.Segmentation(mask=np.zeros(size, dtype=np.uint8)),
        notes="keep me",
    )


def _faulty_sample(directory, fault: str) -> fo.Sample:
    """A sample with one fault; its other fields are valid."""
    sample = _good_sample(directory, f"faulty_{fault}", seed=7)
    path = sample.filepath
    if fault == "missing":
        sample.filepath = str(directory / "does_not_exist.png")
    elif fault == "unreadable":
        with open(path, "wb") as f:
            f.write(b"this is not an image at all\n" * 10)
    elif fault == "truncated":
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif fault == "model-error":
        Image.fromarray(blob_scene(*POISON_SIZE, seed=3)).save(path)
        masks = _masks(*POISON_SIZE, 3)
        sample["masks"] = build_detections(masks, ["object"] * 3, [{} for _ in range(3)])
        sample["coarse"] = fo.Segmentation(mask=np.zeros(POISON_SIZE, dtype=np.uint8))
    elif fault == "field-size":
        sample["coarse"] = fo.Segmentation(mask=np.zeros((10, 10), dtype=np.uint8))
    elif fault == "mask-path":
        det = sample["masks"].detections[0]
        det.mask = None
        det.mask_path = str(directory / "gone" / "mask.png")
    else:
        raise ValueError(fault)
    return sample


# fault -> (semantic branch, expected reason) for apply_ssa
SSA_FAULTS = {
    "missing": ("callable", "not found"),
    "unreadable": ("callable", "cannot read image"),
    "truncated": ("callable", "truncated"),
    "model-error": ("callable", "ModelFailure: out of cheese"),
    "field-size": ("field:coarse", "semantic map is 10x10 but the image is 32x24"),
    "mask-path": ("callable", "mask.png"),
}


def _dataset(make_dataset, directory, fault: str):
    dataset = make_dataset()
    samples = [_good_sample(directory, "good0", seed=1), _faulty_sample(directory, fault)]
    samples.append(_good_sample(directory, "good1", size=(20, 28), seed=2))
    dataset.add_samples(samples)
    dataset.mask_targets = {"coarse": CLASSES}
    dataset.save()
    return dataset, samples[1].id


def _semantic(kind: str):
    return striped_branch if kind == "callable" else kind


def _assert_untouched(sample, label_field: str) -> None:
    for suffix in ("", "_masks", "_branch"):
        assert sample[f"{label_field}{suffix}"] is None
    assert sample["notes"] == "keep me"
    assert len(sample["masks"].detections) == 3


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("fault", list(SSA_FAULTS))
def test_apply_ssa_skips_and_records_a_faulty_sample(make_dataset, tmp_path, fault, batch_size):
    branch, reason = SSA_FAULTS[fault]
    dataset, bad_id = _dataset(make_dataset, tmp_path, fault)
    summary = apply_ssa(
        dataset,
        semantic_branch=_semantic(branch),
        mask_branch="field:masks",
        device="cpu",
        batch_size=batch_size,
        num_workers=1,
    )
    assert summary.num_labelled == 2
    assert [f.sample_id for f in summary.failures] == [bad_id]
    assert reason in summary.failures[0].error
    text = str(summary)
    assert "1 failed" in text and dataset[bad_id].filepath in text and reason in text
    # the reason is on the sample, in a field the App can filter on
    failed = dataset.exists("ssa_error")
    assert failed.values("id") == [bad_id]
    assert reason in dataset[bad_id]["ssa_error"]
    assert "ssa_error" in dataset.get_field_schema()
    _assert_untouched(dataset[bad_id], "ssa")
    for sample in dataset.exists("ssa"):
        assert sample.ssa.mask.shape == sample.coarse.mask.shape
        assert len(sample.ssa_masks.detections) == 3
        assert sample["notes"] == "keep me"


@pytest.mark.parametrize("fault", list(SSA_FAULTS))
def test_apply_ssa_fail_fast_raises(make_dataset, tmp_path, fault):
    branch, reason = SSA_FAULTS[fault]
    dataset, bad_id = _dataset(make_dataset, tmp_path, fault)
    with pytest.raises(Exception) as err:
        apply_ssa(
            dataset,
            semantic_branch=_semantic(branch),
            mask_branch="field:masks",
            device="cpu",
            batch_size=3,
            skip_failures=False,
        )
    assert reason in f"{type(err.value).__name__}: {err.value}"
    _assert_untouched(dataset[bad_id], "ssa")
    assert not dataset.exists("ssa_error")  # nothing recorded: the run stopped


def test_all_faults_in_one_run_and_a_rerun_completes_the_rest(make_dataset, tmp_path):
    dataset = make_dataset()
    faults = ["missing", "unreadable", "truncated", "model-error", "mask-path"]
    samples = [_good_sample(tmp_path, "good", seed=1)]
    samples += [_faulty_sample(tmp_path, fault) for fault in faults]
    dataset.add_samples(samples)
    summary = apply_ssa(
        dataset,
        semantic_branch=striped_branch,
        mask_branch="field:masks",
        device="cpu",
        batch_size=4,
    )
    assert summary.num_labelled == 1 and len(summary.failures) == len(faults)
    for fault, failure in zip(faults, summary.failures):
        assert SSA_FAULTS[fault][1] in failure.error, (fault, failure.error)
    assert dataset.count("ssa_error") == len(faults)
    assert dataset.count("ssa") == 1
    # Repair the missing file; a re-run with skip_existing labels it and clears its error.
    missing = dataset[samples[1].id]
    Image.fromarray(blob_scene(24, 32, seed=5)).save(missing.filepath)
    summary = apply_ssa(
        dataset,
        semantic_branch=striped_branch,
        mask_branch="field:masks",
        device="cpu",
        skip_existing=True,
    )
    assert summary.skipped_existing == 1 and summary.num_labelled == 1
    assert dataset[samples[1].id]["ssa"] is not None
    assert dataset[samples[1].id]["ssa_error"] is None
    assert dataset.count("ssa_error") == len(faults) - 1


def test_cli_records_failures_and_fail_fast_stops(make_dataset, tmp_path, capsys):
    from fiftyone_ssa.cli import main

    dataset, bad_id = _dataset(make_dataset, tmp_path, "missing")
    dataset.persistent = True  # the CLI loads it by name
    base = ["run", dataset.name, "--semantic-branch", "field:coarse", "--mask-branch"]
    base += ["field:masks", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--fail-fast"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fiftyone-ssa run: error:") and "does_not_exist.png" in err
    _assert_untouched(dataset[bad_id], "ssa")  # samples before it may be labelled
    assert not dataset.exists("ssa_error")
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--overwrite"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "1 failed" in out and "does_not_exist.png" in out, out
    assert dataset.exists("ssa_error").values("id") == [bad_id]


# ----------------------------------------------------------------------------- SSA-engine

ENGINE_FAULTS = {
    "missing": "not found",
    "unreadable": "cannot read image",
    "truncated": "truncated",
    "model-error": "ModelFailure: out of cheese",
    "mask-path": "mask.png",
}


@pytest.fixture
def poisoned_engine_models(tiny_engine_models):
    """The tiny engine models with an ADE branch that raises on images of POISON_SIZE."""
    ade = tiny_engine_models.ade

    def ade_or_fail(image):
        if image.shape[:2] == POISON_SIZE:
            raise ModelFailure("out of cheese on this image")
        return ade.predict([image])[0], ade.classes

    branch = CallableSemanticBranch(ade_or_fail, device="cpu", name="poisoned-ade")
    return dataclasses.replace(tiny_engine_models, ade=branch)


@pytest.mark.usefixtures("one_thread")
def test_apply_ssa_engine_skips_and_records_every_fault(
    make_dataset, tmp_path, poisoned_engine_models
):
    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    dataset = make_dataset()
    faults = list(ENGINE_FAULTS)
    samples = [_good_sample(tmp_path, "good", seed=1)]
    samples += [_faulty_sample(tmp_path, fault) for fault in faults]
    samples.append(_good_sample(tmp_path, "good_last", size=(20, 28), seed=2))
    dataset.add_samples(samples)
    summary = apply_ssa_engine(
        dataset,
        mask_branch="field:masks",
        models=poisoned_engine_models,
        batch_size=3,
        num_workers=1,
    )
    assert summary.num_labelled == 2
    assert [f.sample_id for f in summary.failures] == [s.id for s in samples[1:-1]]
    text = str(summary)
    for fault, failure in zip(faults, summary.failures):
        reason = ENGINE_FAULTS[fault]
        assert reason in failure.error and reason in dataset[failure.sample_id]["ssa_engine_error"]
        assert failure.filepath in text
        sample = dataset[failure.sample_id]
        assert sample["ssa_engine"] is None and sample["notes"] == "keep me"
    for sample in (dataset[samples[0].id], dataset[samples[-1].id]):
        assert len(sample["ssa_engine"].detections) == 3
        assert sample["ssa_engine_error"] is None


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("fault", ["missing", "model-error"])
def test_apply_ssa_engine_fail_fast_raises(make_dataset, tmp_path, poisoned_engine_models, fault):
    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    dataset = make_dataset()
    samples = [_good_sample(tmp_path, "good", seed=1), _faulty_sample(tmp_path, fault)]
    dataset.add_samples(samples)
    with pytest.raises(Exception) as err:
        apply_ssa_engine(
            dataset,
            mask_branch="field:masks",
            models=poisoned_engine_models,
            batch_size=2,
            skip_failures=False,
        )
    assert ENGINE_FAULTS[fault] in f"{type(err.value).__name__}: {err.value}"
    assert dataset[samples[1].id]["ssa_engine"] is None
    assert not dataset.exists("ssa_engine_error")
