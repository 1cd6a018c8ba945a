"""Processes of a ``torchrun`` launch: who this rank is, its GPU, and the ranks' meeting points.

``torchrun --nproc-per-node G [--nnodes N --rdzv-endpoint HOST:PORT] -m fiftyone_ssa run ...``
starts one process per GPU with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. The ranks only
exchange small Python objects (shard boundaries, run summaries), so the process group always
uses the ``gloo`` backend, on CPU-only machines and GPU machines alike; the models of each rank
run on its own GPU (``cuda:<LOCAL_RANK>``).

Without torchrun (no ``WORLD_SIZE``, or 1) everything here is a no-op for a single rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

# Ranks wait this long for each other at the end of a run (shards can finish hours apart).
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of a launch.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes.
        local_rank: rank on this machine (its GPU index).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which prepares the run and prints its summary."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _group_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def current_ranks() -> Ranks:
    """The ranks of the active process group (a single rank when there is none)."""
    if not _group_active():
        return Ranks()
    return Ranks(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_from_environment() -> Ranks:
    """Joins the process group ``torchrun`` describes in the environment, if any.

    Returns:
        This process's ranks (a single rank outside torchrun).

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 but ``torch.distributed`` is not available.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not _group_active():
        if not torch.distributed.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        torch.distributed.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    ranks = current_ranks()
    if ranks.is_distributed and torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank % torch.cuda.device_count())
    return ranks


def shutdown() -> None:
    """Leaves the process group (no-op without one)."""
    if _group_active():
        torch.distributed.destroy_process_group()


def run_device(device: Any = None) -> Any:
    """The device this rank's models use: ``device`` when given, else its own GPU under torchrun.

    Args:
        device: the user's choice (None: none).

    Returns:
        ``device`` when given; else ``"cuda:<local_rank>"`` for a distributed rank on a GPU
        machine; else None (the models' own default).
    """
    if device:
        return device
    ranks = current_ranks()
    if ranks.is_distributed and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return None


def check_device(device: Any) -> None:
    """Raises ValueError (one line) unless ``device`` is None or a device this machine has.

    Checked before any model loads or anything is written: a CUDA device on a machine without
    one would otherwise fail every sample, one by one, and record the failure on each.

    Args:
        device: a torch device or its name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    """
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"Expected `device` to be a torch device such as 'cpu', 'cuda' or 'cuda:1', but "
            f"got {device!r}"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} needs CUDA, which is not available on this machine "
                "(torch.cuda.is_available() is False); use 'cpu'"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device {str(device)!r} does not exist: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} is not available on this machine; use 'cpu'")


def barrier() -> None:
    """Waits for every rank (no-op for a single rank)."""
    if _group_active():
        torch.distributed.barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (also a barrier); ``value`` itself for a single rank."""
    if not _group_active():
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_to_all(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (also a barrier)."""
    if not _group_active():
        return [value]
    values: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def split_evenly(ordered_ids: list, parts: int) -> list[tuple[Any, Any] | None]:
    """Contiguous, disjoint ranges of ``ordered_ids``, one per part, sizes differing by <= 1.

    Args:
        ordered_ids: sorted ids.
        parts: number of ranges (ranks).

    Returns:
        ``parts`` (first id, last id) pairs, inclusive; None for a part with no ids.
    """
    if parts < 1:
        raise ValueError(f"Expected `parts` to be >= 1, but got {parts}")
    size, extra = divmod(len(ordered_ids), parts)
    ranges: list[tuple[Any, Any] | None] = []
    start = 0
    for part in range(parts):
        stop = start + size + (1 if part < extra else 0)
        ranges.append((ordered_ids[start], ordered_ids[stop - 1]) if stop > start else None)
        start = stop
    return ranges
