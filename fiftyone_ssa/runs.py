"""Writing results to samples: one update per sample, and recorded per-sample failures."""

from __future__ import annotations

from typing import Any

import fiftyone as fo


def error_field(label_field: str) -> str:
    """The field recording why a sample could not be labelled into ``label_field``."""
    return f"{label_field}_error"


def write_sample_fields(
    dataset: fo.Dataset, sample_id: str, values: dict[str, Any], clear: list[str] = ()
) -> None:
    """Sets several fields of one sample in a single database update.

    Either every field is written or none is, so an interrupted run never leaves a
    half-labelled sample.

    Args:
        dataset: the dataset.
        sample_id: the sample's id.
        values: field name -> value.
        clear: fields to reset to None in the same update when they exist (e.g. a previous
            error).
    """
    sample = dataset[sample_id]
    schema = dataset.get_field_schema()
    updates = dict(values)
    for name in clear:
        if name in schema and name not in updates:
            updates[name] = None
    sample.update_fields(updates, expand_schema=True, dynamic=True)
    sample.save()


def record_failure(dataset: fo.Dataset, sample_id: str, label_field: str, message: str) -> None:
    """Stores why a sample failed in ``<label_field>_error`` (filterable in the App)."""
    sample = dataset[sample_id]
    sample[error_field(label_field)] = message
    sample.save()
