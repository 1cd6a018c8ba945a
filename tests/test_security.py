"""Security: no code runs from checkpoints, parameters or dataset contents; no global settings
change at import; files are written only under the chosen output directory."""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.sam import blob_scene

REPO = Path(__file__).resolve().parents[1]


class CodeOnUnpickle:
    """An object whose unpickling creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _write_payloads(directory: Path, marker: Path, name: str) -> list[Path]:
    """The payload as a torch.save zip archive and as a legacy raw pickle, under ``name``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {"image_encoder.patch_embed.proj.weight": CodeOnUnpickle(marker)}
    zipped = directory / name
    torch.save(state, zipped)
    legacy = directory / f"legacy_{name}"
    with open(legacy, "wb") as f:
        pickle.dump(state, f, protocol=2)
    return [zipped, legacy]


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    """Guards the tests below: unpickling the payload without weights_only creates the marker."""
    marker = tmp_path / "ran"
    zipped, legacy = _write_payloads(tmp_path, marker, "probe.pth")
    torch.load(zipped, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with open(legacy, "rb") as f:
        pickle.load(f)  # noqa: S301 (the point of the test)
    assert marker.exists()


@pytest.mark.parametrize("how", ["path", "path-with-type", "preset", "load_sam"])
def test_sam_checkpoints_that_run_code_are_refused(tmp_path, how):
    from fiftyone_ssa.models import weights
    from fiftyone_ssa.models.masks.branches import load_sam_branch
    from fiftyone_ssa.models.masks.sam_loader import load_sam
    from fiftyone_ssa.models.registry import create_branch

    marker = tmp_path / "ran"
    models = tmp_path / "models"
    payloads = _write_payloads(models / "sam-vit-b", marker, "sam_vit_b_01ec64.pth")
    for payload in payloads:
        if how == "preset":
            payload.replace(models / "sam-vit-b" / "sam_vit_b_01ec64.pth")
            weights.set_models_dir(models)
        try:
            with pytest.raises(ValueError) as err:
                if how == "path":
                    create_branch(str(payload), kind="mask", device="cpu")
                elif how == "path-with-type":
                    load_sam_branch(payload, model_type="vit_b", device="cpu")
                elif how == "preset":
                    create_branch("sam-vit-b", kind="mask", device="cpu")
                else:
                    load_sam(payload, "vit_b")
        finally:
            weights.set_models_dir(None)
        assert "cannot read SAM checkpoint" in str(err.value)
        assert "\n" not in str(err.value)
        assert not marker.exists()


def test_semantic_model_weights_that_run_code_are_refused(tmp_path, tiny_segformer_dir):
    import shutil

    from fiftyone_ssa.models.registry import create_branch

    marker = tmp_path / "ran"
    directory = tmp_path / "segformer"
    shutil.copytree(tiny_segformer_dir, directory)
    (directory / "model.safetensors").unlink()
    torch.save(
        {"decode_head.classifier.weight": CodeOnUnpickle(marker)}, directory / "pytorch_model.bin"
    )
    with pytest.raises(ValueError) as err:
        create_branch(str(directory), kind="semantic", device="cpu")
    assert "cannot load a semantic segmentation model" in str(err.value)
    assert not marker.exists()


def test_clip_checkpoints_that_run_code_are_refused(tmp_path):
    from fiftyone_ssa.models.engine.clip_filter import load_open_clip

    marker = tmp_path / "ran"
    for payload in _write_payloads(tmp_path / "clip", marker, "clip.bin"):
        with pytest.raises(ValueError):
            load_open_clip(payload, architecture="ViT-B-32")
        assert not marker.exists()


def test_cli_refuses_a_checkpoint_that_runs_code(make_dataset, tmp_path, capsys):
    from fiftyone_ssa.cli import main

    marker = tmp_path / "ran"
    payload = _write_payloads(tmp_path, marker, "sam.pth")[0]
    dataset = make_dataset()
    dataset.add_sample(
        fo.Sample(filepath=str(tmp_path / "x.png"), coarse=fo.Segmentation(mask=np.zeros((4, 4))))
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "run",
                dataset.name,
                "--semantic-branch",
                "field:coarse",
                "--mask-branch",
                str(payload),
            ]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot read SAM checkpoint" in err
    assert not marker.exists()


# ------------------------------------------------------------------ nothing is evaluated

_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
_FORBIDDEN_ATTRIBUTES = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("marshal", "loads"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("dill", "load"),
    ("joblib", "load"),
}


def _source_files():
    for root in (REPO / "fiftyone_ssa", REPO / "plugins"):
        yield from sorted(root.rglob("*.py"))


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def test_no_code_evaluates_or_unpickles_untrusted_data():
    """Scans the package and the plugin: no eval/exec, no pickle, every ``torch.load`` with
    ``weights_only=True``, no ``np.load(allow_pickle=True)``, no ``trust_remote_code``."""
    problems = []
    files = list(_source_files())
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            func = node.func
            if isinstance(func, ast.Name) and func.id in _FORBIDDEN_CALLS:
                problems.append(f"{where}: {func.id}()")
            if isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                if (owner, func.attr) in _FORBIDDEN_ATTRIBUTES:
                    problems.append(f"{where}: {owner}.{func.attr}()")
                if owner == "torch" and func.attr == "load":
                    value = _keyword(node, "weights_only")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        problems.append(f"{where}: torch.load without weights_only=True")
                if owner == "np" and func.attr == "load":
                    value = _keyword(node, "allow_pickle")
                    if value is not None and not (
                        isinstance(value, ast.Constant) and value.value is False
                    ):
                        problems.append(f"{where}: np.load(allow_pickle=...)")
            value = _keyword(node, "trust_remote_code")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                problems.append(f"{where}: trust_remote_code")
    assert not problems, problems


def test_parameters_and_dataset_contents_are_data_not_code(make_dataset, tmp_path, capsys):
    """Class names, labels, field values and CLI option values that look like code stay text."""
    from fiftyone_ssa import apply_ssa
    from fiftyone_ssa.cli import main
    from fiftyone_ssa.labels import build_detections

    marker = tmp_path / "ran"
    code = f"__import__('os').system('touch {marker}')"
    path = tmp_path / "image.png"
    Image.fromarray(blob_scene(16, 16)).save(path)
    masks = torch.zeros((1, 16, 16), dtype=torch.bool)
    masks[0, 4:12, 4:12] = True
    dataset = make_dataset()
    dataset.persistent = True
    dataset.add_sample(
        fo.Sample(
            filepath=str(path),
            coarse=fo.Segmentation(mask=np.ones((16, 16), np.uint8)),
            masks=build_detections(masks, [code], [{"note": code}]),
            notes=code,
        )
    )
    dataset.mask_targets = {"coarse": {0: code, 1: f"{{{code}}}"}}
    dataset.save()
    apply_ssa(dataset, semantic_branch="field:coarse", mask_branch="field:masks")
    assert dataset.first().ssa_masks.detections[0].label == f"{{{code}}}"
    argv = ["run", dataset.name, "--semantic-branch", "field:coarse", "--mask-branch"]
    argv += [str(REPO / "no.pth"), "--mask-option", f"points_per_side={code}"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists()


# ------------------------------------------------------------------ no global settings change

_SNAPSHOT = textwrap.dedent(
    """
    import json, logging, os, sys, warnings

    import fiftyone as fo
    import numpy as np
    import PIL.Image
    import torch

    def snapshot():
        loggers = {
            name: logger.level
            for name, logger in logging.root.manager.loggerDict.items()
            if isinstance(logger, logging.Logger)
        }
        return {
            "environ": dict(os.environ),
            "fo.config": fo.config.serialize(),
            "fo.app_config": fo.app_config.serialize(),
            "torch": [
                torch.get_num_threads(),
                torch.is_grad_enabled(),
                str(torch.get_default_dtype()),
                torch.are_deterministic_algorithms_enabled(),
                torch.get_float32_matmul_precision(),
                torch.backends.cudnn.benchmark,
                torch.backends.cudnn.deterministic,
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
                str(torch.get_default_device()),
            ],
            "numpy": [str(np.geterr()), str(np.get_printoptions())],
            "pil": PIL.Image.MAX_IMAGE_PIXELS,
            "root_logger": [logging.root.level, len(logging.root.handlers)],
            "loggers": loggers,
            "warnings": [repr(f) for f in warnings.filters],
            "recursion": sys.getrecursionlimit(),
        }

    before = snapshot()
    sys.path.insert(0, __PLUGINS__)
    import ssa_operators  # the plugin package, as FiftyOne's plugin loader imports it
    import fiftyone.plugins.context as fopc
    fopc.build_plugin_contexts()
    __IMPORTS__
    after = snapshot()
    sys.path.remove(__PLUGINS__)
    new_loggers = {k: v for k, v in after["loggers"].items() if k not in before["loggers"]}
    after["loggers"] = {k: v for k, v in after["loggers"].items() if k in before["loggers"]}
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if "environ" in changed:
        b, a = changed["environ"]
        changed["environ"] = {k: (b.get(k), a.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    leveled = {k: v for k, v in new_loggers.items() if v != logging.NOTSET}
    print(json.dumps({"changed": changed, "new_loggers_with_levels": leveled}, default=str))
    """
)

_LIBRARY_IMPORTS = """
import fiftyone_ssa, fiftyone_ssa.labelling.ssa, fiftyone_ssa.labelling.engine, fiftyone_ssa.sa1b
import fiftyone_ssa.evaluation.miou, fiftyone_ssa.evaluation.compare, fiftyone_ssa.labels
import fiftyone_ssa.cli, fiftyone_ssa.models.registry, fiftyone_ssa.models.semantic.branches
import fiftyone_ssa.models.masks.branches, fiftyone_ssa.models.masks.sam_loader, fiftyone_ssa.models.weights
from fiftyone_ssa.cli import build_parser
build_parser()
"""


def test_importing_the_plugin_and_library_changes_no_global_settings(tmp_path):
    code = _SNAPSHOT.replace("__PLUGINS__", repr(str(REPO / "plugins")))
    code = code.replace("__IMPORTS__", _LIBRARY_IMPORTS.strip())
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"changed": {}, "new_loggers_with_levels": {}}, report


# ------------------------------------------------------------------ paths stay inside


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_sa1b_export_writes_only_inside_export_dir(make_dataset, tmp_path):
    from fiftyone_ssa.labels import build_detections
    from fiftyone_ssa.sa1b import IMAGE_ID_FIELD, export_sa1b

    images = tmp_path / "deep" / "images"
    images.mkdir(parents=True)
    masks = torch.zeros((1, 8, 8), dtype=torch.bool)
    masks[0, 2:5, 2:6] = True
    dataset = make_dataset()
    names = ["sa_1.jpg", "x..y.jpg", "sa_2.jpg"]
    for name in names:
        Image.fromarray(blob_scene(8, 8)).save(images / name)
    samples = [
        fo.Sample(
            filepath=str(images / ".." / "images" / name),
            sa1b=build_detections(masks, ["a"], [{}]),
        )
        for name in names
    ]
    samples[2][IMAGE_ID_FIELD] = "../../escaped"
    dataset.add_samples(samples)
    export_dir = tmp_path / "deep" / "export"
    before = _files_under(tmp_path)
    written = export_sa1b(dataset, str(export_dir), "sa1b")
    new = _files_under(tmp_path) - before
    assert new == {Path(p) for p in written}
    assert all(p.parent == export_dir for p in new) and len(new) == 3
    record = json.loads((export_dir / "sa_2.json").read_text())
    assert record["image"]["image_id"] == "../../escaped"  # data, not a path


@pytest.mark.parametrize("filename", ["a..jpg", "..a.jpg", "...a.jpg"])
def test_sa1b_export_of_dot_names_stays_inside_export_dir(make_dataset, tmp_path, filename):
    from fiftyone_ssa.sa1b import export_sa1b

    dataset = make_dataset()
    for name in (filename, "ok.jpg"):
        Image.fromarray(blob_scene(8, 8)).save(tmp_path / name, format="JPEG")
        dataset.add_sample(fo.Sample(filepath=str(tmp_path / name), sa1b=fo.Detections()))
    export_dir = tmp_path / "a" / "export"
    before = _files_under(tmp_path)
    written = export_sa1b(dataset, str(export_dir), "sa1b")
    new = _files_under(tmp_path) - before
    assert len(written) == 2 and new == {Path(p) for p in written}
    assert all(p.parent == export_dir for p in new), new


@pytest.mark.parametrize("filepath", ["/x/..", "/x/.", "/"])
def test_sa1b_export_paths_refuse_stems_that_leave_export_dir(tmp_path, filepath):
    from fiftyone_ssa.sa1b.exporter import _output_path

    with pytest.raises(ValueError, match="export_dir"):
        _output_path(str(tmp_path), filepath, ".json")


def test_sa1b_import_writes_masks_only_inside_mask_dir(tmp_path, make_sa1b_dir):
    from fiftyone_ssa.sa1b import import_sa1b

    source = make_sa1b_dir(num_images=2, name="sa1b").root
    stem = "sa_1"
    # Dot names: Python's splitext gives them no extension, so they are no SA-1B pair at all.
    for bad in ("...json", "..json", "...jpg"):
        (source / bad).write_bytes((source / f"{stem}.json").read_bytes())
    # A JSON whose image file name climbs out of the dataset directory.
    record = json.loads((source / f"{stem}.json").read_text())
    record["image"]["file_name"] = "../outside.jpg"
    (source / "climber.json").write_text(json.dumps(record))
    (tmp_path / "outside.jpg").write_bytes((source / f"{stem}.jpg").read_bytes())
    mask_dir = tmp_path / "out" / "masks"
    before = _files_under(tmp_path)
    name = f"sa1b-sec-{uuid.uuid4().hex[:6]}"
    dataset = import_sa1b(str(source), name=name, mask_dir=str(mask_dir))
    try:
        new = _files_under(tmp_path) - before
        assert new and all(mask_dir in p.parents for p in new), sorted(new)
        assert sorted(dataset.info["sa1b_import"]["errors"]) == ["climber.json"]
        paths = dataset.values("sa1b.detections.mask_path", unwind=True)
        assert paths and all(mask_dir in Path(p).parents for p in paths)
        assert sorted(Path(p).name for p in dataset.values("filepath")) == ["sa_1.jpg", "sa_2.jpg"]
    finally:
        dataset.delete()


def test_sa1b_mask_subdir_refuses_dot_stems(tmp_path):
    from fiftyone_ssa.sa1b.importer import SA1BFileError, _mask_subdir

    assert _mask_subdir(str(tmp_path), "sa_1") == str(tmp_path / "sa_1")
    for stem in ("..", ".", "", "a/../..", "/abs"):
        with pytest.raises(SA1BFileError):
            _mask_subdir(str(tmp_path), stem)


def _large_mask_dataset(make_dataset, tmp_path, name=None):
    from fiftyone_ssa.labels import build_detections

    path = tmp_path / "image.png"
    Image.fromarray(blob_scene(24, 32)).save(path)
    masks = torch.zeros((2, 24, 32), dtype=torch.bool)
    masks[0, :12] = True
    masks[1, :, 8:20] = True
    dataset = make_dataset(name)
    dataset.add_sample(
        fo.Sample(
            filepath=str(path),
            coarse=fo.Segmentation(mask=np.zeros((24, 32), np.uint8)),
            masks=build_detections(masks, ["a", "b"], [{}, {}]),
        )
    )
    return dataset


def _mask_paths(dataset, field):
    paths = dataset.values(f"{field}.detections.mask_path", unwind=True)
    assert paths and all(paths)
    return [Path(p) for p in paths]


@pytest.fixture
def masks_to_disk(monkeypatch):
    """Every instance mask goes to a PNG (as for images with more than 8M mask pixels)."""
    import fiftyone_ssa.labelling.record

    monkeypatch.setattr(fiftyone_ssa.labelling.record, "MAX_INLINE_MASK_PIXELS", 0)


@pytest.mark.usefixtures("masks_to_disk")
def test_large_masks_are_written_under_output_dir(make_dataset, tmp_path):
    from fiftyone_ssa import apply_ssa

    dataset = _large_mask_dataset(make_dataset, tmp_path)
    output_dir = tmp_path / "chosen"
    before = _files_under(tmp_path)
    apply_ssa(
        dataset,
        semantic_branch="field:coarse",
        mask_branch="field:masks",
        output_dir=str(output_dir),
    )
    paths = _mask_paths(dataset, "ssa_masks")
    assert all(output_dir in p.resolve().parents for p in paths)
    new = _files_under(tmp_path) - before
    assert new == {p.resolve() for p in paths}


@pytest.mark.usefixtures("masks_to_disk")
def test_a_relative_or_home_output_dir_gives_absolute_mask_paths(
    make_dataset, tmp_path, monkeypatch
):
    # mask_path was stored as given: relative to the notebook's directory (the App's server,
    # started elsewhere, found no mask) or with a literal '~' folder made in it
    from fiftyone_ssa import apply_ssa

    dataset = _large_mask_dataset(make_dataset, tmp_path)
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:masks"}
    apply_ssa(dataset, output_dir="rel", **branches)
    paths = _mask_paths(dataset, "ssa_masks")
    assert all(p.is_absolute() and (work / "rel") in p.parents for p in paths)
    apply_ssa(dataset, label_field="homed", output_dir="~/masks", **branches)
    paths = _mask_paths(dataset, "homed_masks")
    assert all(p.is_absolute() and (home / "masks") in p.parents for p in paths)
    assert all(p.is_file() for p in paths) and not (work / "~").exists()


@pytest.mark.usefixtures("masks_to_disk")
def test_engine_large_masks_are_written_under_output_dir(
    make_dataset, tmp_path, tiny_engine_models
):
    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    dataset = _large_mask_dataset(make_dataset, tmp_path)
    output_dir = tmp_path / "chosen"
    before = _files_under(tmp_path)
    apply_ssa_engine(
        dataset, mask_branch="field:masks", models=tiny_engine_models, output_dir=str(output_dir)
    )
    paths = _mask_paths(dataset, "ssa_engine")
    assert all(output_dir in p.resolve().parents for p in paths)
    assert _files_under(tmp_path) - before == {p.resolve() for p in paths}


@pytest.mark.parametrize("name_kind", ["dotdot", "absolute"])
@pytest.mark.usefixtures("masks_to_disk")
def test_default_mask_dir_stays_inside_fiftyone_dataset_dir(
    make_dataset, tmp_path, monkeypatch, name_kind
):
    from fiftyone_ssa import apply_ssa

    datasets_dir = tmp_path / "a" / "b" / "datasets"
    monkeypatch.setattr(fo.config, "default_dataset_dir", str(datasets_dir))
    tag = uuid.uuid4().hex[:6]
    name = f"../../escape-{tag}" if name_kind == "dotdot" else str(tmp_path / f"abs-{tag}")
    dataset = _large_mask_dataset(make_dataset, tmp_path, name=name)
    apply_ssa(dataset, semantic_branch="field:coarse", mask_branch="field:masks")
    paths = _mask_paths(dataset, "ssa_masks")
    assert all(datasets_dir in p.resolve().parents for p in paths), paths
