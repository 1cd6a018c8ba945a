"""The App colour scheme a labelling run writes: a colour per class, merged with the user's."""

from __future__ import annotations

import fiftyone as fo
import pytest

from fiftyone_ssa import apply_ssa, apply_ssa_engine
from fiftyone_ssa.labelling.colors import DEFAULT_OPACITY, class_color, output_color_scheme

FIELD_BRANCHES = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}


def _entries(dataset) -> dict[str, dict]:
    return {entry["path"]: entry for entry in dataset.app_config.color_scheme.fields}


def _mask_colors(entry) -> dict[int, str]:
    return {c["intTarget"]: c["color"] for c in entry["maskTargetsColors"]}


def _value_colors(entry) -> dict[str, str]:
    return {c["value"]: c["color"] for c in entry["valueColors"]}


def test_class_colors_are_distinct_hex_colors():
    colors = [class_color(i) for i in range(300)]
    assert len(set(colors)) == 300
    assert all(len(c) == 7 and c.startswith("#") and int(c[1:], 16) >= 0 for c in colors)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            class_color(bad)


def test_ssa_run_colors_each_class_the_same_in_every_output_field(scene_dataset):
    ds = scene_dataset(n=2)
    assert ds.app_config.color_scheme is None
    apply_ssa(ds, **FIELD_BRANCHES)

    ds = fo.load_dataset(ds.name)  # as the App reads it
    scheme = ds.app_config.color_scheme
    assert scheme.color_by == "value"  # the App draws per-class colours only then
    assert scheme.opacity == DEFAULT_OPACITY
    entries = _entries(ds)
    assert set(entries) == {"ssa", "ssa_branch", "ssa_masks"}
    names = ds.mask_targets["ssa"]
    for field in ("ssa", "ssa_branch"):
        expected = {int(i): class_color(int(i)) for i in ds.mask_targets[field] if int(i) != 0}
        assert _mask_colors(entries[field]) == expected
    masks = entries["ssa_masks"]
    assert masks["colorByAttribute"] == "label"
    labels = set(ds.distinct("ssa_masks.detections.label"))
    assert len(labels) >= 3
    by_name = {name: class_color(int(i)) for i, name in names.items()}
    assert labels <= set(_value_colors(masks))
    assert _value_colors(masks) == {name: by_name[name] for name in _value_colors(masks)}

    before = ds.app_config.color_scheme.to_dict()
    apply_ssa(ds, overwrite=True, **FIELD_BRANCHES)  # a rerun adds nothing twice
    assert fo.load_dataset(ds.name).app_config.color_scheme.to_dict() == before


def test_the_users_color_scheme_is_kept(scene_dataset):
    ds = scene_dataset(n=2)
    mine = {
        "color_by": "instance",
        "opacity": 0.9,
        "color_pool": ["#111111", "#222222"],
        "fields": [
            {"path": "instances", "fieldColor": "#123456"},
            {"path": "ssa_masks", "valueColors": [{"value": "car", "color": "#ff0000"}]},
            {"path": "ssa", "maskTargetsColors": [{"intTarget": 2, "color": "#00ff00"}]},
        ],
    }
    ds.app_config.color_scheme = fo.ColorScheme(**mine)
    ds.save()
    apply_ssa(ds, **FIELD_BRANCHES)

    scheme = fo.load_dataset(ds.name).app_config.color_scheme
    assert (scheme.color_by, scheme.opacity, scheme.color_pool) == (
        "instance",
        0.9,
        ["#111111", "#222222"],
    )
    entries = {entry["path"]: entry for entry in scheme.fields}
    assert entries["instances"] == {"path": "instances", "fieldColor": "#123456"}
    assert _value_colors(entries["ssa_masks"])["car"] == "#ff0000"
    assert _value_colors(entries["ssa_masks"])["road"] == class_color(1)
    assert _mask_colors(entries["ssa"])[2] == "#00ff00"
    assert _mask_colors(entries["ssa"])[1] == class_color(1)


def test_merging_leaves_the_given_scheme_alone():
    scheme = fo.ColorScheme(fields=[{"path": "other", "fieldColor": "#abcdef"}])
    merged = output_color_scheme(scheme, {"seg": {0: "bg", 3: "cat"}}, {"dets": ["dog", "cat"]})
    assert scheme.fields == [{"path": "other", "fieldColor": "#abcdef"}]
    assert scheme.color_by is None and scheme.opacity is None
    entries = {entry["path"]: entry for entry in merged.fields}
    assert entries["other"] == {"path": "other", "fieldColor": "#abcdef"}
    assert _mask_colors(entries["seg"]) == {3: class_color(3)}  # 0: background, never drawn
    # cat has id 3 in the map; dog, in no map, takes the next free id
    assert _value_colors(entries["dets"]) == {"cat": class_color(3), "dog": class_color(4)}


def test_engine_run_colors_its_labels_and_map(scene_dataset, tiny_engine_models):
    ds = scene_dataset(n=1)
    apply_ssa_engine(
        ds, mask_branch="field:instances", models=tiny_engine_models, write_segmentation=True
    )
    ds = fo.load_dataset(ds.name)
    entries = _entries(ds)
    assert set(entries) == {"ssa_engine", "ssa_engine_seg"}
    targets = ds.mask_targets["ssa_engine_seg"]
    assert _mask_colors(entries["ssa_engine_seg"]) == {
        int(i): class_color(int(i)) for i in targets if int(i) != 0
    }
    labels = set(ds.distinct("ssa_engine.detections.label"))
    by_name = {name: class_color(int(i)) for i, name in targets.items()}
    assert _value_colors(entries["ssa_engine"]) == {name: by_name[name] for name in labels}
