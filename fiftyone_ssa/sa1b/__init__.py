"""SA-1B: ``sa_<id>.jpg`` + ``sa_<id>.json`` (COCO RLE masks) <-> FiftyOne datasets.

:mod:`~fiftyone_ssa.sa1b.importer` reads SA-1B directories into Detections fields;
:mod:`~fiftyone_ssa.sa1b.exporter` writes labelled fields back as SA-1B JSON (with ``class_name``
and ``class_proposals``) or as the original SSA's semantic files.
"""

from fiftyone_ssa.sa1b.exporter import export_sa1b, export_semantic_rles
from fiftyone_ssa.sa1b.importer import (
    IMAGE_ID_FIELD,
    SA1BFileError,
    SA1BImportSummary,
    declare_detection_attributes,
    import_sa1b,
)

__all__ = [
    "IMAGE_ID_FIELD",
    "SA1BFileError",
    "SA1BImportSummary",
    "declare_detection_attributes",
    "export_sa1b",
    "export_semantic_rles",
    "import_sa1b",
]
