"""mIoU evaluation (mmsegmentation's definition) of Segmentation fields against a ground truth.

:mod:`~fiftyone_ssa.evaluation.miou` is the evaluation (a FiftyOne segmentation evaluation
method, stored as an evaluation run), :mod:`~fiftyone_ssa.evaluation.compare` evaluates several
fields side by side and plots them, :mod:`~fiftyone_ssa.evaluation.report` formats the tables.
"""

# Evaluation runs stored by earlier versions name their config class by this module's path.
from fiftyone_ssa.evaluation.miou import (  # noqa: F401
    MIoUEvaluation,
    MIoUEvaluationConfig,
    MIoUResults,
    check_evaluable,
    check_ground_truth_targets,
    evaluate_miou,
)
