"""Semantic Segment Anything (SSA and SSA-engine) for FiftyOne.

The public functions are imported lazily so that ``import fiftyone_ssa`` loads neither FiftyOne
nor any model library.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "apply_ssa": "fiftyone_ssa.labelling.ssa",
    "apply_ssa_engine": "fiftyone_ssa.labelling.engine",
    "evaluate_miou": "fiftyone_ssa.evaluation.miou",
    "compare_miou": "fiftyone_ssa.evaluation.compare",
    "apply_review": "fiftyone_ssa.labelling.apply_review",
    "review_report": "fiftyone_ssa.evaluation.review_report",
    "import_sa1b": "fiftyone_ssa.sa1b",
    "export_sa1b": "fiftyone_ssa.sa1b",
    "list_branches": "fiftyone_ssa.models.registry",
    "create_branch": "fiftyone_ssa.models.registry",
    "register_branch": "fiftyone_ssa.models.registry",
    "review_queue": "fiftyone_ssa.labelling.review_queue",
    "send_for_review": "fiftyone_ssa.labelling.annotation_tool",
    "load_review": "fiftyone_ssa.labelling.annotation_tool",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fiftyone_ssa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
