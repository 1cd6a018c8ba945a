"""Scale-out and recovery: torchrun ranks (gloo, CPU) and killed runs against the real database.

The runs are real subprocesses of the command line (``torchrun -m fiftyone_ssa run`` and
``python -m fiftyone_ssa run``) sharing this test session's private database with the test.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from fiftyone_ssa import apply_ssa

BRANCHES = ["--semantic-branch", "field:coarse", "--mask-branch", "field:instances"]
OUTPUTS = ("ssa", "ssa_masks", "ssa_branch", "ssa_error")
pytestmark = pytest.mark.timeout(600)


def _command(dataset_name: str, nproc: int, *extra: str) -> list[str]:
    run = ["run", dataset_name, *BRANCHES, "--num-workers", "1", *extra]
    if nproc == 1:
        return [sys.executable, "-m", "fiftyone_ssa", *run]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(nproc), "-m", "fiftyone_ssa", *run]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(dataset_name: str, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(dataset_name, nproc, *extra),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )


def _counts(summary_text: str) -> tuple[int, int, int]:
    """(labelled, failed, skipped) from the printed run summary (printed once, by rank 0)."""
    found = re.findall(
        r"(\d+) samples labelled into 'ssa', (\d+) failed, (\d+) skipped", summary_text
    )
    assert len(found) == 1, summary_text
    return tuple(int(x) for x in found[0])


def _labels_by_path(ds) -> dict:
    """filepath -> (painted map, mask detections as (label, box, mask bytes)) of every sample."""
    out = {}
    for sample in ds.select_fields(["ssa", "ssa_masks"]):
        dets = [
            (d.label, tuple(np.round(d.bounding_box, 9)), d.mask.tobytes())
            for d in sample.ssa_masks.detections
        ]
        out[sample.filepath] = (sample.ssa.mask.tobytes(), dets)
    return out


def _other_fields(ds) -> list[dict]:
    """Every sample document without the run's output fields (what a run must not touch)."""
    docs = ds._sample_collection.find({}, sort=[("_id", 1)])
    return [
        {k: v for k, v in doc.items() if k not in OUTPUTS and k != "last_modified_at"}
        for doc in docs
    ]


def test_two_ranks_label_every_sample_once_like_one_process(persistent_scenes):
    ds = persistent_scenes(n=12)
    single = ds.clone()
    apply_ssa(single, semantic_branch="field:coarse", mask_branch="field:instances")

    result = _run(ds.name, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    # Rank 0 prints the merged summary once: 12 labelled means each sample exactly once
    # (overlapping shards would count more, missing ones fewer).
    assert _counts(result.stdout) == (12, 0, 0)
    ds.reload()
    assert ds.count("ssa") == 12
    assert _labels_by_path(ds) == _labels_by_path(single)
    assert ds.mask_targets["ssa"] == single.mask_targets["ssa"]
    keys = set(ds.values("ssa.run_key"))
    assert len(keys) == 1 and keys != {None}
    single.delete()


@pytest.mark.parametrize("nproc", [1, 2], ids=["one-process", "two-ranks"])
def test_killed_run_resumes_with_nothing_lost_or_written_twice(persistent_scenes, nproc):
    total = 160
    ds = persistent_scenes(n=total, seed=nproc)
    before = _other_fields(ds)

    proc = subprocess.Popen(
        _command(ds.name, nproc),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if _num_labelled(ds) >= 8:
            victim = _worker(proc, rank=nproc - 1)
            os.kill(victim, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate(timeout=300)
    assert victim is not None, "the run ended before it could be killed"
    assert proc.returncode != 0

    ds.reload()
    labelled = _num_labelled(ds)
    assert 8 <= labelled < total
    # Every sample is fully labelled or untouched; nothing else changed.
    for sample in ds.select_fields(list(OUTPUTS)):
        present = [sample[f] is not None for f in ("ssa", "ssa_masks", "ssa_branch")]
        assert all(present) or not any(present), sample.id
    assert _other_fields(ds) == before

    result = _run(ds.name, nproc)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _counts(result.stdout) == (total - labelled, 0, labelled)
    assert ds.exists("ssa").count() == total
    assert len(set(ds.values("ssa.run_key"))) == 1
    assert _other_fields(ds) == before

    single = ds.clone()
    apply_ssa(
        single,
        semantic_branch="field:coarse",
        mask_branch="field:instances",
        overwrite=True,
        resume=False,
    )
    assert _labels_by_path(ds) == _labels_by_path(single)
    single.delete()


def _num_labelled(ds) -> int:
    """Samples with an ``ssa`` label, straight from the database (the schema may be stale)."""
    return ds._sample_collection.count_documents({"ssa": {"$ne": None}})


def _worker(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the process labelling as ``rank`` (the launcher itself for one process)."""
    parent = psutil.Process(launcher.pid)
    if rank == 0 and not any("torch.distributed.run" in a for a in parent.cmdline()):
        return launcher.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in parent.children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no worker process with RANK={rank}")


def _engine_command(dataset_name: str, nproc: int, dirs: dict, *extra: str) -> list[str]:
    models = []
    for flag, key in [
        ("--ade-model", "ade"),
        ("--coco-model", "coco"),
        ("--captioner", "blip"),
        ("--clip-model", "clip"),
        ("--clipseg-model", "clipseg"),
        ("--spacy-model", "spacy"),
    ]:
        models += [flag, str(dirs[key])]
    engine = ["engine", dataset_name, "--mask-branch", "field:instances", "--device", "cpu"]
    engine += ["--num-workers", "1", "--label-field", "eng", *models, *extra]
    if nproc == 1:
        return [sys.executable, "-m", "fiftyone_ssa", *engine]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(nproc), "-m", "fiftyone_ssa", *engine]


def _engine_labels(ds) -> dict:
    """filepath -> (painted map, (label, proposals, caption) per mask) of every sample."""
    out = {}
    for sample in ds.select_fields(["eng", "eng_seg"]):
        dets = [(d.label, tuple(d.class_proposals), d.caption) for d in sample.eng.detections]
        out[sample.filepath] = (sample.eng_seg.mask.tobytes(), dets)
    return out


def test_two_engine_ranks_with_a_fixed_vocabulary_equal_one_process(
    persistent_scenes, tiny_engine_dirs, tmp_path
):
    from fiftyone_ssa.testing.tiny import build_tiny_spacy

    # The tiny parser is a Python function registered in this process only; subprocesses load
    # a pipeline of built-in components (POS tags: nouns without noun chunks).
    build_tiny_spacy("tagger").to_disk(tmp_path / "spacy")
    dirs = {**tiny_engine_dirs, "spacy": tmp_path / "spacy"}
    ds = persistent_scenes(n=6)
    single = ds.clone()
    single.persistent = True
    vocabulary = ["--vocabulary", "dog", "sky", "road", "--restrict-vocabulary"]
    options = [*vocabulary, "--write-segmentation"]

    def run(name, nproc, *extra):
        return subprocess.run(
            _engine_command(name, nproc, dirs, *extra),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=400,
        )

    result = run(single.name, 1, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(ds.name, 2, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.findall(r"(\d+) samples labelled into 'eng', (\d+) failed", result.stdout)
    assert found == [("6", "0")], result.stdout
    ds.reload()
    single.reload()
    assert _engine_labels(ds) == _engine_labels(single)
    assert ds.mask_targets["eng_seg"] == single.mask_targets["eng_seg"]
    assert set(ds.mask_targets["eng_seg"].values()) <= {"dog", "sky", "road"}
    # Without a fixed vocabulary the class ids of the painted maps are not known before the
    # ranks write: refused in one line, before any model loads, nothing written.
    result = run(ds.name, 2, "--write-segmentation", "--label-field", "other")
    assert result.returncode != 0
    assert "--restrict-vocabulary" in result.stderr
    assert not ds.has_sample_field("other")
    single.delete()
