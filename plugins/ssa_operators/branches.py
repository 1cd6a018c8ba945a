"""Form sections choosing the mask branch and the semantic branch.

Each returns the branch as ``apply_ssa`` takes it (a preset name, a path, a Hugging Face id or
``field:<name>``), or None while the choice is incomplete or wrong (the form then shows why).
"""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators.types as types

from .forms import (
    block,
    detections_fields_with_masks,
    dropdown,
    field_problem,
    has_mask_targets,
    label_fields,
    missing_weights,
    notice,
    presets,
    radio,
)
from .library import import_library

# The library's defaults (fiftyone_ssa.fields imports nothing heavy).
DEFAULT_MASK_PRESET = import_library("fiftyone_ssa.fields").DEFAULT_MASK_BRANCH
DEFAULT_SEMANTIC_PRESET = import_library("fiftyone_ssa.fields").DEFAULT_SEMANTIC_BRANCH


def branch_params(branch: str, kind: str) -> dict:
    """Form parameters selecting ``branch`` (as the library names it), for ``__call__``.

    Args:
        branch: a preset, ``field:<name>``, a path or a Hugging Face id.
        kind: ``"mask"`` or ``"semantic"``.
    """
    if not isinstance(branch, str) or not branch:
        raise ValueError(f"Expected a {kind} branch name, but got {branch!r}")
    if branch.startswith("field:"):
        return {f"{kind}_source": "field", f"{kind}_field": branch[len("field:") :]}
    if branch in presets(kind):
        return {f"{kind}_source": "preset", f"{kind}_preset": branch}
    return {f"{kind}_source": "custom", f"{kind}_custom": branch}


def mask_branch_inputs(inputs: types.Object, ctx, points_default: str = "64") -> str | None:
    """Mask branch: a SAM preset, a SAM checkpoint, or a Detections field with masks.

    Args:
        points_default: how the default SAM grid is described.
    """
    source = ctx.params.get("mask_source", "preset")
    radio(
        inputs,
        "mask_source",
        {
            "preset": "SAM preset",
            "field": "Existing Detections field with instance masks",
            "custom": "SAM checkpoint file or saved directory",
        },
        label="Mask branch",
        default="preset",
    )
    branch = None
    if source == "preset":
        names = presets("mask")
        name = ctx.params.get("mask_preset", DEFAULT_MASK_PRESET)
        if name not in names:
            block(inputs, "mask_branch_error", f"Unknown mask branch {name!r}")
        elif (message := missing_weights(name)) is not None:
            block(inputs, "mask_branch_error", message)
        else:
            branch = name
        dropdown(
            inputs,
            "mask_preset",
            names,
            "SAM model",
            default=DEFAULT_MASK_PRESET,
            description="weights are read from the fiftyone-ssa models directory",
        )
    elif source == "field":
        branch = _mask_field_input(inputs, ctx)
    else:
        inputs.str(
            "mask_custom",
            required=True,
            label="SAM checkpoint",
            description="a .pth checkpoint (vit_b/l/h) or a directory saved with sam_config.json",
        )
        path = ctx.params.get("mask_custom")
        if path:
            local = os.path.expanduser(path)
            if not os.path.exists(local):
                block(inputs, "mask_branch_error", f"Unknown mask branch: {path!r} does not exist")
            elif os.path.isdir(local) and not os.path.isfile(
                os.path.join(local, "sam_config.json")
            ):
                block(inputs, "mask_branch_error", f"{path!r} has no sam_config.json")
            else:
                branch = local
    if source != "field":
        inputs.int(
            "points_per_side",
            required=False,
            min=1,
            label="Points per side",
            description=f"SAM's prompt grid (default: {points_default}; fewer is faster)",
        )
    return branch


def _mask_field_input(inputs: types.Object, ctx) -> str | None:
    fields = detections_fields_with_masks(ctx.dataset)
    if not fields:
        block(
            inputs, "mask_branch_error", "This dataset has no Detections field with instance masks"
        )
        return None
    name = ctx.params.get("mask_field") or fields[0]
    branch = f"field:{name}"
    if name not in fields:
        reason = field_problem(ctx.dataset, name, "Detections") or f"{name!r} has no instance masks"
        block(inputs, "mask_branch_error", f"Mask field {reason}")
        branch = None
    dropdown(inputs, "mask_field", fields, "Masks field", default=fields[0])
    return branch


def semantic_branch_inputs(inputs: types.Object, ctx) -> str | None:
    """Semantic branch: a preset, a Segmentation field, or a Hugging Face id / local path."""
    source = ctx.params.get("semantic_source", "preset")
    radio(
        inputs,
        "semantic_source",
        {
            "preset": "Preset model",
            "field": "Existing Segmentation field",
            "custom": "Hugging Face id or local directory",
        },
        label="Semantic branch",
        default="preset",
    )
    if source == "preset":
        names = presets("semantic")
        name = ctx.params.get("semantic_preset", DEFAULT_SEMANTIC_PRESET)
        problem = None
        if name not in names:
            problem = f"Unknown semantic branch {name!r}"
        else:
            problem = missing_weights(name)
        if problem is not None:
            block(inputs, "semantic_branch_error", problem)
        dropdown(
            inputs, "semantic_preset", names, "Semantic model", default=DEFAULT_SEMANTIC_PRESET
        )
        if problem is not None:
            return None
        return name if _classes_input(inputs, ctx, name) else None
    if source == "field":
        return _semantic_field_input(inputs, ctx)
    inputs.str(
        "semantic_custom",
        required=True,
        label="Model",
        description="a Hugging Face id (downloaded with `fiftyone-ssa models download`) or a "
        "directory saved with save_pretrained",
    )
    name = ctx.params.get("semantic_custom")
    if not name:
        return None
    message = _custom_semantic_problem(name)
    if message is not None:
        block(inputs, "semantic_branch_error", message)
        return None
    return name if _classes_input(inputs, ctx, name) else None


def _semantic_field_input(inputs: types.Object, ctx) -> str | None:
    fields = label_fields(ctx.dataset, fo.Segmentation)
    if not fields:
        block(inputs, "semantic_branch_error", "This dataset has no Segmentation field")
        return None
    name = ctx.params.get("semantic_field") or fields[0]
    if name not in fields:
        problem = field_problem(ctx.dataset, name, "Segmentation")
        block(inputs, "semantic_branch_error", f"Semantic field {problem}")
    dropdown(inputs, "semantic_field", fields, "Segmentation field", default=fields[0])
    if name not in fields:
        return None
    if not has_mask_targets(ctx.dataset, name):
        notice(
            inputs,
            "semantic_targets_warning",
            f"{name!r} has no mask targets: classes will be named by their ids",
        )
    return f"field:{name}"


def _custom_semantic_problem(name: str) -> str | None:
    weights = import_library("fiftyone_ssa.models.weights")
    path = os.path.expanduser(name)
    if os.path.exists(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            return f"{name!r} has no config.json: not a transformers model directory"
        return None
    if weights.looks_like_hf_id(name):
        return missing_weights(name)
    return (
        f"Unknown semantic branch {name!r}: expected a preset, a Hugging Face id (org/name) or "
        "an existing directory"
    )


def takes_classes(semantic_branch: str) -> bool:
    """Whether the branch is an open-vocabulary one (CLIPSeg, SAM 3), whose classes the user
    names."""
    name = semantic_branch.lower()
    return "clipseg" in name or "sam3" in name


def _classes_input(inputs: types.Object, ctx, name: str) -> bool:
    """Class names for an open-vocabulary branch (CLIPSeg, SAM 3); False while they are
    missing."""
    if not takes_classes(name):
        return True
    inputs.list(
        "classes",
        types.String(),
        required=True,
        label="Classes",
        description="the class names the model segments (SAM 3: each a text concept; pixels "
        "no concept covers are 'background', id 0)",
        view=types.AutocompleteView(multiple=True, allow_user_input=True, choices=[]),
    )
    if not ctx.params.get("classes"):
        block(inputs, "classes_error", "This model needs at least one class name")
        return False
    return True
