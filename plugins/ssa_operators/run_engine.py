"""The ``run_ssa_engine`` operator: open-vocabulary names and top-k proposals for every mask."""

from __future__ import annotations

import importlib.util
import os

import fiftyone as fo
import fiftyone.operators.types as types

from .branches import branch_params, mask_branch_inputs
from .forms import (
    SSAOperator,
    backend_input,
    backend_params,
    batch_size_input,
    block,
    device_input,
    if_exists_choice,
    if_exists_flags,
    markdown_text,
    missing_weights,
    output_field_inputs,
    radio,
    require_dataset,
    run_summary_output,
    run_summary_result,
    target_input,
    target_samples,
    whole_number_check,
)
from .library import ProgressReporter, import_library
from .run_ssa import chosen_branch, fields_read

MODEL_ROLES = {
    "ade": "ADE20K segmenter",
    "coco": "COCO panoptic segmenter",
    "captioner": "BLIP captioner",
    "clip": "CLIP",
    "clipseg": "CLIPSeg",
    "sam3": "SAM 3",
}
# What picks each mask's class among its proposals; each uses one of the roles above.
DECIDERS = {"clipseg": "CLIPSeg on the mask's crop (the original)", "sam3": "SAM 3 concepts"}


def roles_in_use(decider: str) -> list[str]:
    """The model roles a run with ``decider`` loads."""
    return [role for role in MODEL_ROLES if role not in DECIDERS or role == decider]


# The library's default (fiftyone_ssa.fields imports nothing heavy), read at plugin import.
DEFAULT_SPACY_MODEL = import_library("fiftyone_ssa.fields").DEFAULT_SPACY_MODEL


def engine_outputs(label_field: str, write_segmentation: bool) -> dict[str, type]:
    """The fields ``apply_ssa_engine`` writes, with their label types."""
    outputs = {label_field: fo.Detections}
    if write_segmentation:
        outputs[import_library("fiftyone_ssa.fields").segmentation_field(label_field)] = (
            fo.Segmentation
        )
    return outputs


def _model_problem(role: str, source: str) -> str | None:
    """Why a model override cannot be used, or None."""
    weights = import_library("fiftyone_ssa.models.weights")
    if os.path.exists(os.path.expanduser(source)):
        return None
    if source in weights.PRESETS or weights.looks_like_hf_id(source):
        return missing_weights(source)
    return f"Unknown {MODEL_ROLES[role]} model {source!r}: a preset, Hugging Face id or path"


def _spacy_problem(name: str) -> str | None:
    """Why the spaCy pipeline cannot be loaded, or None."""
    if importlib.util.find_spec("spacy") is None:
        return "SSA-engine needs spaCy: pip install spacy"
    path = os.path.expanduser(name)
    if os.path.sep in name or os.path.exists(path):
        return None if os.path.isdir(path) else f"spaCy pipeline {name!r} does not exist"
    if importlib.util.find_spec(name) is None:
        return f"spaCy pipeline {name!r} is not installed: python -m spacy download {name}"
    return None


class RunSSAEngine(SSAOperator):
    """SSA-engine: every mask gets an open-vocabulary ``class_name`` and top-k proposals.

    Writes ``<label_field>`` (Detections; ``class_proposals``, ``caption``, ``ade_name``,
    ``coco_name`` on each mask) and optionally ``<label_field>_seg`` (Segmentation).
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
        vocabulary_mode: str = "add",
        write_segmentation: bool = False,
        models: dict[str, str] | None = None,
        spacy_model: str = DEFAULT_SPACY_MODEL,
        device: str | None = None,
        batch_size: int = 1,
        overwrite: bool = False,
        skip_existing: bool = False,
        points_per_side: int | None = None,
        delegate: bool = False,
        decider: str = "clipseg",
    ):
        """Runs SSA-engine on ``sample_collection`` through the operator.

        Args:
            models: model overrides by role (``ade``, ``coco``, ``captioner``, ``clip``,
                ``clipseg``, ``sam3``): presets, Hugging Face ids or paths.
            other: see ``fiftyone_ssa.labelling.engine.apply_ssa_engine``.
        """
        unknown = sorted(set(models or {}) - set(MODEL_ROLES))
        if unknown:
            raise ValueError(
                f"Expected `models` roles among {sorted(MODEL_ROLES)}, but got {unknown}"
            )
        params = {
            "label_field": label_field,
            **branch_params(mask_branch, "mask"),
            "light": light,
            "top_k": top_k,
            "vocabulary": list(vocabulary) if vocabulary else None,
            "vocabulary_mode": vocabulary_mode,
            "write_segmentation": write_segmentation,
            "spacy_model": spacy_model,
            **{f"{role}_model": source for role, source in (models or {}).items()},
            "device": device or "auto",
            "batch_size": batch_size,
            "points_per_side": points_per_side,
            "if_exists": if_exists_choice(overwrite, skip_existing),
            "decider": decider,
        }
        return self._call(sample_collection, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if require_dataset(inputs, ctx):
            target_input(inputs, ctx)
            mask_branch = mask_branch_inputs(inputs, ctx, points_default="32, 16 in light mode")
            inputs.bool(
                "light",
                default=False,
                label="Light mode",
                description="smaller models (OneFormer Swin-T, BLIP base, CLIP ViT-B/32, "
                "CLIPSeg rd16) and 16 SAM points per side",
            )
            self._model_inputs(inputs, ctx)
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
                label="Vocabulary",
                description="class names for every mask's candidates",
                view=types.AutocompleteView(multiple=True, allow_user_input=True, choices=[]),
            )
            radio(
                inputs,
                "vocabulary_mode",
                {"add": "Add to the candidates", "restrict": "Only these names"},
                label="Vocabulary use",
                default="add",
            )
            if ctx.params.get("vocabulary_mode") == "restrict" and not ctx.params.get("vocabulary"):
                block(inputs, "vocabulary_error", "Restricting needs a vocabulary")
            inputs.bool(
                "write_segmentation",
                default=False,
                label="Also write a Segmentation",
                description=markdown_text("<label field>_seg, painted from the named masks"),
            )
            label_field = ctx.params.get("label_field", "ssa_engine")
            write_segmentation = bool(ctx.params.get("write_segmentation", False))
            outputs = (
                engine_outputs(label_field, write_segmentation)
                if isinstance(label_field, str) and label_field
                else {}
            )
            output_field_inputs(inputs, ctx, outputs, fields_read(mask_branch), "ssa_engine")
            device_input(inputs, ctx)
            backend_input(inputs, ctx)
            batch_size_input(inputs)
            whole_number_check(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Run SSA-engine"))

    def _model_inputs(self, inputs, ctx) -> None:
        """Model overrides (blank: the presets); missing weights block the form."""
        weights = import_library("fiftyone_ssa.models.weights")
        light = ctx.params.get("light", False)
        defaults = weights.LIGHT_ENGINE_MODELS if light else weights.DEFAULT_ENGINE_MODELS
        defaults = {**defaults, "sam3": "sam3"}
        radio(inputs, "decider", DECIDERS, label="Class decided by", default="clipseg")
        decider = ctx.params.get("decider") or "clipseg"
        missing = []
        for role in roles_in_use(decider):
            description, name = MODEL_ROLES[role], f"{role}_model"
            inputs.str(
                name,
                required=False,
                label=f"{description} (optional)",
                description=markdown_text(
                    f"a preset, Hugging Face id or path; blank: {defaults[role]}"
                ),
            )
            source = ctx.params.get(name)
            if source:
                problem = _model_problem(role, source)
                if problem is not None:
                    block(inputs, f"{name}_error", problem)
            elif missing_weights(defaults[role]) is not None:
                missing.append(defaults[role])
        if missing:
            block(
                inputs,
                "engine_models_error",
                f"Missing weights for {', '.join(missing)}: run `fiftyone-ssa models download "
                f"{' '.join(missing)}` on the machine that runs the operation",
            )
        inputs.str(
            "spacy_model",
            default=DEFAULT_SPACY_MODEL,
            required=False,
            label="spaCy pipeline",
            description="for the caption's noun phrases: an installed name or a path",
        )
        problem = _spacy_problem(ctx.params.get("spacy_model") or DEFAULT_SPACY_MODEL)
        if problem is not None:
            block(inputs, "spacy_model_error", problem)

    def execute(self, ctx):
        engine = import_library("fiftyone_ssa.labelling.engine")
        params = ctx.params
        mask_branch = chosen_branch(ctx, "mask")
        device = params.get("device") or "auto"
        options = {}
        if params.get("points_per_side") and not mask_branch.startswith("field:"):
            options["points_per_side"] = int(params["points_per_side"])
        decider = params.get("decider") or "clipseg"
        models = {
            role: params[f"{role}_model"]
            for role in roles_in_use(decider)
            if params.get(f"{role}_model")
        }
        summary = engine.apply_ssa_engine(
            target_samples(ctx),
            label_field=params.get("label_field", "ssa_engine"),
            mask_branch=mask_branch,
            light=bool(params.get("light", False)),
            top_k=int(params.get("top_k", 3)),
            vocabulary=params.get("vocabulary") or None,
            vocabulary_mode=params.get("vocabulary_mode", "add"),
            spacy_model=params.get("spacy_model") or DEFAULT_SPACY_MODEL,
            write_segmentation=bool(params.get("write_segmentation", False)),
            device=None if device == "auto" else device,
            batch_size=int(params.get("batch_size", 1)),
            models=models or None,
            decider=decider,
            progress=False,
            progress_callback=ProgressReporter(ctx),
            **if_exists_flags(ctx),
            **backend_params(ctx),
            **options,
        )
        self._finish(ctx, colors=True)
        return run_summary_result(summary)

    def resolve_output(self, ctx):
        return run_summary_output("SSA-engine finished", ctx.results)
