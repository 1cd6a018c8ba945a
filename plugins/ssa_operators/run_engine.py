"""The ``run_ssa_engine`` operator: open-vocabulary names and top-k proposals for every mask."""

from __future__ import annotations

import inspect

import fiftyone as fo
import fiftyone.operators.types as types

from .branches import branch_params, mask_branch_inputs
from .forms import (
    SSAOperator,
    batch_size_input,
    block,
    device_input,
    if_exists_flags,
    missing_weights,
    output_field_inputs,
    require_dataset,
)
from .library import ProgressReporter, import_library
from .run_ssa import chosen_branch

# The models SSA-engine runs (full / light mode), as fiftyone-ssa presets.
ENGINE_PRESETS = {
    False: (
        "oneformer-ade20k-swin-large",
        "oneformer-coco-swin-large",
        "blip-large",
        "clip-vit-l-14",
        "clipseg-rd64-refined",
    ),
    True: (
        "oneformer-ade20k-swin-tiny",
        "oneformer-coco-swin-large",
        "blip-base",
        "clip-vit-b-32",
        "clipseg-rd16",
    ),
}


def engine_outputs(label_field: str) -> dict[str, type]:
    """The fields ``apply_ssa_engine`` writes, with their label types."""
    return {label_field: fo.Detections}


class RunSSAEngine(SSAOperator):
    """SSA-engine: every mask gets an open-vocabulary ``class_name`` and top-k proposals.

    Writes ``<label_field>`` (Detections; ``class_proposals``, ``caption``, ``ade_name``,
    ``coco_name`` on each mask).
    """

    @property
    def config(self):
        return self._config(
            "run_ssa_engine",
            "Run SSA-engine (open vocabulary)",
            "Name every mask with an open-vocabulary class and top-k proposals",
        )

    def __call__(
        self,
        sample_collection,
        label_field: str = "ssa_engine",
        mask_branch: str = "sam-vit-h",
        light: bool = False,
        top_k: int = 3,
        vocabulary: list[str] | None = None,
        device: str | None = None,
        batch_size: int = 1,
        overwrite: bool = False,
        skip_existing: bool = False,
        points_per_side: int | None = None,
        delegate: bool = False,
    ):
        """Runs SSA-engine on ``sample_collection`` through the operator."""
        params = {
            "label_field": label_field,
            **branch_params(mask_branch, "mask"),
            "light": light,
            "top_k": top_k,
            "vocabulary": list(vocabulary) if vocabulary else None,
            "device": device or "auto",
            "batch_size": batch_size,
            "points_per_side": points_per_side,
            "if_exists": "overwrite" if overwrite else "skip_existing" if skip_existing else None,
        }
        return self._call(sample_collection, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if require_dataset(inputs, ctx):
            inputs.view_target(ctx)
            mask_branch = mask_branch_inputs(inputs, ctx)
            inputs.bool(
                "light",
                default=False,
                label="Light mode",
                description="smaller models (OneFormer Swin-T, BLIP base, CLIP ViT-B/32, "
                "CLIPSeg rd16) and 16 SAM points per side",
            )
            light = bool(ctx.params.get("light", False))
            missing = [m for m in ENGINE_PRESETS[light] if missing_weights(m) is not None]
            if missing:
                block(
                    inputs,
                    "engine_models_error",
                    f"Missing weights for {', '.join(missing)}: run `fiftyone-ssa models "
                    f"download {' '.join(missing)}` on the machine that runs the operation",
                )
            inputs.int(
                "top_k",
                default=3,
                min=1,
                required=False,
                label="Top-k",
                description="class proposals per mask",
            )
            inputs.list(
                "vocabulary",
                types.String(),
                required=False,
                label="Extra vocabulary",
                description="class names added to every mask's candidates",
                view=types.AutocompleteView(multiple=True, allow_user_input=True, choices=[]),
            )
            label_field = ctx.params.get("label_field", "ssa_engine")
            outputs = (
                engine_outputs(label_field) if isinstance(label_field, str) and label_field else {}
            )
            mask_fields = (
                {mask_branch[len("field:") :]}
                if mask_branch and mask_branch.startswith("field:")
                else set()
            )
            output_field_inputs(inputs, ctx, outputs, mask_fields, "ssa_engine")
            device_input(inputs, ctx)
            batch_size_input(inputs)
        return types.Property(inputs, view=types.View(label="Run SSA-engine"))

    def execute(self, ctx):
        engine = import_library("fiftyone_ssa.engine")
        params = ctx.params
        mask_branch = chosen_branch(ctx, "mask")
        device = params.get("device") or "auto"
        reporter = ProgressReporter(ctx)
        options = {
            "label_field": params.get("label_field", "ssa_engine"),
            "mask_branch": mask_branch,
            "light": bool(params.get("light", False)),
            "top_k": int(params.get("top_k", 3)),
            "vocabulary": params.get("vocabulary") or None,
            "device": None if device == "auto" else device,
            "batch_size": int(params.get("batch_size", 1)),
            "progress": False,
            "progress_callback": reporter,
            **if_exists_flags(ctx),
        }
        if params.get("points_per_side") and not mask_branch.startswith("field:"):
            options["points_per_side"] = int(params["points_per_side"])
        summary = engine.apply_ssa_engine(
            ctx.target_view(), **_supported(engine.apply_ssa_engine, options, reporter)
        )
        self._finish(ctx)
        return _summary_dict(summary, options["label_field"])

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("label_field", label="Label field")
        outputs.int("num_labelled", label="Samples labelled")
        outputs.int("num_failed", label="Samples failed")
        return types.Property(outputs, view=types.View(label="SSA-engine finished"))


def _supported(fn, options: dict, reporter: ProgressReporter) -> dict:
    """The options ``fn`` accepts; progress goes through FiftyOne's callable when it has no
    ``progress_callback``."""
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = set(options)
    else:
        accepted = set(parameters)
    if "progress_callback" not in parameters:
        options = {**options, "progress": reporter.fiftyone_progress()}
    return {k: v for k, v in options.items() if k in accepted}


def _summary_dict(summary, label_field: str) -> dict:
    """A JSON-able summary from whatever ``apply_ssa_engine`` returned."""
    failures = getattr(summary, "failures", None) or []
    labelled = getattr(summary, "num_labelled", None)
    return {
        "label_field": getattr(summary, "label_field", label_field),
        "num_labelled": labelled,
        "num_failed": len(failures),
    }
