"""Form building blocks shared by the operators: messages, field pickers, checks.

A problem the form can see (a field of the wrong type, a missing ground truth, an unknown
branch, missing weights) is shown as a message on an invalid property: the App disables
Execute, and ``execute_operator`` refuses the parameters with the same message.

The App renders a view's label as Markdown, so every message goes through
:func:`markdown_text` (in :func:`block` and :func:`notice`): a path such as
``~/fiftyone/__models__/...`` or a field such as ``ground_truth`` is shown as written.
"""

from __future__ import annotations

import re

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from .library import import_library

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# Every ASCII punctuation character: CommonMark lets each be backslash-escaped.
MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")
# Instance masks are looked for in this many labelled samples of a Detections field.
MASK_PROBE_SAMPLES = 20


def usable_field_name(name) -> bool:
    """Whether the library takes ``name`` as an output field (``fields.FIELD_NAME_PATTERN``)."""
    pattern = import_library("fiftyone_ssa.fields").FIELD_NAME_PATTERN
    return isinstance(name, str) and bool(pattern.fullmatch(name))


def markdown_text(text: str) -> str:
    """``text`` as Markdown that renders as exactly ``text``.

    The App renders labels, descriptions and messages as Markdown: ``__models__`` would turn
    bold, ``<label>`` vanish, ``[x](y)`` become a link. Every ASCII punctuation character is
    backslash-escaped (CommonMark renders an escaped one literally), so paths, field names and
    whatever a user typed are shown as written. Meant for one line of text.

    Args:
        text: plain text.

    Raises:
        ValueError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise ValueError(f"Expected a string, but got {text!r}")
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def block(inputs: types.Object, name: str, message: str, warning: bool = False) -> None:
    """Shows ``message`` (plain text) and marks the form invalid (Execute disabled).

    ``execute_operator`` refuses the parameters with ``message`` as it is.
    """
    label = markdown_text(message)
    view = types.Warning(label=label) if warning else types.Error(label=label)
    prop = inputs.view(name, view)
    prop.invalid = True
    prop.error_message = message


def notice(inputs: types.Object, name: str, message: str) -> None:
    """Shows ``message`` (plain text) as a warning that does not stop execution."""
    inputs.view(name, types.Warning(label=markdown_text(message)))


def label_type_name(samples, field: str) -> str | None:
    """The label class held by a top-level field (``"Segmentation"``...), or None if absent."""
    schema = samples.get_field_schema()
    if field not in schema:
        return None
    doc_type = getattr(schema[field], "document_type", None)
    return doc_type.__name__ if doc_type is not None else type(schema[field]).__name__


def field_problem(samples, field: str, expected: str) -> str | None:
    """``"'x' does not exist"`` / ``"'x' holds Detections, not Segmentation"``, or None."""
    held = label_type_name(samples, field)
    if held is None:
        return f"{field!r} does not exist"
    if held != expected:
        return f"{field!r} holds {held}, not {expected}"
    return None


def label_fields(samples, label_type: type) -> list[str]:
    """The top-level fields holding ``label_type`` labels, sorted."""
    schema = samples.get_field_schema(embedded_doc_type=label_type)
    return sorted(schema)


def detections_fields_with_masks(samples) -> list[str]:
    """Detections fields whose first labelled samples carry instance masks."""
    found = []
    for field in label_fields(samples, fo.Detections):
        probe = samples.exists(field).limit(MASK_PROBE_SAMPLES)
        with_masks = probe.filter_labels(
            field, fo.ViewField("mask").exists() | fo.ViewField("mask_path").exists()
        )
        if with_masks.count(f"{field}.detections") > 0:
            found.append(field)
    return found


def has_mask_targets(samples, field: str) -> bool:
    """Whether a Segmentation field's ids have class names (its own or the dataset default)."""
    return bool(samples.get_mask_targets(field))


def dropdown(inputs, name, values, label, description=None, default=None, required=None):
    """A dropdown of ``values``; required unless it has a default (used when left out)."""
    choices = types.DropdownView()
    for value in values:
        choices.add_choice(value, label=value)
    default = default if default in values else None
    return inputs.enum(
        name,
        choices.values(),
        default=default,
        required=default is None if required is None else required,
        label=label,
        description=description,
        view=choices,
    )


def radio(inputs, name, options, label, default, description=None):
    """A radio group of ``options`` (value -> label); required when it has no default."""
    group = types.RadioGroup()
    for value, text in options.items():
        group.add_choice(value, label=text)
    return inputs.enum(
        name,
        group.values(),
        default=default,
        required=default is None,
        label=label,
        description=description,
        view=group,
    )


def presets(task: str) -> list[str]:
    """Names of the model presets for ``task`` (``"mask"`` or ``"semantic"``).

    Reads the preset table only: no model library is imported.
    """
    weights = import_library("fiftyone_ssa.models.weights")
    return [p.name for p in weights.PRESETS.values() if p.task == task]


def missing_weights(name: str) -> str | None:
    """The message naming a preset's / Hugging Face id's missing weights, or None if present."""
    weights = import_library("fiftyone_ssa.models.weights")
    return None if weights.is_present(name) else weights.missing_weights_message(name)


def device_input(inputs: types.Object, ctx) -> str | None:
    """The device field; returns the torch device, or None for automatic."""
    inputs.str(
        "device",
        default="auto",
        required=False,
        label="Device",
        description="auto (CUDA when available), cpu, cuda or cuda:N",
    )
    device = ctx.params.get("device") or "auto"
    if not DEVICE_PATTERN.match(str(device)):
        block(inputs, "device_error", f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return None if device == "auto" else device


def backend_input(inputs: types.Object, ctx) -> None:
    """Where the run goes: this process, or Ray actors (then the cluster's address)."""
    radio(
        inputs,
        "backend",
        {
            "local": "Here (the App's server, or the delegated operations worker)",
            "ray": "Ray actors (models loaded once per actor; needs fiftyone-ssa[ray])",
        },
        label="Where to run",
        default="local",
    )
    if ctx.params.get("backend") == "ray":
        inputs.str(
            "ray_address",
            required=False,
            label="Ray cluster",
            description="empty: Ray starts on this machine; auto: the cluster of `ray start`; "
            "or HOST:PORT",
        )


def backend_params(ctx) -> dict:
    """``apply_ssa`` / ``apply_ssa_engine`` keyword arguments of :func:`backend_input`."""
    if ctx.params.get("backend", "local") != "ray":
        return {}
    return {"backend": "ray", "ray_address": ctx.params.get("ray_address") or None}


def batch_size_input(inputs: types.Object, default: int = 1) -> None:
    inputs.int(
        "batch_size",
        default=default,
        required=False,
        min=1,
        label="Batch size",
        description="images per model call",
    )


def whole_number_check(inputs: types.Object, ctx, names=("top_k", "batch_size", "points_per_side")):
    """Blocks a fractional value a Python caller passed for an integer parameter (the App's own
    inputs send whole numbers); the run would cut ``top_k=2.5`` to 2 without a word."""
    for name in names:
        value = ctx.params.get(name)
        if isinstance(value, float) and not value.is_integer():
            block(inputs, f"{name}_error", f"{name} must be a whole number, but got {value!r}")


def output_field_inputs(
    inputs: types.Object,
    ctx,
    outputs: dict[str, type],
    input_fields: set[str],
    default: str,
) -> str | None:
    """The label field name with its checks; returns the name when usable.

    ``outputs`` maps every field the run writes (from the label field name, already resolved
    by the caller through ``ctx.params``) to its label type. An existing output field shows a
    warning and requires choosing ``if_exists``: overwrite, or label only samples without it.

    Args:
        inputs: the form.
        ctx: the execution context.
        outputs: output field -> label class.
        input_fields: fields the run reads (an output may not be one of them).
        default: default label field name.
    """
    inputs.str(
        "label_field",
        default=default,
        required=False,
        label="Label field",
        description="where the results are written",
    )
    label_field = ctx.params.get("label_field", default)
    if not isinstance(label_field, str) or not label_field:
        block(inputs, "label_field_error", "Choose a label field name")
        return None
    if not usable_field_name(label_field):
        block(
            inputs,
            "label_field_error",
            f"{label_field!r} is not a usable field name: ASCII letters, digits and "
            "underscores, starting with a letter",
        )
        return None
    clash = sorted(set(outputs) & input_fields)
    if clash:
        block(
            inputs,
            "label_field_error",
            f"The run would write {clash[0]!r}, which it also reads; choose another label field",
        )
        return None
    dataset = ctx.dataset
    existing = []
    for field, label_type in outputs.items():
        held = label_type_name(dataset, field)
        if held is None:
            continue
        if held != label_type.__name__:
            block(
                inputs,
                "label_field_error",
                f"Field {field!r} exists and holds {held}, not {label_type.__name__}; "
                "choose another label field",
            )
            return None
        existing.append(field)
    if existing:
        notice(
            inputs,
            "label_field_exists",
            f"{', '.join(repr(f) for f in existing)} already exist on this dataset: choose "
            "whether to overwrite them or to label only the samples without them",
        )
        radio(
            inputs,
            "if_exists",
            {
                "overwrite": "Overwrite the existing labels",
                "skip_existing": "Label only samples that have none",
            },
            label="Existing labels",
            default=None,
        )
    return label_field


def if_exists_choice(overwrite: bool, skip_existing: bool) -> str | None:
    """The form's ``if_exists`` value for a Python caller's flags (one at most)."""
    if overwrite and skip_existing:
        raise ValueError("pass overwrite=True or skip_existing=True, not both")
    return "overwrite" if overwrite else "skip_existing" if skip_existing else None


def if_exists_flags(ctx) -> dict[str, bool]:
    """``overwrite`` / ``skip_existing`` from the form's ``if_exists`` choice."""
    choice = ctx.params.get("if_exists")
    return {"overwrite": choice == "overwrite", "skip_existing": choice == "skip_existing"}


def target_samples(ctx):
    """The samples the operator works on: ``ctx.target_view()``, and on a grouped dataset its
    slice the App shows (the group slice selector's), since labels go on image samples."""
    samples = ctx.target_view()
    if samples.media_type == "group":
        samples = samples.select_group_slices(ctx.group_slice or samples.group_slice)
    return samples


def target_input(inputs: types.Object, ctx) -> None:
    """The choice of samples (dataset, current view, selection); blocks an empty choice, which
    the run would only refuse once executed (or queued)."""
    inputs.view_target(ctx)
    if not target_samples(ctx).limit(1).count():
        block(
            inputs, "target_error", "No samples to work on: the chosen view or selection is empty"
        )


def require_dataset(inputs: types.Object, ctx) -> bool:
    """Blocks the form when no dataset is open; returns whether one is."""
    if ctx.dataset is None:
        block(inputs, "dataset_error", "Open a dataset first")
        return False
    return True


class SSAOperator(foo.Operator):
    """Common behaviour: delegation choice and the Python ``__call__`` plumbing.

    From the App, runs default to delegated execution when ``default_delegated`` (the App
    offers the choice); from Python, ``delegate=True`` queues the run and ``delegate=False``
    runs it at once.
    """

    default_delegated = True

    def _config(self, name: str, label: str, description: str) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=name,
            label=label,
            description=description,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=self.default_delegated,
        )

    def resolve_delegation(self, ctx):
        delegate = ctx.params.get("delegate")
        return None if delegate is None else bool(delegate)

    def _call(self, sample_collection, params: dict, delegate: bool):
        params = {k: v for k, v in params.items() if v is not None}
        params["delegate"] = bool(delegate)
        if sample_collection is None:
            ctx = {}
        elif isinstance(sample_collection, fo.Dataset):
            ctx = {"dataset": sample_collection}
        else:
            ctx = {"view": sample_collection.view()}
        return foo.execute_operator(self.uri, ctx, params=params)

    @staticmethod
    def _finish(ctx, colors: bool = False) -> None:
        """Reloads the App's dataset after an immediate run.

        Args:
            ctx: the execution context.
            colors: also show the dataset's colour scheme, which a labelling run extends with
                its fields' class colours (the App keeps the scheme it loaded otherwise).
        """
        if ctx.delegated:
            return
        ctx.trigger("reload_dataset")
        scheme = ctx.dataset.app_config.color_scheme if colors else None
        if scheme is not None:
            params = {"color_by": scheme.color_by, "opacity": scheme.opacity}
            params = {k: v for k, v in params.items() if v is not None}
            # The App's builtin operator merges the other parameters into its scheme as given.
            ctx.trigger("set_color_scheme", params={**params, "fields": scheme.fields or []})


def run_summary_result(summary) -> dict:
    """The operator result of a labelling run (``fiftyone_ssa``'s ``SSARunSummary``)."""
    return {
        "label_field": summary.label_field,
        "num_labelled": summary.num_labelled,
        "num_failed": len(summary.failures),
        "num_skipped": summary.skipped_existing,
        "num_kept_reviewed": summary.kept_reviewed,
        "failures": [f"{s.filepath}: {s.error}" for s in summary.failures[:20]],
    }


def run_summary_output(title: str, results: dict | None) -> types.Property:
    """The App's view of :func:`run_summary_result`, headed ``title``.

    Args:
        title: the dialog's heading.
        results: the run's result (``ctx.results``; the App sends it when it shows the
            dialog): the "First failures" list is shown only when it lists some.
    """
    outputs = types.Object()
    outputs.str("label_field", label="Label field")
    outputs.int("num_labelled", label="Samples labelled")
    outputs.int("num_failed", label="Samples failed")
    outputs.int("num_skipped", label="Samples skipped (already labelled)")
    if (results or {}).get("num_kept_reviewed"):
        outputs.int("num_kept_reviewed", label="Samples kept (reviewed)")
    if (results or {}).get("failures"):
        outputs.list("failures", types.String(), label="First failures")
    return types.Property(outputs, view=types.View(label=title))
