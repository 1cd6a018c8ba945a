"""Output field names, default settings and their validation: one home, read by the library,
the CLI and the plugin's forms.

Imports nothing heavy (no torch, no FiftyOne, no model library), so the CLI's argument parsing
and the App's forms can read it at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# Models.
DEFAULT_SEMANTIC_BRANCH = "segformer-b5-ade20k"
DEFAULT_MASK_BRANCH = "sam-vit-h"
DEFAULT_SPACY_MODEL = "en_core_web_sm"

# Run settings.
DEFAULT_SSA_FIELD = "ssa"
DEFAULT_ENGINE_FIELD = "ssa_engine"
DEFAULT_BATCH_SIZE = 1
DEFAULT_NUM_WORKERS = 2
DEFAULT_TOP_K = 3
# Samples per block the Ray backend hands to an actor.
DEFAULT_RAY_BLOCK_SIZE = 8
DEFAULT_EVAL_KEY = "miou"
DEFAULT_IGNORE_INDEX = 255

FIELD_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_field_name(label_field: Any) -> None:
    """Raises ValueError (one line) unless ``label_field`` is a plain top-level field name."""
    if not isinstance(label_field, str) or not FIELD_NAME_PATTERN.fullmatch(label_field):
        raise ValueError(
            "Expected `label_field` to be a top-level field name (letters, digits and "
            f"underscores, starting with a letter), but got {label_field!r}"
        )


def check_field_in_view(samples, name: str, what: str = "field") -> dict:
    """Raises ValueError (one line) unless the collection shows the field ``name``.

    A field the dataset has but the view hides (``exclude_fields`` / ``select_fields``) is
    reported as such, not as missing.

    Args:
        samples: a FiftyOne dataset or view.
        name: the field's name (embedded fields with dots).
        what: how the message names the field (``"semantic_branch field"``).

    Returns:
        The collection's flat field schema.
    """
    schema = samples.get_field_schema(flat=True)
    if name in schema:
        return schema
    if name in samples._dataset.get_field_schema(flat=True):
        raise ValueError(
            f"{what} {name!r} exists on the dataset but this view excludes it; keep it in "
            "the view (select_fields / exclude_fields) or use the whole dataset"
        )
    raise ValueError(f"{what} {name!r} does not exist on the dataset")


def check_label_field(samples, name: str, label_type: type, role: str) -> None:
    """Raises ValueError (one line) unless ``name`` is a field holding ``label_type`` labels."""
    schema = check_field_in_view(samples, name, f"{role} field")
    doc_type = getattr(schema[name], "document_type", None)
    if doc_type is None or not issubclass(doc_type, label_type):
        got = doc_type.__name__ if doc_type else type(schema[name]).__name__
        raise ValueError(f"{role} field {name!r} holds {got}, expected {label_type.__name__}")


def masks_field(label_field: str) -> str:
    """SSA's Detections field, one detection per mask."""
    return f"{label_field}_masks"


def branch_field(label_field: str) -> str:
    """SSA's Segmentation of the semantic branch alone."""
    return f"{label_field}_branch"


def segmentation_field(label_field: str) -> str:
    """SSA-engine's optional Segmentation of its painted masks."""
    return f"{label_field}_seg"


def error_field(label_field: str) -> str:
    """The field recording why a sample could not be labelled into ``label_field``."""
    return f"{label_field}_error"


def evaluation_keys(eval_key: str | None, pred_fields: Sequence[str]) -> dict[str, str | None]:
    """The evaluation key of each prediction field.

    One field keeps ``eval_key`` as is; with several, field ``f`` is stored under
    ``<eval_key>_<f>`` (dots in ``f`` become underscores). No ``eval_key``: nothing is stored.

    Raises:
        ValueError: if two fields would share a key.
    """
    if eval_key is None:
        return dict.fromkeys(pred_fields)
    if len(pred_fields) == 1:
        return {pred_fields[0]: eval_key}
    keys = {field: f"{eval_key}_{field.replace('.', '_')}" for field in pred_fields}
    if len(set(keys.values())) != len(keys):
        raise ValueError(f"Expected distinct evaluation keys, but got {keys}")
    return keys
