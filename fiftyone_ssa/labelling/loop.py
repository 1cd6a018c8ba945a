"""The loop every labelling run shares: pending samples, shards, batches, writes and summary.

A :class:`LabellingJob` says what a kind of run (SSA, SSA-engine) reads, computes and writes;
:func:`execute_labelling_run` does the rest, the same way for both:

1. every rank has checked the request (the caller does: output fields free, or this run's own;
   see :func:`.record.check_outputs_free`) before anything is written;
2. rank 0 declares the output fields, records the run and splits the pending samples (those
   without a label of this run key) into one contiguous id range per rank;
3. each rank labels its range batch by batch, images decoded ahead in threads, and writes each
   sample in one update (or records why it failed), a batch per bulk write on a background
   thread (:mod:`.writer`);
4. the ranks meet; rank 0 finishes the dataset-level settings (mask targets, then the App's
   per-class colours of the output fields, see :mod:`.colors`) and merges the summaries.

Without torchrun there is one rank and steps 2-4 involve no communication. With
``backend="ray"`` (:mod:`.ray_backend`) a driver lists the pending samples and Ray actors run
the same steps: one of them steps 2 and 4, every one step 3 on blocks of samples handed out as
actors become free (:func:`label_samples`, the same per-sample code).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou

from fiftyone_ssa.fields import error_field
from fiftyone_ssa.labelling import colors, distributed, record
from fiftyone_ssa.labelling.record import SampleSummary, SSARunSummary
from fiftyone_ssa.labelling.sources import iter_batches, prefetch, safe_reader
from fiftyone_ssa.labelling.writer import SampleWriter

logger = logging.getLogger(__name__)


class LabellingJob:
    """What differs between kinds of labelling runs; subclasses fill in the hooks.

    Attributes:
        label_field: the main output field; it carries the run key.
        input_fields: fields the job reads from each sample (besides its file path).
        needs_image: whether the job needs the decoded pixels (else only the image size).
        review_field: the Detections output a person reviews (``apply_review``); samples
            whose review was applied are not relabelled unless reviews are discarded.
    """

    label_field: str
    input_fields: list[str] = []
    needs_image: bool = True
    review_field: str | None = None

    def output_schema(self) -> dict[str, tuple[type, dict]]:
        """The fields and label attributes to declare (see ``record.declare_output_fields``)."""
        raise NotImplementedError

    def prepare(self, dataset: fo.Dataset, others_remain: bool) -> None:
        """Dataset-level settings known before labelling, before any write (one process: rank
        0, or one Ray actor).

        Args:
            dataset: the dataset.
            others_remain: labels of other runs stay in the output fields after this run
                (``skip_existing``, or ``overwrite`` on part of the dataset), so dataset-level
                settings such as mask targets must keep serving them.

        Raises:
            ValueError: when this run's settings cannot coexist with those labels.
        """

    def start(self, dataset: fo.Dataset, many_workers: bool = False) -> None:
        """Per-worker set-up once the dataset's settings are final (every rank or Ray actor).

        Args:
            dataset: the dataset.
            many_workers: other processes label other samples of this run at the same time
                (torchrun ranks, Ray actors): dataset-level settings cannot grow while labelling.
        """

    def unwritten_outputs(self) -> dict[str, type]:
        """The optional output fields this run does not write -> their label type.

        On a sample this run relabels (one holding a ``label_field`` label of another run), such
        a field is cleared: no map of the earlier run's settings stays beside the new labels.
        Samples without a ``label_field`` label keep it (it is not the runs' there).
        """
        return {}

    def label_batch(
        self, batch: list, images: list, skip_failures: bool
    ) -> list[tuple[Any, float]]:
        """(outcome or the exception that stopped it, seconds) for each sample of a batch."""
        raise NotImplementedError

    def sample_values(
        self, sample_id: str, outcome: Any, run_key: str
    ) -> tuple[dict[str, Any], int, list[str]]:
        """One sample's output field values (written in one update), mask count, class names."""
        raise NotImplementedError

    def after_batch(self, dataset: fo.Dataset) -> None:
        """Called after each batch is labelled, before its labels are written."""

    def shared_state(self) -> Any:
        """What rank 0's :meth:`finish` needs from every rank (picklable)."""
        return None

    def finish(self, dataset: fo.Dataset, states: list[Any], others_remain: bool) -> None:
        """Dataset-level settings after labelling (one process), from every worker's state.

        May run in a process other than the one that ran :meth:`prepare` (a Ray actor), on a
        job that labelled samples or none: it depends only on its arguments and on what the
        job knew when it was built.

        Args:
            dataset: the dataset.
            states: :meth:`shared_state` of every worker (Ray: the distinct ones).
            others_remain: as given to :meth:`prepare`.
        """


def check_run_options(batch_size: int, top_k: int, num_workers: int, device: Any = None) -> None:
    """Raises ValueError (one line) for a batch size or top-k below 1, negative workers, or a
    device this machine lacks (:func:`distributed.check_device`); and anything but whole
    numbers for the three (``batch_size=2.0`` failed with a TypeError mid-run)."""
    for name, value in (("batch_size", batch_size), ("top_k", top_k), ("num_workers", num_workers)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"Expected `{name}` to be an integer, but got {value!r}")
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
    if top_k < 1:
        raise ValueError(f"Expected `top_k` to be >= 1, but got {top_k}")
    if num_workers < 0:
        raise ValueError(f"Expected `num_workers` to be >= 0, but got {num_workers}")
    distributed.check_device(device)


def execute_labelling_run(
    samples,
    job: LabellingJob,
    run_key: str,
    config: dict[str, Any],
    batch_size: int = 1,
    num_workers: int = 2,
    skip_existing: bool = False,
    resume: bool = True,
    skip_failures: bool = True,
    progress: bool | Callable | None = None,
    progress_callback: Callable[[int, int], None] | None = None,
    discard_reviews: bool = False,
) -> SSARunSummary:
    """Runs ``job`` over the samples (this rank's shard of them under torchrun).

    Args:
        samples: a FiftyOne dataset or view.
        job: the kind of run; the caller has validated the request (inputs, output fields).
        run_key: the run's key (``record.make_run_key(config)``).
        config: the configuration behind the key (recorded in ``dataset.info``).
        batch_size: samples per ``job.label_batch`` call.
        num_workers: threads decoding images ahead of the models (0: none, decoded in turn).
        skip_existing: skip samples with any ``label_field`` label.
        resume: skip samples this run (same key) already labelled.
        skip_failures: record failing samples and go on; False raises at the first failure.
        progress: FiftyOne's progress argument (shown by rank 0 only).
        progress_callback: called with (done, total) after each sample is labelled (its
            write may still be queued).
        discard_reviews: also relabel samples whose review was applied (their corrections
            are lost); by default they are kept whatever ``resume`` and ``overwrite`` say.

    Returns:
        The run's summary; under torchrun, rank 0 gets every rank's counts and failures
        merged (labelled samples counted, not listed), the other ranks their own summary.
    """
    ranks = distributed.current_ranks()
    dataset = samples._dataset
    label_field = job.label_field
    distributed.barrier()  # every rank has validated the request before rank 0 changes anything

    plan = None
    wrote_fields = others_remain = False
    review_field = None if discard_reviews else job.review_field
    if ranks.is_main:
        try:
            pending, kept = record.pending_and_kept(
                samples, label_field, run_key, skip_existing, resume, review_field
            )
            pending_ids = pending.values("_id")
            wrote_fields = bool(pending_ids)
            others_remain = record.foreign_labels(
                dataset, label_field, run_key, excluding=pending_ids
            )
            if pending_ids:  # a run with nothing to label changes no dataset-level setting
                prepare_dataset(dataset, job, run_key, config, others_remain)
            ranges = None
            if ranks.is_distributed:
                ranges = distributed.split_evenly(sorted(pending_ids), ranks.world_size)
            plan = (ranges, len(samples) - len(pending_ids) - kept, kept)
        except ValueError as error:  # refused before any write: every rank raises it
            plan = error
    plan = distributed.broadcast_from_main(plan)
    if isinstance(plan, ValueError):
        raise plan
    ranges, skipped, kept = plan
    if ranks.is_distributed:
        dataset.reload()
    job.start(dataset, many_workers=ranks.is_distributed)

    # Built again after the reload: the other ranks' schema now has the output fields.
    mine = record.pending_samples(
        samples, label_field, run_key, skip_existing, resume, review_field
    )
    if ranges is not None:
        bounds = ranges[ranks.rank]
        mine = (
            mine.mongo([{"$match": {"_id": {"$gte": bounds[0], "$lte": bounds[1]}}}])
            if bounds
            else mine.limit(0)
        )
    summary = SSARunSummary(
        label_field, skipped_existing=skipped, run_key=run_key, kept_reviewed=kept
    )
    label_samples(
        dataset,
        mine,
        job,
        run_key,
        summary,
        batch_size,
        num_workers,
        skip_failures,
        progress if ranks.is_main else False,
        progress_callback,
    )

    states = distributed.gather_to_all(job.shared_state())
    # Ranks exchange counts and failures only: one entry per sample would not scale to millions.
    summaries = distributed.gather_to_all(summary.compact() if ranks.is_distributed else summary)
    if ranks.is_main:
        finish_dataset(dataset, job, states, others_remain, wrote_fields)
    distributed.barrier()  # dataset-level settings are final when any rank returns
    if ranks.is_distributed:
        dataset.reload()
    return summaries[0].merge(summaries[1:]) if ranks.is_main else summary


def prepare_dataset(
    dataset: fo.Dataset, job: LabellingJob, run_key: str, config: dict, others_remain: bool
) -> None:
    """Step 2's dataset-level part, before any sample is written (one process of the run):
    declares the output fields, lets the job set what it knows (mask targets), records the run.

    Args:
        dataset: the dataset.
        job: the run's job.
        run_key: the run's key.
        config: the configuration behind the key.
        others_remain: labels of other runs stay in the output fields after this run.

    Raises:
        ValueError: the job's settings cannot coexist with those labels (nothing written).
    """
    record.declare_output_fields(dataset, job.output_schema())
    job.prepare(dataset, others_remain)
    record.record_run(dataset, job.label_field, run_key, config)


def finish_dataset(
    dataset: fo.Dataset,
    job: LabellingJob,
    states: list[Any],
    others_remain: bool,
    wrote_fields: bool,
) -> None:
    """Step 4's dataset-level part (one process of the run): the job's settings from every
    worker's :meth:`LabellingJob.shared_state`, then the App's colours of the output fields
    (when the run declared them)."""
    job.finish(dataset, states, others_remain)
    if wrote_fields:
        colors.set_output_colors(dataset, _label_types(job.output_schema()))


def label_samples(
    dataset,
    view,
    job: LabellingJob,
    run_key: str,
    summary: SSARunSummary,
    batch_size: int,
    num_workers: int,
    skip_failures: bool,
    progress,
    progress_callback,
) -> None:
    """Labels every sample of ``view``, appending to ``summary`` (the per-sample loop every
    backend runs: a rank's shard, a Ray actor's block).

    Args:
        dataset: the dataset (its schema declares the output fields).
        view: the samples to label.
        job: the run's job, started.
        run_key: the run's key.
        summary: where each sample's outcome is appended.
        batch_size: samples per ``job.label_batch`` call.
        num_workers: image decoding threads.
        skip_failures: record failures and go on.
        progress: FiftyOne's progress argument.
        progress_callback: called with (done, total) after each sample.
    """
    total = len(view)
    select = view.select_fields(job.input_fields)
    read = safe_reader(job.needs_image)
    done = 0
    error_name = error_field(job.label_field)
    stale = _stale_outputs(dataset, view, job.label_field, job.unwritten_outputs())
    with SampleWriter(dataset) as writer, fou.ProgressBar(total=total, progress=progress) as pbar:
        for batch, images in prefetch(iter_batches(select, batch_size), read, num_workers):
            results = job.label_batch(batch, images, skip_failures)
            for sample, (outcome, seconds) in zip(batch, results):
                entry = SampleSummary(sample.id, sample.filepath, seconds=seconds)
                if isinstance(outcome, Exception):
                    if not skip_failures:
                        raise outcome
                    entry.error = f"{type(outcome).__name__}: {outcome}"
                    writer.add(sample.id, {error_name: entry.error})
                    logger.warning("skipping %s: %s", sample.filepath, entry.error)
                else:
                    values, entry.num_masks, entry.classes = job.sample_values(
                        sample.id, outcome, run_key
                    )
                    cleared = {name: None for name, ids in stale.items() if sample.id in ids}
                    writer.add(sample.id, {**cleared, **values})
                summary.samples.append(entry)
                done += 1
                pbar.update()
                if progress_callback is not None:
                    progress_callback(done, total)
            job.after_batch(dataset)  # before the labels that may use what it saves
            writer.flush()


def _label_types(schema: dict[str, tuple[type, dict]]) -> dict[str, type]:
    """The top-level label fields of an output schema -> their label class."""
    return {
        path: kwargs["embedded_doc_type"]
        for path, (_, kwargs) in schema.items()
        if "." not in path and "embedded_doc_type" in kwargs
    }


def _stale_outputs(
    dataset: fo.Dataset, view, label_field: str, unwritten: dict[str, type]
) -> dict[str, set[str]]:
    """Each unwritten optional output an earlier run left -> the ids of the samples of ``view``
    (this rank's pending samples) holding it beside a ``label_field`` label (see
    :meth:`LabellingJob.unwritten_outputs`)."""
    schema = dataset.get_field_schema()
    stale: dict[str, set[str]] = {}
    if label_field not in schema:
        return stale
    for name, label_type in unwritten.items():
        field = schema.get(name)
        if isinstance(field, fo.EmbeddedDocumentField) and issubclass(
            field.document_type, label_type
        ):
            stale[name] = set(view.exists(label_field).exists(name).values("id"))
    return stale
