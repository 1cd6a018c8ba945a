"""SA-1B in and out: the ``import_sa1b`` and ``export_sa1b`` operators."""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators.types as types

from .forms import (
    SSAOperator,
    block,
    dropdown,
    label_fields,
    label_type_name,
    markdown_text,
    notice,
    require_dataset,
    target_input,
    target_samples,
    usable_field_name,
)
from .library import ProgressReporter, import_library

SA1B_SUFFIXES = (".jpg", ".jpeg", ".png", ".json")


def _sa1b_files(directory: str, limit: int = 1) -> int:
    """How many image / JSON files ``directory`` holds, counting up to ``limit``."""
    found = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file() and entry.name.lower().endswith(SA1B_SUFFIXES):
                found += 1
                if found >= limit:
                    break
    return found


class ImportSA1B(SSAOperator):
    """Creates a dataset from an SA-1B directory (``sa_<id>.jpg`` + ``sa_<id>.json``)."""

    @property
    def config(self):
        return self._config(
            "import_sa1b",
            "Import SA-1B",
            "Create a dataset from an SA-1B directory, one Detection per mask",
        )

    def __call__(
        self,
        dataset_dir: str,
        name: str,
        label_field: str = "sa1b",
        overwrite: bool = False,
        delegate: bool = False,
    ):
        """Imports ``dataset_dir`` as the persistent dataset ``name`` through the operator."""
        params = {
            "dataset_dir": dataset_dir,
            "name": name,
            "label_field": label_field,
            "overwrite": overwrite,
        }
        return self._call(None, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str(
            "dataset_dir",
            required=True,
            label="SA-1B directory",
            description=markdown_text(
                "a directory on the server with sa_<id>.jpg and sa_<id>.json files"
            ),
        )
        directory = ctx.params.get("dataset_dir")
        if directory:
            path = os.path.expanduser(directory)
            if not os.path.isdir(path):
                block(inputs, "dataset_dir_error", f"{directory!r} is not a directory")
            elif _sa1b_files(path) == 0:
                block(inputs, "dataset_dir_error", f"{directory!r} holds no SA-1B images or JSON")
        inputs.str("name", required=True, label="Dataset name")
        name = ctx.params.get("name")
        inputs.bool("overwrite", default=False, label="Replace an existing dataset of that name")
        if name and fo.dataset_exists(name) and not ctx.params.get("overwrite", False):
            block(
                inputs,
                "name_exists",
                f"Dataset {name!r} already exists: tick replace or choose another name",
                warning=True,
            )
        inputs.str("label_field", default="sa1b", required=False, label="Label field")
        label_field = ctx.params.get("label_field", "sa1b")
        if not usable_field_name(label_field):
            block(inputs, "label_field_error", f"{label_field!r} is not a usable field name")
        return types.Property(inputs, view=types.View(label="Import SA-1B"))

    def execute(self, ctx):
        sa1b = import_library("fiftyone_ssa.sa1b")
        params = ctx.params
        dataset = sa1b.import_sa1b(
            os.path.expanduser(params["dataset_dir"]),
            name=params["name"],
            label_field=params.get("label_field", "sa1b"),
            overwrite=bool(params.get("overwrite", False)),
            progress=ProgressReporter(ctx, "images").fiftyone_progress(),
            persistent=True,
        )
        summary = dataset.info.get("sa1b_import", {})
        if not ctx.delegated:
            ctx.trigger("open_dataset", {"dataset": dataset.name})
        return {
            "dataset": dataset.name,
            "num_samples": summary.get("num_samples", len(dataset)),
            "num_annotations": summary.get("num_annotations"),
            "num_errors": len(summary.get("errors", {})),
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("dataset", label="Dataset")
        outputs.int("num_samples", label="Images")
        outputs.int("num_annotations", label="Masks")
        outputs.int("num_errors", label="Files skipped")
        return types.Property(outputs, view=types.View(label="SA-1B imported"))


class ExportSA1B(SSAOperator):
    """Writes one SA-1B JSON per sample from a Detections field (or SSA's Segmentation)."""

    @property
    def config(self):
        return self._config(
            "export_sa1b",
            "Export SA-1B JSON",
            "Write SA-1B JSON (with class_name, class_proposals) from a Detections field, or "
            "SSA's *_semantic.json from a Segmentation field",
        )

    def __call__(
        self,
        sample_collection,
        export_dir: str,
        label_field: str,
        masks_field: str | None = None,
        overwrite: bool = False,
        delegate: bool = False,
    ):
        """Exports ``label_field`` of ``sample_collection`` to ``export_dir``."""
        params = {
            "export_dir": export_dir,
            "label_field": label_field,
            "masks_field": masks_field,
            "overwrite": overwrite,
        }
        return self._call(sample_collection, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if not require_dataset(inputs, ctx):
            return types.Property(inputs)
        target_input(inputs, ctx)
        dataset = ctx.dataset
        detections = label_fields(dataset, fo.Detections)
        segmentations = label_fields(dataset, fo.Segmentation)
        fields = detections + segmentations
        if not fields:
            block(
                inputs, "label_field_error", "This dataset has no Detections or Segmentation field"
            )
            return types.Property(inputs)
        label_field = ctx.params.get("label_field")
        if label_field and label_field not in fields:
            held = label_type_name(dataset, label_field)
            reason = "does not exist" if held is None else f"holds {held}"
            block(
                inputs,
                "label_field_error",
                f"Field {label_field!r} {reason}: expected Detections (SA-1B annotations) or "
                "Segmentation (SSA's semantic RLE files)",
            )
        dropdown(
            inputs,
            "label_field",
            fields,
            "Label field",
            description="Detections: SA-1B JSON with class_name / class_proposals; "
            "Segmentation: <image>_semantic.json as the original SSA wrote",
        )
        if label_field in segmentations:
            default = f"{label_field}_masks" if f"{label_field}_masks" in detections else None
            dropdown(
                inputs,
                "masks_field",
                detections,
                "Masks field (optional)",
                description="Detections written as the files' annotations",
                default=default,
                required=False,
            )
        inputs.str(
            "export_dir",
            required=True,
            label="Export directory",
            description="a directory on the server (created if needed)",
        )
        export_dir = ctx.params.get("export_dir")
        inputs.bool("overwrite", default=False, label="Replace existing files")
        if export_dir:
            path = os.path.expanduser(export_dir)
            if os.path.exists(path) and not os.path.isdir(path):
                block(inputs, "export_dir_error", f"{export_dir!r} is a file, not a directory")
            elif os.path.isdir(path) and os.listdir(path):
                notice(
                    inputs,
                    "export_dir_warning",
                    f"{export_dir!r} is not empty: existing files of the same name are "
                    + ("replaced" if ctx.params.get("overwrite") else "an error unless replaced"),
                )
        return types.Property(inputs, view=types.View(label="Export SA-1B JSON"))

    def execute(self, ctx):
        sa1b = import_library("fiftyone_ssa.sa1b")
        params = ctx.params
        samples = target_samples(ctx)
        label_field = params["label_field"]
        options = {}
        if label_type_name(ctx.dataset, label_field) == "Segmentation" and params.get(
            "masks_field"
        ):
            options["masks_field"] = params["masks_field"]
        paths = sa1b.export_sa1b(
            samples,
            os.path.expanduser(params["export_dir"]),
            label_field,
            overwrite=bool(params.get("overwrite", False)),
            progress=ProgressReporter(ctx, "files").fiftyone_progress(),
            **options,
        )
        return {"export_dir": params["export_dir"], "num_files": len(paths)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("export_dir", label="Directory")
        outputs.int("num_files", label="Files written")
        return types.Property(outputs, view=types.View(label="SA-1B exported"))
