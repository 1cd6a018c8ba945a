"""``fiftyone-ssa run --light``: the light CPU preset fills the branches not given (the demo's
choice without a GPU), and ``--mask-option`` still overrides its settings."""

from __future__ import annotations

from fiftyone_ssa import fields
from fiftyone_ssa.labelling.record import RUNS_INFO_KEY
from fiftyone_ssa.testing import random_init
from tests.test_wrong_use import assert_one_line_error, cli_dataset, run_cli  # noqa: F401


def test_light_names_its_missing_presets_in_one_line(cli_dataset, tmp_path, capsys):  # noqa: F811
    argv = ["run", cli_dataset.name, "--light", "--models-dir", tmp_path / "empty"]
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "run", f"'{fields.LIGHT_SEMANTIC_BRANCH}'")
    assert "ssa" not in cli_dataset.get_field_schema()


def test_light_fills_the_mask_branch_and_its_settings(cli_dataset, tmp_path, capsys):  # noqa: F811
    models = tmp_path / "models"
    random_init.save_random_model(fields.LIGHT_MASK_BRANCH, models / fields.LIGHT_MASK_BRANCH)
    argv = ["run", cli_dataset.name, "--light", "--semantic-branch", "field:coarse"]
    argv += ["--models-dir", models, "--mask-option", "points_per_side=4", "--device", "cpu"]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    cli_dataset.reload()
    config = cli_dataset.info[RUNS_INFO_KEY]["ssa"]["config"]
    assert config["mask_branch"] == fields.LIGHT_MASK_BRANCH
    assert config["semantic_branch"] == "field:coarse"
    # the light preset's no crop layers (SSA's default is 1), the user's points per side
    assert config["mask_options"]["crop_n_layers"] == 0
    assert config["mask_options"]["points_per_side"] == 4
    assert cli_dataset.count("ssa") == len(cli_dataset)
