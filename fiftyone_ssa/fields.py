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
# SSA on a CPU: a 480x720 photo in about 11 s on 2 cores (benchmarks/RESULTS.md, "Mask
# branches"); used by the demo without a GPU and by ``fiftyone-ssa run --light``.
LIGHT_SEMANTIC_BRANCH = "segformer-b0-ade20k"
LIGHT_MASK_BRANCH = "edgetam"
LIGHT_MASK_OPTIONS = {"points_per_side": 16, "crop_n_layers": 0}

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


def ssa_branches(
    semantic_branch: str | None, mask_branch: str | None, mask_options: dict | None, light: bool
) -> tuple[str, str, dict]:
    """The branches of an SSA run and its mask settings: the branches given, else the light
    CPU preset's (``light``) or the defaults. The light preset's mask settings go under
    ``mask_options`` only when its mask branch is the one used.

    Returns:
        ``(semantic_branch, mask_branch, mask_options)``.
    """
    options = dict(mask_options or {})
    if light and not mask_branch:
        options = {**LIGHT_MASK_OPTIONS, **options}
    semantic = semantic_branch or (LIGHT_SEMANTIC_BRANCH if light else DEFAULT_SEMANTIC_BRANCH)
    mask = mask_branch or (LIGHT_MASK_BRANCH if light else DEFAULT_MASK_BRANCH)
    return semantic, mask, options


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


# Review (``fiftyone_ssa.labelling.apply_review``): what a run and a review record on the
# Detections field a person corrects.
# On the Detections label (the container): {detection id: label} of every mask the run wrote,
# written by the run itself, so that a review can tell relabelled, deleted and added masks.
RUN_LABELS_ATTRIBUTE = "run_labels"
# On the Detections label: when a review was last applied to the sample (a reviewed sample).
REVIEWED_AT_ATTRIBUTE = "reviewed_at"
# On each corrected detection: True, and the label the run gave it (None for an added mask).
REVIEWED_ATTRIBUTE = "reviewed"
LABEL_BEFORE_REVIEW_ATTRIBUTE = "label_before_review"


def before_review_field(segmentation: str) -> str:
    """The copy of a Segmentation as the run painted it, kept on reviewed samples."""
    return f"{segmentation}_before_review"


def source_samples(samples):
    """The samples a patches view shows (the review queue is one), else ``samples`` itself.

    Raises:
        ValueError: a frames or clips view.
    """
    if samples._is_patches:
        return samples._root_dataset.select(samples.distinct("sample_id"))
    if samples._is_generated:
        raise ValueError(
            "Expected a dataset, a view of its samples or a patches view, but got a frames or "
            "clips view"
        )
    return samples


def review_fields(samples, detections_field: str) -> tuple[str | None, str | None]:
    """The Segmentation painted from a run's Detections field, and the map it was painted on.

    SSA (``<label_field>_masks``): the Segmentation ``<label_field>``, painted on the branch
    map ``<label_field>_branch`` (None when the collection has no such field). SSA-engine
    (``<label_field>``): ``<label_field>_seg``, painted on zeros (None: the base is zeros), or
    (None, None) when the run wrote no Segmentation.

    Args:
        samples: a FiftyOne dataset or view.
        detections_field: the run's Detections field.

    Returns:
        (Segmentation field or None, base field or None).
    """
    schema = samples._dataset.get_field_schema()
    stem = detections_field.removesuffix("_masks")
    if stem != detections_field and _holds(schema, stem, "Segmentation"):
        base = branch_field(stem)
        return stem, base if _holds(schema, base, "Segmentation") else None
    painted = segmentation_field(detections_field)
    return (painted, None) if _holds(schema, painted, "Segmentation") else (None, None)


def _holds(schema: dict, name: str, label_type: str) -> bool:
    doc_type = getattr(schema.get(name), "document_type", None)
    return doc_type is not None and doc_type.__name__ == label_type


# Review queue (labelling/review_queue.py): the most doubtful masks by ``review_score``.
DEFAULT_REVIEW_FIELD = masks_field(DEFAULT_SSA_FIELD)
DEFAULT_REVIEW_SIZE = 50
REVIEW_BY = ("masks", "samples")


def review_view_name(label_field: str, by: str = "masks") -> str:
    """The default name of the saved review view of ``label_field`` (one per ``by``)."""
    return f"review-{label_field}" if by == "masks" else f"review-{label_field}-samples"
