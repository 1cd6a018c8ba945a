"""The record of a labelling run: its run key, its output fields, its summary.

A run's *run key* is a short hash of what decides its labels (the label field, the branches and
their options; not the batch size, device or view). Every sample a run labels carries the key on
its main label (``<label_field>.run_key``), written in the same single database update as the
rest of its labels. Re-running the same command therefore finds exactly the samples that are
still missing, whether the last run crashed, a rank was killed, or the view grew.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_ssa.fields import (
    REVIEWED_AT_ATTRIBUTE,
    RUN_LABELS_ATTRIBUTE,
    check_field_name,
    error_field,
)

# ``dataset.info`` key under which each label field's last run configuration is kept.
RUNS_INFO_KEY = "fiftyone_ssa_runs"
RUN_KEY_ATTRIBUTE = "run_key"
# The output field names runs accept: top-level, ASCII letter first (the plugin's forms too).
# Above this many mask pixels per sample, instance masks go to disk (``mask_path``).
MAX_INLINE_MASK_PIXELS = 8_000_000


@dataclass
class SampleSummary:
    """What one sample got."""

    sample_id: str
    filepath: str
    num_masks: int = 0
    classes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class SSARunSummary:
    """The outcome of a run: per-sample summaries, skipped samples and their reasons.

    Attributes:
        label_field: the output field.
        samples: one entry per sample labelled or failed (after :meth:`compact`, failures only).
        skipped_existing: samples left alone because they were already labelled.
        run_key: the run's key.
        unlisted_labelled: labelled samples counted but not listed in ``samples``.
        kept_reviewed: samples the run would have relabelled but left alone because a
            person's review was applied to them (``discard_reviews=False``).
    """

    label_field: str
    samples: list[SampleSummary] = field(default_factory=list)
    skipped_existing: int = 0
    run_key: str = ""
    unlisted_labelled: int = 0
    kept_reviewed: int = 0

    @property
    def failures(self) -> list[SampleSummary]:
        return [s for s in self.samples if s.error]

    @property
    def num_labelled(self) -> int:
        return sum(1 for s in self.samples if not s.error) + self.unlisted_labelled

    def compact(self) -> SSARunSummary:
        """The same counts with only the failures listed (what ranks send each other)."""
        return SSARunSummary(
            self.label_field,
            self.failures,
            self.skipped_existing,
            self.run_key,
            self.num_labelled,
            self.kept_reviewed,
        )

    def merge(self, others: list[SSARunSummary]) -> SSARunSummary:
        """One summary of several ranks' runs (their samples, in rank order)."""
        merged = SSARunSummary(
            self.label_field, [], self.skipped_existing, self.run_key, 0, self.kept_reviewed
        )
        for summary in [self, *others]:
            merged.samples.extend(summary.samples)
            merged.unlisted_labelled += summary.unlisted_labelled
        return merged

    def __str__(self) -> str:
        text = (
            f"{self.num_labelled} samples labelled into '{self.label_field}', "
            f"{len(self.failures)} failed, {self.skipped_existing} skipped (already labelled)"
        )
        if self.kept_reviewed:
            text += f", {self.kept_reviewed} kept (reviewed)"
        if self.run_key:
            text += f" [run key {self.run_key}]"
        for failure in self.failures[:20]:
            text += f"\n  {failure.filepath}: {failure.error}"
        if len(self.failures) > 20:
            text += f"\n  ... and {len(self.failures) - 20} more (filter on '{error_field(self.label_field)}')"
        return text


def check_target(samples, label_field: str) -> None:
    """Raises ValueError (one line) for a collection that cannot be labelled (not images, a
    generated view, empty) or an unusable output field name."""
    if samples._is_generated:
        raise ValueError(
            "Expected a dataset or a view of its samples, but got a patches, frames or clips "
            "view (labels written there would not reach its source dataset)"
        )
    if len(samples) == 0:
        raise ValueError("the view is empty: nothing to label")
    if samples.media_type != "image":
        raise ValueError(
            f"Expected a collection of images, but got media type {samples.media_type!r} (for a "
            "grouped dataset, select an image slice with select_group_slices)"
        )
    check_field_name(label_field)


def mask_directory(samples, output_dir: str | None = None) -> str:
    """Where a run writes instance masks too large to keep in the database.

    Args:
        samples: the collection being labelled.
        output_dir: the user's choice; default ``<FiftyOne dataset dir>/fiftyone-ssa/<slug>``
            (the dataset's slug: a name like ``../x`` cannot lead outside).

    Returns:
        An absolute path (``~`` expanded): the ``mask_path`` of the labels must still lead to
        their files from the App's server, whatever its working directory.
    """
    root = output_dir or os.path.join(
        fo.config.default_dataset_dir, "fiftyone-ssa", samples._dataset.slug
    )
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def sample_mask_directory(
    mask_root: str, field: str, sample_id: str, run_key: str, num_pixels: int
) -> str | None:
    """Where a sample's instance masks in ``field`` are written: None (kept in the database)
    up to :data:`MAX_INLINE_MASK_PIXELS` mask pixels, else a directory under ``mask_root``.

    A directory per run key: relabelling with other settings leaves the files of the labels it
    replaces alone until the new labels are written.
    """
    if num_pixels <= MAX_INLINE_MASK_PIXELS:
        return None
    return os.path.join(mask_root, field, str(sample_id), run_key)


def spec_name(spec: Any) -> Any:
    """A stable, JSON-able name of a branch specification (strings and paths as they are)."""
    if spec is None or isinstance(spec, (str, int, float, bool)):
        return spec
    if isinstance(spec, os.PathLike):
        return os.fspath(spec)
    if isinstance(spec, (list, tuple)):
        return [spec_name(s) for s in spec]
    if isinstance(spec, dict):
        return {str(k): spec_name(v) for k, v in sorted(spec.items())}
    # Objects are named by their class (functions and classes by themselves).
    named = spec if hasattr(spec, "__qualname__") else type(spec)
    return f"{named.__module__}.{named.__qualname__}"


def make_run_key(config: dict[str, Any]) -> str:
    """The run key of a labelling configuration: 12 hex digits of its SHA-1.

    Args:
        config: what decides the labels (label field, branch specs, options); values are
            normalised with :func:`spec_name`.
    """
    text = json.dumps(spec_name(config), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def check_outputs_free(
    samples,
    label_field: str,
    outputs: dict[str, type],
    run_key: str,
    overwrite: bool,
    skip_existing: bool,
) -> None:
    """Refuses output fields that hold someone else's data; one-line ValueErrors.

    Existing output fields are accepted with ``overwrite``; with ``skip_existing``, or when every
    label in ``label_field`` comes from this very run (resuming it), as long as the other output
    fields hold no labels on the samples the run would label (those without a ``label_field``
    label). A field of another type, and ``overwrite`` with ``skip_existing``, are always
    refused.

    Args:
        samples: the collection to label.
        label_field: the run's main output field (carries the run key).
        outputs: every output field -> the label type the run writes there (``str`` for text).
        run_key: this run's key.
        overwrite: replacing existing labels is allowed.
        skip_existing: samples with a label will be skipped.
    """
    dataset = samples._dataset
    schema = dataset.get_field_schema()
    for name, label_type in outputs.items():
        if name not in schema:
            continue
        doc_type = getattr(schema[name], "document_type", None)
        ok = (
            isinstance(schema[name], fo.StringField)
            if label_type is str
            else doc_type is not None and issubclass(doc_type, label_type)
        )
        if not ok:
            got = doc_type.__name__ if doc_type else type(schema[name]).__name__
            want = "text" if label_type is str else label_type.__name__
            raise ValueError(
                f"field {name!r} already exists and holds {got}, not {want}; choose another "
                "label_field or delete that field"
            )
    if overwrite and skip_existing:
        raise ValueError(
            "pass overwrite=True (--overwrite) or skip_existing=True (--skip-existing), not both"
        )
    existing = [name for name in outputs if name in schema]
    if not existing or overwrite:
        return
    resumable = label_field in schema and not foreign_labels(dataset, label_field, run_key)
    if not (resumable or skip_existing):
        skip_hint = (
            f" or skip_existing=True (--skip-existing) to label only the samples without "
            f"{label_field!r}"
            if label_field in schema
            else ""
        )
        raise ValueError(
            f"field {existing[0]!r} already exists; pass overwrite=True (--overwrite) to replace "
            f"it{skip_hint}, or choose another label_field"
        )
    # The samples still to label are those without a ``label_field`` label: labels in the
    # other output fields there are not a run's (a run writes them all at once) and would be
    # replaced, e.g. a user's own ``<label_field>_masks``.
    for name in existing:
        if name in (label_field, error_field(label_field)):
            continue
        if every_sample(dataset).exists(name).exists(label_field, False).limit(1).count():
            raise ValueError(
                f"field {name!r} holds labels on samples without a {label_field!r} label, which "
                "this run would replace; pass overwrite=True (--overwrite) to replace them, or "
                "choose another label_field"
            )


def every_sample(dataset: fo.Dataset):
    """The samples of every group slice of a grouped dataset (the dataset itself otherwise).

    A grouped dataset's own queries see only its default slice, so labels a run wrote into
    another slice would look absent: refused runs would overwrite them, resumed or
    ``skip_existing`` runs would label them again.
    """
    if dataset.media_type == "group":
        return dataset.select_group_slices(_allow_mixed=True)
    return dataset


def foreign_labels(
    dataset: fo.Dataset, label_field: str, run_key: str, excluding: list | None = None
) -> bool:
    """Whether any sample has a ``label_field`` label that another run wrote.

    Args:
        dataset: the dataset.
        label_field: the run's main output field.
        run_key: this run's key.
        excluding: ids of samples not to count (e.g. those the run relabels).
    """
    others = (
        every_sample(dataset)
        .exists(label_field)
        .match(F(f"{label_field}.{RUN_KEY_ATTRIBUTE}") != run_key)
    )
    if excluding:
        others = others.exclude(excluding)
    return bool(others.limit(1).count())


def pending_samples(
    samples,
    label_field: str,
    run_key: str,
    skip_existing: bool,
    resume: bool,
    review_field: str | None = None,
):
    """The samples a run still has to label.

    Args:
        samples: the collection to label.
        label_field: the run's main output field.
        run_key: this run's key.
        skip_existing: skip samples with any ``label_field`` label.
        resume: skip samples this very run (same run key) already labelled.
        review_field: skip samples whose masks in this Detections field were reviewed
            (``<review_field>.reviewed_at``, see ``apply_review``); None relabels them.
    """
    dataset = samples._dataset
    if review_field is not None:
        samples = samples.exclude(reviewed_samples(dataset, review_field))
    if label_field not in dataset.get_field_schema():
        return samples
    # Matched on the dataset (every group slice): a view may hide the field (select_fields,
    # exclude_fields), and every sample would then look unlabelled.
    if skip_existing:
        done = every_sample(dataset).exists(label_field)
    elif resume:
        done = every_sample(dataset).match(F(f"{label_field}.{RUN_KEY_ATTRIBUTE}") == run_key)
    else:
        return samples
    done_ids = done.values("id")
    return samples.exclude(done_ids) if done_ids else samples


def pending_and_kept(
    samples,
    label_field: str,
    run_key: str,
    skip_existing: bool,
    resume: bool,
    review_field: str | None,
) -> tuple[Any, int]:
    """:func:`pending_samples`, and how many of the samples it leaves out only because their
    review was applied (``review_field``; None: reviews are discarded, none is kept)."""
    pending = pending_samples(samples, label_field, run_key, skip_existing, resume, review_field)
    if review_field is None:
        return pending, 0
    unreviewed = pending_samples(samples, label_field, run_key, skip_existing, resume)
    return pending, unreviewed.count() - pending.count()


def reviewed_samples(dataset: fo.Dataset, review_field: str) -> list:
    """The ids of the samples (every group slice) whose review of ``review_field`` was applied."""
    if review_field not in dataset.get_field_schema():
        return []
    return every_sample(dataset).exists(f"{review_field}.{REVIEWED_AT_ATTRIBUTE}").values("id")


def declare_output_fields(dataset: fo.Dataset, schema: dict[str, tuple[type, dict]]) -> None:
    """Adds the run's output fields and label attributes to the dataset schema.

    Done once, before any sample is written (by rank 0 in a distributed run), so that ranks
    never race to extend the schema and every attribute is filterable in the App.

    Args:
        dataset: the dataset.
        schema: field path (e.g. ``"ssa_masks.detections.area"``) -> (FiftyOne field class,
            keyword arguments of ``add_sample_field``), parents before children.
    """
    existing = dataset.get_field_schema(flat=True)
    for path, (field_type, kwargs) in schema.items():
        if path not in existing:
            dataset.add_sample_field(path, field_type, **kwargs)


def label_schema(label_field: str, label_type: type, attributes: dict[str, Any]) -> dict:
    """The :func:`declare_output_fields` entries of one label field and its attributes.

    Args:
        label_field: the field.
        label_type: ``fo.Segmentation`` or ``fo.Detections`` (attributes then go on every
            detection).
        attributes: attribute name -> FiftyOne field class, or (field class, kwargs).
    """
    schema: dict[str, tuple[type, dict]] = {
        label_field: (fo.EmbeddedDocumentField, {"embedded_doc_type": label_type})
    }
    prefix = f"{label_field}.detections" if label_type is fo.Detections else label_field
    for name, spec in attributes.items():
        field_type, kwargs = spec if isinstance(spec, tuple) else (spec, {})
        schema[f"{prefix}.{name}"] = (field_type, kwargs)
    return schema


def run_labels_schema(detections_field: str) -> dict[str, tuple[type, dict]]:
    """The :func:`declare_output_fields` entry of the run labels a Detections output keeps."""
    return {f"{detections_field}.{RUN_LABELS_ATTRIBUTE}": (fo.DictField, {})}


def record_run_labels(detections: fo.Detections) -> fo.Detections:
    """Keeps on ``detections`` the label the run gave each mask: ``{detection id: label}``
    under ``fields.RUN_LABELS_ATTRIBUTE``, so that a review can tell which masks a person
    relabelled, deleted or added (``fiftyone_ssa.labelling.apply_review``).

    Returns:
        ``detections``, changed in place.
    """
    detections[RUN_LABELS_ATTRIBUTE] = {det.id: det.label for det in detections.detections}
    return detections


def record_run(dataset: fo.Dataset, label_field: str, run_key: str, config: dict) -> None:
    """Keeps the configuration behind ``label_field`` in ``dataset.info`` (for provenance)."""
    runs = dict(dataset.info.get(RUNS_INFO_KEY) or {})
    runs[label_field] = {"run_key": run_key, "config": spec_name(config)}
    dataset.info[RUNS_INFO_KEY] = runs
    dataset.save()
