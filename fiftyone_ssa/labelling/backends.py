"""Where a validated labelling request runs: in this process (or this rank of a torchrun
launch) with :func:`.loop.execute_labelling_run`, or on Ray actors with
:func:`.ray_backend.execute_ray_run`; both label samples through :func:`.loop.label_samples`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fiftyone_ssa.labelling import distributed
from fiftyone_ssa.labelling.loop import LabellingJob, execute_labelling_run
from fiftyone_ssa.labelling.ray_backend import execute_ray_run
from fiftyone_ssa.labelling.record import SSARunSummary


def run_labelling(
    samples,
    build_job: Callable[[Any, Any], LabellingJob],
    run_key: str,
    config: dict[str, Any],
    device: Any = None,
    backend: str = "local",
    ray_options: dict[str, Any] | None = None,
    **options,
) -> SSARunSummary:
    """Runs a validated request on the chosen backend.

    Args:
        samples: a FiftyOne dataset or view.
        build_job: ``(samples, device) -> LabellingJob``, loading the models; picklable for
            ``backend="ray"`` (each Ray actor builds its own job once).
        run_key: the run's key.
        config: the configuration behind the key.
        device: the user's device (None: each process's default, its own GPU under torchrun).
        backend: ``"local"`` (this process, or this rank of a torchrun launch) or ``"ray"``.
        ray_options: :func:`.ray_backend.execute_ray_run`'s Ray settings.
        **options: :func:`.loop.execute_labelling_run`'s keyword arguments.
    """
    if backend == "ray":
        return execute_ray_run(
            samples, build_job, run_key, config, device=device, **(ray_options or {}), **options
        )
    job = build_job(samples, distributed.run_device(device))
    return execute_labelling_run(samples, job, run_key, config, **options)
