"""SA-1B import / export against files written with PIL and pycocotools (tests/fixtures/sa1b.py)."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import bson
import fiftyone as fo
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from fiftyone import ViewField as F
from PIL import Image

from fiftyone_ssa import cli
from fiftyone_ssa.labels import detection_full_mask
from fiftyone_ssa.sa1b import (
    IMAGE_ID_FIELD,
    export_sa1b,
    export_semantic_rles,
    import_sa1b,
)
from fiftyone_ssa.sa1b import importer as sa1b_module

ANNOTATION_KEYS = (
    "id",
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "crop_box",
    "stability_score",
)


@pytest.fixture
def imported(make_sa1b_dir, tmp_path):
    """Factory: write an SA-1B dir, import it; the dataset is deleted after the test."""
    datasets = []

    def _import(**kwargs):
        files = make_sa1b_dir(**kwargs)
        dataset = import_sa1b(
            str(files.root), mask_dir=str(tmp_path / "masks"), num_workers=3, progress=False
        )
        datasets.append(dataset)
        return files, dataset

    yield _import
    for ds in datasets:
        if not ds.deleted:
            ds.delete()


def by_stem(dataset):
    return {os.path.splitext(os.path.basename(s.filepath))[0]: s for s in dataset}


def paste_png(det, width, height):
    """Naive reference: the detection's PNG pasted at its rounded pixel box."""
    x, y, w, h = (round(v * s) for v, s in zip(det.bounding_box, (width, height, width, height)))
    full = np.zeros((height, width), bool)
    if det.mask_path is not None:
        full[y : y + h, x : x + w] = np.asarray(Image.open(det.mask_path)) > 0
    return full


def load_json(path):
    with open(path) as f:
        return json.load(f)


def test_import_builds_detections_with_masks_on_disk(imported, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fiftyone_ssa.sa1b"):
        files, dataset = imported(num_images=4, num_masks=[5, 3, 0, 6], without_json=[2])
    assert len(dataset) == 4
    samples = by_stem(dataset)
    for stem in files.stems:
        sample = samples[stem]
        assert (sample.metadata.width, sample.metadata.height) == (64, 48)
        if stem not in files.records:
            assert sample["sa1b"] is None
            continue
        record, masks = files.records[stem], files.masks[stem]
        assert sample[IMAGE_ID_FIELD] == record["image"]["image_id"]
        dets = sample["sa1b"].detections
        assert len(dets) == len(record["annotations"])
        for det, ann, mask in zip(dets, record["annotations"], masks):
            x, y, w, h = ann["bbox"]
            assert det.bounding_box == pytest.approx([x / 64, y / 48, w / 64, h / 48])
            assert det.mask is None and det.mask_path.startswith(str(tmp_path / "masks"))
            crop = np.asarray(Image.open(det.mask_path)) > 0
            assert crop.shape == (h, w)
            np.testing.assert_array_equal(paste_png(det, 64, 48), mask)
            np.testing.assert_array_equal(detection_full_mask(det, 64, 48), mask)
            assert det["sa1b_id"] == ann["id"]
            assert det["area"] == ann["area"] == int(mask.sum())
            for key in ("predicted_iou", "stability_score", "point_coords", "crop_box"):
                assert det[key] == ann[key]
            assert det["rle_counts"] == ann["segmentation"]["counts"]
            assert det["sa1b_bbox"] == ann["bbox"]
            assert det.label is None
    info = dataset.info["sa1b_import"]
    assert info["num_samples"] == 4 and info["num_without_json"] == 1
    assert info["num_annotations"] == 5 + 3 + 6 and info["errors"] == {}
    assert "1 image(s) had no SA-1B JSON" in caplog.text


def test_parallel_import_equals_serial_import(make_sa1b_dir, tmp_path):
    files = make_sa1b_dir(num_images=5, num_masks=3, seed=3)
    results = []
    for workers in (1, 4):
        ds = import_sa1b(
            str(files.root),
            mask_dir=str(tmp_path / f"m{workers}"),
            num_workers=workers,
            progress=False,
        )
        results.append([(s.filepath, [d["rle_counts"] for d in s.sa1b.detections]) for s in ds])
        ds.delete()
    assert results[0] == results[1]


def test_progress_callback_is_called(make_sa1b_dir, tmp_path):
    files = make_sa1b_dir(num_images=3, num_masks=1)
    calls = []
    ds = import_sa1b(str(files.root), mask_dir=str(tmp_path / "m"), progress=calls.append)
    ds.delete()
    assert len(calls) >= 3


def test_export_is_byte_exact_and_reimports_identically(make_sa1b_dir, tmp_path):
    files = make_sa1b_dir(num_images=3, num_masks=[6, 1, 4], size=[(48, 64), (30, 20), (50, 50)])
    # Boxes as other writers leave them: integers, a loose box, a box missing mask pixels.
    anns = files.records["sa_1"]["annotations"]
    anns[0]["bbox"] = [int(v) for v in anns[0]["bbox"]]
    x, y, w, h = anns[1]["bbox"]
    anns[1]["bbox"] = [max(0.0, x - 1), y, w + 1, h]
    anns[2]["bbox"] = [x + 1, y, max(1.0, w - 2), h]
    (files.root / "sa_1.json").write_text(json.dumps(files.records["sa_1"]))
    dataset = import_sa1b(str(files.root), mask_dir=str(tmp_path / "masks"), progress=False)
    out = tmp_path / "export"
    try:
        paths = export_sa1b(dataset, str(out), "sa1b", progress=False)
    finally:
        dataset.delete()
    assert sorted(os.path.basename(p) for p in paths) == [f"{s}.json" for s in files.stems]
    for stem, record in files.records.items():
        exported = load_json(out / f"{stem}.json")
        assert exported["image"] == record["image"]
        assert len(exported["annotations"]) == len(record["annotations"])
        for got, want in zip(exported["annotations"], record["annotations"]):
            for key in ANNOTATION_KEYS:
                assert json.dumps(got[key]) == json.dumps(want[key]), key  # byte-exact
            assert isinstance(got["segmentation"]["counts"], str)
            assert got["class_name"] == "" and got["class_proposals"] == []

    # Re-import the exported JSON with the images: the masks are identical.
    for stem in files.stems:
        shutil.copy(files.root / f"{stem}.jpg", out / f"{stem}.jpg")
    again = import_sa1b(str(out), mask_dir=str(tmp_path / "masks2"), progress=False)
    try:
        for stem, sample in by_stem(again).items():
            h, w = sample.metadata.height, sample.metadata.width
            for det, mask in zip(sample.sa1b.detections, files.masks[stem]):
                np.testing.assert_array_equal(paste_png(det, w, h), mask)
    finally:
        again.delete()


def test_edited_masks_are_re_encoded(imported, tmp_path):
    files, dataset = imported(num_images=1, num_masks=5, seed=7)
    stem = files.stems[0]
    sample = dataset.first()
    dets = sample.sa1b.detections
    expected = files.masks[stem].copy()

    # 0: pixels flipped inside the box, kept in memory (mask, no mask_path).
    crop = dets[0].get_mask() > 0
    crop[0, :] = ~crop[0, :]
    dets[0].mask, dets[0].mask_path = crop, None
    x, y, w, h = (int(v) for v in files.records[stem]["annotations"][0]["bbox"])
    expected[0, y, x : x + w] = ~expected[0, y, x : x + w]
    # 1: the PNG rewritten in place (same path: only the pixels tell the change).
    png = np.asarray(Image.open(dets[1].mask_path)).copy()
    png[:] = 0
    png[0, 0] = 255
    Image.fromarray(png).save(dets[1].mask_path)
    x1, y1 = (int(v) for v in files.records[stem]["annotations"][1]["bbox"][:2])
    expected[1] = False
    expected[1, y1, x1] = True
    # 2: the box moved by one pixel, the mask untouched.
    dets[2].bounding_box = [dets[2].bounding_box[0] + 1 / 64] + dets[2].bounding_box[1:]
    expected[2] = np.roll(expected[2], 1, axis=1)
    expected[2][:, 0] = False  # rolled-in pixels do not exist (box may hit the border)
    # 3: labelled by a user; the mask is unchanged.
    dets[3].label = "cat"
    dets[3]["class_proposals"] = ["cat", "dog"]
    sample.save()

    export_sa1b(dataset, str(tmp_path / "out"), "sa1b", progress=False)
    exported = load_json(tmp_path / "out" / f"{stem}.json")["annotations"]
    original = files.records[stem]["annotations"]
    for i in range(3):
        want = mask_utils.encode(np.asfortranarray(expected[i].astype(np.uint8)))
        got = exported[i]
        assert got["segmentation"]["counts"] == want["counts"].decode("ascii"), i
        assert got["segmentation"]["counts"] != original[i]["segmentation"]["counts"], i
        assert got["bbox"] == mask_utils.toBbox(want).tolist(), i
        assert got["area"] == int(mask_utils.area(want)), i
        assert got["id"] == original[i]["id"]
    for i in (3, 4):
        for key in ANNOTATION_KEYS:
            assert exported[i][key] == original[i][key]
    assert exported[3]["class_name"] == "cat"
    assert exported[3]["class_proposals"] == ["cat", "dog"]


def test_sample_with_500_masks_stays_small(imported):
    files, dataset = imported(num_images=1, num_masks=500, size=(300, 400), noisy=False)
    sample = dataset.first()
    assert len(sample.sa1b.detections) == 500
    doc = dataset._sample_collection.find_one({"_id": sample._id})
    size = len(bson.encode(doc))
    raw_masks = int(files.masks[files.stems[0]].sum())  # what inline crops would at least hold
    assert size < 2 * 1024**2, size  # 16 MB is MongoDB's limit
    assert all("mask" not in d for d in doc["sa1b"]["detections"])
    assert size < raw_masks  # masks on disk, not in the document


def test_per_file_errors_are_reported_and_skipped(make_sa1b_dir, tmp_path, caplog):
    files = make_sa1b_dir(num_images=5, num_masks=2)
    root = files.root
    (root / "sa_2.json").write_text('{"annotations": [ {"id": 1,')  # malformed
    os.remove(root / "sa_3.jpg")  # JSON without its image
    bad = files.records["sa_4"]
    bad["annotations"][1]["segmentation"]["size"] = [49, 64]  # disagrees with 48x64
    (root / "sa_4.json").write_text(json.dumps(bad))
    bad = files.records["sa_5"]
    bad["image"]["width"] = 65
    (root / "sa_5.json").write_text(json.dumps(bad))
    with caplog.at_level(logging.WARNING, logger="fiftyone_ssa.sa1b"):
        ds = import_sa1b(str(root), mask_dir=str(tmp_path / "m"), progress=False)
    try:
        assert [os.path.basename(s.filepath) for s in ds] == ["sa_1.jpg"]
        errors = ds.info["sa1b_import"]["errors"]
        assert set(errors) == {"sa_2.json", "sa_3.json", "sa_4.json", "sa_5.json"}
        assert errors["sa_2.json"].startswith("malformed JSON")
        assert errors["sa_3.json"].startswith("missing image") and "sa_3.jpg" in errors["sa_3.json"]
        assert "annotation 1 (id 4001)" in errors["sa_4.json"]
        assert "RLE size [49, 64]" in errors["sa_4.json"] and "[48, 64]" in errors["sa_4.json"]
        assert "65x48" in errors["sa_5.json"] and "64x48" in errors["sa_5.json"]
        for key in errors:
            assert key in caplog.text
    finally:
        ds.delete()


def test_nothing_importable_raises_and_leaves_no_dataset(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "sa_1.json").write_text("not json")
    name = "ssa-test-sa1b-broken"
    with pytest.raises(RuntimeError, match="sa_1.json: malformed JSON"):
        import_sa1b(str(root), name=name, mask_dir=str(tmp_path / "m"), progress=False)
    assert not fo.dataset_exists(name)
    with pytest.raises(ValueError, match="Expected `dataset_dir`"):
        import_sa1b(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has none"):
        import_sa1b(str(tmp_path / "empty"))


def test_images_without_any_json_are_imported_without_masks(make_sa1b_dir, tmp_path, caplog):
    files = make_sa1b_dir(num_images=2, without_json=[0, 1])
    with caplog.at_level(logging.WARNING, logger="fiftyone_ssa.sa1b"):
        ds = import_sa1b(str(files.root), mask_dir=str(tmp_path / "m"), progress=False)
    try:
        assert len(ds) == 2 and ds.count("sa1b.detections") == 0
        assert ds.info["sa1b_import"]["num_without_json"] == 2
        assert "2 image(s) had no SA-1B JSON" in caplog.text
        assert ds.get_field("sa1b").document_type is fo.Detections
        assert "sa1b.detections.class_proposals" in ds.get_field_schema(flat=True)
    finally:
        ds.delete()


def test_name_clash_needs_overwrite_and_default_mask_dir(make_sa1b_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(fo.config, "default_dataset_dir", str(tmp_path / "fo"))
    files = make_sa1b_dir(num_images=1, num_masks=2)
    name = "ssa-test-sa1b-clash"
    ds = import_sa1b(str(files.root), name=name, progress=False)
    try:
        mask_path = ds.first().sa1b.detections[0].mask_path
        assert mask_path.startswith(str(tmp_path / "fo" / ds.slug / "sa1b"))
        with pytest.raises(ValueError, match="already exists"):
            import_sa1b(str(files.root), name=name, progress=False)
        ds = import_sa1b(str(files.root), name=name, overwrite=True, progress=False)
        assert len(ds) == 1
    finally:
        ds.delete()


BAD_LABEL_FIELDS = [
    "",
    "a.b",
    "_hidden",
    "a$b",
    "filepath",
    "id",
    "metadata",
    "tags",
    "created_at",
    "last_modified_at",
    IMAGE_ID_FIELD,
]


def test_bad_label_field_is_rejected_before_anything_changes(
    make_sa1b_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(fo.config, "default_dataset_dir", str(tmp_path / "fo"))
    files = make_sa1b_dir(num_images=2, num_masks=2)
    name = "ssa-test-sa1b-bad-field"
    ds = import_sa1b(str(files.root), name=name, mask_dir=str(tmp_path / "m"), progress=False)
    try:
        ids = ds.values("id")
        before = fo.list_datasets()
        for bad in BAD_LABEL_FIELDS:
            for target in (name, "ssa-test-sa1b-bad-field-new", None):
                with pytest.raises(ValueError, match=re.escape(f"but got {bad!r}")):
                    import_sa1b(
                        str(files.root),
                        name=target,
                        label_field=bad,
                        overwrite=True,
                        persistent=True,
                        progress=False,
                    )
            assert fo.list_datasets() == before, bad
        assert not ds.deleted and ds.values("id") == ids
        assert not (tmp_path / "fo").exists()  # no default mask directory either

        argv = ["import-sa1b", str(files.root), "--name", name, "--overwrite"]
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv + ["--label-field", "metadata"])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "but got 'metadata'" in err
        assert fo.list_datasets() == before and ds.values("id") == ids
    finally:
        ds.delete()


def test_failed_import_leaves_no_dataset_and_keeps_the_replaced_one(
    make_sa1b_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(fo.config, "default_dataset_dir", str(tmp_path / "fo"))
    files = make_sa1b_dir(num_images=4, num_masks=2)
    name = "ssa-test-sa1b-failing"
    old = import_sa1b(str(files.root), name=name, persistent=True, progress=False)
    old_masks = old.values("sa1b.detections.mask_path", unwind=True)
    old_bytes = [Path(p).read_bytes() for p in old_masks]
    try:
        old_ids = old.values("id")
        before = fo.list_datasets()
        # Interrupted mid-import: the first two samples are already in the new dataset.
        monkeypatch.setattr(sa1b_module, "_ADD_BATCH_SIZE", 1)
        read_image = sa1b_module._read_image
        declare = sa1b_module.declare_detection_attributes

        def interrupted(item, *args):
            if item[0] == files.stems[2]:
                raise KeyboardInterrupt
            return read_image(item, *args)

        monkeypatch.setattr(sa1b_module, "_read_image", interrupted)
        for target in (name, "ssa-test-sa1b-failing-new", None):
            with pytest.raises(KeyboardInterrupt):
                import_sa1b(
                    str(files.root),
                    name=target,
                    mask_dir=str(tmp_path / "new"),
                    num_workers=1,
                    overwrite=True,
                    persistent=True,
                    progress=False,
                )
            assert fo.list_datasets() == before, target
        monkeypatch.setattr(sa1b_module, "_read_image", read_image)

        # Failing after every sample was added, from images with the same stems, other masks,
        # into the default mask folder: the replaced dataset's mask files stay as they were.
        def broken(*args):
            raise RuntimeError("boom")

        monkeypatch.setattr(sa1b_module, "declare_detection_attributes", broken)
        other = make_sa1b_dir(num_images=4, num_masks=2, seed=1, name="other")
        with pytest.raises(RuntimeError, match="boom"):
            import_sa1b(str(other.root), name=name, overwrite=True, progress=False)
        assert fo.list_datasets() == before
        assert [Path(p).read_bytes() for p in old_masks] == old_bytes
        monkeypatch.setattr(sa1b_module, "declare_detection_attributes", declare)

        # Nothing importable: the replaced dataset stays too.
        broken_dir = tmp_path / "broken"
        broken_dir.mkdir()
        (broken_dir / "sa_1.json").write_text("not json")
        with pytest.raises(RuntimeError, match="could be imported"):
            import_sa1b(str(broken_dir), name=name, overwrite=True, progress=False)
        assert fo.list_datasets() == before

        monkeypatch.undo()
        kept = fo.load_dataset(name)
        assert kept is old and not kept.deleted
        assert kept.values("id") == old_ids and kept.persistent
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_overwrite_renames_the_new_dataset_and_uses_the_final_slug(
    make_sa1b_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(fo.config, "default_dataset_dir", str(tmp_path / "fo"))
    name = "SSA Test SA1B Replace"
    old = import_sa1b(
        str(make_sa1b_dir(num_images=1).root), name=name, persistent=True, progress=False
    )
    files = make_sa1b_dir(num_images=3, num_masks=2, name="second", first_image_id=10)
    before = fo.list_datasets()
    new = import_sa1b(str(files.root), name=name, overwrite=True, persistent=True, progress=False)
    try:
        assert old.deleted and new.name == name and new.persistent
        assert fo.load_dataset(name) is new and len(new) == 3
        assert fo.list_datasets() == before  # the temporary name is gone
        # The replacement's masks: a folder of their own beside the replaced dataset's
        slug_dir = str(tmp_path / "fo" / "ssa-test-sa1b-replace")
        assert new.slug == "ssa-test-sa1b-replace"
        mask_dir = new.info["sa1b_import"]["mask_dir"]
        assert re.fullmatch(re.escape(slug_dir + os.sep) + r"sa1b-[0-9a-f]{8}", mask_dir)
        paths = new.values("sa1b.detections.mask_path", unwind=True)
        assert len(paths) == 6 and all(p.startswith(mask_dir + os.sep) for p in paths)
        assert all(os.path.isfile(p) for p in paths)
    finally:
        new.delete()


def test_class_names_from_engine_json_become_labels(make_sa1b_dir, tmp_path, make_dataset):
    files = make_sa1b_dir(num_images=1, num_masks=2)
    record = files.records["sa_1"]
    record["annotations"][0].update(class_name="tree", class_proposals=["tree", "plant"])
    record["annotations"][1].update(class_name="sky", class_proposals="sky")  # original's form
    (files.root / "sa_1.json").write_text(json.dumps(record))
    ds = import_sa1b(str(files.root), mask_dir=str(tmp_path / "m"), progress=False)
    try:
        dets = ds.first().sa1b.detections
        assert [d.label for d in dets] == ["tree", "sky"]
        assert [d["class_proposals"] for d in dets] == [["tree", "plant"], ["sky"]]
        assert ds.filter_labels("sa1b", F("label") == "sky").count("sa1b.detections") == 1
        assert ds.count_values("sa1b.detections.class_proposals") == {
            "tree": 1,
            "plant": 1,
            "sky": 1,
        }
    finally:
        ds.delete()


def test_attributes_are_declared_for_sidebar_filters(imported):
    files, dataset = imported(num_images=2, num_masks=6, seed=5)
    schema = dataset.get_field_schema(flat=True)
    assert isinstance(schema["sa1b.detections.predicted_iou"], fo.FloatField)
    assert isinstance(schema["sa1b.detections.stability_score"], fo.FloatField)
    assert isinstance(schema["sa1b.detections.area"], fo.IntField)
    proposals = schema["sa1b.detections.class_proposals"]
    assert isinstance(proposals, fo.ListField) and isinstance(proposals.field, fo.StringField)
    ious = [a["predicted_iou"] for r in files.records.values() for a in r["annotations"]]
    view = dataset.filter_labels("sa1b", F("predicted_iou") > 0.9)
    assert view.count("sa1b.detections") == sum(i > 0.9 for i in ious)
    assert 0 < view.count("sa1b.detections") < len(ious)
    assert dataset.bounds("sa1b.detections.stability_score")[0] >= 0.9


def test_export_paths_are_checked_before_writing(make_dataset, tmp_path):
    ds = make_dataset()
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / d / "sa_1.jpg")
    ds.add_samples([fo.Sample(filepath=str(tmp_path / d / "sa_1.jpg")) for d in ("a", "b")])
    ds.add_sample_field("sa1b", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    with pytest.raises(ValueError, match="unique image stems"):
        export_sa1b(ds, str(tmp_path / "out"), "sa1b", progress=False)
    assert not (tmp_path / "out").exists()

    ds.delete_samples(ds.last())
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.json"
    os.symlink(outside, out / "sa_1.json")  # a link leading out of export_dir
    with pytest.raises(ValueError, match="inside `export_dir`"):
        export_sa1b(ds, str(out), "sa1b", overwrite=True, progress=False)
    assert not outside.exists()

    os.remove(out / "sa_1.json")
    (out / "sa_1.json").write_text("{}")
    with pytest.raises(ValueError, match="overwrite=True"):
        export_sa1b(ds, str(out), "sa1b", progress=False)
    export_sa1b(ds, str(out), "sa1b", overwrite=True, progress=False)
    record = load_json(out / "sa_1.json")
    assert record == {
        "image": {"image_id": 1, "width": 4, "height": 4, "file_name": "sa_1.jpg"},
        "annotations": [],
    }
    with pytest.raises(ValueError, match="Detections or Segmentation"):
        ds.add_sample_field("tag", fo.StringField)
        export_sa1b(ds, str(out), "tag", overwrite=True)
    with pytest.raises(ValueError, match="field of the samples"):
        export_sa1b(ds, str(out), "nope", overwrite=True)


def test_export_of_new_detections_fills_defaults(make_dataset, tmp_path):
    Image.new("RGB", (10, 8)).save(tmp_path / "photo.png")
    ds = make_dataset()
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    ds.add_sample(
        fo.Sample(
            filepath=str(tmp_path / "photo.png"),
            ssa=fo.Detections(
                detections=[
                    fo.Detection(label="road", bounding_box=[0.2, 0.25, 0.5, 0.5], mask=mask),
                    fo.Detection(label="box", bounding_box=[0.0, 0.0, 0.3, 0.25]),
                ]
            ),
        )
    )
    export_sa1b(ds, str(tmp_path / "out"), "ssa", progress=False)
    record = load_json(tmp_path / "out" / "photo.json")
    assert record["image"] == {"image_id": 1, "width": 10, "height": 8, "file_name": "photo.png"}
    full = np.zeros((8, 10), bool)
    full[2:6, 2:7] = mask
    boxed = np.zeros((8, 10), bool)
    boxed[0:2, 0:3] = True  # no mask: the filled box
    for ann, want, ann_id, label in zip(
        record["annotations"], (full, boxed), (1, 2), ("road", "box")
    ):
        ref = mask_utils.encode(np.asfortranarray(want.astype(np.uint8)))
        assert ann["segmentation"] == {"size": [8, 10], "counts": ref["counts"].decode()}
        assert ann["bbox"] == mask_utils.toBbox(ref).tolist()
        assert ann["area"] == int(want.sum())
        assert ann["id"] == ann_id and ann["class_name"] == label
        assert ann["class_proposals"] == [] and ann["point_coords"] == []
        assert ann["crop_box"] == [0, 0, 10, 8]
        assert ann["predicted_iou"] is None and ann["stability_score"] is None


def test_semantic_export_writes_one_rle_per_class(make_dataset, tmp_path):
    rng = np.random.default_rng(0)
    Image.new("RGB", (12, 9)).save(tmp_path / "sa_7.jpg")
    class_map = rng.choice(np.array([0, 3, 7], np.uint8), size=(9, 12))
    ds = make_dataset()
    ds.add_sample(
        fo.Sample(
            filepath=str(tmp_path / "sa_7.jpg"),
            ssa=fo.Segmentation(mask=class_map),
            ssa_masks=fo.Detections(
                detections=[fo.Detection(label="cat", bounding_box=[0, 0, 0.5, 0.5])]
            ),
        )
    )
    ds.mask_targets = {"ssa": {0: "background", 3: "cat", 7: "dog"}}
    ds.save()
    paths = export_sa1b(ds, str(tmp_path / "out"), "ssa", progress=False)
    assert [os.path.basename(p) for p in paths] == ["sa_7_semantic.json"]
    record = load_json(paths[0])
    assert record["image"]["image_id"] == 7
    assert record["annotations"] == []
    assert record["id2label"] == {"0": "background", "3": "cat", "7": "dog"}
    assert set(record["semantic_mask"]) == {"0", "3", "7"}
    for key, rle in record["semantic_mask"].items():
        want = mask_utils.encode(np.asfortranarray((class_map == int(key)).astype(np.uint8)))
        assert rle == {"size": [9, 12], "counts": want["counts"].decode()}

    paths = export_semantic_rles(
        ds, str(tmp_path / "out"), "ssa", masks_field="ssa_masks", overwrite=True, progress=False
    )
    annotations = load_json(paths[0])["annotations"]
    assert [a["class_name"] for a in annotations] == ["cat"]

    Image.new("RGB", (12, 9)).save(tmp_path / "sa_8.jpg")
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "sa_8.jpg")))  # no label: skipped
    paths = export_semantic_rles(ds, str(tmp_path / "out"), "ssa", overwrite=True, progress=False)
    assert [os.path.basename(p) for p in paths] == ["sa_7_semantic.json"]
    assert not (tmp_path / "out" / "sa_8_semantic.json").exists()


def _export_dataset_with_an_unreadable_image(make_dataset, tmp_path):
    """sa_1 and sa_3 readable, sa_2's image missing and without metadata."""
    ds = make_dataset()
    for stem in ("sa_1", "sa_3"):
        Image.new("RGB", (6, 4)).save(tmp_path / f"{stem}.jpg")
    box = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0, 0, 0.5, 0.5])])
    ds.add_samples(
        [fo.Sample(filepath=str(tmp_path / f"{s}.jpg"), sa1b=box) for s in ("sa_1", "sa_2", "sa_3")]
    )
    return ds


def test_export_skips_samples_that_fail_and_reports_them(make_dataset, tmp_path, caplog):
    ds = _export_dataset_with_an_unreadable_image(make_dataset, tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="fiftyone_ssa.sa1b"):
        paths = export_sa1b(ds, str(out), "sa1b", progress=False)
    assert [os.path.basename(p) for p in paths] == ["sa_1.json", "sa_3.json"]
    assert sorted(os.listdir(out)) == ["sa_1.json", "sa_3.json"]
    assert load_json(out / "sa_3.json")["annotations"][0]["class_name"] == "x"
    assert "Skipped sa_2.jpg: cannot read the size of" in caplog.text
    assert (
        "1 sample(s) could not be exported" in caplog.text and "no 'sa1b' label" not in caplog.text
    )

    # Overwriting an earlier export: the skipped sample's earlier file goes, not left as current
    (out / "sa_2.json").write_text("{}")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fiftyone_ssa.sa1b"):
        export_sa1b(ds, str(out), "sa1b", overwrite=True, progress=False)
    assert sorted(os.listdir(out)) == ["sa_1.json", "sa_3.json"]
    assert "Removed 1 earlier file(s)" in caplog.text

    bad = ds.match(F("filepath").ends_with("sa_2.jpg"))
    with pytest.raises(
        RuntimeError, match=r"No sample could be exported .*\(1 failed\).*sa_2\.jpg"
    ):
        export_sa1b(bad, str(tmp_path / "out2"), "sa1b", progress=False)
    assert os.listdir(tmp_path / "out2") == []

    # The semantic export (sizes from the masks): an unreadable mask PNG skips that sample.
    segs = [fo.Segmentation(mask=np.full((4, 6), v, np.uint8)) for v in (0, 1)]
    ds.set_values("ssa", segs + [fo.Segmentation(mask_path=str(tmp_path / "missing.png"))])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fiftyone_ssa.sa1b"):
        paths = export_semantic_rles(ds, str(tmp_path / "sem"), "ssa", progress=False)
    assert [os.path.basename(p) for p in paths] == ["sa_1_semantic.json", "sa_2_semantic.json"]
    assert "Skipped sa_3.jpg: OSError" in caplog.text and "missing.png" in caplog.text
    assert "1 sample(s) could not be exported" in caplog.text


def test_cli_export_reports_skipped_samples(make_dataset, tmp_path, capsys):
    ds = _export_dataset_with_an_unreadable_image(make_dataset, tmp_path)
    ds.persistent = True  # seen by the CLI process
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fiftyone_ssa", "export-sa1b", ds.name, str(out)]
        + ["--label-field", "sa1b"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Wrote 2 file(s) to {out}" in proc.stdout
    assert "sa_2.jpg" in proc.stderr and "1 sample(s) could not be exported" in proc.stderr
    assert sorted(os.listdir(out)) == ["sa_1.json", "sa_3.json"]

    ds.delete_samples(ds.match(~F("filepath").ends_with("sa_2.jpg")))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export-sa1b", ds.name, str(tmp_path / "o2"), "--label-field", "sa1b"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No sample could be exported" in err and "sa_2.jpg" in err


def test_cli_round_trip(make_sa1b_dir, tmp_path, capsys):
    files = make_sa1b_dir(num_images=2, num_masks=3)
    name = "ssa-test-sa1b-cli"
    argv = ["import-sa1b", str(files.root), "--name", name, "--mask-dir", str(tmp_path / "m")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    try:
        assert "Imported 2 images with 6 masks" in capsys.readouterr().out
        assert fo.load_dataset(name).persistent
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["export-sa1b", name, str(out), "--label-field", "sa1b"])
        assert exit_info.value.code == 0
        for stem, record in files.records.items():
            exported = load_json(out / f"{stem}.json")
            for got, want in zip(exported["annotations"], record["annotations"]):
                assert got["segmentation"] == want["segmentation"]
                assert got["bbox"] == want["bbox"]
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["export-sa1b", name, str(out), "--label-field", "sa1b"])
        assert exit_info.value.code == 1
        assert "overwrite" in capsys.readouterr().err
    finally:
        fo.delete_dataset(name)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export-sa1b", name, str(tmp_path / "o2"), "--label-field", "sa1b"])
    assert exit_info.value.code == 1
    assert "existing dataset" in capsys.readouterr().err


def test_exif_rotated_images_use_the_upright_size(make_dataset, tmp_path):
    """The pipeline labels images upright (EXIF applied): export and import use that size."""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide x 30 high, shown rotated by 90 degrees: 30 x 40
    path = tmp_path / "sa_7.jpg"
    Image.new("RGB", (40, 30)).save(path, exif=exif.tobytes())
    mask = np.zeros((40, 30), bool)
    mask[5:20, 3:9] = True
    ds = make_dataset()
    ds.add_sample(
        fo.Sample(
            filepath=str(path),
            sa1b=fo.Detections(detections=[fo.Detection.from_mask(mask, label="x")]),
        )
    )
    ds.compute_metadata()
    out = tmp_path / "out"
    export_sa1b(ds, str(out), "sa1b", progress=False)
    record = load_json(out / "sa_7.json")
    assert (record["image"]["width"], record["image"]["height"]) == (30, 40)
    assert record["annotations"][0]["segmentation"]["size"] == [40, 30]
    assert record["annotations"][0]["area"] == int(mask.sum())

    shutil.copy(path, out / "sa_7.jpg")
    imported = import_sa1b(str(out), mask_dir=str(tmp_path / "m"), progress=False)
    back = detection_full_mask(imported.first().sa1b.detections[0], 30, 40)
    imported.delete()
    assert np.array_equal(back, mask)


def test_labelling_imported_masks_keeps_every_original_key_for_export(
    imported, tmp_path, tiny_engine_models
):
    # SSA-engine (and SSA) on an imported SA-1B field wrote new detections without the
    # imported ids, point_coords, crop_box and stored RLEs: the export gave new ids, empty
    # point_coords, the whole image as crop_box, and re-encoded counts.
    from fiftyone_ssa import apply_ssa, apply_ssa_engine

    files, dataset = imported(num_images=2, num_masks=3, noisy=False)
    apply_ssa_engine(dataset, mask_branch="field:sa1b", models=tiny_engine_models)
    out = tmp_path / "engine"
    export_sa1b(dataset, str(out), "ssa_engine", progress=False)

    seg = np.zeros((48, 64), np.uint8)
    seg[:, 32:] = 1
    for sample in dataset:
        sample["branch"] = fo.Segmentation(mask=seg)
        sample.save()
    dataset.mask_targets = {"branch": {0: "left", 1: "right"}}
    dataset.save()
    apply_ssa(dataset, semantic_branch="field:branch", mask_branch="field:sa1b")
    semantic = tmp_path / "semantic"
    export_sa1b(dataset, str(semantic), "ssa", masks_field="ssa_masks", progress=False)

    for stem, record in files.records.items():
        for exported in (
            load_json(out / f"{stem}.json"),
            load_json(semantic / f"{stem}_semantic.json"),
        ):
            assert len(exported["annotations"]) == len(record["annotations"])
            for got, want in zip(exported["annotations"], record["annotations"]):
                for key in ANNOTATION_KEYS:
                    assert got[key] == want[key], (stem, key)
                assert got["class_name"] and got["class_proposals"]


def test_null_area_is_the_rle_area_and_a_bad_one_names_the_annotation(make_sa1b_dir, tmp_path):
    # "area": null failed the whole file with "TypeError: int() argument must be ... not
    # 'NoneType'" (this tool's own export writes null for the other missing numbers).
    files = make_sa1b_dir(num_images=2, num_masks=2)
    for stem, area in zip(files.stems, [None, "big"]):
        record = files.records[stem]
        record["annotations"][0]["area"] = area
        (files.root / f"{stem}.json").write_text(json.dumps(record))
    dataset = import_sa1b(str(files.root), mask_dir=str(tmp_path / "m"), progress=False)
    try:
        det = by_stem(dataset)[files.stems[0]].sa1b.detections[0]
        assert det.area == int(files.masks[files.stems[0]][0].sum())
        errors = dataset.info["sa1b_import"]["errors"]
        assert list(errors) == [f"{files.stems[1]}.json"]
        assert errors[f"{files.stems[1]}.json"].startswith("annotation 0 (id 2000)")
        assert "'area'" in errors[f"{files.stems[1]}.json"]
    finally:
        dataset.delete()


def test_images_sharing_a_stem_are_all_imported(make_sa1b_dir, tmp_path):
    # cat.jpg and cat.png are two images: the second was dropped without a word.
    files = make_sa1b_dir(num_images=1, num_masks=2)
    stem = files.stems[0]
    Image.new("RGB", (5, 4), (0, 255, 0)).save(files.root / f"{stem}.png")
    dataset = import_sa1b(str(files.root), mask_dir=str(tmp_path / "m"), progress=False)
    try:
        names = sorted(os.path.basename(p) for p in dataset.values("filepath"))
        assert names == [f"{stem}.jpg", f"{stem}.png"]
        jpg = dataset.match(F("filepath").ends_with(".jpg")).first()
        png = dataset.match(F("filepath").ends_with(".png")).first()
        assert len(jpg.sa1b.detections) == 2 and png.sa1b is None
        assert png.metadata.width == 5
        summary = dataset.info["sa1b_import"]
        assert summary["num_samples"] == 2 and summary["num_without_json"] == 1
    finally:
        dataset.delete()


def test_json_with_a_byte_order_mark_imports(make_sa1b_dir, tmp_path):
    # Windows tools write UTF-8 with a BOM: the file failed as "malformed JSON".
    files = make_sa1b_dir(num_images=1, num_masks=2)
    path = files.root / f"{files.stems[0]}.json"
    path.write_bytes(path.read_text().encode("utf-8-sig"))
    dataset = import_sa1b(str(files.root), mask_dir=str(tmp_path / "m"), progress=False)
    try:
        assert dataset.info["sa1b_import"]["errors"] == {}
        assert len(dataset.first().sa1b.detections) == 2
    finally:
        dataset.delete()


def test_masks_of_the_unrotated_pixels_are_reported_with_a_hint(tmp_path):
    # An EXIF-rotated photo whose JSON was made from its stored pixels (PIL without
    # exif_transpose): the error only said that 40x30 is not 30x40.
    root = tmp_path / "d"
    root.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(root / "sa_1.jpg", exif=exif.tobytes())
    rle = mask_utils.encode(np.asfortranarray(np.ones((30, 40), np.uint8)))
    ann = {"id": 1, "segmentation": {"size": [30, 40], "counts": rle["counts"].decode()}}
    for image in ({"image_id": 1, "width": 40, "height": 30}, None):
        record = {"annotations": [ann], **({"image": image} if image else {})}
        (root / "sa_1.json").write_text(json.dumps(record))
        with pytest.raises(RuntimeError, match="EXIF orientation") as err:
            import_sa1b(str(root), mask_dir=str(tmp_path / "m"), progress=False)
        assert "30x40" in str(err.value) or "[40, 30]" in str(err.value)
    # Without EXIF rotation the sizes simply disagree: no hint.
    Image.new("RGB", (30, 40)).save(root / "sa_1.jpg")
    with pytest.raises(RuntimeError, match="disagrees") as err:
        import_sa1b(str(root), mask_dir=str(tmp_path / "m"), progress=False)
    assert "EXIF" not in str(err.value)
