"""SampleWriter: batched background writes, equal to FiftyOne's own per-sample save."""

import fiftyone as fo
import numpy as np
import pytest
import torch

from fiftyone_ssa.labelling.writer import SampleWriter
from fiftyone_ssa.labels import build_detections
from tests.scenes import masks_of_kinds


@pytest.fixture
def labelled_pair(make_dataset):
    ds = make_dataset()
    ds.add_samples([fo.Sample(filepath=f"/tmp/writer_{i}.png") for i in range(6)])
    ds.add_sample_field("seg", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    ds.add_sample_field("dets", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    ds.add_sample_field("note", fo.StringField)
    return ds


def _values(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    masks = torch.from_numpy(
        masks_of_kinds(rng, 24, 32, ["rect", "ragged", "noise", "full", "dup"])
    )
    attributes = [{"confidence": 0.5, "class_proposals": ["a", "b"]} for _ in range(len(masks))]
    return {
        "seg": fo.Segmentation(mask=rng.integers(0, 4, (24, 32), dtype=np.uint8)),
        "dets": build_detections(masks, ["a"] * len(masks), attributes),
        "note": None if seed % 2 else f"sample {seed}",
    }


def _without_ids(value):
    """A label's dict with every ``_id`` (fresh per label object) left out."""
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k != "_id"}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def _as_dict(label):
    return None if label is None else _without_ids(label.to_dict())


def test_batched_background_writes_equal_per_sample_saves(labelled_pair):
    ds = labelled_pair
    ids = ds.values("id")
    held = ds[ids[3]]  # an in-memory sample must see the new labels
    with SampleWriter(ds) as writer:
        for i, sample_id in enumerate(ids[3:]):
            writer.add(sample_id, _values(i))
            if i == 1:
                writer.flush()
    for i, sample_id in enumerate(ids[:3]):
        sample = ds[sample_id]
        sample.update_fields(_values(i), expand_schema=False)
        sample.save()
    for mine, theirs in zip(ids[3:], ids[:3]):
        a, b = ds[mine], ds[theirs]
        for name in ("seg", "dets"):
            assert _as_dict(a[name]) == _as_dict(b[name])
        assert a["note"] == b["note"]
        assert a.last_modified_at >= a.created_at
    assert held.dets is not None and len(held.dets.detections) == len(ds[ids[3]].dets.detections)


def test_undeclared_field_is_refused_before_anything_is_written(labelled_pair):
    ds = labelled_pair
    sample_id = ds.first().id
    with pytest.raises(ValueError, match="'nope'"):
        with SampleWriter(ds) as writer:
            writer.add(sample_id, {"note": "x", "nope": 1})
    assert ds[sample_id]["note"] is None


def test_a_failed_background_write_raises(labelled_pair):
    ds = labelled_pair
    ids = ds.values("id")
    with pytest.raises(RuntimeError, match=f"labels of 1 samples \\({ids[0]} "):
        with SampleWriter(ds) as writer:
            writer.add(ids[0], {"note": object()})  # serializes, but BSON cannot encode it
            writer.flush()
            writer.add(ids[1], {"note": "fine"})
    assert ds[ids[0]]["note"] is None


def test_a_label_of_another_type_is_refused(labelled_pair):
    ds = labelled_pair
    with pytest.raises(ValueError, match="Expected a Detections for field 'dets'"):
        with SampleWriter(ds) as writer:
            writer.add(ds.first().id, {"dets": fo.Segmentation(mask=np.zeros((2, 2), np.uint8))})


def test_an_error_in_the_block_still_writes_what_was_queued(labelled_pair):
    ds = labelled_pair
    ids = ds.values("id")
    with pytest.raises(KeyError, match="the model broke"):
        with SampleWriter(ds) as writer:
            writer.add(ids[0], {"note": "flushed"})
            writer.flush()
            writer.add(ids[1], {"note": "queued"})
            raise KeyError("the model broke")
    assert [ds[i]["note"] for i in ids[:2]] == ["flushed", "queued"]


def test_a_failed_write_does_not_hide_the_error_of_the_block(labelled_pair):
    ds = labelled_pair
    ids = ds.values("id")
    with pytest.raises(KeyError, match="the model broke"):
        with SampleWriter(ds) as writer:
            writer.add(ids[0], {"note": object()})  # this batch cannot be written
            writer.flush()
            raise KeyError("the model broke")
    assert ds[ids[0]]["note"] is None
