"""FiftyOne plugin ``@fiftyone-ssa/ssa``: Semantic Segment Anything operators for the App.

FiftyOne loads this module (``py_entry`` in the repository's ``fiftyone.yml``) every time it
lists plugins, so it only defines operators: ``fiftyone_ssa``, torch and the models are
imported inside ``execute``, and nothing global is changed.

Operators (``@fiftyone-ssa/ssa/<name>``): ``run_ssa``, ``run_ssa_engine``, ``evaluate_miou``,
``import_sa1b``, ``export_sa1b``, ``build_review_queue``, ``apply_review``, ``review_report``,
and the ``miou`` metric for FiftyOne's segmentation evaluations.
"""

from .apply_review import ApplyReview, ReviewReport
from .evaluate import EvaluateMIoU, MIoUMetric
from .review_queue import BuildReviewQueue
from .run_engine import RunSSAEngine
from .run_ssa import RunSSA
from .sa1b import ExportSA1B, ImportSA1B

OPERATORS = (
    RunSSA,
    RunSSAEngine,
    EvaluateMIoU,
    MIoUMetric,
    ImportSA1B,
    ExportSA1B,
    ApplyReview,
    ReviewReport,
    BuildReviewQueue,
)


def register(plugin) -> None:
    """Registers every operator on the FiftyOne plugin context."""
    for operator in OPERATORS:
        plugin.register(operator)
