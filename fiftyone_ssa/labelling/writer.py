"""Batched writes of sample fields on a background thread: one atomic update per sample.

Writing labels one sample at a time through ``sample.save()`` costs a query to fetch the sample
and a round trip to save it, and keeps the caller busy while FiftyOne serializes the labels
(each mask array is ``np.save``d and zlib-compressed). :class:`SampleWriter` serializes a
batch's values and sends them in one ``bulk_write`` on a thread of its own (zlib and the socket
release the GIL), so the next batch's models run while the last batch is written.

Every sample still gets a single ``$set`` of all its fields: a run that is killed leaves each
sample either fully labelled or untouched.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import fiftyone as fo
import fiftyone.core.odm as foo
import fiftyone.core.sample as fos
from bson import ObjectId
from pymongo import UpdateOne

logger = logging.getLogger(__name__)


class SampleWriter:
    """Collects per-sample field values and writes them batch by batch.

    Use as a context manager; leaving it writes what is queued and waits for every write (also
    when the block raised: the queued samples are complete). A write that failed raises from
    the next :meth:`flush` or from leaving the context.

    Args:
        dataset: the dataset; the fields must have been declared.
        background: write on a background thread (at most one batch in flight).
    """

    def __init__(self, dataset: fo.Dataset, background: bool = True):
        self.dataset = dataset
        self._fields: dict[str, Any] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._executor = ThreadPoolExecutor(1) if background else None
        self._in_flight: Future | None = None

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.flush()
                self._wait()
            else:
                try:
                    self.flush()
                    self._wait()
                except Exception as err:  # keep the error that stopped the run
                    logger.warning("labels queued before the error were not written: %s", err)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def add(self, sample_id: str, values: dict[str, Any]) -> None:
        """Queues one sample's new field values (written at the next :meth:`flush`).

        Args:
            sample_id: the sample's id.
            values: field name -> value (a label, a plain value or None).

        Raises:
            ValueError: a field the dataset does not declare, or a label of another type.
        """
        for name, value in values.items():
            field = self._field(name)
            expected = getattr(field, "document_type", None)
            if value is not None and expected is not None and not isinstance(value, expected):
                raise ValueError(
                    f"Expected a {expected.__name__} for field '{name}', but got "
                    f"{type(value).__name__}"
                )
        self._pending.append((sample_id, dict(values)))

    def flush(self) -> None:
        """Starts writing the queued samples, after the previous batch is written."""
        self._wait()
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._executor is None:
            self._reload(self._write(batch))
        else:
            self._in_flight = self._executor.submit(self._write, batch)

    def _wait(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            self._reload(future.result())

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Serializes and writes one batch (on the writer thread); returns the sample ids."""
        now = datetime.now(timezone.utc)
        ops = []
        for sample_id, values in batch:
            document = {
                name: None if value is None else self._fields[name].to_mongo(value)
                for name, value in values.items()
            }
            document["last_modified_at"] = now
            ops.append(UpdateOne({"_id": ObjectId(sample_id)}, {"$set": document}))
        ids = [sample_id for sample_id, _ in batch]
        try:
            foo.bulk_write(ops, self.dataset._sample_collection)
        except Exception as err:
            raise RuntimeError(
                f"writing the labels of {len(ids)} samples ({ids[0]} ... {ids[-1]}) failed: {err}"
            ) from err
        return ids

    def _reload(self, ids: list[str]) -> None:
        # Any Sample object of these ids held in memory sees the new values (caller's thread:
        # FiftyOne's registry of in-memory samples is not thread-safe).
        fos.Sample._reload_docs(self.dataset._sample_collection_name, sample_ids=ids)

    def _field(self, name: str):
        if name not in self._fields:
            field = self.dataset.get_field(name)
            if field is None:
                raise ValueError(f"Expected a declared field, but '{name}' is not one")
            self._fields[name] = field
        return self._fields[name]
