"""The ``run_ssa`` operator: SSA close-set over the dataset, the current view or the selection."""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators.types as types

from .branches import (
    DEFAULT_MASK_PRESET,
    DEFAULT_SEMANTIC_PRESET,
    branch_params,
    mask_branch_inputs,
    semantic_branch_inputs,
    takes_classes,
)
from .forms import (
    SSAOperator,
    backend_input,
    backend_params,
    batch_size_input,
    detections_fields_with_masks,
    device_input,
    if_exists_choice,
    if_exists_flags,
    label_fields,
    markdown_text,
    output_field_inputs,
    require_dataset,
    run_summary_output,
    run_summary_result,
    target_input,
    target_samples,
    whole_number_check,
)
from .library import ProgressReporter, import_library


def ssa_outputs(label_field: str, write_branch: bool) -> dict[str, type]:
    """The fields ``apply_ssa`` writes, with their label types."""
    names = import_library("fiftyone_ssa.fields")
    outputs = {label_field: fo.Segmentation, names.masks_field(label_field): fo.Detections}
    if write_branch:
        outputs[names.branch_field(label_field)] = fo.Segmentation
    return outputs


def fields_read(branch: str | None) -> set[str]:
    """The field a ``field:<name>`` branch reads (an empty set for a model branch)."""
    return {branch[len("field:") :]} if branch and branch.startswith("field:") else set()


class RunSSA(SSAOperator):
    """Labels SAM masks with a semantic branch's classes (Semantic Segment Anything).

    Writes ``<label_field>`` (Segmentation), ``<label_field>_masks`` (Detections with
    ``class_proposals``, ``confidence``...) and ``<label_field>_branch`` (the semantic branch
    alone).
    """

    @property
    def config(self):
        return self._config(
            "run_ssa",
            "Run Semantic Segment Anything",
            "Label SAM masks with a semantic segmenter's classes (SSA close-set)",
        )

    def __call__(
        self,
        sample_collection,
        label_field: str = "ssa",
        semantic_branch: str = DEFAULT_SEMANTIC_PRESET,
        mask_branch: str = DEFAULT_MASK_PRESET,
        classes: list[str] | None = None,
        device: str | None = None,
        batch_size: int = 1,
        top_k: int = 3,
        write_branch: bool = True,
        overwrite: bool = False,
        skip_existing: bool = False,
        points_per_side: int | None = None,
        delegate: bool = False,
    ):
        """Runs SSA on ``sample_collection`` through the operator (see ``apply_ssa``).

        Returns:
            an ``ExecutionResult``; ``result.result`` holds the run's summary, or the queued
            operation when ``delegate=True``.
        """
        params = {
            "label_field": label_field,
            **branch_params(semantic_branch, "semantic"),
            **branch_params(mask_branch, "mask"),
            "classes": list(classes) if classes else None,
            "device": device or "auto",
            "batch_size": batch_size,
            "top_k": top_k,
            "write_branch": write_branch,
            "points_per_side": points_per_side,
            "if_exists": if_exists_choice(overwrite, skip_existing),
        }
        return self._call(sample_collection, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if require_dataset(inputs, ctx):
            target_input(inputs, ctx)
            mask_branch = mask_branch_inputs(inputs, ctx, points_default="64, the original SSA's")
            semantic_branch = semantic_branch_inputs(inputs, ctx)
            write_branch = bool(ctx.params.get("write_branch", True))
            label_field = ctx.params.get("label_field", "ssa")
            if isinstance(label_field, str) and label_field:
                outputs = ssa_outputs(label_field, write_branch)
            else:
                outputs = {}
            output_field_inputs(
                inputs, ctx, outputs, fields_read(mask_branch) | fields_read(semantic_branch), "ssa"
            )
            inputs.bool(
                "write_branch",
                default=True,
                label="Also write the semantic branch alone",
                description=markdown_text("<label field>_branch, to compare SSA with the branch"),
            )
            inputs.int("top_k", default=3, min=1, label="Class proposals per mask")
            device_input(inputs, ctx)
            backend_input(inputs, ctx)
            batch_size_input(inputs)
            whole_number_check(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Run Semantic Segment Anything"))

    def execute(self, ctx):
        pipeline = import_library("fiftyone_ssa.labelling.ssa")
        params = ctx.params
        mask_branch = chosen_branch(ctx, "mask")
        semantic_branch = chosen_branch(ctx, "semantic")
        options = {}
        if params.get("points_per_side") and not mask_branch.startswith("field:"):
            options["points_per_side"] = int(params["points_per_side"])
        device = params.get("device") or "auto"
        summary = pipeline.apply_ssa(
            target_samples(ctx),
            label_field=params.get("label_field", "ssa"),
            semantic_branch=semantic_branch,
            mask_branch=mask_branch,
            device=None if device == "auto" else device,
            batch_size=int(params.get("batch_size", 1)),
            top_k=int(params.get("top_k", 3)),
            write_branch=bool(params.get("write_branch", True)),
            # Values of a CLIPSeg branch chosen before may linger in the form's params.
            classes=(params.get("classes") or None) if takes_classes(semantic_branch) else None,
            progress=False,
            progress_callback=ProgressReporter(ctx),
            **if_exists_flags(ctx),
            **backend_params(ctx),
            **options,
        )
        self._finish(ctx, colors=True)
        return run_summary_result(summary)

    def resolve_output(self, ctx):
        return run_summary_output("SSA finished", ctx.results)


def chosen_branch(ctx, kind: str) -> str:
    """The branch the (validated) form chose, as the library names it.

    Parameters left out take the form's defaults (the App fills them in; Python callers of
    ``execute_operator`` may not).
    """
    params = ctx.params
    source = params.get(f"{kind}_source", "preset")
    if source == "field":
        name = params.get(f"{kind}_field")
        if not name:
            fields = (
                detections_fields_with_masks(ctx.dataset)
                if kind == "mask"
                else label_fields(ctx.dataset, fo.Segmentation)
            )
            name = fields[0]
        return f"field:{name}"
    if source == "custom":
        return os.path.expanduser(params[f"{kind}_custom"])
    default = DEFAULT_MASK_PRESET if kind == "mask" else DEFAULT_SEMANTIC_PRESET
    return params.get(f"{kind}_preset", default)
