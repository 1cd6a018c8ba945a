"""Timing, peak memory and the results table shared by the benchmarks."""

from __future__ import annotations

import datetime
import platform
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


def sync(device: torch.device) -> None:
    """Waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _RssSampler:
    """Samples this process's resident set size in a background thread; keeps the peak."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


@dataclass
class Row:
    """One line of the results table.

    Attributes:
        stage: what was timed.
        seconds: total wall time over ``images`` images.
        images: images processed.
        masks: masks processed (0 where the stage does not work per mask).
        host_peak_mb: peak resident memory of the process during the stage.
        gpu_peak_mb: peak allocated CUDA memory during the stage (None on the CPU).
        note: a remark (ratios, settings).
    """

    stage: str
    seconds: float
    images: int
    masks: int = 0
    host_peak_mb: float = 0.0
    gpu_peak_mb: float | None = None
    note: str = ""

    @property
    def per_image(self) -> float:
        return self.seconds / max(self.images, 1)

    @property
    def per_mask(self) -> float | None:
        return self.seconds / self.masks if self.masks else None


@dataclass
class Results:
    """The rows of one benchmark run and what it ran on."""

    title: str
    device: torch.device
    settings: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str, images: int, masks: int = 0, note: str = ""):
        """Times the ``with`` block as one row; yields the row (its fields may be edited)."""
        row = Row(name, 0.0, images, masks, note=note)
        cuda = self.device.type == "cuda"
        if cuda:
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        with _RssSampler() as rss:
            start = time.perf_counter()
            yield row
            sync(self.device)
            row.seconds = time.perf_counter() - start
        row.host_peak_mb = rss.peak / 2**20
        if cuda:
            row.gpu_peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.rows.append(row)

    def row(self, name: str) -> Row:
        """The row of a stage by name."""
        return next(r for r in self.rows if r.stage == name)

    def environment(self) -> str:
        """Device, versions and date, one line."""
        import transformers

        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            name = (
                f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
            )
        now = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
        return (
            f"{now} (machine clock); {self.device.type} ({name}); python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}"
        )

    def markdown(self) -> str:
        """The table as markdown, with the run's settings and notes."""
        lines = [f"### {self.title}", "", self.environment(), "", self.settings, ""]
        lines.append(
            "| stage | s/image | s/mask | masks/image | host peak MB | GPU peak MB | note |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in self.rows:
            per_mask, masks, host, gpu = _cells(r)
            lines.append(
                f"| {r.stage} | {r.per_image:.4f} | {per_mask} | {masks} | {host} | {gpu} | "
                f"{r.note} |"
            )
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        """The table as plain text for the terminal."""
        header = (
            f"{'stage':<38}{'s/image':>10}{'s/mask':>10}{'masks/img':>10}"
            f"{'host MB':>9}{'GPU MB':>8}  note"
        )
        out = [self.title, self.environment(), self.settings, header, "-" * len(header)]
        for r in self.rows:
            per_mask, masks, host, gpu = _cells(r)
            out.append(
                f"{r.stage:<38}{r.per_image:>10.4f}{per_mask:>10}{masks:>10}{host:>9}{gpu:>8}"
                f"  {r.note}"
            )
        out += [f"* {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def report(self, markdown_path: str | None = None) -> None:
        """Prints the table; with a path, also appends its markdown to that file."""
        print(self.text())
        if markdown_path:
            with open(markdown_path, "a") as f:
                f.write(self.markdown() + "\n")


def _cells(r: Row) -> tuple[str, str, str, str]:
    """A row's optional cells as text: s/mask, masks/image, host MB, GPU MB."""
    per_mask = f"{r.per_mask:.4f}" if r.per_mask is not None else ""
    masks = f"{r.masks / max(r.images, 1):.0f}" if r.masks else ""
    gpu = f"{r.gpu_peak_mb:.0f}" if r.gpu_peak_mb is not None else ""
    return per_mask, masks, _mb(r.host_peak_mb), gpu


def _mb(value: float) -> str:
    return f"{value:.0f}" if value else ""


class MethodTimer:
    """Wraps methods of model instances to add their wall time (synchronised) to ``seconds``.

    Used to split a batched call (the engine's ``label_masks``) into per-model times without
    copying its code.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, method: str, key: str) -> None:
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            result = original(*args, **kwargs)
            sync(self.device)
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
            return result

        setattr(owner, method, timed)
