"""The review round trip through a real Label Studio server on loopback.

The review queue's masks go to Label Studio with FiftyOne's annotation API
(``send_for_review`` -> ``view.annotate(backend="labelstudio")``); a person's edits are made on
the server through Label Studio's own HTTP API (the annotation its editor saves: the
prediction's regions, one relabelled, one removed); ``load_review`` loads them
(``load_annotations``) and applies them (``apply_review``). Skipped only where Label Studio is
not installed (``scripts/setup_label_studio.sh``) or its server does not start.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import requests

from fiftyone_ssa import apply_ssa, review_queue
from fiftyone_ssa.labelling.annotation_tool import load_review, review_classes, send_for_review
from fiftyone_ssa.labels import detection_full_mask
from tests.label_studio_server import label_studio_server, missing_reason
from tests.test_apply_review import BRANCHES, NAME_TO_ID, raw_detections, reference_repaint


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server started for these tests (``LabelStudio``)."""
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    data_dir = tmp_path_factory.mktemp("label-studio")
    try:
        server = label_studio_server(data_dir)
        running = server.__enter__()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        log = (data_dir / "server.log").read_text(errors="replace")[-2000:]
        pytest.skip(f"the Label Studio server did not start: {err}\n{log}")
    yield running
    server.__exit__(None, None, None)


def _api(url: str, token: str):
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    return lambda method, path, **kw: session.request(method, url + path, timeout=30, **kw)


@pytest.mark.slow
def test_a_relabel_and_a_deletion_round_trip(scene_dataset, label_studio):
    url, token, _ = label_studio
    api = _api(url, token)
    ds = scene_dataset(n=3, noise=0.05, factor=8)
    apply_ssa(ds, **BRANCHES)
    queue = review_queue(ds, n=6)
    queued = set(queue.values("ssa_masks.id"))
    before = {s.id: raw_detections(ds, s.id) for s in ds}
    run_maps = {s.id: s.ssa.mask.copy() for s in ds}

    with pytest.raises(ValueError, match="refused the API key"):
        send_for_review(queue, "fix", url=url, api_key="0" * 40)
    assert ds.list_annotation_runs() == []

    results = send_for_review(queue, "fix", url=url, api_key=token)

    # Label Studio holds one task per sample of the queue, one region per queued mask
    sample_of = results.uploaded_tasks  # {task id: sample id}
    assert set(sample_of.values()) == set(queue.values("sample_id"))
    config = api("GET", f"/api/projects/{results.project_id}").json()["label_config"]
    classes = review_classes(ds.select_labels(ids=list(queued)), "ssa_masks")
    assert all(f'value="{c}"' in config for c in classes)
    task_id = next(t for t, s in sample_of.items() if len(before[s].keys() & queued) >= 2)
    task = api("GET", f"/api/tasks/{task_id}").json()
    regions = task["predictions"][0]["result"]
    assert {r["id"] for r in regions} == before[sample_of[task_id]].keys() & queued

    # the person: relabels the first region, deletes the second, saves (the editor's POST)
    relabelled, deleted = regions[0]["id"], regions[1]["id"]
    old_label = regions[0]["value"]["brushlabels"][0]
    new_label = next(c for c in classes if c not in (old_label, "background"))
    edited = [dict(regions[0], value=dict(regions[0]["value"], brushlabels=[new_label]))]
    edited += regions[2:]
    from label_studio_sdk.converter import brush

    # ... and draws a new region (a brush stroke: Label Studio's RLE of an RGBA image)
    h, w = regions[0]["original_height"], regions[0]["original_width"]
    stroke = np.zeros((h, w), dtype=np.uint8)
    stroke[h // 4 : h // 2, w // 4 : w // 2] = 255
    edited.append(
        dict(
            regions[0],
            id="drawn0001",
            value={"format": "rle", "rle": brush.mask2rle(stroke), "brushlabels": ["sign"]},
        )
    )
    answer = api(
        "POST", f"/api/tasks/{task_id}/annotations", json={"result": edited, "lead_time": 3.0}
    )
    assert answer.status_code == 201, answer.text

    with pytest.raises(ValueError, match="refused the API key"):
        load_review(ds, "fix", api_key="0" * 40)  # the run's URL
    summary = load_review(ds, "fix", api_key=token)

    assert (summary.samples_reviewed, summary.relabelled, summary.deleted) == (1, 1, 1)
    assert (summary.added, summary.reshaped) == (1, 0)
    sample_id = sample_of[task_id]
    for sample in ds:
        after = raw_detections(ds, sample.id)
        if sample.id != sample_id:
            assert after == before[sample.id]  # untouched, byte for byte
            np.testing.assert_array_equal(sample.ssa.mask, run_maps[sample.id])
            continue
        dets = {d.id: d for d in sample.ssa_masks.detections}
        assert deleted not in dets
        assert (dets[relabelled].label, dets[relabelled].reviewed) == (new_label, True)
        assert dets[relabelled].label_before_review == old_label
        drawn = [d for d in dets.values() if d.id not in before[sample.id]]
        assert [(d.label, d.reviewed, d.label_before_review) for d in drawn] == [
            ("sign", True, None)
        ]
        w, h = sample.ssa.mask.shape[::-1]
        np.testing.assert_array_equal(detection_full_mask(drawn[0], w, h), stroke > 0)
        doc, was = after[relabelled], before[sample.id][relabelled]
        assert doc["mask"] == was["mask"] and doc["bounding_box"] == was["bounding_box"]
        for det_id, doc in after.items():
            if det_id not in (relabelled, drawn[0].id):
                assert doc == before[sample.id][det_id]  # unchanged masks: byte-identical
        expected = reference_repaint(
            sample.ssa_branch.mask, sample.ssa_masks.detections, NAME_TO_ID
        )
        np.testing.assert_array_equal(sample.ssa.mask, expected)
        assert not np.array_equal(sample.ssa.mask, run_maps[sample.id])
        np.testing.assert_array_equal(sample.ssa_before_review.mask, run_maps[sample.id])


@pytest.mark.slow
def test_the_cli_sends_a_queue_and_loads_a_deletion(scene_dataset, label_studio, monkeypatch):
    import fiftyone as fo

    from fiftyone_ssa.cli import main

    url, token, _ = label_studio
    api = _api(url, token)
    # the key as FiftyOne reads it from FIFTYONE_LABELSTUDIO_API_KEY when it is imported
    monkeypatch.setitem(fo.annotation_config.backends["labelstudio"], "api_key", token)
    ds = scene_dataset(n=2, noise=0.05, factor=8)
    apply_ssa(ds, **BRANCHES)
    queue = review_queue(ds, n=3)

    def run(*command):
        with pytest.raises(SystemExit) as exit_info:
            main(["review", *command])
        return exit_info.value.code

    assert run("send", ds.name, "check", "--queue", queue.name, "--url", url) == 0
    results = ds.load_annotation_results("check")
    assert sum(len(v) for v in results.id_map["ssa_masks"].values()) == 3
    task_id, sample_id = next(iter(results.uploaded_tasks.items()))
    regions = api("GET", f"/api/tasks/{task_id}").json()["predictions"][0]["result"]
    answer = api("POST", f"/api/tasks/{task_id}/annotations", json={"result": regions[1:]})
    assert answer.status_code == 201, answer.text

    assert run("load", ds.name, "check") == 0

    dets = ds[sample_id].ssa_masks
    assert regions[0]["id"] not in {d.id for d in dets.detections}
    assert regions[0]["id"] in dets.run_labels and dets.reviewed_at is not None
    assert len(ds.exists("ssa_masks.reviewed_at")) == 1


@pytest.mark.slow
def test_a_server_with_legacy_tokens_off_is_named(scene_dataset, label_studio):
    url, token, _ = label_studio
    ds = scene_dataset(n=1)
    apply_ssa(ds, **BRANCHES)
    off = {"api_tokens_enabled": True, "legacy_api_tokens_enabled": False}
    answer = _api(url, token)("POST", "/api/jwt/settings", json=off)
    assert answer.status_code in (200, 201), answer.text
    try:
        with pytest.raises(
            ValueError, match="legacy token .* disabled .*label_studio_legacy_tokens"
        ):
            send_for_review(ds, "k", url=url, api_key=token)
    finally:
        label_studio.enable_legacy_tokens()
    assert ds.list_annotation_runs() == []


def test_wrong_use(scene_dataset):
    ds = scene_dataset(n=1)
    apply_ssa(ds, **BRANCHES)
    with pytest.raises(ValueError, match="anno_key"):
        send_for_review(ds, "not a key")
    with pytest.raises(ValueError, match="backend"):
        send_for_review(ds, "k", backend="cvat")
    with pytest.raises(ValueError, match="no annotation run"):
        load_review(ds, "k")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--queue", "nope"], "no saved view 'nope'"),
        (["--queue", "nope", "--limit", "1"], "give no --view-tag or --limit"),
    ],
)
def test_the_cli_refuses_a_wrong_queue(scene_dataset, capsys, extra, message):
    from fiftyone_ssa.cli import main

    ds = scene_dataset(n=1)
    apply_ssa(ds, **BRANCHES)
    with pytest.raises(SystemExit) as exit_info:
        main(["review", "send", ds.name, "k", *extra])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err
    assert ds.list_annotation_runs() == []
