"""Batched writes of sample fields on a background thread: one atomic update per sample.

Writing labels one sample at a time through ``sample.save()`` costs a query to fetch the sample,
a serialization of every new label to compare it with the old value and another to save it
(FiftyOne stores masks as zlib-compressed arrays, so each serialization compresses every mask).
:class:`SampleWriter` serializes each value once and sends a whole batch of samples in one
``bulk_write``, on a thread of its own (zlib and the socket release the GIL), so the next batch's
models run while the last batch is written.

Every sample still gets a single ``$set`` of all its fields: a run that is killed leaves each
sample either fully labelled or untouched.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import fiftyone as fo
from bson import ObjectId
from pymongo import UpdateOne


class SampleWriter:
    """Collects per-sample field values and writes them batch by batch.

    Use as a context manager; leaving it writes what is left and waits for every write. A write
    that failed raises from the next :meth:`flush` (or from leaving the context).

    Args:
        dataset: the dataset; the fields must have been declared.
        background: write on a background thread (at most one batch in flight).
    """

    def __init__(self, dataset: fo.Dataset, background: bool = True):
        self.dataset = dataset
        self._fields: dict[str, Any] = {}
        self._pending: list[tuple[str, UpdateOne]] = []
        self._executor = ThreadPoolExecutor(1) if background else None
        self._in_flight: Future | None = None

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.flush()
            self._wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def add(self, sample_id: str, values: dict[str, Any]) -> None:
        """Queues one sample's new field values (written at the next :meth:`flush`).

        Args:
            sample_id: the sample's id.
            values: field name -> value (a label, a plain value or None).

        Raises:
            ValueError: a field that the dataset does not declare.
        """
        document = {name: self._to_mongo(name, value) for name, value in values.items()}
        document["last_modified_at"] = datetime.now(timezone.utc)
        self._pending.append(
            (sample_id, UpdateOne({"_id": ObjectId(sample_id)}, {"$set": document}))
        )

    def flush(self) -> None:
        """Starts writing the queued samples, after the previous batch is written."""
        self._wait()
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._executor is None:
            self._write(batch)
        else:
            self._in_flight = self._executor.submit(self._write, batch)

    def _wait(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()

    def _write(self, batch: list[tuple[str, UpdateOne]]) -> None:
        ids = [sample_id for sample_id, _ in batch]
        # FiftyOne's own bulk write: also refreshes any in-memory Sample of these ids.
        self.dataset._bulk_write([op for _, op in batch], ids=ids)

    def _to_mongo(self, name: str, value: Any) -> Any:
        if name not in self._fields:
            field = self.dataset.get_field(name)
            if field is None:
                raise ValueError(f"Expected a declared field, but '{name}' is not one")
            self._fields[name] = field
        return None if value is None else self._fields[name].to_mongo(value)
