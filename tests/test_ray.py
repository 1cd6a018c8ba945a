"""The Ray backend on a real local Ray runtime (2 CPUs, 2 actors) and the real database.

The actors are Ray worker processes reaching this session's private database through the
``FIFTYONE_DATABASE_URI`` / ``FIFTYONE_DATABASE_NAME`` the driver hands them.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from fiftyone_ssa import apply_review, apply_ssa
from tests.slow_branch import SlowColourBranch, mark_image, read_pid
from tests.test_plugin import FIELD_BRANCHES, execute_delegated, plugins_dir  # noqa: F401
from tests.test_torchrun import OUTPUTS, _labels_by_path, _other_fields

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


def _written(ds) -> dict:
    """Sample id -> last_modified_at of every sample with an ``ssa`` label (from the database)."""
    docs = ds._sample_collection.find({"ssa": {"$ne": None}}, {"last_modified_at": 1})
    return {str(doc["_id"]): doc["last_modified_at"] for doc in docs}


def test_two_actors_label_every_sample_once_like_one_process(ray_runtime, scene_dataset):
    # Not persistent: the actors load it by name all the same.
    ds = scene_dataset(n=12)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    before = _other_fields(ds)
    single = ds.clone()
    apply_ssa(single, **branches)
    # A run that stopped (its driver died) after 4 samples: the Ray run labels the other 8.
    apply_ssa(ds.limit(4), **branches)
    seen = []

    summary = apply_ssa(
        ds,
        **branches,
        backend="ray",
        ray_workers=2,
        ray_block_size=2,
        progress_callback=lambda done, total: seen.append((done, total)),
    )
    # Each block's samples are counted once: overlapping or repeated blocks would count more.
    assert (summary.num_labelled, len(summary.failures), summary.skipped_existing) == (8, 0, 4)
    assert seen[-1] == (8, 8) and len(seen) == 4
    ds.reload()
    assert ds.count("ssa") == 12
    assert _labels_by_path(ds) == _labels_by_path(single)
    assert ds.mask_targets["ssa"] == single.mask_targets["ssa"]
    assert ds.app_config.color_scheme.fields == single.app_config.color_scheme.fields
    assert set(ds.values("ssa.run_key")) == {summary.run_key}
    assert _other_fields(ds) == before

    # The same call again labels nothing (and starts no actor).
    again = apply_ssa(ds, **branches, backend="ray")
    assert (again.num_labelled, again.skipped_existing) == (0, 12)


def test_killed_actor_is_replaced_and_its_blocks_redone_without_double_writes(
    ray_runtime, persistent_scenes, tmp_path
):
    total, block = 16, 4
    ds = persistent_scenes(n=total, seed=3)
    ids = sorted(ds.values("id"))
    # The third sample of the second block: its actor has written the block's first two.
    victim = ids[block + 2]
    mark_image(ds[victim].filepath)
    before = _other_fields(ds)
    marker = str(tmp_path / "victim.pid")
    branch = SlowColourBranch(seconds=0.1, marker=marker)
    killed = {}

    def kill_the_victim():
        pid = read_pid(marker)
        # The block's first two samples are in the database before the actor is killed.
        while not {ids[block], ids[block + 1]} <= _written(ds).keys():
            time.sleep(0.05)
        killed["before"] = _written(ds)
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    watcher = threading.Thread(target=kill_the_victim, daemon=True)
    watcher.start()
    summary = apply_ssa(
        ds,
        semantic_branch=branch,
        mask_branch="field:instances",
        backend="ray",
        ray_workers=2,
        ray_block_size=block,
        num_workers=0,
    )
    watcher.join(timeout=60)
    assert "pid" in killed, "the victim was never killed"
    assert killed["pid"] != os.getpid()

    assert (summary.num_labelled, len(summary.failures)) == (total, 0)
    ds.reload()
    assert ds.exists("ssa").count() == total
    # Every sample fully labelled; what was written before the kill was not written again.
    for sample in ds.select_fields(list(OUTPUTS)):
        assert sample.ssa is not None and sample.ssa_masks is not None, sample.id
    after = _written(ds)
    assert {ids[block], ids[block + 1]} <= killed["before"].keys()
    assert victim not in killed["before"]
    assert {i: after[i] for i in killed["before"]} == killed["before"]
    assert _other_fields(ds) == before
    assert set(ds.values("ssa.run_key")) == {summary.run_key}

    single = ds.clone()
    apply_ssa(
        single,
        semantic_branch=SlowColourBranch(),
        mask_branch="field:instances",
        overwrite=True,
        resume=False,
    )
    assert _labels_by_path(ds) == _labels_by_path(single)
    assert ds.mask_targets["ssa"] == single.mask_targets["ssa"]
    single.delete()


def test_without_ray_the_backend_fails_in_one_line(persistent_scenes, tmp_path):
    # A Python that cannot import ray (a module named ray that raises ImportError shadows it).
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    ds = persistent_scenes(n=2)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "fiftyone_ssa", "run", ds.name, "--backend", "ray"]
    command += ["--semantic-branch", "field:coarse", "--mask-branch", "field:instances"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "fiftyone-ssa run: error: the Ray backend needs Ray, which is not installed: "
        'pip install "fiftyone-ssa[ray]"'
    )
    assert not ds.has_sample_field("ssa")


def test_ray_options_are_checked_before_anything_is_written(persistent_scenes):
    ds = persistent_scenes(n=2)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    for bad, message in [
        ({"backend": "spark"}, "`backend`"),
        ({"ray_workers": 2}, "needs backend='ray'"),
        ({"backend": "ray", "ray_workers": 0}, "`ray_workers`"),
        ({"backend": "ray", "gpus_per_worker": -1}, "`gpus_per_worker`"),
        ({"backend": "ray", "ray_block_size": 0}, "`block_size`"),
    ]:
        with pytest.raises(ValueError, match=message):
            apply_ssa(ds, **branches, **bad)
    assert not ds.has_sample_field("ssa")


def test_engine_on_two_actors_equals_one_process(
    ray_runtime, scene_dataset, tiny_engine_dirs, tmp_path
):
    from fiftyone_ssa import apply_ssa_engine
    from fiftyone_ssa.testing.tiny import build_tiny_spacy
    from tests.test_torchrun import _engine_labels

    # Actors load a pipeline of built-in components from disk (the tiny parser is registered
    # in this process only).
    build_tiny_spacy("tagger").to_disk(tmp_path / "spacy")
    dirs = tiny_engine_dirs
    request = {
        "label_field": "eng",
        "mask_branch": "field:instances",
        "device": "cpu",
        "spacy_model": str(tmp_path / "spacy"),
        "vocabulary": ["dog", "sky", "road"],
        "vocabulary_mode": "restrict",
        "write_segmentation": True,
        "models": {
            "ade": str(dirs["ade"]),
            "coco": str(dirs["coco"]),
            "captioner": str(dirs["blip"]),
            "clip": str(dirs["clip"]),
            "clipseg": str(dirs["clipseg"]),
        },
    }
    ds = scene_dataset(n=2)
    single = ds.clone()
    apply_ssa_engine(single, **request)
    summary = apply_ssa_engine(ds, **request, backend="ray", ray_workers=2, ray_block_size=1)
    assert (summary.num_labelled, len(summary.failures)) == (2, 0)
    ds.reload()
    assert _engine_labels(ds) == _engine_labels(single)
    assert ds.mask_targets["eng_seg"] == single.mask_targets["eng_seg"]
    # Without a fixed vocabulary the painted maps' class ids are not known before the actors
    # write: refused in one line before anything starts.
    with pytest.raises(ValueError, match="vocabulary_mode='restrict'"):
        apply_ssa_engine(
            ds, **{**request, "label_field": "other", "vocabulary_mode": "add"}, backend="ray"
        )
    assert not ds.has_sample_field("other")


def test_reviewed_samples_are_kept_unless_reviews_are_discarded(ray_runtime, scene_dataset):
    ds = scene_dataset(n=4)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    apply_ssa(ds, **branches)
    sample = ds.first()
    detection = sample.ssa_masks.detections[0]
    detection.label = next(n for n in ds.mask_targets["ssa"].values() if n != detection.label)
    sample.save()
    apply_review(ds)
    reviewed = ds._sample_collection.find_one({"_id": sample._id})["ssa_masks"]
    ray_options = {"backend": "ray", "ray_workers": 2, "ray_block_size": 1}

    summary = apply_ssa(ds, **branches, resume=False, **ray_options)
    assert (summary.num_labelled, summary.kept_reviewed, summary.skipped_existing) == (3, 1, 0)
    assert ds._sample_collection.find_one({"_id": sample._id})["ssa_masks"] == reviewed

    summary = apply_ssa(ds, **branches, resume=False, discard_reviews=True, **ray_options)
    assert (summary.num_labelled, summary.kept_reviewed) == (4, 0)
    assert len(ds.exists("ssa_masks.reviewed_at")) == 0


@pytest.mark.usefixtures("plugins_dir")
def test_a_delegated_plugin_run_on_ray_records_its_progress(
    ray_runtime, scene_dataset, monkeypatch
):
    from fiftyone_ssa.labelling import backends

    ds = scene_dataset(n=4)
    ray_runs = []  # a spy: the real Ray driver runs, the call is seen

    def spy(*args, **kwargs):
        ray_runs.append(kwargs)
        return real(*args, **kwargs)

    real = backends.execute_ray_run
    monkeypatch.setattr(backends, "execute_ray_run", spy)
    params = {**FIELD_BRANCHES, "label_field": "queued", "backend": "ray"}
    doc = execute_delegated("run_ssa", ds, params=params)
    assert len(ray_runs) == 1 and ray_runs[0]["ray_address"] is None
    ds.reload()
    assert doc.result.result["num_labelled"] == 4 and ds.count("queued") == 4
    assert doc.status.progress == pytest.approx(1.0) and doc.status.label == "4/4 samples"
