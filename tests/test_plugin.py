"""The FiftyOne plugin, installed as the README says (the repository linked into a plugins dir).

Every operator runs through FiftyOne's own machinery against real datasets: immediately with
``execute_operator`` (which validates the parameters against the operator's form) and
delegated (queued by FiftyOne's delegated-operation service, then executed from the queue).
SSA uses field branches (a coarse Segmentation and instance-mask Detections), so no weights
are needed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ExecutionError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from fiftyone_ssa import apply_ssa
from tests.fixtures.datasets import instances_to_detections
from tests.markdown import shown_text
from tests.scenes import SCENE_CLASSES, coarsen, make_scene, miou

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "@fiftyone-ssa/ssa"
OPERATORS = [
    "run_ssa",
    "run_ssa_engine",
    "evaluate_miou",
    "miou",
    "import_sa1b",
    "export_sa1b",
    "apply_review",
    "review_report",
    "build_review_queue",
]
FIELD_BRANCHES = {
    "semantic_source": "field",
    "semantic_field": "coarse",
    "mask_source": "field",
    "mask_field": "instances",
}


def uri(name: str) -> str:
    return f"{PLUGIN}/{name}"


@pytest.fixture(scope="module")
def plugins_dir(tmp_path_factory):
    """A plugins directory holding a link to the repository, as the README tells users."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "fiftyone-ssa").symlink_to(REPO_ROOT, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fo.config, "plugins_dir", str(root))
        mp.setenv("FIFTYONE_PLUGINS_DIR", str(root))
        yield root


@pytest.fixture
def scene_dataset(make_dataset, tmp_path, plugins_dir):
    """Scenes with ground truth, two coarse predictions, instance masks and plain boxes."""

    def _build(n=3, seed=0, gt_targets=True):
        rng = np.random.default_rng(seed)
        ds = make_dataset()
        samples = []
        for i in range(n):
            image, gt, instances = make_scene(rng, height=48, width=64, n_objects=5)
            path = tmp_path / f"scene_{seed}_{i}.png"
            Image.fromarray(image).save(path)
            boxes = instances_to_detections(instances)
            for det in boxes.detections:
                det.mask = None
            samples.append(
                fo.Sample(
                    filepath=str(path),
                    ground_truth=fo.Segmentation(mask=gt),
                    coarse=fo.Segmentation(mask=coarsen(gt, rng, factor=8, noise=0.05)),
                    noisy=fo.Segmentation(mask=coarsen(gt, rng, factor=4, noise=0.2)),
                    instances=instances_to_detections(instances),
                    boxes=boxes,
                )
            )
        ds.add_samples(samples)
        targets = {"coarse": SCENE_CLASSES, "noisy": SCENE_CLASSES}
        if gt_targets:
            targets["ground_truth"] = SCENE_CLASSES
        ds.mask_targets = targets
        ds.save()
        return ds

    return _build


def execute(name, dataset=None, view=None, params=None, **ctx):
    """Immediate execution through FiftyOne's executor (validates params against the form)."""
    if dataset is not None:
        ctx["dataset"] = dataset
        ctx["view"] = view if view is not None else dataset.view()
    return foo.execute_operator(uri(name), ctx=ctx, params=params or {})


def execute_delegated(name, dataset=None, params=None, **ctx):
    """Queues the operation with FiftyOne's delegated-operation service, then runs it from
    the queue as a `fiftyone delegated launch` worker would; returns the finished document."""
    if dataset is not None:
        ctx["dataset"] = dataset
        ctx["view"] = dataset.view()
    queued = foo.execute_operator(uri(name), ctx=ctx, params=params or {}, request_delegation=True)
    return run_queued(queued)


def run_queued(queued):
    """Runs a queued operation from the queue; returns the finished document."""
    assert queued.delegated
    service = DelegatedOperationService()
    doc = service.get(queued.result["id"])
    assert doc.run_state == "queued"
    service.execute_operation(doc)
    doc = service.get(queued.result["id"])
    assert doc.run_state == "completed", doc.result.error if doc.result else doc
    return doc


def form_properties(name, dataset, params, **request) -> dict:
    """The operator's resolved form: property name -> FiftyOne ``Property``."""
    ctx = ExecutionContext(
        request_params={
            "dataset_name": dataset.name if dataset is not None else None,
            "view": [],
            "params": params,
            **request,
        },
        operator_uri=uri(name),
    )
    return foo.get_operator(uri(name)).resolve_input(ctx).type.properties


def form(name, dataset, params, **request):
    """The operator's resolved form: property name -> (message or label as the App shows it,
    rendered from Markdown; invalid)."""
    out = {}
    for key, p in form_properties(name, dataset, params, **request).items():
        label = getattr(p.view, "label", None) if p.view is not None else None
        out[key] = (shown_text(label) if label is not None else None, p.invalid)
    return out


def triggered(result) -> list[str]:
    """The App operators an immediate run asked for (as the App receives them)."""
    return [r["operator_uri"] for r in result.executor.to_json()["requests"]]


def invalid(form_dict) -> dict:
    return {k: v[0] for k, v in form_dict.items() if v[1]}


# --------------------------------------------------------------------------------------------
# Installation


def test_plugin_and_operators_found(plugins_dir):
    plugin = fo.plugins.get_plugin(PLUGIN)
    assert Path(plugin.directory).resolve() == REPO_ROOT
    assert plugin.has_py and sorted(plugin.operators) == sorted(OPERATORS)
    registry = foo.OperatorRegistry()
    assert not registry.list_errors()
    found = {op.uri for op in foo.list_operators() if op.plugin_name == PLUGIN}
    assert found == {uri(n) for n in OPERATORS}
    metric = foo.get_operator(uri("miou"))
    assert isinstance(metric, foo.EvaluationMetric)
    assert metric.config.eval_types == ["segmentation"]


def test_cli_lists_plugin_and_every_operator(plugins_dir):
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(plugins_dir)}
    fiftyone = str(Path(sys.executable).with_name("fiftyone"))
    script = f"{fiftyone} plugins list && echo ===== && {fiftyone} operators list"
    out = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    plugins, listed = out.stdout.split("=====")
    assert PLUGIN in plugins.split()
    # the miou metric is unlisted, as FiftyOne asks of evaluation metrics: it runs inside
    # evaluations, not from the Operator Browser (`operators list --include-unlisted` shows it)
    assert {uri(n) for n in OPERATORS} - set(listed.split()) == {uri("miou")}
    assert foo.get_operator(uri("miou")).config.unlisted


def _requirement_key(text: str) -> tuple[str, str]:
    req = Requirement(text)
    return canonicalize_name(req.name), str(req.specifier)


def test_requirements_match_the_library(plugins_dir):
    """requirements.txt lists the library's dependencies, engine extra included (FiftyOne
    itself is already there), and FiftyOne reads it as installed."""
    wanted = set()
    for text in importlib.metadata.requires("fiftyone-ssa"):
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": "engine"}):
            if canonicalize_name(req.name) != "fiftyone":
                wanted.add(_requirement_key(text.split(";")[0]))
    listed = fo.core.utils.load_requirements(str(REPO_ROOT / "requirements.txt"))
    assert {_requirement_key(r) for r in listed} == wanted
    # what `fiftyone plugins requirements @fiftyone-ssa/ssa --ensure` checks
    fo.plugins.ensure_plugin_requirements(PLUGIN, error_level=0)


SKIPPED_IN_ARCHIVE = {"__pycache__", "build", "dist", "test-artifacts", "notebooks"}


def _repository_archive(path: Path) -> Path:
    """A zip of the repository laid out as GitHub serves one (a single top-level folder)."""
    with zipfile.ZipFile(path, "w") as archive:
        for root, dirs, files in os.walk(REPO_ROOT):
            dirs[:] = [
                d
                for d in dirs
                if not d.startswith(".")
                and d not in SKIPPED_IN_ARCHIVE
                and not d.endswith(".egg-info")
            ]
            for name in files:
                file = Path(root) / name
                archive.write(file, Path("fiftyone-ssa-main") / file.relative_to(REPO_ROOT))
    return path


@pytest.fixture
def downloaded_plugin(tmp_path, monkeypatch):
    """The plugin installed by FiftyOne's own downloader from a repository archive served
    over HTTP on localhost (what `fiftyone plugins download <url>` does), in a fresh plugins
    directory."""
    serve = tmp_path / "serve"
    serve.mkdir()
    _repository_archive(serve / "fiftyone-ssa-main.zip")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(serve))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    plugins = tmp_path / "downloaded_plugins"
    monkeypatch.setattr(fo.config, "plugins_dir", str(plugins))
    try:
        url = f"http://127.0.0.1:{server.server_port}/fiftyone-ssa-main.zip"
        installed = fo.plugins.download_plugin(url)
    finally:
        server.shutdown()
        server.server_close()
    assert list(installed) == [PLUGIN]
    directory = Path(installed[PLUGIN])
    assert directory.is_relative_to(plugins) and not directory.is_symlink()
    return plugins, directory


def test_downloaded_plugin_imports_lightly_and_runs_its_own_library_copy(
    downloaded_plugin, tmp_path
):
    """After `fiftyone plugins download` the plugin works without an installed fiftyone_ssa
    (it loads the copy that came with it); listing plugins imports no model library and changes
    no global setting."""
    plugins, directory = downloaded_plugin
    run_ssa = uri("run_ssa")
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.meta_path[:] = [f for f in sys.meta_path if "fiftyone_ssa" not in repr(f)]
        try:
            import fiftyone_ssa
            raise SystemExit("fiftyone_ssa is still importable")
        except ModuleNotFoundError:
            pass
        import numpy as np
        import fiftyone as fo
        import fiftyone.operators as foo
        import fiftyone.plugins.context as fopc
        environ, path = dict(os.environ), list(sys.path)
        contexts = fopc.build_plugin_contexts()
        ours = [c for c in contexts if c.name == "{PLUGIN}"][0]
        assert not ours.errors, ours.errors
        assert len(ours.instances) == {len(OPERATORS)}
        heavy = [m for m in ("torch", "transformers", "segment_anything") if m in sys.modules]
        assert not heavy, heavy
        # The forms read the library's defaults from its light modules only.
        library = sorted(m for m in sys.modules if m.split(".")[0] == "fiftyone_ssa")
        assert set(library) <= {{"fiftyone_ssa", "fiftyone_ssa.fields"}}, library
        assert dict(os.environ) == environ and sys.path == path

        from PIL import Image
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save("im.png")
        seg = np.zeros((32, 32), np.uint8); seg[:, 20:] = 1
        left = np.zeros((32, 32), bool); left[:, :16] = True
        dets = fo.Detections(detections=[
            fo.Detection(label="a", bounding_box=[0, 0, 0.5, 1], mask=left[:, :16]),
            fo.Detection(label="b", bounding_box=[0.5, 0, 0.5, 1], mask=~left[:, 16:]),
        ])
        ds = fo.Dataset()
        ds.add_sample(fo.Sample(filepath=os.path.abspath("im.png"),
                                coarse=fo.Segmentation(mask=seg), instances=dets))
        foo.execute_operator("{run_ssa}", ctx={{"dataset": ds, "params": {FIELD_BRANCHES!r}}})
        assert ds.first().ssa.mask[:, 16:].min() == 1 and ds.first().ssa.mask[:, :16].max() == 0
        import fiftyone_ssa
        origin = os.path.realpath(fiftyone_ssa.__file__)
        assert origin == os.path.join("{directory}", "fiftyone_ssa", "__init__.py"), origin
        ds.delete()
        print("OK")
        """
    )
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(plugins)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# run_ssa


def _masks(ds, field):
    return [s[field].mask for s in ds.select_fields(field)]


def test_run_ssa_immediately_matches_the_library(scene_dataset):
    ds = scene_dataset()
    result = execute("run_ssa", ds, params={**FIELD_BRANCHES, "label_field": "ssa", "top_k": 2})
    assert result.result["num_labelled"] == 3 and result.result["num_failed"] == 0
    # an immediate run asks the App to reload the dataset and to show its colour scheme,
    # which now colours each class of the new fields
    assert triggered(result) == ["reload_dataset", "set_color_scheme"]
    request = result.executor.to_json()["requests"][1]
    scheme = fo.load_dataset(ds.name).app_config.color_scheme
    assert request["params"] == {
        "color_by": "value",
        "opacity": scheme.opacity,
        "fields": scheme.fields,
    }
    assert {f["path"] for f in request["params"]["fields"]} == {"ssa", "ssa_masks", "ssa_branch"}
    apply_ssa(
        ds,
        label_field="ref",
        semantic_branch="field:coarse",
        mask_branch="field:instances",
        top_k=2,
    )
    for ours, ref in zip(_masks(ds, "ssa"), _masks(ds, "ref")):
        np.testing.assert_array_equal(ours, ref)
    assert ds.values("ssa_masks.detections.label") == ds.values("ref_masks.detections.label")
    assert ds.mask_targets["ssa"] == SCENE_CLASSES
    proposals = [
        p for per_sample in ds.values("ssa_masks.detections.class_proposals") for p in per_sample
    ]
    assert proposals and all(1 <= len(p) <= 2 for p in proposals)
    # SSA sharpens the coarse branch on these scenes
    gt = np.concatenate([m.ravel() for m in _masks(ds, "ground_truth")])
    coarse = np.concatenate([m.ravel() for m in _masks(ds, "coarse")])
    ssa = np.concatenate([m.ravel() for m in _masks(ds, "ssa")])
    assert miou(ssa, gt, len(SCENE_CLASSES)) > miou(coarse, gt, len(SCENE_CLASSES))


def test_run_ssa_ignores_classes_left_from_a_clipseg_choice(scene_dataset):
    ds = scene_dataset(n=1)
    # The App keeps the classes typed for a CLIPSeg branch after another branch is chosen
    result = execute("run_ssa", ds, params={**FIELD_BRANCHES, "classes": ["cat"]})
    assert result.result["num_labelled"] == 1 and result.result["num_failed"] == 0


def test_run_ssa_targets_view_and_selection(scene_dataset):
    ds = scene_dataset(n=4)
    ids = ds.values("id")
    execute(
        "run_ssa",
        ds,
        view=ds.limit(2),
        params={**FIELD_BRANCHES, "label_field": "on_view", "view_target": "CURRENT_VIEW"},
    )
    assert ds.values("on_view")[2:] == [None, None] and None not in ds.values("on_view")[:2]
    execute(
        "run_ssa",
        ds,
        selected=[ids[3]],
        params={**FIELD_BRANCHES, "label_field": "on_sel", "view_target": "SELECTED_SAMPLES"},
    )
    assert [v is not None for v in ds.values("on_sel")] == [False, False, False, True]


def test_operators_on_a_grouped_dataset_work_on_the_slice_the_app_shows(grouped_scene_dataset):
    grouped = grouped_scene_dataset()
    execute("run_ssa", grouped, params=FIELD_BRANCHES, group_slice="right")
    right, left = (grouped.select_group_slices(name) for name in ("right", "left"))
    assert None not in right.values("ssa") and set(left.values("ssa")) == {None}
    params = {"pred_fields": ["ssa"], "gt_field": "coarse", "eval_key": "ev"}
    execute("evaluate_miou", grouped, params=params, group_slice="right")
    assert None not in right.values("ev_miou") and set(left.values("ev_miou")) == {None}


def test_mask_field_picker_reads_the_slice_the_app_shows(grouped_scene_dataset):
    """The picker probes ``ctx.dataset``, which FiftyOne sets to the App's group slice."""
    grouped = grouped_scene_dataset()
    left = grouped.select_group_slices("left")
    for sample in left:  # the default slice's boxes lose their masks
        for det in sample.instances.detections:
            det.mask = None
        sample.save()
    params = {**FIELD_BRANCHES, "mask_field": None}
    assert not invalid(form("run_ssa", grouped, params, group_slice="right"))
    refused = invalid(form("run_ssa", grouped, params, group_slice="left"))
    assert "no Detections field with instance masks" in refused["mask_branch_error"]
    execute("run_ssa", grouped, params=params, group_slice="right")
    right = grouped.select_group_slices("right")
    assert right.count("ssa_masks.detections") == right.count("instances.detections")
    assert set(left.values("ssa")) == {None}


def test_run_ssa_delegated_records_progress(scene_dataset):
    ds = scene_dataset()
    doc = execute_delegated("run_ssa", ds, params={**FIELD_BRANCHES, "label_field": "queued"})
    ds.reload()
    assert ds.count("queued") == 3 and ds.count("queued_masks.detections") > 0
    assert doc.result.result["num_labelled"] == 3
    assert doc.status.progress == pytest.approx(1.0) and doc.status.label == "3/3 samples"


def test_run_ssa_defaults_to_delegated_in_the_app(plugins_dir, scene_dataset):
    ds = scene_dataset(n=1)
    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {}})
    options = foo.get_operator(uri("run_ssa")).resolve_execution_options(ctx)
    assert options.allow_delegated_execution and options.allow_immediate_execution
    assert options.default_choice_to_delegated
    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {"delegate": False}})
    options = foo.get_operator(uri("run_ssa")).resolve_execution_options(ctx)
    assert not options.allow_delegated_execution


def test_run_ssa_form_offers_suitable_fields_and_warns_on_existing_output(scene_dataset):
    ds = scene_dataset(n=2)
    op = foo.get_operator(uri("run_ssa"))
    ctx = ExecutionContext(
        request_params={"dataset_name": ds.name, "view": [], "params": dict(FIELD_BRANCHES)}
    )
    props = op.resolve_input(ctx).type.properties
    assert props["mask_field"].type.values == ["instances"]  # boxes has no masks
    assert props["semantic_field"].type.values == ["coarse", "ground_truth", "noisy"]
    assert "if_exists" not in props and not invalid(form("run_ssa", ds, dict(FIELD_BRANCHES)))

    apply_ssa(ds[:1], semantic_branch="field:coarse", mask_branch="field:instances")
    shown = form("run_ssa", ds, dict(FIELD_BRANCHES))
    assert "already exist" in shown["label_field_exists"][0]
    with pytest.raises(ExecutionError, match="if_exists"):
        execute("run_ssa", ds, params=dict(FIELD_BRANCHES))
    result = execute("run_ssa", ds, params={**FIELD_BRANCHES, "if_exists": "skip_existing"})
    assert result.result["num_labelled"] == 1 and result.result["num_skipped"] == 1
    execute("run_ssa", ds, params={**FIELD_BRANCHES, "if_exists": "overwrite"})
    assert ds.count("ssa") == 2


@pytest.mark.parametrize(
    "params, message",
    [
        ({"semantic_field": "instances"}, "'instances' holds Detections, not Segmentation"),
        ({"mask_field": "boxes"}, "'boxes' has no instance masks"),
        ({"mask_field": "coarse"}, "'coarse' holds Segmentation, not Detections"),
        (
            {"semantic_source": "custom", "semantic_custom": "no-such-model"},
            "Unknown semantic branch 'no-such-model'",
        ),
        (
            {"semantic_source": "custom", "semantic_custom": "org/not-downloaded"},
            "missing weights for 'org/not-downloaded'",
        ),
        (
            {"semantic_source": "preset", "semantic_preset": "segformer-b0-ade20k"},
            "missing weights for 'segformer-b0-ade20k'",
        ),
        ({"mask_source": "preset", "mask_preset": "sam-vit-x"}, "Unknown mask branch 'sam-vit-x'"),
        ({"label_field": "coarse"}, "also reads"),
        ({"label_field": "boxes"}, "'boxes' exists and holds Detections, not Segmentation"),
        ({"label_field": "bad.name"}, "not a usable field name"),
        ({"label_field": "säa"}, "not a usable field name"),
        ({"label_field": "_x"}, "not a usable field name"),
        ({"device": "gpu7"}, "Unknown device 'gpu7'"),
        ({"top_k": 2.5}, "top_k must be a whole number"),
        ({"batch_size": 1.5}, "batch_size must be a whole number"),
    ],
)
def test_run_ssa_form_refuses_bad_input(scene_dataset, tmp_path, monkeypatch, params, message):
    monkeypatch.setenv("FIFTYONE_SSA_MODELS_DIR", str(tmp_path / "no-models"))
    ds = scene_dataset(n=1)
    params = {**FIELD_BRANCHES, **params}
    assert any(message in text for text in invalid(form("run_ssa", ds, params)).values())
    with pytest.raises(ExecutionError, match="Validation error"):
        execute("run_ssa", ds, params=params)
    assert "ssa" not in ds.get_field_schema()


MARKDOWN_TRAPS = [
    "/home/me/fiftyone/__models__/sam-vit-h/sam_vit_h_4b8939.pth not found",
    "*one* _two_ **three** __four__ ~~five~~ `six` \\seven\\",
    "[a link](https://example.com) ![an image](x.png) <b>html</b> <label field>_seg &amp; &#42;",
    "# not a heading",
    "1. not a list",
    "- not a list",
    "> not a quote",
    "| not | a table |",
    "'my_field' and 'ground_truth' hold Detections, not Segmentation",
]


@pytest.mark.parametrize("text", MARKDOWN_TRAPS)
def test_form_messages_are_shown_as_written(plugins_dir, text):
    forms = _plugin_module("forms")
    assert shown_text(forms.markdown_text(text)) == text
    assert forms.markdown_text("plain words and no markup") == "plain words and no markup"
    with pytest.raises(ValueError):
        forms.markdown_text(None)


def _plugin_module(name: str):
    """A module of the plugin as FiftyOne loaded it (the one its operators use)."""
    operator = foo.get_operator(uri("run_ssa"))
    package = type(operator).__module__.rsplit(".", 1)[0]
    return sys.modules[f"{package}.{name}"]


def test_missing_weights_message_shows_the_models_path_as_written(
    scene_dataset, tmp_path, monkeypatch
):
    models = tmp_path / "fiftyone" / "__models__"
    monkeypatch.setenv("FIFTYONE_SSA_MODELS_DIR", str(models))
    ds = scene_dataset(n=1)
    raw = _plugin_module("forms").missing_weights("sam-vit-h")
    assert shown_text(raw) != raw  # what the App showed: __models__ in bold, as "models"
    params = {**FIELD_BRANCHES, "mask_source": "preset"}
    message = invalid(form("run_ssa", ds, params))["mask_branch_error"]
    assert f"{models}/sam-vit-h/sam_vit_h_4b8939.pth not found" in message
    assert message == raw
    with pytest.raises(ExecutionError, match="__models__"):  # plain text, no escapes
        execute("run_ssa", ds, params=params)
    shown = invalid(form("run_ssa", ds, {**FIELD_BRANCHES, "label_field": "my__field*"}))
    assert shown["label_field_error"].startswith("'my__field*' is not a usable field name")


def test_run_summary_lists_failures_only_when_some_sample_failed(scene_dataset):
    ds = scene_dataset(n=2)
    operator = foo.get_operator(uri("run_ssa"))

    def dialog(result: dict) -> dict:
        ctx = ExecutionContext(
            request_params={"dataset_name": ds.name, "params": {}, "results": result},
            operator_uri=uri("run_ssa"),
        )
        return operator.resolve_output(ctx).type.properties

    clean = execute("run_ssa", ds, params=dict(FIELD_BRANCHES)).result
    assert clean["failures"] == [] and "failures" not in dialog(clean)
    last = ds.last()
    last["coarse"] = None
    last.save()
    params = {**FIELD_BRANCHES, "label_field": "again"}
    failed = execute("run_ssa", ds, params=params).result
    assert failed["num_failed"] == 1 and "has no 'coarse' label" in failed["failures"][0]
    assert dialog(failed)["failures"].view.label == "First failures"
    assert "failures" not in dialog({})  # no result sent (a queued run)


def test_run_ssa_callable_from_python(scene_dataset):
    ds = scene_dataset(n=3)
    run_ssa = foo.get_operator(uri("run_ssa"))
    result = run_ssa(
        ds.limit(2),
        label_field="called",
        semantic_branch="field:coarse",
        mask_branch="field:instances",
    )
    assert result.result["num_labelled"] == 2 and ds.count("called") == 2
    queued = run_ssa(
        ds,
        label_field="called",
        semantic_branch="field:coarse",
        mask_branch="field:instances",
        overwrite=True,
        delegate=True,
    )
    assert queued.delegated and ds.count("called") == 2
    service = DelegatedOperationService()
    service.execute_operation(service.get(queued.result["id"]))
    ds.reload()
    assert ds.count("called") == 3


@pytest.mark.parametrize("name", ["run_ssa", "run_ssa_engine", "evaluate_miou", "export_sa1b"])
def test_an_empty_view_is_refused_by_the_form(scene_dataset, name):
    # The form let it through: the run failed with a traceback (or, queued, in the worker)
    ds = scene_dataset(n=2)
    empty = ds.match(fo.ViewField("filepath") == "nowhere")
    params = {**FIELD_BRANCHES, "view_target": "CURRENT_VIEW"}
    ctx = ExecutionContext(
        request_params={"dataset_name": ds.name, "view": empty._serialize(), "params": params},
        operator_uri=uri(name),
    )
    props = foo.get_operator(uri(name)).resolve_input(ctx).type.properties
    assert props["target_error"].invalid and "empty" in props["target_error"].view.label
    with pytest.raises(ExecutionError, match="Validation error"):
        execute("run_ssa", ds, view=empty, params=params)
    with pytest.raises(ExecutionError, match="Validation error"):
        execute("run_ssa", ds, params={**FIELD_BRANCHES, "view_target": "SELECTED_SAMPLES"})
    assert not invalid(form(name, ds, dict(FIELD_BRANCHES))).get("target_error")
    assert "ssa" not in ds.get_field_schema()


def test_run_ssa_from_python_refuses_overwrite_with_skip_existing(scene_dataset):
    ds = scene_dataset(n=2)
    run_ssa = foo.get_operator(uri("run_ssa"))
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    run_ssa(ds.limit(1), **branches)
    # overwrite won silently here, skip_existing in apply_ssa
    with pytest.raises(ValueError, match="not both"):
        run_ssa(ds, top_k=2, overwrite=True, skip_existing=True, **branches)
    assert ds.count("ssa") == 1


# --------------------------------------------------------------------------------------------
# run_ssa_engine


def test_run_ssa_engine_immediately_and_delegated(
    scene_dataset, tiny_engine_dirs, tmp_path, monkeypatch
):
    monkeypatch.setenv("FIFTYONE_SSA_MODELS_DIR", str(tmp_path / "no-models"))
    ds = scene_dataset(n=2)
    masks = {"mask_source": "field", "mask_field": "instances"}
    refused = invalid(form("run_ssa_engine", ds, masks))
    assert "Missing weights for oneformer-ade20k-swin-large" in refused["engine_models_error"]
    refused = invalid(form("run_ssa_engine", ds, {**masks, "spacy_model": "xx_not_installed"}))
    assert "python -m spacy download xx_not_installed" in refused["spacy_model_error"]

    dirs = tiny_engine_dirs
    models = {
        "ade": dirs["ade"],
        "coco": dirs["coco"],
        "captioner": dirs["blip"],
        "clip": dirs["clip"],
        "clipseg": dirs["clipseg"],
    }
    params = {
        **masks,
        **{f"{role}_model": str(path) for role, path in models.items()},
        "spacy_model": str(dirs["spacy"]),
        "top_k": 2,
        "vocabulary": ["kite"],
        "write_segmentation": True,
        "device": "cpu",
    }
    assert not invalid(form("run_ssa_engine", ds, params))
    result = execute("run_ssa_engine", ds, params=params)
    assert result.result["num_labelled"] == 2 and result.result["num_failed"] == 0
    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    apply_ssa_engine(
        ds,
        label_field="ref",
        mask_branch="field:instances",
        top_k=2,
        vocabulary=["kite"],
        write_segmentation=True,
        device="cpu",
        models={k: str(v) for k, v in models.items()},
        spacy_model=str(dirs["spacy"]),
    )
    for field in ("label", "class_proposals", "caption"):
        assert ds.values(f"ssa_engine.detections.{field}") == ds.values(f"ref.detections.{field}")
    assert ds.count("ssa_engine_seg") == 2

    run_engine = foo.get_operator(uri("run_ssa_engine"))
    queued = run_engine(
        ds,
        label_field="queued",
        mask_branch="field:instances",
        models={role: str(path) for role, path in models.items()},
        spacy_model=str(dirs["spacy"]),
        device="cpu",
        delegate=True,
    )
    doc = run_queued(queued)
    ds.reload()
    assert ds.count("queued.detections") == ds.count("instances.detections")
    assert doc.status.label == "2/2 samples"


def test_engine_spacy_default_matches_the_library(plugins_dir):
    from fiftyone_ssa.labelling import engine

    operator = foo.get_operator(uri("run_ssa_engine"))
    module = sys.modules[type(operator).__module__]
    assert module.DEFAULT_SPACY_MODEL == engine.DEFAULT_SPACY_MODEL


# --------------------------------------------------------------------------------------------
# evaluate_miou and the miou metric


def _reference_miou(ds, pred_field, exclude=()):
    gt = np.concatenate([m.ravel() for m in _masks(ds, "ground_truth")])
    pred = np.concatenate([m.ravel() for m in _masks(ds, pred_field)])
    ious = []
    for c in range(len(SCENE_CLASSES)):
        if c in exclude:
            continue
        keep = ~np.isin(gt, list(exclude))
        inter = ((pred == c) & (gt == c) & keep).sum()
        union = (((pred == c) | (gt == c)) & keep).sum()
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_evaluate_miou_immediately_and_delegated(scene_dataset):
    ds = scene_dataset()
    result = execute(
        "evaluate_miou",
        ds,
        params={"gt_field": "ground_truth", "pred_fields": ["coarse", "noisy"], "eval_key": "ev"},
    )
    rows = {r["pred_field"]: r for r in result.result["results"]}
    for field in ("coarse", "noisy"):
        assert rows[field]["eval_key"] == f"ev_{field}"
        assert rows[field]["miou"] == pytest.approx(_reference_miou(ds, field))
        assert ds.has_evaluation(f"ev_{field}")
    assert ds.count("ev_coarse_miou") == 3
    assert rows["coarse"]["miou"] > rows["noisy"]["miou"]

    doc = execute_delegated(
        "evaluate_miou",
        ds,
        params={"gt_field": "ground_truth", "pred_fields": ["coarse"], "eval_key": "queued"},
    )
    ds.reload()
    assert ds.has_evaluation("queued")
    assert doc.result.result["results"][0]["miou"] == pytest.approx(_reference_miou(ds, "coarse"))

    evaluate = foo.get_operator(uri("evaluate_miou"))
    result = evaluate(ds.limit(1), "noisy", gt_field="ground_truth")
    assert not ds.has_evaluation("noisy")  # no eval_key: computed only
    assert result.result["results"][0]["miou"] == pytest.approx(_reference_miou(ds[:1], "noisy"))


def test_evaluate_miou_form(scene_dataset):
    ds = scene_dataset(n=1)
    assert not invalid(form("evaluate_miou", ds, {"pred_fields": ["coarse"]}))  # ground_truth
    refused = invalid(
        form("evaluate_miou", ds, {"pred_fields": ["coarse"], "gt_field": "instances"})
    )
    assert "'instances' holds Detections, not Segmentation" in refused["gt_error"]
    refused = invalid(
        form("evaluate_miou", ds, {"pred_fields": ["boxes"], "gt_field": "ground_truth"})
    )
    assert "'boxes' holds Detections" in refused["pred_error"]

    execute("evaluate_miou", ds, params={"gt_field": "ground_truth", "pred_fields": ["coarse"]})
    params = {"gt_field": "ground_truth", "pred_fields": ["coarse"], "eval_key": "miou"}
    assert "already exists" in invalid(form("evaluate_miou", ds, params))["eval_key_exists"]
    assert not invalid(form("evaluate_miou", ds, {**params, "overwrite": True}))
    execute("evaluate_miou", ds, params={**params, "overwrite": True})

    two = {"gt_field": "ground_truth", "pred_fields": ["coarse", "noisy"], "eval_key": "two"}
    execute("evaluate_miou", ds, params=two)
    ds.set_values("noisy", [None])
    with pytest.raises(ExecutionError, match="no sample has both labels"):
        execute("evaluate_miou", ds, params={**two, "overwrite": True})
    ds.reload()
    assert ds.has_evaluation("two_coarse") and ds.has_evaluation("two_noisy")  # none deleted


def test_evaluate_miou_form_preselects_the_ground_truth_and_shows_one_problem(scene_dataset):
    ds = scene_dataset(n=2)
    ds.rename_sample_field("ground_truth", "gt")
    ds.mask_targets = {**ds.mask_targets, "gt": SCENE_CLASSES}
    ds.save()
    # gt, coarse, noisy: only gt is named like a ground truth; no run wrote a prediction yet
    props = form_properties("evaluate_miou", ds, {})
    assert props["gt_field"].default == "gt" and props["pred_fields"].default is None
    assert invalid(form("evaluate_miou", ds, {})) == {
        "pred_error": "Choose at least one prediction field"
    }

    # What SSA runs wrote are predictions, preselected against the ground truth
    apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances")
    props = form_properties("evaluate_miou", ds, {})
    assert props["gt_field"].default == "gt"
    assert props["pred_fields"].default == ["ssa", "ssa_branch"]
    assert not invalid(form("evaluate_miou", ds, {}))
    rows = execute("evaluate_miou", ds, params={}).result["results"]
    assert [(r["pred_field"], r["eval_key"]) for r in rows] == [
        ("ssa", "miou_ssa"),
        ("ssa_branch", "miou_ssa_branch"),
    ]
    assert ds.get_evaluation_info("miou_ssa").config.gt_field == "gt"
    # the only field no run wrote is the ground truth, whatever its name
    ds.delete_sample_fields(["coarse", "noisy"])
    ds.rename_sample_field("gt", "reference")
    assert form_properties("evaluate_miou", ds, {})["gt_field"].default == "reference"

    # No clear ground truth: one message, the first problem; the next once it is fixed
    ds.clone_sample_field("reference", "other")
    props = form_properties("evaluate_miou", ds, {})
    assert props["gt_field"].default is None and props["pred_fields"].default is None
    assert invalid(form("evaluate_miou", ds, {"eval_key": "not a key"})) == {
        "gt_error": "Choose the ground-truth Segmentation field"
    }
    params = {"gt_field": "other", "pred_fields": [], "eval_key": "not a key"}
    refused = invalid(form("evaluate_miou", ds, params))  # the user cleared the predictions
    assert refused == {"pred_error": "Choose at least one prediction field"}
    del params["pred_fields"]  # SSA's outputs preselected
    assert invalid(form("evaluate_miou", ds, params)) == {
        "eval_key_error": "'not a key' is not a usable evaluation key"
    }
    with pytest.raises(ExecutionError, match="Choose the ground-truth"):
        execute("evaluate_miou", ds, params={"pred_fields": ["ssa"]})


def test_evaluate_miou_failed_overwrite_keeps_the_old_run(scene_dataset):
    ds = scene_dataset(n=2)
    params = {"gt_field": "ground_truth", "pred_fields": ["coarse"], "eval_key": "ev"}
    old = execute("evaluate_miou", ds, params=params).result["results"][0]["miou"]
    old_values = ds.values("ev_miou")
    last = ds.last()
    last["noisy"] = fo.Segmentation(mask=last["noisy"].mask.astype(np.float32))
    last.save()
    replace = {**params, "pred_fields": ["noisy"], "overwrite": True}
    with pytest.raises(ExecutionError, match="integer ids"):  # read after every check passed
        execute("evaluate_miou", ds, params=replace)
    ds.reload()
    assert ds.list_evaluations() == ["ev"] and ds.values("ev_miou") == old_values
    assert ds.get_evaluation_info("ev").config.pred_field == "coarse"
    assert ds.load_evaluation_results("ev").miou == pytest.approx(old)

    last["noisy"] = fo.Segmentation(mask=last["noisy"].mask.astype(np.uint8))
    last.save()
    execute("evaluate_miou", ds, params=replace)
    ds.reload()
    assert ds.list_evaluations() == ["ev"]
    assert ds.get_evaluation_info("ev").config.pred_field == "noisy"


def test_evaluate_miou_warns_when_ground_truth_has_no_mask_targets(scene_dataset):
    ds = scene_dataset(n=2, gt_targets=False)
    params = {"gt_field": "ground_truth", "pred_fields": ["coarse"]}
    shown = form("evaluate_miou", ds, params)
    assert "has no mask targets" in shown["gt_targets_warning"][0]
    assert not invalid(shown)
    result = execute("evaluate_miou", ds, params=params)
    assert result.result["results"][0]["miou"] == pytest.approx(_reference_miou(ds, "coarse"))


def test_miou_metric_in_fiftyone_segmentation_evaluation(scene_dataset):
    ds = scene_dataset()
    metric = uri("miou")
    results = ds.evaluate_segmentations(
        "coarse", gt_field="ground_truth", eval_key="seg", custom_metrics=[metric]
    )
    entry = results.custom_metrics[metric]
    assert entry["value"] == pytest.approx(_reference_miou(ds, "coarse"))
    assert entry["label"] == "mIoU" and entry["lower_is_better"] is False
    assert ds.load_evaluation_results("seg").custom_metrics[metric]["value"] == entry["value"]
    results = ds.evaluate_segmentations(
        "coarse",
        gt_field="ground_truth",
        custom_metrics={metric: {"exclude_classes": ["background"]}},
    )
    excluded = _reference_miou(ds, "coarse", exclude=(0,))
    assert excluded != pytest.approx(entry["value"])
    assert results.custom_metrics[metric]["value"] == pytest.approx(excluded)
    # by pixel value too (the class names of an evaluation run without mask targets)
    results = ds.evaluate_segmentations(
        "coarse", gt_field="ground_truth", custom_metrics={metric: {"exclude_classes": ["0"]}}
    )
    assert results.custom_metrics[metric]["value"] == pytest.approx(excluded)


# --------------------------------------------------------------------------------------------
# SA-1B


def test_import_and_export_sa1b(plugins_dir, make_sa1b_dir, tmp_path):
    sa1b = make_sa1b_dir(num_images=2, num_masks=3)
    name = f"ssa-plugin-sa1b-{uuid.uuid4().hex[:6]}"
    try:
        assert (
            "not a directory"
            in invalid(
                form("import_sa1b", None, {"dataset_dir": str(tmp_path / "nope"), "name": name})
            )["dataset_dir_error"]
        )
        for bad in ("_sa1b", "säa"):  # the library refuses them: the form let them through
            params = {"dataset_dir": str(sa1b.root), "name": name, "label_field": bad}
            shown = invalid(form("import_sa1b", None, params))
            assert "not a usable field name" in shown["label_field_error"]
        result = execute("import_sa1b", params={"dataset_dir": str(sa1b.root), "name": name})
        assert triggered(result) == ["open_dataset"]
        ds = fo.load_dataset(name)
        assert len(ds) == 2 and ds.count("sa1b.detections") == 6 and ds.persistent
        assert (
            "already exists"
            in invalid(form("import_sa1b", None, {"dataset_dir": str(sa1b.root), "name": name}))[
                "name_exists"
            ]
        )

        export_dir = tmp_path / "export"
        doc = execute_delegated(
            "export_sa1b", ds, params={"label_field": "sa1b", "export_dir": str(export_dir)}
        )
        assert doc.result.result["num_files"] == 2
        for stem, record in sa1b.records.items():
            written = json.loads((export_dir / f"{stem}.json").read_text())
            assert [a["segmentation"] for a in written["annotations"]] == [
                a["segmentation"] for a in record["annotations"]
            ]
        refused = invalid(
            form("export_sa1b", ds, {"label_field": "filepath", "export_dir": str(export_dir)})
        )
        assert "'filepath' holds" in refused["label_field_error"]
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_import_sa1b_delegated(plugins_dir, make_sa1b_dir):
    sa1b = make_sa1b_dir(num_images=1, num_masks=2, name="queued")
    name = f"ssa-plugin-sa1b-{uuid.uuid4().hex[:6]}"
    try:
        import_sa1b = foo.get_operator(uri("import_sa1b"))
        doc = run_queued(import_sa1b(str(sa1b.root), name, label_field="masks", delegate=True))
        assert doc.result.result["num_annotations"] == 2
        assert fo.load_dataset(name).count("masks.detections") == 2
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_export_ssa_segmentation_as_semantic_json(scene_dataset, tmp_path):
    ds = scene_dataset(n=2)
    apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances")
    export_sa1b = foo.get_operator(uri("export_sa1b"))
    shown = form("export_sa1b", ds, {"label_field": "ssa", "export_dir": str(tmp_path)})
    assert "masks_field" in shown and not invalid(shown)
    result = export_sa1b(ds, str(tmp_path / "out"), "ssa", masks_field="ssa_masks")
    assert result.result["num_files"] == 2
    for sample in ds:
        stem = Path(sample.filepath).stem
        written = json.loads((tmp_path / "out" / f"{stem}_semantic.json").read_text())
        assert len(written["annotations"]) == len(sample.ssa_masks.detections)
        present = {str(int(v)) for v in np.unique(sample.ssa.mask)}
        assert set(written["semantic_mask"]) == present
        assert written["id2label"] == {k: SCENE_CLASSES[int(k)] for k in present}


@pytest.mark.parametrize("name", OPERATORS)
def test_forms_serialize_for_the_app(scene_dataset, name):
    """The App receives every form and result view as JSON."""
    ds = scene_dataset(n=1)
    ctx = ExecutionContext(
        request_params={"dataset_name": ds.name, "view": [], "params": {}},
        operator_uri=uri(name),
    )
    operator = foo.get_operator(uri(name))
    for kind in ("inputs", "outputs"):
        prop = operator.resolve_type(ctx, kind)
        if prop is not None:
            assert json.loads(json.dumps(prop.to_json()))["type"]
    assert json.dumps(operator.to_json())


# --------------------------------------------------------------------------------------------
# Reviews


def test_apply_review_and_review_report_operators(scene_dataset):
    from tests.app_patch import AppClient, delete, relabel

    ds = scene_dataset(n=2)
    shown = form("apply_review", ds, {})
    assert "No Detections field here holds masks" in invalid(shown)["field_error"]
    apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances")
    sample = ds.first()
    old = sample.ssa_masks.detections[0].label
    new = next(n for n in SCENE_CLASSES.values() if n not in (old, "background"))
    gone = sample.ssa_masks.detections[1].label
    AppClient().patch_sample(sample, [relabel("ssa_masks", 0, new), delete("ssa_masks", 1)])
    before = sample.ssa.mask.copy()

    assert not invalid(form("apply_review", ds, {}))
    result = execute("apply_review", ds, params={"label_field": "ssa_masks"})
    assert result.error is None, result.error
    counts = {k: result.result[k] for k in ("samples_reviewed", "relabelled", "deleted")}
    assert counts == {"samples_reviewed": 1, "relabelled": 1, "deleted": 1}
    assert triggered(result) == ["reload_dataset", "set_color_scheme"]
    sample.reload()
    assert sample.ssa_masks.detections[0].reviewed is True
    assert not np.array_equal(sample.ssa.mask, before)

    shown = form("review_report", ds, {})
    assert not invalid(shown) and "gt_field" in shown
    result = execute("review_report", ds, params={"gt_field": "ground_truth"})
    assert result.error is None, result.error
    report = result.result
    assert (report["samples_labelled"], report["samples_reviewed"]) == (2, 1)
    pairs = {(r["ssa_label"], r["reviewed_label"]) for r in report["corrections"]}
    assert pairs == {(old, new), (gone, "(deleted)")}
    gt, n = sample.ground_truth.mask.ravel(), len(SCENE_CLASSES)
    assert report["miou_before"] == pytest.approx(miou(before.ravel(), gt, n))
    assert report["miou_after"] == pytest.approx(miou(sample.ssa.mask.ravel(), gt, n))
    assert "mIoU on the 1 reviewed sample(s)" in report["text"]
    # the App receives the report's view as JSON
    ctx = ExecutionContext(
        request_params={"dataset_name": ds.name, "view": [], "params": {}, "results": report},
        operator_uri=uri("review_report"),
    )
    outputs = foo.get_operator(uri("review_report")).resolve_output(ctx).to_json()
    assert {"classes", "corrections", "miou_before", "per_class_iou"} <= set(
        outputs["type"]["properties"]
    )
    # a run from the App with other settings over every sample keeps the reviewed one
    params = {**FIELD_BRANCHES, "semantic_field": "noisy", "if_exists": "overwrite"}
    result = execute("run_ssa", ds, params=params)
    assert (result.result["num_labelled"], result.result["num_kept_reviewed"]) == (1, 1)
    sample.reload()
    assert sample.ssa_masks.detections[0].reviewed is True
