"""Wrong use of the CLI ends with one clear line on stderr and exit code 1, before any work.

Every case runs ``fiftyone-ssa`` (in process through ``cli.main``; a few through the installed
console script in a subprocess) and checks: exit code 1, exactly one stderr line
``fiftyone-ssa <command>: error: ...`` saying what is wrong, and that the dataset's schema and
samples are unchanged (no output field was created).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_ssa.cli import main
from fiftyone_ssa.labels import build_detections
from tests.fixtures.sam import blob_scene
from tests.test_plugin import plugins_dir  # noqa: F401 (fixture)

CLASSES = {0: "ground", 1: "thing", 2: "sky"}


@pytest.fixture
def cli_dataset(make_dataset, tmp_path):
    """A persistent dataset (the CLI loads it by name) with input fields of every kind."""
    dataset = make_dataset()
    dataset.persistent = True
    samples = []
    for i in range(2):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(blob_scene(24, 32, seed=i)).save(path)
        masks = torch.zeros((2, 24, 32), dtype=torch.bool)
        masks[0, :12], masks[1, :, :16] = True, True
        samples.append(
            fo.Sample(
                filepath=str(path),
                coarse=fo.Segmentation(mask=np.zeros((24, 32), np.uint8)),
                gt=fo.Segmentation(mask=np.ones((24, 32), np.uint8)),
                other=fo.Segmentation(mask=np.ones((24, 32), np.uint8)),
                masks=build_detections(masks, ["a", "b"], [{}, {}]),
                notes="a string",
                taken=fo.Segmentation(mask=np.ones((24, 32), np.uint8)),
                painted=fo.Segmentation(mask=np.zeros((24, 32, 3), np.uint8)),
            )
        )
    dataset.add_samples(samples)
    dataset.mask_targets = {
        "coarse": CLASSES,
        "other": {0: "sky", 1: "ground"},
        "painted": {"#ff0000": "red"},
    }
    dataset.save()
    return dataset


@pytest.fixture
def models_dir(tmp_path, tiny_sam_dir, tiny_segformer_dir):
    """A models directory with broken presets: corrupt, wrong architecture, truncated."""
    root = tmp_path / "models"
    # sam-vit-b: garbage bytes under the official file name
    (root / "sam-vit-b").mkdir(parents=True)
    (root / "sam-vit-b" / "sam_vit_b_01ec64.pth").write_bytes(b"not a checkpoint" * 64)
    # sam-vit-h: a (tiny) SAM state dict of another architecture under ViT-H's file name
    (root / "sam-vit-h").mkdir()
    state = torch.load(Path(tiny_sam_dir) / "model.pt", weights_only=True)
    torch.save(state, root / "sam-vit-h" / "sam_vit_h_4b8939.pth")
    # segformer-b0-ade20k: weights truncated to half
    shutil.copytree(tiny_segformer_dir, root / "segformer-b0-ade20k")
    weights = root / "segformer-b0-ade20k" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return root


def _state(dataset):
    dataset.reload()
    schema = sorted(dataset.get_field_schema(flat=True))
    return schema, dataset.count(), sorted(dataset.list_evaluations())


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


def assert_one_line_error(code, err, command, *expected):
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fiftyone-ssa {command}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in err


def _params(cases):
    """pytest params from (id, argv, expected) tuples."""
    return [pytest.param(argv, expected, id=case_id) for case_id, argv, expected in cases]


FIELDS = ["--semantic-branch", "field:coarse", "--mask-branch", "field:masks"]

# (id, argv after "run DATASET", expected substrings); {models} and {sam}/{segformer} are filled.
RUN_CASES = [
    (
        "unknown-semantic-preset",
        ["--semantic-branch", "segformer-b9-ade20k", "--mask-branch", "field:masks"],
        ["unknown semantic branch 'segformer-b9-ade20k'", "segformer-b0-ade20k", "field:<name>"],
    ),
    (
        "unknown-mask-preset",
        ["--semantic-branch", "field:coarse", "--mask-branch", "sam-vit-x"],
        ["unknown mask branch 'sam-vit-x'", "sam-vit-b, sam-vit-h, sam-vit-l"],
    ),
    (
        "missing-sam-preset-weights",
        ["--semantic-branch", "field:coarse", "--mask-branch", "sam-vit-l"],
        ["missing weights for 'sam-vit-l'", "fiftyone-ssa models download sam-vit-l"],
    ),
    (
        "missing-semantic-preset-weights",
        ["--semantic-branch", "segformer-b1-ade20k", "--mask-branch", "field:masks"],
        ["missing weights for 'segformer-b1-ade20k'", "models download segformer-b1-ade20k"],
    ),
    (
        "missing-checkpoint-path",
        [
            "--semantic-branch",
            "field:coarse",
            "--mask-branch",
            "{tmp}/nowhere/sam_vit_b_01ec64.pth",
        ],
        ["missing SAM checkpoint", "nowhere/sam_vit_b_01ec64.pth", "models download sam-vit-b"],
    ),
    (
        "missing-semantic-directory",
        ["--semantic-branch", "{tmp}/no/such/model", "--mask-branch", "field:masks"],
        ["no/such/model", "no such directory"],
    ),
    (
        "corrupt-checkpoint",
        ["--semantic-branch", "field:coarse", "--mask-branch", "sam-vit-b"],
        ["cannot read SAM checkpoint", "sam_vit_b_01ec64.pth", "not a PyTorch checkpoint"],
    ),
    (
        "corrupt-semantic-weights",
        ["--semantic-branch", "segformer-b0-ade20k", "--mask-branch", "field:masks"],
        ["cannot load a semantic segmentation model", "segformer-b0-ade20k"],
    ),
    (
        "wrong-architecture",
        ["--semantic-branch", "field:coarse", "--mask-branch", "sam-vit-h"],
        ["does not match SAM architecture vit_h", "shape mismatches"],
    ),
    (
        "segformer-as-mask-branch",
        ["--semantic-branch", "field:coarse", "--mask-branch", "{segformer}"],
        ["sam_config.json", "not a saved SAM directory"],
    ),
    (
        "sam-as-semantic-branch",
        ["--semantic-branch", "{sam}", "--mask-branch", "field:masks"],
        ["no config.json", "not a transformers model"],
    ),
    (
        "bad-mask-option",
        ["--semantic-branch", "field:coarse", "--mask-branch", "{sam}"]
        + ["--mask-option", "points_per_sid=3"],
        ["points_per_sid", "points_per_side"],
    ),
    (
        "missing-field",
        ["--semantic-branch", "field:nope", "--mask-branch", "field:masks"],
        ["'nope' does not exist"],
    ),
    (
        "semantic-field-of-wrong-type",
        ["--semantic-branch", "field:masks", "--mask-branch", "field:masks"],
        ["'masks' holds Detections, expected Segmentation"],
    ),
    (
        "semantic-field-not-a-label",
        ["--semantic-branch", "field:notes", "--mask-branch", "field:masks"],
        ["'notes'", "expected Segmentation"],
    ),
    (
        "mask-field-of-wrong-type",
        ["--semantic-branch", "field:coarse", "--mask-branch", "field:coarse"],
        ["'coarse' holds Segmentation, expected Detections"],
    ),
    (
        "output-field-exists",
        [*FIELDS, "--label-field", "taken"],
        ["'taken' already exists", "--overwrite"],
    ),
    (
        "output-field-exists-with-models",
        ["--semantic-branch", "{segformer}", "--mask-branch", "{sam}", "--label-field", "taken"],
        ["'taken' already exists", "--overwrite"],
    ),
    (
        "empty-view-with-models",
        ["--semantic-branch", "{segformer}", "--mask-branch", "{sam}", "--view-tag", "nope"],
        ["empty"],
    ),
    ("output-field-is-an-input", [*FIELDS, "--label-field", "coarse"], ["coarse"]),
    ("empty-view", [*FIELDS, "--view-tag", "no-such-tag"], ["empty"]),
    ("bad-batch-size", [*FIELDS, "--batch-size", "0"], ["batch_size"]),
    ("zero-limit", [*FIELDS, "--limit", "0"], ["--limit", ">= 1"]),
    ("negative-workers", [*FIELDS, "--num-workers", "-1"], ["num_workers", ">= 0"]),
    (
        "classes-for-a-field-branch",
        [*FIELDS, "--classes", "a", "b"],
        ["--classes", "CLIPSeg", "'field:coarse'"],
    ),
    (
        "classes-for-segformer",
        ["--semantic-branch", "{segformer}", "--mask-branch", "field:masks", "--classes", "a"],
        ["--classes", "CLIPSeg", "has its own"],
    ),
    (
        "rgb-mask-targets",
        ["--semantic-branch", "field:painted", "--mask-branch", "field:masks"],
        ["'painted' has RGB mask targets", "integer class ids"],
    ),
    (
        "clipseg-without-classes",
        ["--semantic-branch", "{clipseg}", "--mask-branch", "field:masks"],
        ["non-empty list of class names for CLIPSeg"],
    ),
    (
        "non-integer-mask-option",
        ["--semantic-branch", "field:coarse", "--mask-branch", "{sam}"]
        + ["--mask-option", "points_per_side=inf"],
        ["'points_per_side'", "an integer >= 1", "inf"],
    ),
    (
        "mask-threshold-out-of-range",
        ["--semantic-branch", "field:coarse", "--mask-branch", "{sam}"]
        + ["--mask-option", "stability_score_thresh=2"],
        ["'stability_score_thresh'", "in [0.0, 1.0]"],
    ),
    (
        # SSA's crop layer (downscale 2) would get int(1 / 2) = 0 points per side:
        # segment-anything's grid builder raised ZeroDivisionError.
        "too-few-points-for-the-crop-layers",
        ["--semantic-branch", "field:coarse", "--mask-branch", "{sam}"]
        + ["--mask-option", "points_per_side=1"],
        ["at least one point per side in every crop layer", "1 / 2 ** 1"],
    ),
    (
        "mask-option-not-a-number",
        ["--semantic-branch", "field:coarse", "--mask-branch", "{sam}"]
        + ["--mask-option", "crop_n_layers=abc"],
        ["'crop_n_layers'", "'abc'"],
    ),
]


def _fill(argv, tmp_path, tiny_sam_dir, tiny_segformer_dir, clipseg_dir):
    values = {
        "tmp": tmp_path,
        "sam": tiny_sam_dir,
        "segformer": tiny_segformer_dir,
        "clipseg": clipseg_dir,
    }
    return [a.format(**values) for a in argv]


@pytest.mark.parametrize("argv, expected", _params(RUN_CASES))
def test_run_wrong_use(
    cli_dataset,
    models_dir,
    tmp_path,
    tiny_sam_dir,
    tiny_segformer_dir,
    tiny_engine_dirs,
    capsys,
    argv,
    expected,
):
    before = _state(cli_dataset)
    argv = _fill(argv, tmp_path, tiny_sam_dir, tiny_segformer_dir, tiny_engine_dirs["clipseg"])
    code, err = run_cli(
        ["run", cli_dataset.name, *argv, "--device", "cpu", "--models-dir", models_dir], capsys
    )
    assert_one_line_error(code, err, "run", *expected)
    assert _state(cli_dataset) == before


def test_overwrite_allows_an_existing_output_field(cli_dataset, capsys):
    code, err = run_cli(
        ["run", cli_dataset.name, *FIELDS, "--label-field", "taken", "--overwrite"], capsys
    )
    assert code == 0, err
    assert cli_dataset.first()["taken_masks"] is not None


@pytest.mark.parametrize("command, hint", [("run", "the same command resumes"), ("eval", None)])
def test_interrupt_ends_with_one_line(monkeypatch, capsys, command, hint):
    import importlib

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(f"fiftyone_ssa.cli.{command}"), "run", interrupted)
    argv = ["x", *FIELDS] if command == "run" else ["x", "--gt", "a", "--pred", "b"]
    code, err = run_cli([command, *argv], capsys)
    assert code == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fiftyone-ssa {command}: interrupted")
    assert (hint in lines[0]) if hint else lines[0] == f"fiftyone-ssa {command}: interrupted"


def test_unknown_dataset(capsys):
    code, err = run_cli(["run", "no-such-dataset-anywhere", *FIELDS], capsys)
    assert_one_line_error(code, err, "run", "no dataset named 'no-such-dataset-anywhere'")


ENGINE_CASES = [
    ("unknown-mask-branch", ["--mask-branch", "sam-vit-q"], ["unknown mask branch 'sam-vit-q'"]),
    ("missing-field", ["--mask-branch", "field:nope"], ["'nope' does not exist"]),
    (
        "field-of-wrong-type",
        ["--mask-branch", "field:coarse"],
        ["'coarse' holds Segmentation, expected Detections"],
    ),
    (
        "output-field-exists",
        ["--mask-branch", "field:masks", "--label-field", "taken"],
        ["'taken' already exists"],
    ),
    ("empty-view", ["--mask-branch", "field:masks", "--view-tag", "nope"], ["empty"]),
    (
        "vocabulary-directory",
        ["--mask-branch", "field:masks", "--vocabulary", "a", str(Path(__file__).parent)],
        ["--vocabulary", "a directory, expected a file of names"],
    ),
    (
        "vocabulary-file-missing",
        ["--mask-branch", "field:masks", "--vocabulary", "no_such_classes.txt"],
        ["'no_such_classes.txt': no such file"],
    ),
    (
        "missing-model-weights",
        ["--mask-branch", "field:masks", "--ade-model", "oneformer-ade20k-swin-tiny"],
        ["missing weights for 'oneformer-ade20k-swin-tiny'", "models download"],
    ),
    (
        "unknown-model",
        ["--mask-branch", "field:masks", "--captioner", "blip-giant"],
        ["blip-giant"],
    ),
]


@pytest.mark.parametrize("argv, expected", _params(ENGINE_CASES))
def test_engine_wrong_use(cli_dataset, models_dir, tiny_engine_dirs, capsys, argv, expected):
    before = _state(cli_dataset)
    models = ["--coco-model", tiny_engine_dirs["coco"], "--clip-model", tiny_engine_dirs["clip"]]
    models += ["--clipseg-model", tiny_engine_dirs["clipseg"]]
    models += ["--spacy-model", tiny_engine_dirs["spacy"]]
    if "--ade-model" not in argv:
        models += ["--ade-model", tiny_engine_dirs["ade"]]
    if "--captioner" not in argv:
        models += ["--captioner", tiny_engine_dirs["blip"]]
    code, err = run_cli(
        ["engine", cli_dataset.name, *argv, *models, "--device", "cpu", "--models-dir", models_dir],
        capsys,
    )
    assert_one_line_error(code, err, "engine", *expected)
    assert _state(cli_dataset) == before


EVAL_CASES = [
    # Said "no sample has both labels" for a field that does not exist.
    ("missing-gt", ["--gt", "nope", "--pred", "coarse"], ["field 'nope' does not exist"]),
    ("missing-pred", ["--gt", "gt", "--pred", "nope"], ["field 'nope' does not exist"]),
    ("gt-of-wrong-type", ["--gt", "masks", "--pred", "coarse"], ["masks"]),
    (
        "plot-in-an-unknown-format",
        ["--gt", "gt", "--pred", "coarse", "--plot", "chart.txt"],
        ["'chart.txt'", "png"],
    ),
    (
        "gt-without-mask-targets-for-differently-named-predictions",
        ["--gt", "gt", "--pred", "coarse", "--pred", "other"],
        ["'gt' has no mask targets", "'coarse'", "'other'"],
    ),
]


@pytest.mark.parametrize("argv, expected", _params(EVAL_CASES))
def test_eval_wrong_use(cli_dataset, capsys, argv, expected):
    before = _state(cli_dataset)
    code, err = run_cli(["eval", cli_dataset.name, *argv, "--eval-key", "ev"], capsys)
    assert_one_line_error(code, err, "eval", *expected)
    assert _state(cli_dataset) == before


def test_eval_gt_without_targets_is_fine_when_predictions_agree(cli_dataset, capsys):
    code, err = run_cli(["eval", cli_dataset.name, "--gt", "gt", "--pred", "coarse"], capsys)
    assert code == 0, err


def test_sa1b_wrong_use(cli_dataset, tmp_path, capsys):
    before = _state(cli_dataset)
    code, err = run_cli(
        ["export-sa1b", cli_dataset.name, tmp_path / "out", "--label-field", "nope"], capsys
    )
    assert_one_line_error(code, err, "export-sa1b", "nope")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    code, err = run_cli(["import-sa1b", tmp_path / "no_such_dir", "--name", "x"], capsys)
    assert_one_line_error(code, err, "import-sa1b", "no_such_dir")
    assert _state(cli_dataset) == before


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--semantic-branch", "segformer-b9-ade20k", "--mask-branch", "field:masks"],
            "segformer-b0-ade20k",
        ),
        (["--semantic-branch", "field:coarse", "--mask-branch", "sam-vit-b"], "missing weights"),
    ],
)
def test_console_script_prints_one_line_and_exits_1(cli_dataset, tmp_path, argv, expected):
    """The installed ``fiftyone-ssa`` in a fresh process: no traceback, no log noise."""
    script = Path(sys.executable).with_name("fiftyone-ssa")
    before = _state(cli_dataset)
    env = {**os.environ, "FIFTYONE_SSA_MODELS_DIR": str(tmp_path / "empty_models")}
    proc = subprocess.run(
        [str(script), "run", cli_dataset.name, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "run", expected)
    assert _state(cli_dataset) == before


def test_models_dir_after_the_subcommand(cli_dataset, tmp_path, capsys):
    code, err = run_cli(
        ["run", cli_dataset.name, "--semantic-branch", "field:coarse", "--mask-branch"]
        + ["sam-vit-b", "--models-dir", tmp_path / "elsewhere"],
        capsys,
    )
    assert_one_line_error(code, err, "run", str(tmp_path / "elsewhere" / "sam-vit-b"))


@pytest.mark.usefixtures("plugins_dir")
def test_plugin_evaluate_form_refuses_differently_named_predictions(cli_dataset):
    """The App's form shows the same refusal and keeps Execute disabled."""
    from tests.test_plugin import form, invalid

    params = {"gt_field": "gt", "pred_fields": ["coarse", "other"]}
    refused = invalid(form("evaluate_miou", cli_dataset, params))
    assert "has no mask targets" in refused["gt_targets_error"]
    assert not invalid(form("evaluate_miou", cli_dataset, {**params, "pred_fields": ["coarse"]}))


def test_demo_without_weights_names_every_missing_model(tmp_path, capsys):
    name = "ssa-demo-without-weights"
    code, err = run_cli(
        ["demo", "--name", name, "--device", "cpu", "--models-dir", tmp_path / "empty"], capsys
    )
    assert_one_line_error(
        code,
        err,
        "demo",
        "'segformer-b0-ade20k', 'edgetam'",
        "models download segformer-b0-ade20k edgetam",
    )
    assert not fo.dataset_exists(name)


@pytest.mark.parametrize("command", ["run", "engine"])
def test_a_device_this_machine_lacks_is_one_line_before_any_work(cli_dataset, capsys, command):
    # --device cuda on a machine without CUDA failed every sample one by one, each recorded in
    # <label_field>_error, with the output fields declared and the run recorded.
    absent = [f"cuda:{torch.cuda.device_count()}"]
    if not torch.cuda.is_available():
        absent.append("cuda")
    argv = [*FIELDS] if command == "run" else ["--mask-branch", "field:masks"]
    for device in absent:
        before = _state(cli_dataset), dict(cli_dataset.info), dict(cli_dataset.mask_targets)
        code, err = run_cli([command, cli_dataset.name, *argv, "--device", device], capsys)
        assert_one_line_error(code, err, command, f"device {device!r}")
        after = _state(cli_dataset), dict(cli_dataset.info), dict(cli_dataset.mask_targets)
        assert after == before
    code, err = run_cli([command, cli_dataset.name, *argv, "--device", "gpu0"], capsys)
    assert_one_line_error(code, err, command, "torch device", "'gpu0'")


def test_a_reader_that_goes_away_is_no_error():
    """``fiftyone-ssa models list | head -1``: no "Broken pipe" error, no traceback."""
    script = Path(sys.executable).with_name("fiftyone-ssa")
    proc = subprocess.Popen(
        [str(script), "models", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the command writes anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == b"", err.decode()
