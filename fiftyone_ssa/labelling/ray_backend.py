"""Labelling on Ray: a driver hands out small blocks of pending samples to Ray actors.

``apply_ssa(..., backend="ray")`` (``fiftyone-ssa run ... --backend ray``) runs the steps of
:func:`.loop.execute_labelling_run` with Ray instead of torchrun's fixed shards:

1. the driver (this process) lists the pending samples (same run key and resume rules), and
   cuts them, in id order, into blocks of ``block_size``;
2. Ray actors start, each building the run's :class:`.loop.LabellingJob` once (its models loaded
   once per actor, on its own GPU when ``gpus_per_worker`` > 0); the first actor up declares the
   output fields and records the run (:func:`.loop.prepare_dataset`);
3. each actor labels block after block with :func:`.loop.label_samples` -- the per-sample loop
   every backend shares, one atomic database update per sample -- and gets the next block as
   soon as it is free (up to :data:`BLOCKS_IN_FLIGHT` queued), so a slow block holds up only
   its own actor;
4. one actor finishes the dataset-level settings (:func:`.loop.finish_dataset`); the driver
   merges the blocks' summaries and shows the progress (samples done / total, rate, ETA).

Faults: an actor whose process dies is restarted by Ray (up to :data:`MAX_RESTARTS` times),
which runs its unfinished blocks again; the samples the dead process had already written
(they now carry this run's key and changed since the driver listed them) are not written
again, so a sample is written once, fully. When an actor's restarts are spent its blocks go to
the others. When the driver dies its actors die with it, and the same call labels only what
is missing, as every run does.

The actors reach the driver's database: its URI (``fo.config.database_uri``, else the address
of the database this process is connected to) and database name are passed to them as
``FIFTYONE_DATABASE_URI`` / ``FIFTYONE_DATABASE_NAME`` in their ``runtime_env``.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
from collections import deque
from collections.abc import Callable
from datetime import timezone
from typing import Any

import fiftyone as fo
import fiftyone.core.odm as foo
import fiftyone.core.utils as fou
import fiftyone.core.view as fov
from bson import ObjectId

from fiftyone_ssa.fields import DEFAULT_RAY_BLOCK_SIZE, error_field
from fiftyone_ssa.labelling import distributed, record
from fiftyone_ssa.labelling.loop import (
    LabellingJob,
    finish_dataset,
    label_samples,
    prepare_dataset,
)
from fiftyone_ssa.labelling.record import SampleSummary, SSARunSummary
from fiftyone_ssa.models.weights import get_models_dir

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
INSTALL_HINT = 'the Ray backend needs Ray, which is not installed: pip install "fiftyone-ssa[ray]"'
# Samples per block handed to an actor (the default of ``block_size``).
DEFAULT_BLOCK_SIZE = DEFAULT_RAY_BLOCK_SIZE
# Blocks queued on each actor, so that it never waits for the driver between two blocks.
BLOCKS_IN_FLIGHT = 2
# Times Ray restarts an actor whose process died; its unfinished blocks are run again.
MAX_RESTARTS = 4
# Environment variables handed on to the actors besides the database's.
_PASSED_ENV_PREFIXES = ("FIFTYONE_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def import_ray():
    """The ``ray`` module; ImportError with one line saying what to install when it is missing."""
    try:
        import ray
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


def check_backend_options(
    backend: str,
    ray_address: str | None = None,
    ray_workers: int | None = None,
    gpus_per_worker: float | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> None:
    """Raises ValueError (one line) for an unknown backend or bad Ray settings, and ImportError
    (one line) for ``backend="ray"`` without Ray installed."""
    if backend not in BACKENDS:
        raise ValueError(f"Expected `backend` to be one of {BACKENDS}, but got {backend!r}")
    if backend != "ray":
        given = {"ray_address": ray_address, "ray_workers": ray_workers}
        given["gpus_per_worker"] = gpus_per_worker
        named = [name for name, value in given.items() if value is not None]
        if named:
            raise ValueError(f"`{named[0]}` (--{named[0].replace('_', '-')}) needs backend='ray'")
        return
    if distributed.current_ranks().is_distributed:
        raise ValueError(
            "backend='ray' runs from one driver process: start it with python, not torchrun"
        )
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address):
        raise ValueError(f"Expected `ray_address` 'auto' or 'HOST:PORT', but got {ray_address!r}")
    if ray_workers is not None and (
        not isinstance(ray_workers, numbers.Integral)
        or isinstance(ray_workers, bool)
        or ray_workers < 1
    ):
        raise ValueError(f"Expected `ray_workers` to be an integer >= 1, but got {ray_workers!r}")
    if gpus_per_worker is not None and (
        not isinstance(gpus_per_worker, numbers.Real)
        or isinstance(gpus_per_worker, bool)
        or gpus_per_worker < 0
    ):
        raise ValueError(
            f"Expected `gpus_per_worker` to be a number >= 0, but got {gpus_per_worker!r}"
        )
    if (
        not isinstance(block_size, numbers.Integral)
        or isinstance(block_size, bool)
        or block_size < 1
    ):
        raise ValueError(f"Expected `block_size` to be an integer >= 1, but got {block_size!r}")
    import_ray()


def database_environment() -> dict[str, str]:
    """The environment the actors need to use this process's database and models directory.

    Returns:
        ``FIFTYONE_*`` variables of this process, with ``FIFTYONE_DATABASE_URI`` (the configured
        URI, else the address of the database this process is connected to, e.g. the mongod
        FiftyOne started) and ``FIFTYONE_DATABASE_NAME``; ``FIFTYONE_SSA_MODELS_DIR``; the
        Hugging Face offline switches when set.
    """
    uri = fo.config.database_uri
    if uri is None:
        host, port = foo.get_db_client().address
        uri = f"mongodb://{host}:{port}"
    env = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(_PASSED_ENV_PREFIXES) and name != "FIFTYONE_PRIVATE_DATABASE_PORT"
    }
    env["FIFTYONE_DATABASE_URI"] = uri
    env["FIFTYONE_DATABASE_NAME"] = fo.config.database_name
    env["FIFTYONE_SSA_MODELS_DIR"] = str(get_models_dir().absolute())
    return env


def _stamp(value: Any) -> str | None:
    """A sample's ``last_modified_at`` as comparable text (UTC, milliseconds, as stored)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds")


class BlockLabeller:
    """What each Ray actor runs: the run's job, built once, labelling blocks of samples.

    A plain class (Ray wraps it with ``ray.remote``); a restarted actor runs ``__init__`` again.

    Args:
        dataset_name: the dataset.
        view_stages: the serialized stages of the labelled view (empty for the dataset).
        build_job: ``(samples, device) -> LabellingJob``.
        device: the user's device (None: the models' default, this actor's GPU if it has one).
        run_key: the run's key.
        options: ``batch_size``, ``num_workers`` and ``skip_failures`` of the run.
    """

    def __init__(
        self,
        dataset_name: str,
        view_stages: list,
        build_job: Callable[[Any, Any], LabellingJob],
        device: Any,
        run_key: str,
        options: dict[str, Any],
    ):
        distributed.check_device(device)
        self.dataset = fo.load_dataset(dataset_name)
        self.samples = (
            fov.DatasetView._build(self.dataset, view_stages) if view_stages else self.dataset
        )
        self.job = build_job(self.samples, device)
        self.run_key = run_key
        self.options = options
        self.started = False

    def pid(self) -> int:
        """This actor's process id (answered once the models are loaded)."""
        return os.getpid()

    def prepare(self, config: dict, others_remain: bool) -> None:
        """:func:`.loop.prepare_dataset`, before any block is labelled."""
        prepare_dataset(self.dataset, self.job, self.run_key, config, others_remain)

    def label_block(self, block: list[tuple[str, str | None]]) -> tuple[SSARunSummary, Any]:
        """Labels a block of samples, except those an earlier attempt of it wrote.

        Args:
            block: (sample id, its ``last_modified_at`` stamp when the driver listed it).

        Returns:
            The block's summary (failures listed, labelled samples counted) and the job's
            :meth:`~.loop.LabellingJob.shared_state`.
        """
        if not self.started:
            self.dataset.reload()  # the output fields another actor declared
            self.job.start(self.dataset, many_workers=True)
            self.started = True
        label_field = self.job.label_field
        summary = SSARunSummary(label_field, run_key=self.run_key)
        todo = self._not_written(block, summary)
        if todo:
            label_samples(
                self.dataset,
                self.samples.select(todo, ordered=True),
                self.job,
                self.run_key,
                summary,
                self.options["batch_size"],
                self.options["num_workers"],
                self.options["skip_failures"],
                False,
                None,
            )
        return summary.compact(), self.job.shared_state()

    def _not_written(self, block: list[tuple[str, str | None]], summary: SSARunSummary) -> list:
        """The ids of ``block`` still to label; those an earlier attempt of this block wrote
        (changed since the driver listed them, and now holding this run's label or failure)
        are counted in ``summary`` instead."""
        label_field = self.job.label_field
        errors = error_field(label_field)
        projection = {"last_modified_at": 1, "filepath": 1, errors: 1}
        projection[f"{label_field}.{record.RUN_KEY_ATTRIBUTE}"] = 1
        docs = self.dataset._sample_collection.find(
            {"_id": {"$in": [ObjectId(sample_id) for sample_id, _ in block]}}, projection
        )
        by_id = {str(doc["_id"]): doc for doc in docs}
        todo = []
        for sample_id, stamp in block:
            doc = by_id.get(sample_id)
            if doc is None:  # deleted since the driver listed it
                continue
            if _stamp(doc.get("last_modified_at")) != stamp:
                label = doc.get(label_field) or {}
                if label.get(record.RUN_KEY_ATTRIBUTE) == self.run_key:
                    summary.unlisted_labelled += 1
                    continue
                if doc.get(errors):
                    summary.samples.append(
                        SampleSummary(sample_id, doc["filepath"], error=doc[errors])
                    )
                    continue
            todo.append(sample_id)
        return todo

    def finish(self, states: list[Any], others_remain: bool, wrote_fields: bool) -> None:
        """:func:`.loop.finish_dataset` with every block's job state."""
        self.dataset.reload()
        finish_dataset(self.dataset, self.job, states, others_remain, wrote_fields)


def execute_ray_run(
    samples,
    build_job: Callable[[Any, Any], LabellingJob],
    run_key: str,
    config: dict[str, Any],
    device: Any = None,
    ray_address: str | None = None,
    ray_workers: int | None = None,
    gpus_per_worker: float | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = 1,
    num_workers: int = 2,
    skip_existing: bool = False,
    resume: bool = True,
    skip_failures: bool = True,
    progress: bool | Callable | None = None,
    progress_callback: Callable[[int, int], None] | None = None,
    review_field: str | None = None,
    discard_reviews: bool = False,
) -> SSARunSummary:
    """Labels the pending samples with Ray actors (see the module's docstring).

    Args:
        samples: a FiftyOne dataset or view (of a dataset the actors load by name).
        build_job: ``(samples, device) -> LabellingJob``, picklable; run once per actor.
        run_key: the run's key.
        config: the configuration behind the key (``config["label_field"]``: the output).
        device: each actor's torch device (None: its GPU when it has one, else CPU).
        ray_address: the cluster: None starts Ray on this machine unless this process is
            already connected, ``"auto"`` the cluster this machine belongs to (``ray start``),
            ``"HOST:PORT"`` (or ``ray://HOST:PORT``) another one.
        ray_workers: actors (default: as many as the cluster's GPUs allow, ``gpus_per_worker``
            each; on a cluster without GPUs, one per CPU).
        gpus_per_worker: GPUs per actor, fractions allowed (default: 1 on a cluster with GPUs,
            else 0).
        block_size: samples per block handed to an actor.
        batch_size: samples per ``job.label_batch`` call.
        num_workers: each actor's image decoding threads.
        skip_existing: skip samples with any ``label_field`` label.
        resume: skip samples this run (same key) already labelled.
        skip_failures: record failing samples and go on; False raises at the first failure.
        progress: FiftyOne's progress argument for the driver's bar.
        progress_callback: called with (done, total) after each block.
        review_field: the Detections output a person reviews: samples whose review was
            applied are kept (not relabelled) unless ``discard_reviews``.
        discard_reviews: relabel reviewed samples too.

    Returns:
        The merged summary (failures listed, labelled samples counted).
    """
    ray = import_ray()
    label_field = config["label_field"]
    dataset = samples._dataset
    pending, kept = record.pending_and_kept(
        samples,
        label_field,
        run_key,
        skip_existing,
        resume,
        None if discard_reviews else review_field,
    )
    ids, stamps = pending.values(["id", "last_modified_at"])
    summary = SSARunSummary(
        label_field,
        skipped_existing=len(samples) - len(ids) - kept,
        run_key=run_key,
        kept_reviewed=kept,
    )
    if not ids:  # a run with nothing to label starts nothing and changes nothing
        return summary
    others_remain = record.foreign_labels(dataset, label_field, run_key, excluding=ids)
    listed = sorted(zip(ids, map(_stamp, stamps)))
    blocks = [listed[i : i + block_size] for i in range(0, len(listed), block_size)]

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_address, logging_level=logging.WARNING)
    actors: list = []
    try:
        gpus = _gpus_per_worker(ray, gpus_per_worker)
        count = ray_workers or _default_workers(ray, gpus)
        labeller = ray.remote(BlockLabeller).options(
            num_cpus=1,
            num_gpus=gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=-1,
            runtime_env={"env_vars": database_environment()},
        )
        options = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "skip_failures": skip_failures,
        }
        stages = samples._serialize() if isinstance(samples, fov.DatasetView) else []
        actors = [
            labeller.remote(dataset.name, stages, build_job, device, run_key, options)
            for _ in range(count)
        ]
        results = _run_blocks(
            ray, actors, blocks, config, others_remain, len(ids), progress, progress_callback
        )
        summary = summary.merge([block_summary for block_summary, _ in results])
        states: list = []  # the distinct ones: an actor's state grows block by block
        for _, state in results:
            if state not in states:
                states.append(state)
        _call_any(ray, actors, "finish", states, others_remain, True)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
    dataset.reload()
    return summary


def _gpus_per_worker(ray, gpus_per_worker: float | None) -> float:
    """GPUs per actor: the user's choice, else 1 on a cluster with GPUs and 0 without.

    Raises:
        ValueError: more GPUs per actor than the cluster has (no actor could ever start).
    """
    available = ray.cluster_resources().get("GPU", 0)
    if gpus_per_worker is None:
        return 1 if available else 0
    if gpus_per_worker > available:
        raise ValueError(
            f"gpus_per_worker={gpus_per_worker} but the Ray cluster has {available:g} GPU(s)"
        )
    return gpus_per_worker


def _default_workers(ray, gpus: float) -> int:
    resources = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int(resources.get("CPU", 1)))


def _unwrap(ray, error: Exception) -> Exception:
    """The exception an actor's method raised (a ValueError stays a ValueError)."""
    if isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        return error.cause
    return error


def _run_blocks(
    ray, actors, blocks, config, others_remain, total, progress, progress_callback
) -> list:
    """Prepares the dataset on the first actor up, then hands out every block; returns each
    block's (summary, job state) in completion order."""
    pings = {actor.pid.remote(): i for i, actor in enumerate(actors)}
    queue = deque(blocks)
    in_flight: dict = {}  # object ref -> (actor index, block)
    load = [0] * len(actors)
    alive = set(range(len(actors)))
    ready: set[int] = set()
    prepared = False
    results = []
    done = 0

    def submit(index: int) -> None:
        block = queue.popleft()
        in_flight[actors[index].label_block.remote(block)] = (index, block)
        load[index] += 1

    def fill() -> None:
        for index in sorted(ready & alive, key=lambda i: load[i]):
            while queue and load[index] < BLOCKS_IN_FLIGHT:
                submit(index)

    # The bar opens once the first actor has loaded its models: rate and ETA are labelling's.
    with contextlib.ExitStack() as stack:
        pbar = None
        while queue or in_flight:
            waiting = list(in_flight) + list(pings)
            if not waiting:
                raise RuntimeError("every Ray worker died; the same call resumes the run")
            (ref,), _ = ray.wait(waiting, num_returns=1)
            if ref in pings:
                index = pings.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as error:
                    alive.discard(index)
                    if not (alive & (ready | set(pings.values()))):
                        raise RuntimeError(
                            f"no Ray worker could start: {_unwrap(ray, error)}"
                        ) from None
                    continue
                if not prepared:
                    try:
                        ray.get(actors[index].prepare.remote(config, others_remain))
                    except ray.exceptions.RayTaskError as error:
                        raise _unwrap(ray, error) from None
                    prepared = True
                    pbar = stack.enter_context(fou.ProgressBar(total=total, progress=progress))
                ready.add(index)
                fill()
                continue
            index, block = in_flight.pop(ref)
            load[index] -= 1
            try:
                block_summary, state = ray.get(ref)
            except ray.exceptions.RayActorError:  # its restarts are spent: the others go on
                alive.discard(index)
                queue.appendleft(block)
                logger.warning("a Ray worker died for good; its blocks go to the others")
                fill()
                continue
            except ray.exceptions.RayTaskError as error:
                raise _unwrap(ray, error) from None
            results.append((block_summary, state))
            done += len(block)
            pbar.update(len(block))
            if progress_callback is not None:
                progress_callback(done, total)
            fill()
    return results


def _call_any(ray, actors, method: str, *args) -> Any:
    """Calls ``method`` on the first actor that still answers."""
    last = None
    for actor in actors:
        try:
            return ray.get(getattr(actor, method).remote(*args))
        except ray.exceptions.RayActorError as error:
            last = error
        except ray.exceptions.RayTaskError as error:
            raise _unwrap(ray, error) from None
    raise RuntimeError(f"every Ray worker died before the run could finish: {last}")
