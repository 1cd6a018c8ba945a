"""The review queue: the ``build_review_queue`` operator (``fiftyone_ssa``'s ``review_queue``)."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators.types as types

from .forms import (
    SSAOperator,
    block,
    dropdown,
    label_fields,
    radio,
    require_dataset,
    target_input,
    target_samples,
)
from .library import import_library

_fields = import_library("fiftyone_ssa.fields")
BY_LABELS = {"masks": "Masks (one patch per mask)", "samples": "Samples holding them"}


def scored_fields(samples) -> list[str]:
    """The Detections fields whose masks carry a ``review_score`` (SSA and SSA-engine's)."""
    schema = samples.get_field_schema(flat=True)
    return [
        f for f in label_fields(samples, fo.Detections) if f"{f}.detections.review_score" in schema
    ]


class BuildReviewQueue(SSAOperator):
    """Saves the view of the masks most likely wrong (highest ``review_score``) and shows it."""

    default_delegated = False

    @property
    def config(self):
        return self._config(
            "build_review_queue",
            "Build review queue",
            "Save a view of the masks most likely wrong, most doubtful first",
        )

    def __call__(
        self,
        sample_collection,
        label_field: str = _fields.DEFAULT_REVIEW_FIELD,
        n: int = _fields.DEFAULT_REVIEW_SIZE,
        classes: list[str] | None = None,
        by: str = "masks",
        name: str | None = None,
        delegate: bool = False,
    ):
        """Builds the queue through the operator (see ``fiftyone_ssa``'s ``review_queue``).

        Returns:
            an ``ExecutionResult``; ``result.result`` has ``name`` and ``count``.
        """
        params = {
            "label_field": label_field,
            "n": n,
            "classes": classes,
            "by": by,
            "name": name,
        }
        return self._call(sample_collection, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if require_dataset(inputs, ctx):
            target_input(inputs, ctx)
            self._queue_inputs(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Build review queue"))

    def _queue_inputs(self, inputs, ctx) -> None:
        samples = target_samples(ctx)
        fields = scored_fields(samples)
        if not fields:
            block(
                inputs,
                "field_error",
                "No Detections field with review_score here: label the dataset with SSA or "
                "SSA-engine first",
            )
            return
        default = _fields.DEFAULT_REVIEW_FIELD if _fields.DEFAULT_REVIEW_FIELD in fields else None
        default = default or fields[0]
        dropdown(inputs, "label_field", fields, "Masks", default=default)
        inputs.int(
            "n",
            default=_fields.DEFAULT_REVIEW_SIZE,
            required=False,
            min=1,
            label="Number of masks",
            description="the masks with the highest review_score",
        )
        n = ctx.params.get("n", _fields.DEFAULT_REVIEW_SIZE)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            block(inputs, "n_error", f"The number of masks must be a whole number >= 1, not {n!r}")
        label_field = ctx.params.get("label_field") or default
        classes = (
            sorted(samples.distinct(f"{label_field}.detections.label"))
            if label_field in fields
            else []
        )
        inputs.list(
            "classes",
            types.String(),
            required=False,
            label="Classes",
            description="only masks of these classes (all when empty)",
            view=types.AutocompleteView(
                multiple=True,
                allow_user_input=False,
                choices=[types.Choice(value=c, label=c) for c in classes],
            ),
        )
        radio(inputs, "by", BY_LABELS, label="Show", default="masks")
        inputs.str(
            "name",
            required=False,
            label="View name",
            description="default: review-<field> (masks), review-<field>-samples (samples)",
        )

    def execute(self, ctx):
        queue = import_library("fiftyone_ssa.labelling.review_queue")
        params = ctx.params
        view = queue.review_queue(
            target_samples(ctx),
            label_field=params.get("label_field") or _fields.DEFAULT_REVIEW_FIELD,
            n=int(params.get("n") or _fields.DEFAULT_REVIEW_SIZE),
            classes=list(params["classes"]) if params.get("classes") else None,
            by=params.get("by") or "masks",
            name=params.get("name") or None,
        )
        if not ctx.delegated:
            ctx.trigger("reload_dataset")  # the App's list of saved views
            ctx.ops.set_view(name=view.name)
        return {"name": view.name, "count": len(view)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("name", label="Saved view")
        outputs.int("count", label="Masks or samples in it")
        return types.Property(outputs, view=types.View(label="Review queue"))
